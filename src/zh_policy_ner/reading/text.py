"""Decoding and normalisation of scraped report text with an exact map back to the raw text.

Every later stage works on the *normalised* text (simplified script, debris removed) while every
offset a user sees refers to the *raw* decoded text. :func:`normalize` returns both the normalised
string and, for each normalised character, the index of the raw character it came from. Characters
are only ever deleted or replaced one-for-one, so the map is strictly increasing and spans map both
ways with :meth:`Normalized.to_raw_span` and :meth:`Normalized.to_norm_span`.
"""
from __future__ import annotations

import bisect
import codecs
import itertools
import json
import re
import sys
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from charset_normalizer import from_bytes

__all__ = [
    "ON_ERROR",
    "REPORT_ON_ERROR",
    "DecodeError",
    "Decoded",
    "Normalized",
    "StreamDecoder",
    "decode_bytes",
    "decode_report",
    "detect_encoding",
    "looks_binary",
    "looks_mojibake",
    "read_text",
    "normalize",
    "is_cjk",
]


class DecodeError(ValueError):
    """Raised when bytes cannot be decoded as text (binary file or unknown encoding)."""


# --------------------------------------------------------------------------- decoding
# Byte-order marks, each with the codec that decodes the bytes after it. The UTF-32 LE BOM
# (FF FE 00 00) starts with the UTF-16 LE one (FF FE), so UTF-32 is checked first.
_BOMS: tuple[tuple[str, bytes], ...] = (
    ("utf-8", codecs.BOM_UTF8),
    ("utf-32-le", codecs.BOM_UTF32_LE),
    ("utf-32-be", codecs.BOM_UTF32_BE),
    ("utf-16-le", codecs.BOM_UTF16_LE),
    ("utf-16-be", codecs.BOM_UTF16_BE),
)
_CHINESE_ENCODINGS = ("gb18030", "gbk", "gb2312", "big5", "big5hkscs")  # charset-normalizer's choice
_CJK_FALLBACKS = ("gb18030", "big5hkscs")
ON_ERROR = ("strict", "replace", "skip")
REPORT_ON_ERROR = ("replace", "skip")  # infer.on_decode_error: what a scraped report may do

# Binary: a real share of NUL or other C0 control bytes (tab, newlines, VT, FF, ESC are text).
_BINARY_SAMPLE = 4096
_CONTROL_BYTES = frozenset(range(1, 32)) - frozenset(b"\t\n\r\x0b\x0c\x1b")
_MAX_NUL_SHARE = 0.01
_MAX_CONTROL_SHARE = 0.05

# "Mostly UTF-8": a few invalid bytes (a handful, or 1 per 1,000 bytes) among valid multi-byte
# characters (at least _UTF8_EVIDENCE per invalid byte), or in otherwise ASCII text (1 per 1,000).
_MAX_INVALID = 8
_INVALID_PER_BYTE = 1 / 1000
_UTF8_EVIDENCE = 4

_COUNT_HANDLER = "zh_policy_ner_count"
_replaced_bytes: ContextVar[list[int] | None] = ContextVar("_replaced_bytes", default=None)


class _TooManyInvalid(Exception):
    """Raised by :func:`_count_and_replace` past the limit of its :func:`_counting` block."""


def _count_and_replace(err: UnicodeError) -> tuple[str, int]:
    """Codec error handler: replace the invalid bytes with U+FFFD and add their number to the
    counter of the current :func:`_counting` block."""
    if not isinstance(err, UnicodeDecodeError):
        raise err
    counter = _replaced_bytes.get()
    if counter is not None:
        counter[0] += err.end - err.start
        if counter[0] > counter[1]:
            raise _TooManyInvalid
    return "\ufffd", err.end


codecs.register_error(_COUNT_HANDLER, _count_and_replace)


@contextmanager
def _counting(limit: int = sys.maxsize) -> Iterator[list[int]]:
    """Count the bytes that :func:`_count_and_replace` replaces inside the block (``counter[0]``);
    past ``limit`` the handler raises :class:`_TooManyInvalid`."""
    counter = [0, limit]
    token = _replaced_bytes.set(counter)
    try:
        yield counter
    finally:
        _replaced_bytes.reset(token)


