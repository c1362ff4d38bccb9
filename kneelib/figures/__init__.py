"""Figures of the book: one module per subject shown (stage modules hold no plotting code)."""
