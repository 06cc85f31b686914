"""Inference workers: ``radstream infer --pipeline NAME``."""
