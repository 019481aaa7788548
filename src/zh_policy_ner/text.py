"""Decoding and normalisation of scraped report text with an exact map back to the raw text.

Every later stage works on the *normalised* text (simplified script, debris removed) while every
offset a user sees refers to the *raw* decoded text. :func:`normalize` returns both the normalised
string and, for each normalised character, the index of the raw character it came from. Characters
are only ever deleted or replaced one-for-one, so the map is strictly increasing and spans map both
ways with :meth:`Normalized.to_raw_span` and :meth:`Normalized.to_norm_span`.
"""
from __future__ import annotations

import bisect
import json
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from charset_normalizer import from_bytes

__all__ = [
    "DecodeError",
    "Normalized",
    "decode_bytes",
    "read_text",
    "normalize",
    "is_cjk",
]


class DecodeError(ValueError):
    """Raised when bytes cannot be decoded as text (binary file or unknown encoding)."""


# --------------------------------------------------------------------------- decoding
_BOMS = (("utf-8-sig", b"\xef\xbb\xbf"), ("utf-16", b"\xff\xfe"), ("utf-16", b"\xfe\xff"))
_CJK_FALLBACKS = ("gb18030", "big5hkscs")


def looks_binary(data: bytes) -> bool:
    sample = data[:4096]
    return b"\x00" in sample or sum(b < 9 or 13 < b < 32 for b in sample) > len(sample) * 0.05


def decode_bytes(data: bytes, source: str = "<bytes>") -> str:
    """Decode report bytes: UTF-8 (with or without BOM), GB18030/GBK or Big5.

    UTF-8 is tried first (strict), then charset-normalizer's best guess restricted to the Chinese
    encodings, then strict GB18030 and Big5-HKSCS. A BOM is stripped. Raises :class:`DecodeError`
    naming ``source`` for binary or undecodable input.
    """
    for encoding, bom in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom):].decode(encoding.replace("-sig", ""))
            except UnicodeDecodeError as err:
                raise DecodeError(f"{source}: starts with a {encoding} BOM but does not decode: {err}") from err
    if not data:
        return ""
    if looks_binary(data):
        raise DecodeError(f"{source}: looks like a binary file (NUL or control bytes), not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    guess = from_bytes(data, cp_isolation=["gb18030", "gbk", "gb2312", "big5", "big5hkscs"]).best()
    candidates = ([guess.encoding] if guess is not None else []) + list(_CJK_FALLBACKS)
    for encoding in candidates:
        try:
            return data.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
    raise DecodeError(f"{source}: not valid UTF-8, GB18030/GBK or Big5 text")


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
