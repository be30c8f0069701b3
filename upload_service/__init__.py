"""Resumable, chunked uploads of very large files over the tus 1.0.0 protocol."""

__version__ = "0.1.0"
