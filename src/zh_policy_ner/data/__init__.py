"""Training data: annotations to per-character BIO tags and token windows, splits and folds
(dataset), and entity-level scores of spans (metrics)."""
