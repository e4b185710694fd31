"""CALM (arXiv 2601.03483): the culture-aware modules trained around the base model with the
baseline and ablations (:mod:`.train`), and self-prompted reflective learning (:mod:`.reflect`)."""
