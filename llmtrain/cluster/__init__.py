"""Cluster integration: SLURM environment and preemption signals."""
