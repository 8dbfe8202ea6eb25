"""Experiments built on the whole system: `unmask reproduce` (the paper's findings in miniature)."""
