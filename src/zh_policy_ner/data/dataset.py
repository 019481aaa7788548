"""From annotated documents to token-classification windows (the prepare stage).

Raw spans are projected onto the normalised text (:mod:`zh_policy_ner.reading.text`), turned into per-
character BIO tags, and aligned to tokens through the tokenizer's offsets, as in transformers'
token-classification example but per character (a token takes the tag of its first character).
Long documents are cut into overlapping windows by the tokenizer itself
(``return_overflowing_tokens`` with ``stride``); every window keeps its article id, so splits are
by article only.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.cli import UsageError
from ..common.modeling import load_tokenizer
from ..labelling.annotations import LABELS, AnnotatedDoc, Span, load_annotations
from ..reading.text import Normalized, normalize

IGNORE_INDEX = -100
NormSpan = tuple[int, int, str]


def bio_label_names(labels: Sequence[str] = LABELS) -> list[str]:
    """``["O", "B-PER", "I-PER", ...]``: the classifier's label set, in a fixed order."""
    return ["O"] + [f"{p}-{lab}" for lab in labels for p in ("B", "I")]


def spans_to_tags(length: int, spans: Sequence[NormSpan]) -> list[str]:
    """Per-character BIO tags for non-overlapping spans over a text of ``length`` characters."""
    tags = ["O"] * length
    for start, end, label in spans:
        if any(t != "O" for t in tags[start:end]):
            raise ValueError(f"overlapping span [{start}:{end}] {label}")
        tags[start] = f"B-{label}"
        for i in range(start + 1, end):
            tags[i] = f"I-{label}"
    return tags


def tags_to_spans(tags: Sequence[str]) -> list[NormSpan]:
    """Decode BIO tags to spans; an ``I-X`` that does not continue an ``X`` span starts one
    (the lenient reading, like seqeval's default)."""
    spans: list[NormSpan] = []
    start, label = None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, lab = tag.partition("-")
        continues = prefix == "I" and lab == label and start is not None
        if start is not None and not continues:
            spans.append((start, i, label))
            start, label = None, None
        if prefix == "B" or (prefix == "I" and not continues):
            start, label = i, lab
    return spans


@dataclass
class PreparedDoc:
    """A document in normalised coordinates, with the spans that could not be projected."""

    doc_id: str
    norm: Normalized
    spans: list[NormSpan]
    dropped: list[tuple[Span, str]] = field(default_factory=list)


def project_doc(doc: AnnotatedDoc) -> PreparedDoc:
    """Normalise a document's text and map its raw spans onto the normalised text."""
    norm = normalize(doc.text)
    spans, dropped = [], []
    for s in doc.spans:
        mapped = norm.to_norm_span(s.start, s.end)
        if mapped is None:
            dropped.append((s, "no character of the span survives normalisation"))
            continue
        spans.append((mapped[0], mapped[1], s.label))
    return PreparedDoc(doc.doc_id, norm, spans, dropped)


def encode_windows(tokenizer, texts: Sequence[str], max_length: int, stride: int):
    """Tokenise texts into windows of at most ``max_length`` tokens overlapping by ``stride``,
    with character offsets and ``overflow_to_sample_mapping`` (window -> text index)."""
    if stride >= max_length - 2:
        raise ValueError(f"stride ({stride}) must be smaller than max_length - 2 ({max_length - 2})")
    return tokenizer(
        list(texts),
        max_length=max_length,
        stride=stride,
        truncation=True,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )


def align_labels(tags: Sequence[str], offsets: Sequence[tuple[int, int]], label2id: dict[str, int]) -> list[int]:
    """Token labels from character tags: a token takes its first character's tag; special tokens
    (empty offsets) get ``-100``. A span starting inside a multi-character token is caught by
    :func:`boundary_losses`."""
    out = []
    for start, end in offsets:
        out.append(IGNORE_INDEX if end <= start else label2id[tags[start]])
    return out


def boundary_losses(doc: PreparedDoc, offsets: Sequence[tuple[int, int]]) -> list[tuple[NormSpan, str]]:
    """Spans whose start or end falls inside a token (possible with word-piece tokenizers)."""
    starts = {s for s, e in offsets if e > s}
    ends = {e for s, e in offsets if e > s}
    return [(sp, "span boundary falls inside a token") for sp in doc.spans if sp[0] not in starts or sp[1] not in ends]


