"""Batch inference over newly scraped reports (the predict stage).

Reads a file, a folder (recursive; .txt, .html, .jsonl) or a JSONL file; writes one JSON line per
document ``{"doc_id", "source", "spans": [{"start", "end", "label", "text", "score"}]}`` with offsets
into the raw decoded text; unreadable inputs go to ``<output>.errors.jsonl`` and the run goes on.
Resumable: documents already in the output are skipped; each line is written and flushed whole, so
an interrupted run leaves no half-written line. Afterwards: entity CSV, aggregate table, HTML report.
"""
from __future__ import annotations

import csv
import html
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .corpus import DocError, RawDoc, iter_documents, read_appended_jsonl
from .inference import Predictor

log = logging.getLogger(__name__)


def done_ids(output: Path) -> set[str]:
    """doc_ids already written to ``output``; a torn last line (no newline) is cut off first."""
    return {r["doc_id"] for r in read_appended_jsonl(output)}


def batched(items: Iterator[RawDoc], size: int, max_chars: int = 200_000) -> Iterator[list[RawDoc]]:
    """Batches of at most ``size`` documents and (unless one document alone is longer) about
    ``max_chars`` characters, so that memory stays flat however long the documents are."""
    batch: list[RawDoc] = []
    chars = 0
    for item in items:
        batch.append(item)
        chars += len(item.text)
        if len(batch) >= size or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


@dataclass
class PredictSummary:
    output: Path
    documents: int
    skipped_done: int
    errors: int
    characters: int
    seconds: float
    extras: dict[str, Path]


def predict_files(predictor: Predictor, input_path: str | Path, output: str | Path, docs_per_batch: int = 64,
                  progress: bool = True, shard: tuple[int, int] = (0, 1)) -> PredictSummary:
    """Stream documents from ``input_path`` through ``predictor`` into ``output`` (JSONL).
    ``shard=(rank, world)`` keeps every ``world``-th input, starting at ``rank``."""
    from tqdm import tqdm

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    errors_path = output.with_suffix(".errors.jsonl")
    done = done_ids(output)
    n_docs = n_err = n_chars = skipped = 0
    t0 = time.time()
    bar = tqdm(desc="predict", unit="doc", disable=not progress)

    seen: set[str] = set()

    def todo() -> Iterator[RawDoc]:
        nonlocal n_err, skipped
        for k, item in enumerate(iter_documents(input_path)):
            if k % shard[1] != shard[0]:
                continue
            if isinstance(item, DocError):
                n_err += 1
                log.warning("skipped %s: %s", item.source, item.error)
                with errors_path.open("a", encoding="utf-8") as ef:
                    ef.write(json.dumps({"source": item.source, "error": item.error}, ensure_ascii=False) + "\n")
                continue
            if item.doc_id in seen:  # a.txt and a.html in one folder: keep both, under distinct ids
                item = RawDoc(f"{item.doc_id}{Path(item.source).suffix}", item.source, item.text)
            seen.add(item.doc_id)
            if item.doc_id in done:
                skipped += 1
                continue
            yield item

    with output.open("a", encoding="utf-8") as out:
        for batch in batched(todo(), docs_per_batch):
            for doc, pred in zip(batch, predictor.predict(d.text for d in batch)):
                record = {"doc_id": doc.doc_id, "source": doc.source, "spans": [s.to_dict() for s in pred.spans]}
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                n_chars += len(doc.text)
            out.flush()
            n_docs += len(batch)
            bar.update(len(batch))
    bar.close()
    return PredictSummary(output, n_docs, skipped, n_err, n_chars, time.time() - t0, {})


# --------------------------------------------------------------------------- derived outputs
def read_predictions(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_entity_csv(records: list[dict], path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["doc_id", "source", "start", "end", "label", "text", "score"])
        for r in records:
            for s in r["spans"]:
                w.writerow([r["doc_id"], r["source"], s["start"], s["end"], s["label"], s["text"], s.get("score", "")])
    return path


def write_aggregate(records: list[dict], path: Path) -> Path:
    """One row per (normalised entity, label): mentions and documents, most frequent first."""
    from .text import normalize

    count: Counter = Counter()
    docs: dict[tuple[str, str], set] = defaultdict(set)
    for r in records:
        for s in r["spans"]:
            key = (normalize(s["text"]).text, s["label"])
            count[key] += 1
            docs[key].add(r["doc_id"])
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["entity", "label", "count", "documents"])
        for (entity, label), n in sorted(count.items(), key=lambda kv: (-kv[1], kv[0])):
            w.writerow([entity, label, n, len(docs[(entity, label)])])
    return path


