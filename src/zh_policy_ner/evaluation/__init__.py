"""Evaluation: cross-validation by article, held-out articles, the learning curve."""
