"""Throughput, MFU and memory figures."""