COLORS = {"PER": "#aa9cfc", "LOC": "#ff9561", "POLICY": "#7aecec"}


def render_html(records: list[dict], texts: dict[str, str], path: Path, title: str = "zh-policy-ner predictions") -> Path:
    """A displaCy-style page: each document's raw text with its spans highlighted and labelled."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:auto;line-height:2}"
             "mark{padding:.1em .3em;border-radius:.3em}mark span{font-size:.6em;font-weight:bold;margin-left:.3em}"
             "article{white-space:pre-wrap;border-bottom:1px solid #ccc;padding:1em 0}</style>",
             f"<h1>{html.escape(title)}</h1><p>" + " ".join(
                 f"<mark style='background:{c}'>{lab}</mark>" for lab, c in COLORS.items()) + "</p>"]
    for r in records:
        text = texts.get(r["doc_id"])
        parts.append(f"<h2 id='{html.escape(r['doc_id'])}'>{html.escape(r['doc_id'])}</h2><article>")
        if text is None:
            parts.append("(source text not available)</article>")
            continue
        pos = 0
        for s in sorted(r["spans"], key=lambda s: s["start"]):
            parts.append(html.escape(text[pos : s["start"]]))
            color = COLORS.get(s["label"], "#ddd")
            parts.append(f"<mark style='background:{color}' title='{s.get('score', '')}'>"
                         f"{html.escape(text[s['start']:s['end']])}<span>{s['label']}</span></mark>")
            pos = s["end"]
        parts.append(html.escape(text[pos:]) + "</article>")
    path.write_text("".join(parts), encoding="utf-8")
    return path


def write_reports(output: Path, input_path: str | Path, html_max_docs: int = 500) -> dict[str, Path]:
    """Entity CSV and aggregate table over all documents; HTML report of the first ``html_max_docs``."""
    records = read_predictions(output)
    shown = {r["doc_id"] for r in records[:html_max_docs]}
    texts = {d.doc_id: d.text for d in iter_documents(input_path) if isinstance(d, RawDoc) and d.doc_id in shown}
    stem = output.with_suffix("")
    return {
        "entities_csv": write_entity_csv(records, stem.with_suffix(".entities.csv")),
        "aggregate_csv": write_aggregate(records, stem.with_suffix(".aggregate.csv")),
        "html": render_html(records[:html_max_docs], texts, stem.with_suffix(".html")),
    }


def run_predict(cfg: Any) -> PredictSummary:
    """The predict stage as configured by the ``infer`` group."""
    import os

    import torch

    if cfg.infer.num_threads:
        torch.set_num_threads(cfg.infer.num_threads)
    # Under torchrun (or any launcher setting RANK/WORLD_SIZE) each process takes its own shard of
    # the inputs and writes its own file: <output>.rank003-of-008.jsonl; concatenate them after.
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    output = Path(cfg.infer.output)
    device = None
    if world > 1:
        output = output.with_name(f"{output.stem}.rank{rank:03d}-of-{world:03d}{output.suffix}")
        if torch.cuda.is_available():
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    predictor = Predictor.from_pretrained(cfg.infer.model_dir, max_length=cfg.infer.max_length,
                                          stride=cfg.infer.stride, batch_size=cfg.infer.batch_size,
                                          precision=cfg.infer.precision, decode=cfg.infer.decode, gazetteer=cfg.infer.gazetteer,
                                          places=cfg.infer.places, abbreviations=cfg.infer.abbreviations,
                                          device=device)
    summary = predict_files(predictor, cfg.infer.input, output, shard=(rank, world), progress=rank == 0)
    if cfg.infer.reports and world == 1:
        summary.extras = write_reports(summary.output, cfg.infer.input, cfg.infer.html_max_docs)
    return summary
