"""Batch inference over newly scraped reports (the predict stage).

Reads a file, a folder (recursive; .txt, .html, .jsonl) or a JSONL file; writes one JSON line per
document ``{"doc_id", "source", "spans": [{"start", "end", "label", "text", "score"}]}`` with offsets
into the raw decoded text (and ``"warnings"`` where decoding replaced bytes); unreadable inputs go to
``<output>.errors.jsonl`` and the run goes on. Afterwards the reports of :mod:`zh_policy_ner.prediction.reports`.

Memory stays flat whatever the size of a report: a document is cut into pieces of about
``infer.segment_chars`` characters (at line ends where it can), each predicted with
``infer.context_chars`` of the text around it, and its record is written piece by piece as the
spans come; text files over ``infer.stream_bytes`` are also read and decoded piece by piece.
Documents shorter than a piece are predicted whole, exactly as before pieces existed (:mod:`zh_policy_ner.prediction.batch`).

Safe to rerun and to interrupt: documents already in the output are skipped; a torn last line is cut
off; an advisory lock (``<output>.lock``) keeps a second run off the same output; the manifest
(``<output>.manifest.json``: model hash, backend, settings) refuses to resume with another model;
the output can never be, or lie inside, an input. ``infer.engine=ray`` hands the documents to
:mod:`zh_policy_ner.prediction.ray_engine` instead of the local loop here.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..common.cli import UsageError
from ..common.modeling import ModelNotAvailable, resolve_model_path
from ..decoding.inference import Predictor, predictor_settings
from ..model.onnx_backend import weights_hash
from ..reading.corpus import DocError, iter_documents
from ..reading.text import REPORT_ON_ERROR
from ..rules.guideline import check_guideline_labels, guideline_from_config, saved_guideline
from ..rules.layers import GAZETTEER_FILE, LayerError, check_layers, resolve_layers, resolve_min_score
from .batch import Piece, Pieces, PredictSummary, RunOutput, cut_pieces, pending, predict_pieces
from .ray_engine import predict_ray
from .reports import output_paths, write_reports

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the local engine
def check_output(output: Path, input_path: str | Path) -> None:
    """Refuse (:class:`~zh_policy_ner.common.cli.UsageError`) an output that is a folder, is an input, or
    lies inside the input folder, where it would eat or be read back as input."""
    output, source = Path(output).resolve(), Path(input_path).resolve()
    if output.is_dir():
        raise UsageError(f"infer.output={output} is a folder: give a file name (infer.output=FILE.jsonl)")
    sides = output_paths(output)
    for path in (output, *sides.values()):
        if path == source or (source.is_dir() and path.is_relative_to(source)):
            raise UsageError(f"infer.output={output} would write {path.name} "
                             f"{'over the input' if path == source else 'inside the input folder ' + str(source)}: "
                             f"write the predictions outside it (infer.output=OTHER/predictions.jsonl)")


def predict_files(predictor: Predictor, input_path: str | Path, run: RunOutput, how: Pieces = Pieces(),
                  docs_per_batch: int = 64, progress: bool = True, shard: tuple[int, int] = (0, 1),
                  on_decode_error: str = "replace", stream_bytes: int | None = 4 << 20,
                  batch_chars: int = 200_000) -> PredictSummary:
    """Stream documents from ``input_path`` through ``predictor`` into ``run`` (an entered
    :class:`RunOutput`). ``shard=(rank, world)`` keeps every ``world``-th input, starting at ``rank``."""
    from tqdm import tqdm

    n_docs = n_err = n_chars = 0
    t0 = time.time()
    bar = tqdm(desc="predict", unit="doc", disable=not progress)
    items = iter_documents(input_path, on_decode_error, stream_bytes, exclude=[*run.paths.values(), run.output])

    def pieces() -> Iterator[Piece]:
        nonlocal n_err
        for item in pending(items, run, shard):
            if isinstance(item, DocError):
                n_err += 1
                run.error(item.source, item.error)
            else:  # a document over infer.max_doc_chars comes back as an error piece
                yield from cut_pieces(item, how)

    for piece, spans in predict_pieces(predictor, pieces(), docs_per_batch, batch_chars):
        doc = piece.doc
        if piece.error is not None:
            run.abort()
            n_err += 1
            run.error(doc.source, piece.error)
            continue
        if piece.first:
            run.start(doc.doc_id, doc.source)
        run.spans(spans)
        n_chars += piece.hi - piece.lo
        if piece.last:
            for warning in doc.warnings:
                log.warning("%s: %s", doc.source, warning)
            run.end(doc.doc_id, doc.warnings)
            n_docs += 1
            bar.update(1)
    bar.close()
    return PredictSummary(run.output, n_docs, run.skipped, n_err, n_chars, time.time() - t0)


# --------------------------------------------------------------------------- the stage
def check_predict_paths(cfg: Any) -> None:
    """Fail before loading anything, in one line (:class:`~zh_policy_ner.common.cli.UsageError`), when
    ``infer.input`` is unset or missing, ``infer.model_dir`` is not a model folder (or a reachable
    hub name), ``infer.layers`` names an unknown layer or the gazetteer that the folder lacks, or ``infer.output``
    is a folder, an input or inside the input folder."""
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
        try:
            check_layers(resolve_layers(infer.get("layers"), folder), folder / GAZETTEER_FILE)
        except LayerError as err:
            raise UsageError(f"infer.layers: {err}") from None
        try:
            resolve_min_score(infer.get("min_score"), folder)
        except LayerError as err:
            raise UsageError(str(err)) from None
        try:  # the guideline the model runs (its own, saved with it) against data.labels
            check_guideline_labels(cfg, saved_guideline(folder, guideline_from_config(cfg)))
        except ValueError as err:
            raise UsageError(f"infer.model_dir={model}: {err}") from None
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
        check_guideline_labels(cfg)
    if infer.get("on_decode_error", "replace") not in REPORT_ON_ERROR:
        raise UsageError(f"infer.on_decode_error={infer.on_decode_error}: use {' or '.join(REPORT_ON_ERROR)}")
    check_output(Path(infer.output), infer.input)


def pieces_settings(cfg: Any) -> Pieces:
    infer = cfg.infer
    return Pieces(infer.get("segment_chars", Pieces.size), infer.get("context_chars", Pieces.context),
                  infer.get("max_doc_chars", Pieces.max_doc_chars))


def run_manifest(cfg: Any, predictor: Predictor, how: Pieces) -> dict[str, Any]:
    """What a run's records depend on: the model's weights, the backend, the span settings."""
    skip = ("batch_size", "num_threads", "backend", "guideline")
    settings = {k: v for k, v in predictor_settings(cfg).items() if k not in skip}
    rules = predictor.layers.guideline
    settings.update(segment_chars=how.size, context_chars=how.context, layers=predictor.layers.names,
                    min_score=predictor.layers.min_score,
                    guideline=f"{rules.name} sha256:{hashlib.sha256(rules.key.encode()).hexdigest()[:16]}")
    return {"model_dir": str(cfg.infer.model_dir), "model_sha256": weights_hash(resolve_model_path(cfg.infer.model_dir)),
            "backend": f"{predictor.precision} on {predictor.device.type}", "settings": settings}


def run_predict(cfg: Any) -> PredictSummary:
    """The predict stage as configured by the ``infer`` group (inputs and model checked first)."""
    import torch

    check_predict_paths(cfg)
    how = pieces_settings(cfg)
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
    predictor = Predictor.from_config(cfg.infer.model_dir, cfg, device=device)
    fresh = not output.exists()
    try:
        with RunOutput(output, run_manifest(cfg, predictor, how)) as run:
            if cfg.infer.get("engine", "local") == "ray":
                summary = predict_ray(cfg, predictor, run, how)
            else:
                summary = predict_files(predictor, cfg.infer.input, run, how, cfg.infer.get("docs_per_batch", 64),
                                        shard=(rank, world), progress=rank == 0,
                                        on_decode_error=cfg.infer.get("on_decode_error", "replace"),
                                        stream_bytes=cfg.infer.get("stream_bytes", 4 << 20),
                                        batch_chars=cfg.infer.get("batch_chars", 200_000))
    except BaseException:  # Ctrl-C or a failure before the first document: no empty output is left behind
        if fresh and output.exists() and output.stat().st_size == 0:
            output.unlink()
            output_paths(output)["manifest"].unlink(missing_ok=True)
        raise
    if cfg.infer.reports and world == 1:
        summary.extras = write_reports(summary.output, cfg.infer.input, cfg.infer.html_max_docs)
    return summary
