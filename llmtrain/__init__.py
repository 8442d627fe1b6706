"""llmtrain: pretraining and SFT of Hugging Face causal LMs on one GPU or many."""

__version__ = "0.1.0"
