"""Decoding of hostile report bytes: BOMs, stray invalid bytes, NULs, binary, mojibake, streaming."""
import codecs
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zh_policy_ner.reading.text import (
    DecodeError,
    Decoded,
    StreamDecoder,
    decode_bytes,
    decode_report,
    detect_encoding,
    looks_binary,
    looks_mojibake,
    normalize,
)

ROOT = Path(__file__).resolve().parents[1]
SENTENCE = "哈尔滨市疫情防控指挥部召开会议"
TRADITIONAL = "哈爾濱市疫情防控指揮部召開會議"
TEXT = f"3月14日晚,{SENTENCE}。传达学习省、市疫情防控工作会议精神,部署下一步工作。\n" * 3
TRAD_TEXT = f"3月14日晚,{TRADITIONAL}。傳達學習省、市疫情防控工作會議精神,部署下一步工作。\n" * 3
MOJIBAKE_SOURCE = "中华人民共和国国务院联防联控机制"

BOMS = {
    "utf-8": codecs.BOM_UTF8,
    "utf-16-le": codecs.BOM_UTF16_LE,
    "utf-16-be": codecs.BOM_UTF16_BE,
    "utf-32-le": codecs.BOM_UTF32_LE,
    "utf-32-be": codecs.BOM_UTF32_BE,
}


def with_invalid_byte(text: str, at: int, byte: bytes = b"\xff") -> bytes:
    """``text`` in UTF-8 with ``byte`` inserted before character ``at``."""
    return text[:at].encode() + byte + text[at:].encode()


# --------------------------------------------------------------------------- BOMs
@pytest.mark.parametrize("encoding", BOMS)
def test_each_bom_decodes_to_the_text(encoding):
    data = BOMS[encoding] + TEXT.encode(encoding)
    assert detect_encoding(data) == (encoding, len(BOMS[encoding]))
    assert decode_bytes(data) == TEXT
    report = decode_report(data)
    assert (report.text, report.encoding, report.replaced, report.warnings) == (TEXT, encoding, 0, ())


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-8-sig"])
def test_python_bom_writers(encoding):
    assert decode_bytes(TEXT.encode(encoding)) == TEXT
    assert decode_bytes(codecs.BOM_UTF32_LE) == ""  # a UTF-32 BOM alone, not UTF-16 "\x00"


def test_utf16_and_utf32_with_bom_are_never_binary():
    for encoding in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
        data = BOMS[encoding] + "ab\n".encode(encoding) * 100
        assert not looks_binary(data)
        assert decode_report(data).text == "ab\n" * 100


def test_bom_that_does_not_decode_is_an_error_when_strict():
    data = codecs.BOM_UTF16_BE + "会议".encode("utf-16-be") + b"\xdc\x00"  # lone low surrogate
    with pytest.raises(DecodeError, match=r"r\.txt: starts with a utf-16-be BOM .* offset 6"):
        decode_bytes(data, "r.txt")
    report = decode_report(data, "r.txt")
    assert (report.text, report.replaced) == ("会议\ufffd", 2)


# --------------------------------------------------------------------------- invalid bytes
def test_one_invalid_byte_in_utf8_is_replaced_and_counted():
    data = with_invalid_byte(TEXT, 40)
    report = decode_report(data, "r.txt")
    assert report.encoding == "utf-8"
    assert report.text == TEXT[:40] + "\ufffd" + TEXT[40:]
    assert report.replaced == 1
    assert report.warnings == ("1 invalid bytes replaced",)
    assert decode_bytes(data, on_error="replace") == report.text


def test_short_report_with_one_invalid_byte_is_utf8_not_gb18030():
    data = with_invalid_byte(SENTENCE, 5)
    report = decode_report(data)
    assert (report.encoding, report.text, report.replaced) == ("utf-8", SENTENCE[:5] + "\ufffd" + SENTENCE[5:], 1)


def test_count_is_exact_when_the_text_has_its_own_replacement_characters():
    text = "原文有\ufffd字符," + TEXT
    report = decode_report(with_invalid_byte(text, 20))
    assert report.replaced == 1 and report.text.count("\ufffd") == 2


