"""Batch inference over newly scraped reports (the predict stage).

Reads a file, a folder (recursive; .txt, .html, .jsonl) or a JSONL file; writes one JSON line per
document ``{"doc_id", "source", "spans": [{"start", "end", "label", "text", "score"}]}`` with offsets
into the raw decoded text; unreadable inputs go to ``<output>.errors.jsonl`` and the run goes on.
Resumable: documents already in the output are skipped; each line is written and flushed whole, so
an interrupted run leaves no half-written line. Afterwards the reports of :mod:`.reports`: entity CSV,
aggregate table, sentence co-occurrence table, HTML report.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .corpus import DocError, RawDoc, iter_documents, read_appended_jsonl
from .inference import Predictor
from .reports import read_predictions, write_reports  # noqa: F401  (read_predictions: re-exported)

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


def check_predict_paths(cfg: Any) -> None:
    """Fail before loading anything, in one line (:class:`~zh_policy_ner.cli.UsageError`), when
    ``infer.input`` is unset or missing, ``infer.model_dir`` is not a model folder (or a reachable
    hub name), the folder lacks the gazetteer that ``infer.gazetteer`` asks for, or ``infer.output``
    is a folder."""
    from .cli import UsageError
    from .inference import GAZETTEER_FILE
    from .modeling import ModelNotAvailable, resolve_model_path

    infer = cfg.infer
    if infer.get("input") in (None, ""):
        raise UsageError("infer.input is not set: point it at a report file, a folder of reports or a JSONL file "
                         "(infer.input=PATH)")
    if not Path(infer.input).exists():
        raise UsageError(f"infer.input={infer.input} does not exist: point it at a report file, a folder of reports "
                         f"or a JSONL file")
    model = infer.get("model_dir")
    train_hint = "train one first (python scripts/train.py) or set infer.model_dir=DIR"
    if model in (None, ""):
        raise UsageError(f"infer.model_dir is not set: {train_hint}")
    folder = Path(str(model)).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").exists():
            raise UsageError(f"infer.model_dir={model} has no config.json: not a trained model folder; {train_hint}")
        if infer.gazetteer and not (folder / GAZETTEER_FILE).exists():
            raise UsageError(f"infer.model_dir={model} has no {GAZETTEER_FILE}: train the model with this version "
                             f"or set infer.gazetteer=false")
    else:
        # a path (absolute, relative to an existing folder, more than owner/name) is a missing folder;
        # anything else may be a hub name, accepted only if cached or reachable
        hub_like = not folder.is_absolute() and len(folder.parts) <= 2 and not str(model).startswith((".", "~")) \
            and (len(folder.parts) == 1 or not folder.parent.exists())
        try:
            if not hub_like:
                raise ModelNotAvailable(str(model))
            resolve_model_path(str(model))
        except ModelNotAvailable:
            raise UsageError(f"infer.model_dir={model}: no such model folder; {train_hint}") from None
    output = Path(infer.output)
    if output.is_dir():
        raise UsageError(f"infer.output={infer.output} is a folder: give a file name (infer.output=FILE.jsonl)")


def run_predict(cfg: Any) -> PredictSummary:
    """The predict stage as configured by the ``infer`` group (inputs and model checked first)."""
    import os

    import torch

    check_predict_paths(cfg)
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
                                          gazetteer_mode=cfg.infer.gazetteer_mode, device=device,
                                          backend=cfg.infer.get("backend", "torch"), num_threads=cfg.infer.num_threads)
    fresh = not output.exists()
    try:
        summary = predict_files(predictor, cfg.infer.input, output, shard=(rank, world), progress=rank == 0)
    except BaseException:  # Ctrl-C or a failure before the first document: no empty output is left behind
        if fresh and output.exists() and output.stat().st_size == 0:
            output.unlink()
        raise
    if cfg.infer.reports and world == 1:
        summary.extras = write_reports(summary.output, cfg.infer.input, cfg.infer.html_max_docs)
    return summary