def _check_on_error(on_error: str, allowed: tuple[str, ...] = ON_ERROR) -> None:
    if on_error not in allowed:
        raise ValueError(f"on_error must be one of {', '.join(map(repr, allowed))}, not {on_error!r}")


def _bom(data: bytes) -> tuple[str, int] | None:
    """(codec, BOM length) when ``data`` starts with a byte-order mark."""
    for encoding, bom in _BOMS:
        if data.startswith(bom):
            return encoding, len(bom)
    return None


def looks_binary(data: bytes) -> bool:
    """True when NUL or control bytes are a real share of the first 4 KiB (more than 1 % NUL or
    5 % other C0 controls besides tab, newlines, VT, FF and ESC, and more than one byte): a single
    NUL in a text does not make it binary. UTF-16/32 text with a BOM is never binary."""
    if _bom(data) is not None:
        return False
    sample = data[:_BINARY_SAMPLE]
    nul = sample.count(0)
    control = sum(b in _CONTROL_BYTES for b in sample)
    return (nul > 1 and nul > len(sample) * _MAX_NUL_SHARE) or (
        control > 1 and control > len(sample) * _MAX_CONTROL_SHARE)


class _Decoder:
    """An incremental decoder with this module's error semantics: ``replace`` counts the replaced
    bytes in :attr:`replaced`; ``strict``/``skip`` raise :class:`DecodeError` naming the source
    and the offset (in the whole input, BOM included) of the first invalid byte."""

    def __init__(self, encoding: str, source: str, on_error: str, start: int = 0, problem: str = "") -> None:
        errors = _COUNT_HANDLER if on_error == "replace" else "strict"
        self._decoder = codecs.getincrementaldecoder(encoding)(errors=errors)
        self.encoding = encoding
        self.source = source
        self.problem = problem  # prefix of the error message
        self.offset = start  # offset of the next byte to be fed
        self.replaced = 0

    def decode(self, data: bytes, final: bool = False) -> str:
        pending = len(self._decoder.getstate()[0])  # bytes of a sequence cut by the last chunk
        with _counting() as counter:
            try:
                text = self._decoder.decode(data, final)
            except UnicodeDecodeError as err:
                at = self.offset - pending + err.start
                raise DecodeError(f"{self.source}: {self.problem}invalid {self.encoding} byte "
                                  f"0x{err.object[err.start]:02x} at offset {at}") from None
        self.replaced += counter[0]
        self.offset += len(data)
        return text


def _scan(data: bytes, encoding: str, partial: bool, limit: int = sys.maxsize) -> tuple[int, str]:
    """(invalid bytes, text with them replaced) of ``data`` in ``encoding``, or ``(limit + 1, "")``
    as soon as there are more than ``limit``; with ``partial`` a sequence cut at the end is not
    invalid (and not decoded)."""
    decoder = codecs.getincrementaldecoder(encoding)(errors=_COUNT_HANDLER)
    with _counting(limit) as counter:
        try:
            text = decoder.decode(data, final=not partial)
        except _TooManyInvalid:
            return limit + 1, ""
    return counter[0], text


def _decodes(data: bytes, encoding: str, partial: bool) -> bool:
    """True when ``data`` decodes exactly in ``encoding`` (see :func:`_scan` for ``partial``)."""
    try:
        codecs.getincrementaldecoder(encoding)().decode(data, final=not partial)
    except (UnicodeDecodeError, LookupError):
        return False
    return True


def _invalid_allowed(size: int) -> int:
    """The most invalid bytes that "mostly UTF-8" data of ``size`` bytes may hold."""
    return max(_MAX_INVALID, int(size * _INVALID_PER_BYTE))


def _mostly_utf8(data: bytes, partial: bool) -> bool:
    """UTF-8 with a few invalid bytes: at most a handful (or 1 per 1,000 bytes) among valid
    multi-byte characters (at least 4 per invalid byte), or at most 1 per 1,000 bytes (at least 1)
    in otherwise ASCII text."""
    invalid, text = _scan(data, "utf-8", partial, limit=_invalid_allowed(len(data)))
    if invalid > _invalid_allowed(len(data)):
        return False
    multibyte = sum(ch > "\x7f" and ch != "\ufffd" for ch in text)
    if multibyte:
        return multibyte >= _UTF8_EVIDENCE * invalid
    return invalid <= max(1, int(len(data) * _INVALID_PER_BYTE))


