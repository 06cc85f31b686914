"""Reusable inference operators: small classes with one job each, shared across pipelines."""
