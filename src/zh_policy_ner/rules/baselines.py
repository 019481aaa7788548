"""Baseline recognisers scored in the same table as the model.

- ``dictionary``: the training mentions (two characters or more), longest match first
  (:class:`~zh_policy_ner.rules.lexicon.DictionaryTagger`).
- ``jieba``: jieba's POS tagger, ``nr*`` -> PER, ``ns`` -> LOC.
- ``thulac``: THULAC's POS tagger (model shipped in the PyPI package; research-use licence,
  see http://thulac.thunlp.org), ``np`` -> PER, ``ns`` -> LOC.

All work on normalised (simplified) text and return spans in its coordinates.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from functools import lru_cache

from ..common.cli import silenced_stdout
from ..data.dataset import NormSpan
from .lexicon import DictionaryTagger

log = logging.getLogger(__name__)


def align_tokens(text: str, words: Iterable[str]) -> list[tuple[int, int]]:
    """Character offsets of segmenter output in ``text``, tolerant of dropped or collapsed
    whitespace (each word is searched from the end of the previous one)."""
    offsets, pos = [], 0
    for w in words:
        w = w.strip()
        if not w:
            continue
        i = text.find(w, pos)
        if i < 0:
            continue
        offsets.append((i, i + len(w)))
        pos = i + len(w)
    return offsets


class JiebaTagger:
    name = "jieba"

    def __init__(self):
        import jieba

        jieba.setLogLevel(logging.WARNING)

    def tag(self, text: str) -> list[NormSpan]:
        import jieba.posseg as pseg

        pairs = [(p.word, p.flag) for p in pseg.cut(text)]
        offsets = align_tokens(text, (w for w, _ in pairs))
        flags = [f for w, f in pairs if w.strip()]
        return [(s, e, "PER" if f.startswith("nr") else "LOC")
                for (s, e), f in zip(offsets, flags) if f.startswith("nr") or f == "ns"]


@lru_cache(maxsize=1)
def _thulac():
    import thulac

    with silenced_stdout():  # "Model loaded succeed", printed by THULAC (quiet=false lets it through)
        return thulac.thulac()


class ThulacTagger:
    name = "thulac"

    def tag(self, text: str) -> list[NormSpan]:
        pairs = [(w, f) for w, f in _thulac().cut(text) if w.strip()]
        offsets = align_tokens(text, (w for w, _ in pairs))
        return [(s, e, "PER" if f == "np" else "LOC") for (s, e), (_, f) in zip(offsets, pairs) if f in ("np", "ns")]


def make_baseline(name: str, train_docs: Sequence = ()):
    if name == "dictionary":
        return DictionaryTagger.from_docs(train_docs)
    if name == "jieba":
        return JiebaTagger()
    if name == "thulac":
        return ThulacTagger()
    raise ValueError(f"unknown baseline {name!r} (dictionary, jieba, thulac)")
