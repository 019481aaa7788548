"""The core both predict engines share: documents cut into pieces, pieces predicted in batches,
records written piece by piece into a locked, manifested output.

- :func:`cut_pieces` / :func:`predict_pieces`: a document of any size as pieces of about
  ``infer.segment_chars`` characters with ``infer.context_chars`` of context, predicted a batch at a
  time; a span belongs to the piece it starts in.
- :class:`RunOutput`: the predictions file and its side files (lock, manifest, error log).
- :func:`pending`: the inputs a run still has to do (unique ids, done ones left out).

:mod:`zh_policy_ner.prediction.predict` (the local engine and the stage) and :mod:`zh_policy_ner.prediction.ray_engine` build on it.
"""
from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..common.cli import UsageError
from ..decoding.inference import Predictor
from ..labelling.annotations import Span
from ..reading.corpus import DocError, RawDoc, StreamDoc, UniqueIds, appended_ids
from ..reading.text import DecodeError, read_jsonl
from .reports import output_paths

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
    engines (:func:`predict_files`, :mod:`zh_policy_ner.prediction.ray_engine`)."""
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


def _holder(lock: Path) -> str:
    try:
        pid = lock.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid else "another process"


class RunOutput:
    """The predictions file of one run and the files beside it (:func:`~zh_policy_ner.prediction.reports.output_paths`).

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
        self.skipped = 0  # inputs left out because they are done (set by :func:`pending`)
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
                self._errors = {(e.get("source"), e.get("error")) for e in read_jsonl(errors)}
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
    """The inputs this run still has to do: its shard, ids made unique (:class:`~zh_policy_ner.reading.corpus.UniqueIds`),
    done ones left out (counted in ``run.skipped``)."""
    unique = UniqueIds()
    run.skipped = 0
    for k, item in enumerate(items):
        if k % shard[1] != shard[0]:
            continue
        if isinstance(item, DocError):
            yield item
            continue
        item = unique(item)
        if item.doc_id in run.done:
            run.skipped += 1
            continue
        yield item
