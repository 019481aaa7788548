"""Word boundaries of a Chinese text (jieba's segmentation), for decoding spans that are whole words
(the guideline's ``spans.whole_words``: a measure or a name starts and ends where a word does)."""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np


@lru_cache(maxsize=1)
def _segmenter():
    import jieba

    jieba.setLogLevel(logging.WARNING)
    tokenizer = jieba.Tokenizer()  # its own dictionary: what other jieba users add never changes it
    tokenizer.initialize()
    return tokenizer


def word_boundaries(text: str) -> np.ndarray:
    """``len(text) + 1`` booleans: ``True`` at every offset where a word starts or ends (jieba with
    its HMM for unknown words; 0 and ``len(text)`` always)."""
    bounds = np.zeros(len(text) + 1, dtype=bool)
    bounds[0] = bounds[-1] = True
    pos = 0
    for word in _segmenter().cut(text, HMM=True):
        pos += len(word)
        bounds[pos] = True
    return bounds


def whole_word_share(docs: Iterable[tuple[str, Sequence[tuple[int, int, str]]]]) -> dict[str, dict[str, float]]:
    """Per label, how many of the spans of ``(text, spans)`` pairs are whole words (start and end at
    :func:`word_boundaries`): what the guideline's ``spans.whole_words`` rule assumes of the labels."""
    counts: dict[str, list[int]] = {}
    for text, spans in docs:
        bounds = word_boundaries(text)
        for s, e, label in spans:
            c = counts.setdefault(label, [0, 0])
            c[0] += bool(bounds[s] and bounds[e])
            c[1] += 1
    return {lab: {"whole": w, "spans": n, "share": round(w / n, 4)} for lab, (w, n) in sorted(counts.items())}
