"""SFT: rows -> conversations -> chat-templated ids with loss masks -> (packed) training rows."""
