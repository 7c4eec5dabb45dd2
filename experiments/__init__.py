"""Ablation experiments: each module is one command (python -m experiments.NAME)."""