def test_broken_multibyte_sequence_counts_its_bytes():
    data = TEXT[:10].encode() + "会".encode()[:2] + TEXT[10:].encode()  # a lead and 1 continuation
    report = decode_report(data)
    assert report.encoding == "utf-8" and report.replaced == 2
    assert report.text == TEXT[:10] + "\ufffd" + TEXT[10:]


def test_stray_byte_in_ascii_text_is_utf8():
    data = b"Press release: meeting on 2022-03-14 \x92 all districts report daily." * 2
    report = decode_report(data)
    assert report.encoding == "utf-8" and report.replaced == 2


def test_skip_names_the_source_and_the_offset():
    data = with_invalid_byte(SENTENCE, 5)
    with pytest.raises(DecodeError, match=r"^r\.txt: invalid utf-8 byte 0xff at offset 15$"):
        decode_report(data, "r.txt", on_error="skip")
    with pytest.raises(DecodeError, match=r"offset 18$"):  # offsets count the BOM
        decode_report(codecs.BOM_UTF8 + data, "r.txt", on_error="skip")
    assert decode_report(SENTENCE.encode(), on_error="skip").text == SENTENCE


def test_strict_still_rejects_invalid_bytes():
    with pytest.raises(DecodeError, match="r.txt"):
        decode_bytes(with_invalid_byte(SENTENCE, 5), "r.txt")


@pytest.mark.parametrize("call", [
    lambda: decode_bytes(b"x", on_error="ignore"),
    lambda: decode_report(b"x", on_error="ignore"),
    lambda: StreamDecoder([b"x"], on_error="strict"),
])
def test_unknown_on_error_is_a_value_error(call):
    with pytest.raises(ValueError, match="'replace'.*'skip'"):
        call()


def test_truncated_head_is_not_invalid_when_partial():
    head = TEXT.encode()[:-2]  # ends with two of the three bytes of 。 (the "\n" is cut too)
    assert detect_encoding(head, partial=True, lenient=False) == ("utf-8", 0)
    report = decode_report(head)  # as a whole input the cut sequence is invalid: 2 bytes
    assert report.encoding == "utf-8" and report.replaced == 2 and report.text == TEXT[:-2] + "\ufffd"


# --------------------------------------------------------------------------- NUL and binary
def test_a_single_nul_is_not_binary():
    data = TEXT[:20].encode() + b"\x00" + TEXT[20:].encode()
    assert not looks_binary(data)
    report = decode_report(data)
    assert report.text == TEXT[:20] + "\x00" + TEXT[20:] and report.replaced == 0
    assert "\x00" not in normalize(report.text, simplified=False).text
    assert decode_bytes(b"a\x00b") == "a\x00b"


@pytest.mark.parametrize("data", [
    bytes(range(256)) * 20,
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(2000),
    b"\x00\x01PK\x03\x04" * 100,
])
@pytest.mark.parametrize("on_error", ["strict", "replace", "skip"])
def test_real_binary_still_raises(data, on_error):
    assert looks_binary(data)
    with pytest.raises(DecodeError, match=r"img\.png: .*binary"):
        decode_report(data, "img.png", on_error=on_error)


# --------------------------------------------------------------------------- Chinese encodings
def test_gb18030_and_big5_reports_decode_right():
    for text, encoding in ((TEXT, "gb18030"), (TEXT, "gbk"), (TRAD_TEXT, "big5")):
        data = text.encode(encoding)
        assert decode_bytes(data) == text
        report = decode_report(data)
        assert report.text == text and report.replaced == 0 and report.warnings == ()
        assert codecs.lookup(report.encoding).name in {"gb18030", "gbk", "gb2312", "big5", "big5hkscs"}


def test_gb18030_with_an_invalid_byte_is_replaced_in_gb18030():
    data = TEXT[:30].encode("gb18030") + b"\xff" + TEXT[30:].encode("gb18030")
    report = decode_report(data)
    assert report.encoding == "gb18030" and report.replaced == 1
    assert report.text == TEXT[:30] + "\ufffd" + TEXT[30:]