def _chinese_candidates(data: bytes) -> Iterator[str]:
    """charset-normalizer's guess among the Chinese encodings, then GB18030 and Big5-HKSCS."""
    guess = from_bytes(data, cp_isolation=list(_CHINESE_ENCODINGS)).best()
    seen = set()
    for encoding in ([guess.encoding] if guess is not None else []) + list(_CJK_FALLBACKS):
        if encoding not in seen:
            seen.add(encoding)
            yield encoding


def detect_encoding(data: bytes, source: str = "<bytes>", *, partial: bool = False,
                    lenient: bool = True) -> tuple[str, int]:
    """(Python codec, BOM length) of report bytes: decode ``data[bom_length:]`` with the codec.

    A BOM decides (UTF-8, UTF-32 LE/BE, UTF-16 LE/BE); then valid UTF-8; then, when ``lenient``,
    UTF-8 with a few invalid bytes (see :func:`_mostly_utf8`); then charset-normalizer's guess
    among GB18030/GBK/GB2312/Big5/Big5-HKSCS, GB18030 and Big5-HKSCS, the first that decodes
    exactly; failing all, the candidate with the fewest invalid bytes. ``partial`` says ``data``
    is the head of a longer input, so a multi-byte sequence cut at its end is not invalid.
    Raises :class:`DecodeError` naming ``source`` for binary data (:func:`looks_binary`).
    """
    bom = _bom(data)
    if bom is not None:
        return bom
    if looks_binary(data):
        raise DecodeError(f"{source}: looks like a binary file (NUL or control bytes), not text")
    if _decodes(data, "utf-8", partial):
        return "utf-8", 0
    if lenient and _mostly_utf8(data, partial):
        return "utf-8", 0
    candidates = ["utf-8", *_chinese_candidates(data)]
    exact = next((enc for enc in candidates[1:] if _decodes(data, enc, partial)), None)
    if exact is not None:
        return exact, 0
    return min(candidates, key=lambda enc: _scan(data, enc, partial)[0]), 0


@dataclass(frozen=True)
class Decoded:
    """A decoded report: its text, the codec, how many invalid bytes became U+FFFD, and warnings
    for a log ("N invalid bytes replaced", "looks like mojibake ...")."""

    text: str
    encoding: str
    replaced: int = 0
    warnings: tuple[str, ...] = ()


def _warnings(replaced: int, mojibake: bool) -> tuple[str, ...]:
    out = []
    if replaced:
        out.append(f"{replaced} invalid bytes replaced")
    if mojibake:
        out.append("looks like mojibake (text decoded in the wrong encoding?)")
    return tuple(out)


def _decode_whole(data: bytes, source: str, on_error: str) -> tuple[str, str, int]:
    """(text, codec, replaced bytes) of the whole of ``data`` (see :func:`decode_report`)."""
    _check_on_error(on_error)
    encoding, start = detect_encoding(data, source, lenient=on_error != "strict")
    problem = ""
    if on_error == "strict":
        problem = (f"starts with a {encoding} BOM but does not decode: " if start
                   else "not valid UTF-8, GB18030/GBK or Big5 text: ")
    decoder = _Decoder(encoding, source, on_error, start, problem)
    return decoder.decode(data[start:], final=True), encoding, decoder.replaced


def decode_bytes(data: bytes, source: str = "<bytes>", on_error: str = "strict") -> str:
    """Decode report bytes: UTF-8/16/32 with a BOM, UTF-8, GB18030/GBK or Big5.

    ``strict`` (the default, for sources whose bytes must decode exactly): the first encoding of
    :func:`detect_encoding` (not lenient) that decodes the bytes exactly, else :class:`DecodeError`.
    ``replace`` and ``skip`` as in :func:`decode_report`. Errors name ``source``.
    """
    return _decode_whole(data, source, on_error)[0]


