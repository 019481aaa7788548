"""Span decoding: the Predictor (windows, batches, BIO decoding, raw offsets, layers) and the
lexicon matches fed to the model as input features."""
