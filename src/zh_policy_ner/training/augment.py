"""Mention swap: extra training documents where PER and LOC mentions are replaced by other names
of the same type (from the training gold and, when enabled, the silver data)."""
from __future__ import annotations

import random
from collections.abc import Sequence

from ..data.dataset import PreparedDoc
from ..reading.text import already_normalized


def mention_pools(docs: Sequence[PreparedDoc], labels: Sequence[str] = ("PER", "LOC"), min_len: int = 2) -> dict[str, list[str]]:
    """Distinct mention strings per label (one-character abbreviations are left out)."""
    pools: dict[str, set[str]] = {lab: set() for lab in labels}
    for d in docs:
        for s, e, lab in d.spans:
            if lab in pools and e - s >= min_len:
                pools[lab].add(d.norm.text[s:e])
    return {lab: sorted(v) for lab, v in pools.items() if v}


def swap_mentions(doc: PreparedDoc, pools: dict[str, list[str]], rng: random.Random, suffix: str) -> PreparedDoc:
    """A copy of ``doc`` with every swappable mention replaced by a random one of its label."""
    text, pieces, spans, pos, length = doc.norm.text, [], [], 0, 0
    for s, e, lab in sorted(doc.spans):
        pieces.append(text[pos:s])
        length += s - pos
        new = rng.choice(pools[lab]) if lab in pools and e - s >= 2 else text[s:e]
        pieces.append(new)
        spans.append((length, length + len(new), lab))
        length += len(new)
        pos = e
    pieces.append(text[pos:])
    new_text = "".join(pieces)
    return PreparedDoc(f"{doc.doc_id}#{suffix}", already_normalized(new_text), spans)


def mention_swap_docs(docs: Sequence[PreparedDoc], pools: dict[str, list[str]], copies: int, seed: int) -> list[PreparedDoc]:
    rng = random.Random(seed)
    return [swap_mentions(d, pools, rng, f"swap{k}") for k in range(copies) for d in docs]
