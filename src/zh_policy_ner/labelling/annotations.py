"""Hand-labelled spans: records, loading, validation (every error named by file, line and span).

Format (``annotations/*.jsonl``, one line per source file)::

    {"doc_id": "...", "source": "seeds/....txt", "text_sha256": "<sha256 of the file's bytes>",
     "spans": [{"start": 12, "end": 15, "label": "PER", "text": "谭作钧"}]}

Offsets are code-point indices into the raw file decoded as UTF-8, end exclusive.
Command line: ``python -m zh_policy_ner.labelling.annotations validate annotations/``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..reading.text import DecodeError, decode_bytes, jsonl_lines

LABELS = ("PER", "LOC", "POLICY")
QUOTE_MARKS = set("“”‘’「」『』\"'《》〈〉")


@dataclass(frozen=True, order=True)
class Span:
    """A labelled span ``[start, end)`` of a text."""

    start: int
    end: int
    label: str
    text: str = ""
    score: float | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        """The record form (``score`` only when there is one). A literal, not ``dataclasses.asdict``,
        which cost most of the time a batch run spends writing a record."""
        d = {"start": self.start, "end": self.end, "label": self.label, "text": self.text}
        if self.score is not None:
            d["score"] = self.score
        return d


@dataclass
class AnnotatedDoc:
    """One annotated source file: its raw text and its spans (sorted, non-overlapping)."""

    doc_id: str
    source: str
    text_sha256: str
    text: str
    spans: list[Span]

    def to_record(self) -> dict:
        return {
            "doc_id": self.doc_id,
            "source": self.source,
            "text_sha256": self.text_sha256,
            "spans": [s.to_dict() for s in sorted(self.spans)],
        }


@dataclass(frozen=True)
class AnnotationError:
    """A problem in an annotation file, located by file, line and (where it applies) span."""

    file: str
    line: int
    message: str
    span_index: int | None = None
    span: tuple[int, int, str] | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        if self.span_index is not None:
            where += f": span {self.span_index}"
            if self.span is not None:
                where += f" [{self.span[0]}:{self.span[1]}] {self.span[2]!r}"
        return f"{where}: {self.message}"


class AnnotationValidationError(ValueError):
    """Raised by :func:`load_annotations` with ``strict=True``; holds every error found."""

    def __init__(self, errors: Sequence[AnnotationError]):
        self.errors = list(errors)
        super().__init__(f"{len(errors)} annotation error(s):\n" + "\n".join(map(str, errors)))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_edge_junk(ch: str) -> bool:
    """Whitespace or punctuation, which may not start or end a span."""
    return ch.isspace() or unicodedata.category(ch).startswith("P")


def span_problems(raw: str, start, end, label, text, labels: Iterable[str] = LABELS) -> list[str]:
    """Reasons a single span is invalid against ``raw`` (empty list if it is fine)."""
    if not (isinstance(start, int) and isinstance(end, int)) or isinstance(start, bool) or isinstance(end, bool):
        return [f"offsets must be integers, got start={start!r} end={end!r}"]
    problems = []
    if label not in labels:
        problems.append(f"unknown label {label!r} (expected one of {', '.join(labels)})")
    if not 0 <= start < end <= len(raw):
        problems.append(f"offsets out of range: need 0 <= start < end <= {len(raw)}")
        return problems
    actual = raw[start:end]
    if text != actual:
        problems.append(f"text {text!r} does not match raw[{start}:{end}] = {actual!r}")
    if is_edge_junk(actual[0]) or is_edge_junk(actual[-1]):
        problems.append("span starts or ends with whitespace or punctuation")
    if QUOTE_MARKS & set(actual):
        problems.append("span crosses a quotation or title mark")
    return problems


def _validate_record(record, file: str, line: int, root: Path, labels) -> tuple[AnnotatedDoc | None, list[AnnotationError]]:
    errs: list[AnnotationError] = []

    def err(msg, i=None, span=None):
        errs.append(AnnotationError(file, line, msg, i, span))

    if not isinstance(record, dict):
        err("record is not a JSON object")
        return None, errs
    missing = [k for k in ("doc_id", "source", "text_sha256", "spans") if k not in record]
    if missing:
        err(f"missing field(s): {', '.join(missing)}")
        return None, errs
    if not isinstance(record["source"], str) or not record["source"]:
        err(f"source must be a path (a string), got {record['source']!r}")
        return None, errs
    source = root / record["source"]
    if not source.resolve().is_relative_to(root.resolve()):
        err(f"source {record['source']!r} lies outside the root {root}; annotations may only point into it")
        return None, errs
    try:
        data = source.read_bytes()
    except OSError as e:
        err(f"source {record['source']!r} cannot be read: {e}")
        return None, errs
    digest = sha256_bytes(data)
    if digest != record["text_sha256"]:
        err(f"sha256 mismatch for {record['source']}: file has {digest}, annotation says {record['text_sha256']}")
    try:
        raw = decode_bytes(data, source=str(source))
    except DecodeError as e:
        err(str(e))
        return None, errs
    spans: list[Span] = []
    prev: tuple[int, int] | None = None
    for i, s in enumerate(record["spans"] if isinstance(record["spans"], list) else []):
        if not isinstance(s, dict) or not {"start", "end", "label", "text"} <= set(s):
            err("span needs start, end, label and text", i)
            continue
        key = (s["start"], s["end"], s["text"])
        for problem in span_problems(raw, s["start"], s["end"], s["label"], s["text"], labels):
            err(problem, i, key)
        if isinstance(s["start"], int) and isinstance(s["end"], int):
            if prev is not None and s["start"] < prev[1]:
                what = "overlaps the previous span" if s["start"] >= prev[0] else "is not sorted by start"
                err(f"{what} [{prev[0]}:{prev[1]}]", i, key)
            prev = (s["start"], s["end"])
            spans.append(Span(s["start"], s["end"], s["label"], s["text"]))
    if not isinstance(record["spans"], list):
        err("spans must be a list")
    doc = AnnotatedDoc(str(record["doc_id"]), record["source"], record["text_sha256"], raw, spans)
    return doc, errs


def annotation_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        return sorted(path.glob("*.jsonl"))
    if path.is_file():
        return [path]
    raise FileNotFoundError(f"annotations not found: {path}")


def load_annotations(
    path: str | Path, root: str | Path | None = None, labels: Iterable[str] = LABELS, strict: bool = True
) -> tuple[list[AnnotatedDoc], list[AnnotationError]]:
    """Load and validate every record of a ``.jsonl`` file or a folder of them.

    ``source`` paths resolve against ``root`` (default: the parent of the annotations folder).
    All errors are collected; with ``strict`` any error raises :class:`AnnotationValidationError`
    listing them all, otherwise valid records are returned next to the errors (a record with
    errors is left out).
    """
    files = annotation_files(path)
    base = Path(root) if root is not None else (Path(path) if Path(path).is_dir() else Path(path).parent).parent
    labels = tuple(labels)
    docs: list[AnnotatedDoc] = []
    errors: list[AnnotationError] = []
    seen: dict[str, str] = {}
    for file in files:
        for lineno, line in jsonl_lines(file.read_text(encoding="utf-8")):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                errors.append(AnnotationError(str(file), lineno, f"invalid JSON: {e}"))
                continue
            doc, errs = _validate_record(record, str(file), lineno, base, labels)
            if doc is not None and doc.doc_id in seen:
                errs.append(AnnotationError(str(file), lineno, f"duplicate doc_id {doc.doc_id!r} (first at {seen[doc.doc_id]})"))
            errors.extend(errs)
            if doc is not None:
                seen.setdefault(doc.doc_id, f"{file}:{lineno}")
                if not errs:
                    docs.append(doc)
    if strict and errors:
        raise AnnotationValidationError(errors)
    return docs, errors


def write_annotations(docs: Iterable[AnnotatedDoc], path: str | Path) -> Path:
    """Write records as JSON lines (spans sorted)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc.to_record(), ensure_ascii=False) + "\n")
    return path


def summary(docs: Sequence[AnnotatedDoc]) -> str:
    counts = Counter(s.label for d in docs for s in d.spans)
    per_label = ", ".join(f"{k} {counts[k]}" for k in sorted(counts))
    return f"{len(docs)} documents, {sum(counts.values())} spans ({per_label})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zh_policy_ner.labelling.annotations", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    val = sub.add_parser("validate", help="check annotation files; list every error")
    val.add_argument("path", help="a .jsonl file or a folder of them")
    val.add_argument("--root", help="folder that `source` paths are relative to (default: parent of the annotations folder)")
    val.add_argument("--labels", default=",".join(LABELS))
    args = parser.parse_args(argv)
    docs, errors = load_annotations(args.path, root=args.root, labels=args.labels.split(","), strict=False)
    for e in errors:
        print(e, file=sys.stderr)
    print(f"{'INVALID' if errors else 'OK'}: {summary(docs)} valid; {len(errors)} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
