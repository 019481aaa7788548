import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zh_policy_ner.reading.text import DecodeError, decode_bytes, normalize, read_text, to_simplified

from .conftest import ROOT


def test_gloss_removed_and_spans_map_back():
    raw = "市委常委會(huì)議強(qiáng)調(diào),習(xí)近平總書(shū)記"
    n = normalize(raw)
    assert n.text == "市委常委会议强调,习近平总书记"
    start = n.text.index("习近平")
    rs, re_ = n.to_raw_span(start, start + 3)
    assert raw[rs:re_] == "習(xí)近平"  # a gloss inside a span stays in it
    rs, re_ = n.to_raw_span(n.text.index("会议"), n.text.index("会议") + 2)
    assert raw[rs:re_] == "會(huì)議"  # a trailing gloss stays out: the span ends on 議


def test_cut_off_and_spaced_glosses():
    assert normalize("加強監(jiān").text == "加强监"
    assert normalize("會(huì )議").text == "会议"
    assert normalize("(记者 肖虹)").text == "(记者 肖虹)"  # parentheses with Chinese are not glosses
    assert normalize("组织(WHO)").text == "组织(WHO)"


def test_question_mark_junk_zero_width_and_spaces():
    n = normalize("????威海新聞網\u200b 幸福威?!建\u3000設\u00a0好?2月 page.asp?id=1")
    assert n.text == "威海新闻网 幸福威!建 设 好2月 page.asp?id=1"
    assert all(n.raw[o] not in "?\u200b" or n.text[i] == "?" for i, o in enumerate(n.offsets))


def test_fullwidth_ascii_and_control_chars():
    n = normalize("ＡＢＣ１２３\x07\r\n")
    assert n.text == "ABC123\n"


def test_traditional_to_simplified_keeps_length():
    text = "長春日報國廣國際在線網絡(北京)有限公司,乾隆皇帝著書於是"
    assert len(to_simplified(text)) == len(text)
    assert normalize("長春日報").text == "长春日报"
    assert normalize("長春日報", simplified=False).text == "長春日報"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gb18030", "gbk"])
def test_decode_simplified_encodings(encoding):
    text = (ROOT / "seeds" / "004_383dab57bb4e398a.txt").read_text(encoding="utf-8")
    text = text.replace("•", "-")  # not in GBK
    assert decode_bytes(text.encode(encoding)) == text


@pytest.mark.parametrize("encoding", ["big5", "big5hkscs"])
def test_decode_big5(encoding):
    text = "長春日報2月5日訊(記者 肖虹):4日,長春市委書記王凱主持召開長春市委常委會會議,傳達學習習近平總書記重要講話精神。" * 3
    assert decode_bytes(text.encode(encoding)) == text


def test_decode_errors_name_the_source(tmp_path):
    binary = tmp_path / "img.txt"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    with pytest.raises(DecodeError, match="img.txt"):
        read_text(binary)
    assert decode_bytes(b"") == ""


# --------------------------------------------------------------------------- properties
PIECES = st.sampled_from(["會", "議", "长", "春", "a", "B", "1", " ", "\u3000", "\u200b", "?", "??", "(huì)", "(lǐng)",
                          "(北京)", "(", ")", "\n", "“", "”", "習", "近", "平", "監(jiān"])
raw_texts = st.lists(PIECES, min_size=1, max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(raw_texts, st.data())
def test_norm_span_round_trip(raw, data):
    n = normalize(raw)
    if not n.text:
        return
    s = data.draw(st.integers(0, len(n.text) - 1))
    e = data.draw(st.integers(s + 1, len(n.text)))
    rs, re_ = n.to_raw_span(s, e)
    assert n.to_norm_span(rs, re_) == (s, e)


@settings(max_examples=300, deadline=None)
@given(raw_texts, st.data())
def test_raw_span_on_kept_characters_survives(raw, data):
    n = normalize(raw)
    kept = sorted(n.offsets)
    if not kept:
        return
    a = data.draw(st.sampled_from(kept))
    b = data.draw(st.sampled_from([k for k in kept if k >= a]))
    ns = n.to_norm_span(a, b + 1)
    assert ns is not None
    assert n.to_raw_span(*ns) == (a, b + 1)


@settings(max_examples=200, deadline=None)
@given(raw_texts)
def test_offsets_strictly_increasing_and_point_at_source(raw):
    n = normalize(raw, simplified=False)
    assert list(n.offsets) == sorted(set(n.offsets))
    for ch, o in zip(n.text, n.offsets):
        assert ch == raw[o] or ch == " " or raw[o] in "\u3000"


def test_already_normalized_is_identity():
    from zh_policy_ner.reading.text import already_normalized

    n = already_normalized("会(h)议??")
    assert n.text == "会(h)议??" and n.to_raw_span(0, 2) == (0, 2)