def decode_report(data: bytes, source: str = "<bytes>", on_error: str = "replace") -> Decoded:
    """Decode a scraped report, tolerating a few invalid bytes.

    The encoding is :func:`detect_encoding`'s (UTF-8 with a few invalid bytes stays UTF-8).
    ``replace``: invalid bytes become U+FFFD, counted in ``replaced`` and warned about; ``skip``:
    :class:`DecodeError` naming ``source`` and the offset of the first invalid byte (the caller
    skips the report); ``strict``: as :func:`decode_bytes`. Binary data always raises
    :class:`DecodeError`; text that :func:`looks_mojibake` gets a warning.
    """
    text, encoding, replaced = _decode_whole(data, source, on_error)
    return Decoded(text, encoding, replaced, _warnings(replaced, looks_mojibake(text)))


class StreamDecoder(Iterator[str]):
    """Decode a huge report piece by piece: iterate it for str chunks.

    Buffers ``chunks`` up to ``head_bytes`` (or their end), detects the encoding on that head
    (:func:`detect_encoding`, partial unless it is the whole input), then decodes incrementally
    with ``on_error`` "replace" or "skip" as in :func:`decode_report`; the output joined equals
    ``decode_report(b"".join(chunks)).text`` whenever the head gives the same encoding (always
    when the input fits in the head). ``encoding`` is known after the first chunk is yielded;
    ``replaced`` and ``warnings`` are final once iteration ends (the mojibake check looks at the
    head's text only). Single use.
    """

    def __init__(self, chunks: Iterable[bytes], source: str = "<bytes>", on_error: str = "replace",
                 head_bytes: int = 1 << 20) -> None:
        _check_on_error(on_error, REPORT_ON_ERROR)
        if head_bytes < 1:
            raise ValueError(f"head_bytes must be positive, not {head_bytes}")
        self.source = source
        self.on_error = on_error
        self.head_bytes = max(head_bytes, 4)  # room for any BOM
        self.encoding: str | None = None
        self._decoder: _Decoder | None = None
        self._mojibake = False
        self._pieces = self._decode(iter(chunks))

    @property
    def replaced(self) -> int:
        """Invalid bytes replaced by U+FFFD so far."""
        return self._decoder.replaced if self._decoder is not None else 0

    @property
    def warnings(self) -> tuple[str, ...]:
        """Warnings so far, as :attr:`Decoded.warnings`."""
        return _warnings(self.replaced, self._mojibake)

    def __next__(self) -> str:
        return next(self._pieces)

    def _decode(self, chunks: Iterator[bytes]) -> Iterator[str]:
        head = bytearray()
        for chunk in chunks:
            head += chunk
            if len(head) >= self.head_bytes:
                break
        following = next(chunks, None)  # None: the head is the whole input
        rest = chunks if following is None else itertools.chain([following], chunks)
        yield from self._pieces_of(bytes(head), rest, at_end=following is None)

    def _pieces_of(self, head: bytes, rest: Iterator[bytes], at_end: bool) -> Iterator[str]:
        self.encoding, start = detect_encoding(head, self.source, partial=not at_end)
        self._decoder = decoder = _Decoder(self.encoding, self.source, self.on_error, start)
        text = decoder.decode(head[start:], final=at_end)
        self._mojibake = looks_mojibake(text)
        if text:
            yield text
        for chunk in rest:
            if piece := decoder.decode(chunk):
                yield piece
        if not at_end and (piece := decoder.decode(b"", final=True)):
            yield piece


# Mojibake: UTF-8 bytes read as GBK or Latin-1/cp1252. Encoding such text back and reading it as
# UTF-8 recovers Chinese characters (2 per 3 GBK mojibake characters, 1 per 3 Latin-1 ones);
# genuine text gives back a few by chance (under 3 % of its non-ASCII characters).
_MOJIBAKE_CODECS = ("gbk", "cp1252", "latin-1")
_MOJIBAKE_SAMPLE = 100_000
_MOJIBAKE_MIN_RECOVERED = 3
_MOJIBAKE_SHARE = 0.15


