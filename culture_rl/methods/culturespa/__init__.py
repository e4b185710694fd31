"""CultureSPA (Self-Pluralising Culture Alignment, arXiv 2410.12971) on Ray actors."""
