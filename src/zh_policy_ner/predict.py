"""Batch inference over newly scraped reports (the predict stage).

Reads a file, a folder (recursive; .txt, .html, .jsonl) or a JSONL file; writes one JSON line per
document ``{"doc_id", "source", "spans": [{"start", "end", "label", "text", "score"}]}`` with offsets
into the raw decoded text (and ``"warnings"`` where decoding replaced bytes); unreadable inputs go to
``<output>.errors.jsonl`` and the run goes on. Afterwards the reports of :mod:`.reports`.

Memory stays flat whatever the size of a report: a document is cut into pieces of about
``infer.segment_chars`` characters (at line ends where it can), each predicted with
``infer.context_chars`` of the text around it, and its record is written piece by piece as the
spans come; text files over ``infer.stream_bytes`` are also read and decoded piece by piece.
Documents shorter than a piece are predicted whole, exactly as before pieces existed.

Safe to rerun and to interrupt: documents already in the output are skipped; a torn last line is cut
off; an advisory lock (``<output>.lock``) keeps a second run off the same output; the manifest
(``<output>.manifest.json``: model hash, backend, settings) refuses to resume with another model;
the output can never be, or lie inside, an input.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .annotations import Span
from .cli import UsageError
from .corpus import DocError, RawDoc, StreamDoc, UniqueIds, appended_ids, iter_documents
from .inference import Predictor
from .layers import GAZETTEER_FILE, LayerError, parse_layers, resolve_layers
from .reports import output_paths, read_predictions, write_reports  # noqa: F401  (read_predictions: re-exported)
from .text import DecodeError

try:
    import fcntl
except ImportError:  # pragma: no cover  (Windows: no advisory lock)
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

Doc = RawDoc | StreamDoc


def done_ids(output: Path) -> set[str]:
    """doc_ids already written to ``output``; a torn last line (no newline) is cut off first."""
    return appended_ids(Path(output))


# --------------------------------------------------------------------------- pieces of documents
@dataclass(frozen=True)
class Pieces:
    """How documents are cut for prediction (``infer.segment_chars``, ``infer.context_chars``,
    ``infer.max_doc_chars``)."""

    size: int = 100_000
    context: int = 512
    max_doc_chars: int = 1_000_000_000

    def __post_init__(self) -> None:
        if self.size < 1 or self.context < 0 or self.context >= self.size:
            raise UsageError(f"infer.segment_chars={self.size} must be positive and larger than "
                             f"infer.context_chars={self.context} (>= 0)")


@dataclass
class Piece:
    """A piece of document ``doc``: ``text`` starts at raw offset ``base`` of the document; the piece
    owns ``text[lo:hi]`` (spans starting there are its own), the rest is context. ``error`` ends the
    document instead (a decoding failure or the size limit, found while reading it)."""

    doc: Doc
    base: int = 0
    text: str = ""
    lo: int = 0
    hi: int = 0
    first: bool = False
    last: bool = False
    error: str | None = None


def _cut(buf: str, lo: int, hi: int) -> int:
    """Where to end a piece in ``buf[lo:hi]``: after its last line end in the second half, else after
    its last 。, else at ``hi``."""
    for mark in ("\n", "。"):
        k = buf.rfind(mark, (lo + hi) // 2, hi)
        if k >= 0:
            return k + 1
    return hi


def cut_pieces(doc: Doc, how: Pieces) -> Iterator[Piece]:
    """The pieces of ``doc`` in order, read from :meth:`chunks` as they come (``buf`` holds the
    text from raw offset ``base`` on: at most a piece, its context and one chunk)."""
    buf, base, own, seen, first = "", 0, 0, 0, True
    try:
        for chunk in doc.chunks():
            seen += len(chunk)
            if seen > how.max_doc_chars:
                raise DecodeError(f"{doc.source}: longer than infer.max_doc_chars={how.max_doc_chars} characters; "
                                  f"skipped (raise the limit to read it)")
            keep = max(0, own - how.context - base)  # drop what no later piece needs
            buf, base = buf[keep:] + chunk, base + keep
            while len(buf) - (own - base) >= how.size + how.context:
                lo = own - base
                end = _cut(buf, lo, lo + how.size)
                start = max(0, lo - how.context)
                yield Piece(doc, base + start, buf[start:end + how.context], lo - start, end - start, first)
                own, first = base + end, False
    except (DecodeError, OSError) as err:
        yield Piece(doc, error=str(err))
        return
    lo = own - base
    start = max(0, lo - how.context)
    yield Piece(doc, base + start, buf[start:], lo - start, len(buf) - start, first, last=True)


def batched(pieces: Iterable[Piece], size: int, max_chars: int = 200_000) -> Iterator[list[Piece]]:
    """Batches of at most ``size`` pieces and (unless one piece alone is longer) about ``max_chars``
    characters."""
    batch: list[Piece] = []
    chars = 0
    for piece in pieces:
        batch.append(piece)
        chars += len(piece.text)
        if len(batch) >= size or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def predict_pieces(predictor: Predictor, pieces: Iterable[Piece], docs_per_batch: int = 64,
                   batch_chars: int = 200_000) -> Iterator[tuple[Piece, list[Span]]]:
    """Each piece with its own spans in document offsets: a span belongs to the piece it starts in,
    and one overlapping a span of the piece before is dropped. The one prediction loop of both
    engines (:func:`predict_files`, :mod:`.ray_engine`)."""
    last_end: dict[int, int] = {}
    for batch in batched(pieces, docs_per_batch, batch_chars):
        good = [p for p in batch if p.error is None]
        preds = iter(predictor.predict(p.text for p in good))
        for piece in batch:
            if piece.error is not None:
                yield piece, []
                continue
            pred, key = next(preds), id(piece.doc)
            floor = 0 if piece.first else last_end.get(key, 0)
            spans = []
            for s in pred.spans:
                if piece.lo <= s.start < piece.hi and piece.base + s.start >= floor:
                    spans.append(Span(piece.base + s.start, piece.base + s.end, s.label, s.text, s.score))
                    floor = piece.base + s.end
            last_end[key] = floor
            if piece.last:
                last_end.pop(key, None)
            yield piece, spans


# --------------------------------------------------------------------------- the output
def record_head(doc_id: str, source: str) -> str:
    """The start of a record line, up to its first span: records are written piece by piece and
    read back by ``json.loads`` (the whole line is exactly ``json.dumps(record, ensure_ascii=False)``)."""
    return f'{{"doc_id": {json.dumps(doc_id, ensure_ascii=False)}, "source": {json.dumps(source, ensure_ascii=False)}, "spans": ['


def record_tail(warnings: Iterable[str] = ()) -> str:
    warnings = list(warnings)
    return "]" + (f', "warnings": {json.dumps(warnings, ensure_ascii=False)}' if warnings else "") + "}\n"


def span_json(spans: Iterable[Span]) -> str:
    return ", ".join(json.dumps(s.to_dict(), ensure_ascii=False) for s in spans)


def check_output(output: Path, input_path: str | Path) -> None:
    """Refuse (:class:`~zh_policy_ner.cli.UsageError`) an output that is a folder, is an input, or
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