def build_windows(docs: Sequence[PreparedDoc], tokenizer, label_names: Sequence[str], max_length: int, stride: int) -> dict[str, list]:
    """Columns of a token-classification dataset: ``input_ids``, ``attention_mask``, ``labels``,
    ``offset_mapping`` (normalised-text offsets), ``doc_id`` and ``window`` (index within its doc)."""
    label2id = {n: i for i, n in enumerate(label_names)}
    enc = encode_windows(tokenizer, [d.norm.text for d in docs], max_length, stride)
    tags = [spans_to_tags(len(d.norm.text), d.spans) for d in docs]
    cols: dict[str, list] = {k: [] for k in ("input_ids", "attention_mask", "labels", "offset_mapping", "doc_id", "window")}
    counter: Counter[int] = Counter()
    for w, doc_idx in enumerate(enc["overflow_to_sample_mapping"]):
        offsets = [tuple(o) for o in enc["offset_mapping"][w]]
        cols["input_ids"].append(enc["input_ids"][w])
        cols["attention_mask"].append(enc["attention_mask"][w])
        cols["labels"].append(align_labels(tags[doc_idx], offsets, label2id))
        cols["offset_mapping"].append([list(o) for o in offsets])
        cols["doc_id"].append(docs[doc_idx].doc_id)
        cols["window"].append(counter[doc_idx])
        counter[doc_idx] += 1
    return cols


def to_dataset(cols: dict[str, list]):
    """A :class:`datasets.Dataset` from :func:`build_windows` columns."""
    from datasets import Dataset

    return Dataset.from_dict(cols)