def _is_chinese(ch: str) -> bool:
    """A CJK ideograph, CJK punctuation or a full-width form."""
    return is_cjk(ch) or "\u3000" <= ch <= "\u303f" or "\uff00" <= ch <= "\uffef"


def looks_mojibake(text: str) -> bool:
    """True for UTF-8 text decoded as GBK or Latin-1/cp1252 (鍙戝竷, 浜哄, Ã¤Â¸Â...): re-encoding
    (the first 100,000 characters) in that codec and decoding as UTF-8 recovers Chinese characters
    for at least 15 % of the non-ASCII characters (and at least 3)."""
    sample = text[:_MOJIBAKE_SAMPLE]
    non_ascii = sum(ch > "\x7f" for ch in sample)
    if non_ascii < _MOJIBAKE_MIN_RECOVERED:
        return False
    for codec in _MOJIBAKE_CODECS:
        back = sample.encode(codec, errors="replace").decode("utf-8", errors="replace")
        recovered = sum(map(_is_chinese, back))
        if recovered >= _MOJIBAKE_MIN_RECOVERED and recovered >= _MOJIBAKE_SHARE * non_ascii:
            return True
    return False


def jsonl_lines(text: str) -> list[tuple[int, str]]:
    """Non-blank lines of a JSONL text with their 1-based numbers, split on ``\\n`` only: JSON lines
    may hold U+2028, U+2029 or U+0085 inside strings, where ``str.splitlines`` would cut them."""
    return [(n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]


def jsonl_records(path: str | Path) -> list[tuple[int, object]]:
    """(line number, parsed JSON) of a UTF-8 JSONL file (split by :func:`jsonl_lines`); a line
    that is not JSON raises ``ValueError`` naming the file and line."""
    out = []
    for n, line in jsonl_lines(Path(path).read_text(encoding="utf-8")):
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: invalid JSON: {e}") from None
    return out


def read_jsonl(path: str | Path) -> list:
    """The records of a UTF-8 JSONL file (see :func:`jsonl_records`)."""
    return [record for _, record in jsonl_records(path)]


def read_text(path: str | Path) -> str:
    """Read a file and decode it with :func:`decode_bytes` (errors name the file)."""
    path = Path(path)
    return decode_bytes(path.read_bytes(), source=str(path))


# --------------------------------------------------------------------------- character classes
def is_cjk(ch: str) -> bool:
    """True for CJK unified ideographs (basic, extension A, compatibility) and 〇."""
    o = ord(ch)
    return (
        0x4E00 <= o <= 0x9FFF
        or 0x3400 <= o <= 0x4DBF
        or 0xF900 <= o <= 0xFAFF
        or 0x20000 <= o <= 0x2FA1F
        or o == 0x3007
    )


_PINYIN_LETTERS = "a-zü" "āáǎàēéěèīíǐìōóǒòūúǔùǖǘǚǜńňǹḿ"
_TONED = set("āáǎàēéěèīíǐìōóǒòūúǔùǖǘǚǜńňǹḿ")
# A gloss is a pinyin syllable in parentheses right after a Chinese character: 會(huì), 導(dǎo).
# A gloss cut off at the end of the text loses its closing parenthesis: 監(jiān<EOF>.
_GLOSS_RE = re.compile(rf"[(（] ?([{_PINYIN_LETTERS}]{{1,7}}) ?(?:[)）]|(?=\s*$))")
_QMARK_RUN_RE = re.compile(r"[?\ufffd]+")
# Invisible characters: zero-width, bidi marks, word joiner, BOM, soft hyphen.
_INVISIBLE = set("\u200b\u200c\u200d\u200e\u200f\u2060\u2061\u2062\u2063\u2064\ufeff\u00ad\u202a\u202b\u202c\u202d\u202e")
_SPACES = set("\u00a0\u3000\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\t\x0b\x0c")


def _is_gloss(syllable: str) -> bool:
    """A plausible pinyin syllable: has a vowel; tone-marked or short enough to be one."""
    has_vowel = any(c in "aeiouü" or c in _TONED for c in syllable)
    return has_vowel and (any(c in _TONED for c in syllable) or len(syllable) <= 6)


def _deleted_positions(raw: str) -> set[int]:
    """Indices of raw characters that normalisation drops (glosses, `?` junk, invisible, control)."""
    dropped: set[int] = set()
    for m in _GLOSS_RE.finditer(raw):
        if m.start() > 0 and is_cjk(raw[m.start() - 1]) and _is_gloss(m.group(1)):
            dropped.update(range(m.start(), m.end()))
    for m in _QMARK_RUN_RE.finditer(raw):
        before = raw[m.start() - 1] if m.start() > 0 else ""
        after = raw[m.end()] if m.end() < len(raw) else ""
        # Chinese text uses the full-width ？: an ASCII ? (or U+FFFD) is a lost character, unless
        # it is a URL's query mark (page.asp?id=1).
        if not (m.group() == "?" and before.isascii() and before.isalnum() and after.isascii() and after.isalnum()):
            dropped.update(range(m.start(), m.end()))
    for i, ch in enumerate(raw):
        if ch in _INVISIBLE or (unicodedata.category(ch) == "Cc" and ch not in "\n\t\x0b\x0c"):
            dropped.add(i)
    return dropped


def _map_char(ch: str) -> str:
    """One-for-one character cleanup: unusual spaces to ' ', full-width ASCII to half-width."""
    if ch in _SPACES:
        return " "
    if "\uff01" <= ch <= "\uff5e":
        return chr(ord(ch) - 0xFEE0)
    return ch


@lru_cache(maxsize=1)
def _t2s():
    import opencc

    return opencc.OpenCC("t2s")


def to_simplified(text: str) -> str:
    """Traditional to simplified with OpenCC, guaranteed to keep the length (and so the offsets).

    OpenCC converts phrase by phrase; where a phrase would change length the text is converted
    character by character instead, and a character whose conversion is not one character stays.
    """
    converter = _t2s()
    out = converter.convert(text)
    if len(out) == len(text):
        return out
    pieces = []
    for line in text.splitlines(keepends=True):
        conv = converter.convert(line)
        if len(conv) != len(line):
            conv = "".join(c2 if len(c2 := converter.convert(c)) == 1 else c for c in line)
        pieces.append(conv)
    return "".join(pieces)


# --------------------------------------------------------------------------- normalisation
@dataclass(frozen=True)
class Normalized:
    """Normalised text and, for each of its characters, the index of the raw source character."""

    raw: str
    text: str
    offsets: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.text)

    def to_raw_span(self, start: int, end: int) -> tuple[int, int]:
        """Map a normalised span ``[start, end)`` (non-empty) to the raw text."""
        if not 0 <= start < end <= len(self.text):
            raise IndexError(f"span [{start}, {end}) outside normalised text of length {len(self.text)}")
        return self.offsets[start], self.offsets[end - 1] + 1

    def to_norm_span(self, start: int, end: int) -> tuple[int, int] | None:
        """Map a raw span to the normalised characters it keeps; ``None`` if it keeps none."""
        lo = bisect.bisect_left(self.offsets, start)
        hi = bisect.bisect_left(self.offsets, end)
        return (lo, hi) if lo < hi else None


def normalize(raw: str, simplified: bool = True) -> Normalized:
    """Clean scraping debris and (optionally) convert to simplified script, keeping the offset map.

    Drops pinyin glosses after Chinese characters (``會(huì)議`` -> ``會議``, also a trailing cut-off
    ``監(jiān``), runs of ``?``/U+FFFD from lost characters, zero-width, bidi and control characters
    (newlines stay); maps NBSP, full-width and other spaces to ``' '`` and full-width ASCII to
    half-width; converts traditional to simplified with OpenCC when ``simplified``.
    """
    dropped = _deleted_positions(raw)
    keep = [i for i in range(len(raw)) if i not in dropped]
    text = "".join(_map_char(raw[i]) for i in keep)
    if simplified:
        text = to_simplified(text)
    return Normalized(raw=raw, text=text, offsets=tuple(keep))


def already_normalized(text: str) -> Normalized:
    """Wrap text that is already normalised (identity offsets); normalising twice is not idempotent
    in edge cases (a removal can create a new gloss-like pattern), so derived texts use this."""
    return Normalized(raw=text, text=text, offsets=tuple(range(len(text))))
