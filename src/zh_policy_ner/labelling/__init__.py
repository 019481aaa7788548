"""Annotations and exchange: the gold span files anchored by sha256 (annotations), and the
correction loop with Label Studio, doccano and Prodigy (exchange)."""
