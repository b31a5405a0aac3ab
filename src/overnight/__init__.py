"""Overnight: a self-hosted Batch Mode for language models."""

__version__ = "0.1.0"