# --------------------------------------------------------------------------- splits
def split_docs(doc_ids: Sequence[str], heldout: Sequence[str] = (), dev: Sequence[str] = ()) -> dict[str, list[str]]:
    """Article-level split: ``heldout`` and ``dev`` ids are kept out of ``train``."""
    known = set(doc_ids)
    unknown = [d for d in [*heldout, *dev] if d not in known]
    if unknown:
        raise KeyError(f"unknown doc_id(s) in split config: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    if set(heldout) & set(dev):
        raise ValueError(f"doc_ids both held out and dev: {sorted(set(heldout) & set(dev))}")
    out = {"train": [d for d in doc_ids if d not in set(heldout) | set(dev)]}
    if dev:
        out["dev"] = list(dev)
    if heldout:
        out["heldout"] = list(heldout)
    return out


def leave_one_out(doc_ids: Sequence[str], folds: Sequence[str] | None = None) -> list[tuple[list[str], list[str]]]:
    """Leave-one-article-out folds: ``(train ids, [test id])`` for each id in ``folds`` (default all)."""
    return [([d for d in doc_ids if d != test], [test]) for test in (folds or doc_ids)]


def grouped_folds(doc_ids: Sequence[str], k: int, seed: int) -> list[tuple[list[str], list[str]]]:
    """``k`` folds by article (scikit-learn's ``KFold`` over shuffled articles, fixed by ``seed``):
    every article is tested exactly once and its windows never straddle train and test."""
    from sklearn.model_selection import KFold

    ids = sorted(doc_ids)
    if not 2 <= k <= len(ids):
        raise ValueError(f"eval.k={k}: need 2 <= k <= {len(ids)} (the number of articles); 0 means leave-one-article-out")
    return [([ids[i] for i in tr], [ids[i] for i in te])
            for tr, te in KFold(n_splits=k, shuffle=True, random_state=seed).split(ids)]


# --------------------------------------------------------------------------- the stage
@dataclass
class PreparedData:
    """Result of :func:`prepare`: datasets per split, the projected docs and a manifest."""

    datasets: dict[str, Any]
    docs: dict[str, PreparedDoc]
    manifest: dict[str, Any]


def prepare_docs(docs: Sequence[AnnotatedDoc], tokenizer, splits: dict[str, list[str]], label_names: Sequence[str],
                 max_length: int, stride: int) -> PreparedData:
    """Project, tag, window and split annotated documents; build the manifest."""
    prepared = {d.doc_id: project_doc(d) for d in docs}
    datasets, manifest_splits = {}, {}
    dropped: list[dict] = []
    for doc in prepared.values():
        dropped += [{"doc_id": doc.doc_id, "start": s.start, "end": s.end, "label": s.label, "text": s.text, "reason": why}
                    for s, why in doc.dropped]
        # the whole article at once (no windows), only to check span boundaries against tokens
        offsets = tokenizer(doc.norm.text, add_special_tokens=False, return_offsets_mapping=True,
                            verbose=False)["offset_mapping"]
        dropped += [{"doc_id": doc.doc_id, "norm_start": sp[0], "norm_end": sp[1], "label": sp[2],
                     "text": doc.norm.text[sp[0]:sp[1]], "reason": why} for sp, why in boundary_losses(doc, offsets)]
    for split, ids in splits.items():
        cols = build_windows([prepared[i] for i in ids], tokenizer, label_names, max_length, stride)
        datasets[split] = to_dataset(cols)
        counts = Counter(lab for i in ids for *_, lab in prepared[i].spans)
        manifest_splits[split] = {
            "doc_ids": list(ids),
            "windows": len(cols["input_ids"]),
            "tokens": sum(len(x) for x in cols["input_ids"]),
            "spans": dict(sorted(counts.items())),
            "characters": sum(len(prepared[i].norm.text) for i in ids),
        }
    manifest = {
        "label_names": list(label_names),
        "max_length": max_length,
        "stride": stride,
        "tokenizer": getattr(tokenizer, "name_or_path", ""),
        "splits": manifest_splits,
        "dropped_spans": dropped,
    }
    return PreparedData(datasets, prepared, manifest)


def summary_table(manifest: dict[str, Any]) -> str:
    """A short text table of windows and spans per split."""
    labels = sorted({lab for s in manifest["splits"].values() for lab in s["spans"]})
    head = f"{'split':<8} {'docs':>4} {'windows':>7} {'chars':>7} " + " ".join(f"{lab:>7}" for lab in labels)
    rows = [head, "-" * len(head)]
    for name, s in manifest["splits"].items():
        rows.append(f"{name:<8} {len(s['doc_ids']):>4} {s['windows']:>7} {s['characters']:>7} "
                    + " ".join(f"{s['spans'].get(lab, 0):>7}" for lab in labels))
    rows.append(f"dropped spans: {len(manifest['dropped_spans'])}")
    return "\n".join(rows)


def load_docs(cfg: Any) -> list[AnnotatedDoc]:
    """The validated annotated documents the ``data`` config names (raises listing every error)."""
    return load_annotations(cfg.data.annotations, root=cfg.data.source_root, labels=cfg.data.labels)[0]


def load_prepared(cfg: Any, tokenizer, docs: Sequence[AnnotatedDoc] | None = None) -> PreparedData:
    """Annotations (validated) -> prepared datasets, split as ``data.heldout`` / ``data.dev`` say."""
    docs = load_docs(cfg) if docs is None else docs
    splits = split_docs([d.doc_id for d in docs], cfg.data.heldout, cfg.data.dev)
    return prepare_docs(docs, tokenizer, splits, bio_label_names(cfg.data.labels), cfg.data.max_length, cfg.data.stride)


def prepare(cfg: Any, tokenizer=None) -> tuple[PreparedData, Path]:
    """The prepare stage: load + validate annotations, build and save datasets and manifest."""
    import datasets

    datasets.disable_progress_bars()
    tokenizer = tokenizer or load_tokenizer(cfg.model.name_or_path)
    docs = load_docs(cfg)
    data = load_prepared(cfg, tokenizer, docs)
    out = Path(cfg.data.output_dir)
    _save(data, out)
    if cfg.data.loao_folds:  # one train/heldout pair per article, as scripts/evaluate.py uses them
        for train_ids, (test_id,) in leave_one_out([d.doc_id for d in docs]):
            fold = prepare_docs(docs, tokenizer, {"train": train_ids, "heldout": [test_id]},
                                bio_label_names(cfg.data.labels), cfg.data.max_length, cfg.data.stride)
            _save(fold, out / "folds" / test_id)
    return data, out


PREPARED_ENTRIES = {"train", "dev", "heldout", "folds", "manifest.json"}  # all that _save and prepare write


def _save(data: PreparedData, out: Path) -> None:
    """Write the datasets and manifest into a temporary sibling folder, then put it in place of
    ``out`` by renaming: no split of an earlier run (a stale ``heldout``) survives, and an
    interrupted run leaves the previous folder as it was. Refuses to replace a folder holding
    anything that the prepare stage does not write (a mistyped ``data.output_dir``)."""
    import os
    import shutil

    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in PREPARED_ENTRIES)
        if foreign:
            raise UsageError(f"{out} holds files the prepare stage did not write ({', '.join(foreign[:5])}): "
                                  f"not replacing it; point data.output_dir at a new or prepared folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for split, ds in data.datasets.items():
            ds.save_to_disk(str(tmp / split))
        (tmp / "manifest.json").write_text(json.dumps(data.manifest, indent=2, ensure_ascii=False), encoding="utf-8")
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not out.exists():
            os.replace(old, out)  # put the previous folder back
        raise
    shutil.rmtree(old, ignore_errors=True)