# --------------------------------------------------------------------------- mojibake
def test_mojibake_is_flagged():
    as_gbk = MOJIBAKE_SOURCE.encode("utf-8").decode("gbk", errors="replace")
    as_latin1 = MOJIBAKE_SOURCE.encode("utf-8").decode("latin-1")
    assert looks_mojibake(as_gbk) and looks_mojibake(as_latin1)
    assert looks_mojibake(TEXT.encode().decode("gbk", errors="replace"))
    report = decode_report(as_gbk.encode("utf-8"))  # mojibake saved as UTF-8 and scraped again
    assert report.warnings == ("looks like mojibake (text decoded in the wrong encoding?)",)


def test_genuine_reports_are_not_mojibake():
    paths = sorted((ROOT / "seeds").glob("*.txt")) + sorted((ROOT / "scraped").glob("*.txt"))
    assert len(paths) == 45
    for path in paths:
        text = decode_bytes(path.read_bytes(), str(path))
        assert not looks_mojibake(text), path
        assert not looks_mojibake(normalize(text).text), path
    assert not looks_mojibake(TEXT) and not looks_mojibake(TRAD_TEXT) and not looks_mojibake("")


# --------------------------------------------------------------------------- streaming
CASES = {
    "utf-8": TEXT.encode(),
    "utf-8-bom": codecs.BOM_UTF8 + TEXT.encode(),
    "gb18030": TEXT.encode("gb18030"),
    "big5": TRAD_TEXT.encode("big5"),
    "utf-16-le": codecs.BOM_UTF16_LE + TEXT.encode("utf-16-le"),
    "utf-16-be": codecs.BOM_UTF16_BE + TEXT.encode("utf-16-be"),
    "utf-32-le": codecs.BOM_UTF32_LE + TEXT.encode("utf-32-le"),
    "utf-32-be": codecs.BOM_UTF32_BE + TEXT.encode("utf-32-be"),
    "invalid": with_invalid_byte(TEXT, 40) + "会".encode()[:2] + "议".encode(),
    "nul": TEXT.encode() + b"\x00" + TEXT.encode(),
    "mojibake": TEXT.encode().decode("gbk", errors="replace").encode(),
    "empty": b"",
}


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(CASES)), st.lists(st.integers(min_value=0), max_size=12))
def test_streaming_equals_whole_decode(case, cuts):
    data = CASES[case]
    whole = decode_report(data, "r.txt")
    decoder = StreamDecoder(split(data, cuts), "r.txt")
    assert "".join(decoder) == whole.text
    assert (decoder.encoding, decoder.replaced, decoder.warnings) == (whole.encoding, whole.replaced, whole.warnings)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["utf-8", "utf-8-bom", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be", "invalid"]),
       st.lists(st.integers(min_value=0), max_size=12), st.integers(min_value=1, max_value=64))
def test_streaming_with_a_small_head(case, cuts, head_bytes):
    """The encoding is detected on a head that may end inside a character."""
    data = CASES[case]
    decoder = StreamDecoder(split(data, cuts), "r.txt", head_bytes=head_bytes)
    assert "".join(decoder) == decode_report(data).text
    assert decoder.replaced == decode_report(data).replaced


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=0), max_size=12), st.integers(min_value=1, max_value=4096))
def test_streaming_skip_raises_at_the_same_offset(cuts, head_bytes):
    data = CASES["invalid"]
    with pytest.raises(DecodeError) as whole:
        decode_report(data, "r.txt", on_error="skip")
    with pytest.raises(DecodeError) as streamed:
        list(StreamDecoder(split(data, cuts), "r.txt", on_error="skip", head_bytes=head_bytes))
    expected = f"r.txt: invalid utf-8 byte 0xff at offset {len(TEXT[:40].encode())}"
    assert str(streamed.value) == str(whole.value) == expected


def test_stream_decoder_reports_binary_and_is_single_use():
    with pytest.raises(DecodeError, match="binary"):
        list(StreamDecoder([bytes(range(256))] * 20, "img.png"))
    decoder = StreamDecoder(iter([b"abc", b"def"]))
    assert list(decoder) == ["abcdef"] and list(decoder) == []
    assert decoder.encoding == "utf-8" and decoder.warnings == ()


def test_decoded_is_frozen():
    report = decode_report(b"abc")
    assert report == Decoded("abc", "utf-8", 0, ())
    with pytest.raises(AttributeError):
        report.text = "x"
