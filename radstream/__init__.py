"""radstream: event-driven clinical ML validation for medical imaging."""

__version__ = "0.1.0"
