"""Operator tasks: consumer-group status and lag, partition scaling, replay, shadow comparison."""
