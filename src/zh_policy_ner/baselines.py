"""Baseline recognisers scored in the same table as the model.

- ``dictionary``: the training mentions (two characters or more), longest match first.
- ``jieba``: jieba's POS tagger, ``nr*`` -> PER, ``ns`` -> LOC.
- ``thulac``: THULAC's POS tagger (model shipped in the PyPI package; research-use licence,
  see http://thulac.thunlp.org), ``np`` -> PER, ``ns`` -> LOC.

All work on normalised (simplified) text and return spans in its coordinates. The dictionary of a
training run is also saved with the model (``gazetteer.json``); :func:`overlay` lays its matches
over the model's spans (``infer.gazetteer``, the ``model+gazetteer`` row of the evaluation).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from .dataset import NormSpan

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


class DictionaryTagger:
    """Tags every occurrence of a known mention, longest first, without overlaps."""

    name = "dictionary"

    def __init__(self, mentions: dict[str, str], min_length: int = 2):
        self.mentions = {m: lab for m, lab in mentions.items() if len(m) >= min_length}
        self.max_len = max(map(len, self.mentions), default=0)

    @classmethod
    def from_docs(cls, docs) -> "DictionaryTagger":
        """From prepared documents' gold spans (the most frequent label wins for a string)."""
        from collections import Counter

        votes: dict[str, Counter] = {}
        for d in docs:
            for s, e, lab in d.spans:
                votes.setdefault(d.norm.text[s:e], Counter())[lab] += 1
        return cls({m: c.most_common(1)[0][0] for m, c in votes.items()})

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.mentions, ensure_ascii=False, indent=0, sort_keys=True), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "DictionaryTagger":
        return cls(json.loads(path.read_text(encoding="utf-8")))

    def tag(self, text: str) -> list[NormSpan]:
        spans, i = [], 0
        while i < len(text):
            for n in range(min(self.max_len, len(text) - i), 0, -1):
                lab = self.mentions.get(text[i : i + n])
                if lab:
                    spans.append((i, i + n, lab))
                    i += n
                    break
            else:
                i += 1
        return spans


def overlay(base: Sequence[NormSpan], over: Sequence[NormSpan]) -> list[NormSpan]:
    """``over``'s spans, plus those of ``base`` that overlap none of them (sorted)."""
    kept = [b for b in base if all(b[1] <= s or b[0] >= e for s, e, _ in over)]
    return sorted([*kept, *over])


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