def _holder(lock: Path) -> str:
    try:
        pid = lock.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid else "another process"


class RunOutput:
    """The predictions file of one run and the files beside it (:func:`~zh_policy_ner.reports.output_paths`).

    Entered, it takes the advisory lock (a second run exits with a message naming the holder's pid),
    checks the manifest against ``manifest`` (resuming with another model or settings is refused),
    reads the ids already done and the errors already logged; :meth:`start`/:meth:`spans`/
    :meth:`end` write a record piece by piece, :meth:`abort` takes an unfinished one back,
    :meth:`error` logs an unreadable input once per source and message."""

    def __init__(self, output: str | Path, manifest: dict[str, Any]):
        self.output = Path(output)
        self.paths = output_paths(self.output)
        self.manifest = manifest
        self.done: set[str] = set()
        self._errors: set[tuple[str, str]] = set()
        self._lock: BinaryIO | None = None
        self._out: BinaryIO | None = None
        self._start = 0
        self._n_spans = 0
        self._open = False

    def __enter__(self) -> "RunOutput":
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            self.done = done_ids(self.output)
            self._check_manifest()
            errors = self.paths["errors"]
            if errors.exists():
                self._errors = {(e.get("source"), e.get("error")) for e in read_predictions(errors)}
            self._out = self.output.open("ab")
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._out is not None:
            self._out.close()
        self._release()

    def _take_lock(self) -> None:
        lock = self.paths["lock"]
        self._lock = lock.open("a+b")
        if fcntl is None:
            return
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            self._lock = None
            raise UsageError(f"{self.output} is being written by {_holder(lock)} (lock {lock}); wait for that run "
                             f"to end or choose another infer.output") from None
        self._lock.truncate(0)
        self._lock.write(str(os.getpid()).encode())
        self._lock.flush()

    def _release(self) -> None:
        if self._lock is not None:
            self.paths["lock"].unlink(missing_ok=True)  # still held: no other run can have taken it
            self._lock.close()
            self._lock = None

    def _check_manifest(self) -> None:
        path = self.paths["manifest"]
        if self.done and path.exists():
            old = json.loads(path.read_text(encoding="utf-8"))
            diff = [k for k in ("model_sha256", "backend", "settings") if old.get(k) != self.manifest.get(k)]
            if diff:
                what = ", ".join(f"{k} {old.get(k)} -> {self.manifest.get(k)}" for k in diff)
                raise UsageError(f"{self.output} holds {len(self.done)} documents predicted with another model or "
                                 f"settings ({what}; see {path}); resuming would mix them: choose another "
                                 f"infer.output or delete it")
        elif self.done:
            log.warning("%s has no manifest (an older version wrote it): assuming the same model", self.output)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)

    def _write(self, text: str) -> None:
        assert self._out is not None, "RunOutput is used inside a with block"
        self._out.write(text.encode("utf-8"))

    def start(self, doc_id: str, source: str) -> None:
        self._start, self._n_spans, self._open = self._out.tell(), 0, True  # type: ignore[union-attr]
        self._write(record_head(doc_id, source))

    def spans(self, spans: list[Span]) -> None:
        if spans:
            self._write((", " if self._n_spans else "") + span_json(spans))
            self._n_spans += len(spans)

    def end(self, doc_id: str, warnings: Iterable[str] = ()) -> None:
        self._write(record_tail(warnings))
        self._out.flush()  # type: ignore[union-attr]
        self._open = False
        self.done.add(doc_id)

    def record(self, doc_id: str, source: str, spans: list[Span], warnings: Iterable[str] = ()) -> None:
        """Write a whole record at once (:meth:`start`, :meth:`spans`, :meth:`end`)."""
        self.start(doc_id, source)
        self.spans(spans)
        self.end(doc_id, warnings)

    def abort(self) -> None:
        """Take back the record being written, if any (its document failed while it was read)."""
        if self._open:
            self._out.flush()  # type: ignore[union-attr]
            self._out.truncate(self._start)  # type: ignore[union-attr]
            self._open = False

    def error(self, source: str, message: str) -> None:
        log.warning("skipped %s", message if message.startswith(source) else f"{source}: {message}")
        if (source, message) in self._errors:
            return
        self._errors.add((source, message))
        with self.paths["errors"].open("a", encoding="utf-8") as f:
            f.write(json.dumps({"source": source, "error": message}, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- the local engine
@dataclass
class PredictSummary:
    output: Path
    documents: int
    skipped_done: int
    errors: int
    characters: int
    seconds: float
    extras: dict[str, Path] = field(default_factory=dict)


def pending(items: Iterable[Doc | DocError], run: RunOutput, shard: tuple[int, int] = (0, 1)
            ) -> Iterator[Doc | DocError]:
    """The inputs this run still has to do: its shard, ids made unique (:class:`~zh_policy_ner.corpus.UniqueIds`),
    done ones left out (counted in ``run.skipped``)."""
    unique = UniqueIds()
    run.skipped = 0  # type: ignore[attr-defined]
    for k, item in enumerate(items):
        if k % shard[1] != shard[0]:
            continue
        if isinstance(item, DocError):
            yield item
            continue
        item = unique(item)
        if item.doc_id in run.done:
            run.skipped += 1  # type: ignore[attr-defined]
            continue
        yield item


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
            elif isinstance(item, RawDoc) and len(item.text) > how.max_doc_chars:
                n_err += 1
                run.error(item.source, f"longer than infer.max_doc_chars={how.max_doc_chars} characters; skipped")
            else:
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
    return PredictSummary(run.output, n_docs, run.skipped, n_err, n_chars, time.time() - t0)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- the stage
def check_predict_paths(cfg: Any) -> None:
    """Fail before loading anything, in one line (:class:`~zh_policy_ner.cli.UsageError`), when
    ``infer.input`` is unset or missing, ``infer.model_dir`` is not a model folder (or a reachable
    hub name), ``infer.layers`` names an unknown layer or the gazetteer that the folder lacks, or ``infer.output``
    is a folder, an input or inside the input folder."""
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
        try:
            layers = parse_layers(resolve_layers(infer.get("layers"), folder))
        except LayerError as err:
            raise UsageError(f"infer.layers: {err}") from None
        if any(layer.name == "gazetteer" for layer in layers) and not (folder / GAZETTEER_FILE).exists():
            raise UsageError(f"infer.model_dir={model} has no {GAZETTEER_FILE}, which the gazetteer span layer needs: "
                             f"train the model with this version or leave the layer out "
                             f"(infer.layers=[{','.join(str(x) for x in layers if x.name != 'gazetteer')}])")
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
    if infer.get("on_decode_error", "replace") not in ("replace", "skip"):
        raise UsageError(f"infer.on_decode_error={infer.on_decode_error}: use replace or skip")
    check_output(Path(infer.output), infer.input)


def predictor_settings(cfg: Any) -> dict[str, Any]:
    """The keyword arguments of :meth:`~zh_policy_ner.inference.Predictor.from_pretrained` that
    ``infer.*`` configures (also what a Ray worker builds its predictor from)."""
    infer = cfg.infer
    layers = infer.get("layers")
    return dict(max_length=infer.max_length, stride=infer.stride, batch_size=infer.batch_size,
                precision=infer.precision, decode=infer.decode, layers=None if layers is None else list(layers),
                backend=infer.get("backend", "torch"), num_threads=infer.num_threads)


def pieces_settings(cfg: Any) -> Pieces:
    infer = cfg.infer
    return Pieces(infer.get("segment_chars", Pieces.size), infer.get("context_chars", Pieces.context),
                  infer.get("max_doc_chars", Pieces.max_doc_chars))


def run_manifest(cfg: Any, predictor: Predictor, how: Pieces) -> dict[str, Any]:
    """What a run's records depend on: the model's weights, the backend, the span settings."""
    from .modeling import resolve_model_path
    from .onnx_backend import weights_hash

    settings = {k: v for k, v in predictor_settings(cfg).items() if k not in ("batch_size", "num_threads", "backend")}
    settings.update(segment_chars=how.size, context_chars=how.context, layers=predictor.layers.names)
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
    predictor = Predictor.from_pretrained(cfg.infer.model_dir, device=device, **predictor_settings(cfg))
    fresh = not output.exists()
    try:
        with RunOutput(output, run_manifest(cfg, predictor, how)) as run:
            if cfg.infer.get("engine", "local") == "ray":
                from .ray_engine import predict_ray

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
