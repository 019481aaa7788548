"""Lexicon matches as input features (SoftLexicon-style, Ma et al. 2020, simplified to one tag a
character): the gazetteer's and the place table's matches become a BIO tag per character, fed to
the encoder through its token-type embeddings, so that the word lists inform the model instead of
overriding its spans. Training articles get their tags from a gazetteer built *without their own
mentions* (cross-fitting), so the model cannot learn that every gold mention is in the list.

Feature ids: 0 outside any match, ``1 + 2j`` begins and ``2 + 2j`` continues a match of label ``j``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..rules.lexicon import overlay

CONFIG_KEY = "lexicon_features"  # in the model's config.json: the labels of the feature ids


def n_feature_types(labels: Sequence[str]) -> int:
    return 1 + 2 * len(labels)


@dataclass
class LexiconFeatures:
    """Per-character feature ids of a text from a gazetteer (``DictionaryTagger``) and, below
    it, a place tagger (matches that overlap a gazetteer match are dropped)."""

    labels: tuple[str, ...]
    gazetteer: object | None = None
    places: object | None = None

    def char_ids(self, text: str) -> np.ndarray:
        found = self.gazetteer.tag(text) if self.gazetteer is not None else []
        if self.places is not None:
            found = overlay(self.places.tag(text), found)
        ids = np.zeros(len(text), dtype=np.int64)
        index = {lab: j for j, lab in enumerate(self.labels)}
        for s, e, lab in found:
            j = index.get(lab)
            if j is not None:
                ids[s] = 1 + 2 * j
                ids[s + 1:e] = 2 + 2 * j
        return ids



def window_type_ids(chars: np.ndarray | None, offsets: Sequence[tuple[int, int]]) -> list[int]:
    """A window's token-type ids from its text's per-character feature ids: each token takes its
    first character's (0 for special tokens, and everywhere when ``chars`` is ``None``)."""
    return [int(chars[s]) if chars is not None and e > s else 0 for s, e in offsets]


def enable_features(model, labels: Sequence[str]) -> None:
    """Give the encoder one token-type embedding per feature id, each starting as the pretrained
    type-0 row (so the model starts out exactly as without features), and record the labels in
    its config so that prediction rebuilds the same features."""
    n = n_feature_types(labels)
    emb = model.base_model.embeddings.token_type_embeddings
    if emb.num_embeddings != n:
        new = torch.nn.Embedding(n, emb.embedding_dim)
        with torch.no_grad():
            new.weight[:] = emb.weight[0]
        model.base_model.embeddings.token_type_embeddings = new
        model.config.type_vocab_size = n
    setattr(model.config, CONFIG_KEY, list(labels))


def feature_labels(config) -> tuple[str, ...] | None:
    """The labels of a model's lexicon features, or ``None`` for a model trained without them."""
    labels = getattr(config, CONFIG_KEY, None)
    return tuple(labels) if labels else None
