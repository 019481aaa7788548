import hashlib
import json
from pathlib import Path

import pytest

from zh_policy_ner.labelling.annotations import (
    AnnotationValidationError,
    load_annotations,
    main,
    summary,
    write_annotations,
)

from .conftest import ROOT, SEED_IDS

RAW = "市委书记谭作钧主持会议,要求“两手抓”。 大连市"


@pytest.fixture()
def workspace(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text(RAW, encoding="utf-8")
    (tmp_path / "ann").mkdir()
    return tmp_path


def record(spans, sha=None, source="src/a.txt", doc_id="a"):
    return {"doc_id": doc_id, "source": source,
            "text_sha256": sha or hashlib.sha256(RAW.encode()).hexdigest(), "spans": spans}


def span(start, end, label="PER", text=None):
    return {"start": start, "end": end, "label": label, "text": RAW[start:end] if text is None else text}


def write(ws, *records, raw_lines=()):
    path = ws / "ann" / "x.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) for r in records] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_shipped_annotations_are_valid_and_cover_every_seed():
    docs, errors = load_annotations(ROOT / "annotations")
    assert errors == []
    assert set(SEED_IDS) <= {d.doc_id for d in docs}
    labels = {s.label for d in docs for s in d.spans}
    assert labels == {"PER", "LOC", "POLICY"}
    for d in docs:
        assert not Path(d.source).is_absolute() and ".." not in Path(d.source).parts
        shared = ROOT.parent / "shared" / d.source   # seeds/ and scraped/ are byte-identical copies
        if shared.exists():
            assert (ROOT / d.source).read_bytes() == shared.read_bytes()
        for s in d.spans:
            assert d.text[s.start:s.end] == s.text


def test_labelled_scraped_reports_keep_their_sources_row():
    rows = {line.split("\t")[0]: line for line in (ROOT / "scraped" / "SOURCES.tsv").read_text(encoding="utf-8").splitlines()[1:]}
    docs, _ = load_annotations(ROOT / "annotations")
    copied = sorted(Path(d.source).name for d in docs if d.source.startswith("scraped/"))
    assert copied and all(name in rows for name in copied)
    assert sorted(p.name for p in (ROOT / "scraped").glob("*.txt")) == copied   # only labelled reports are copied


def test_valid_record_loads(workspace):
    path = write(workspace, record([span(4, 7), span(15, 18, "POLICY"), span(21, 24, "LOC")]))
    docs, errors = load_annotations(path, root=workspace)
    assert errors == [] and [s.text for s in docs[0].spans] == ["谭作钧", "两手抓", "大连市"]
    assert summary(docs) == "1 documents, 3 spans (LOC 1, PER 1, POLICY 1)"


@pytest.mark.parametrize(
    "bad_span, message",
    [
        (span(4, 99), "out of range"),
        (span(4, 7, text="谭作"), "does not match"),
        (span(4, 7, label="ORG"), "unknown label"),
        (span(20, 24), "whitespace or punctuation"),
        (span(11, 14), "whitespace or punctuation"),
        (span(15, 19, "POLICY"), "quotation"),
        (span(7, 4), "out of range"),
        ({"start": "4", "end": 7, "label": "PER", "text": "谭作钧"}, "integers"),
    ],
)
def test_each_span_error_is_named(workspace, bad_span, message):
    path = write(workspace, record([bad_span]))
    _, errors = load_annotations(path, root=workspace, strict=False)
    assert any(message in e.message for e in errors), errors
    assert all(e.file == str(path) and e.line == 1 and e.span_index == 0 for e in errors)


def test_overlap_sha_json_and_all_errors_reported(workspace):
    path = write(
        workspace,
        record([span(4, 7), span(5, 8)]),                      # line 1: overlap
        record([span(4, 7)], sha="0" * 64, doc_id="b"),        # line 2: hash mismatch
        record([span(4, 7)], source="src/missing.txt", doc_id="c"),  # line 3: missing source
        raw_lines=["{not json"],                               # line 4
    )
    _, errors = load_annotations(path, root=workspace, strict=False)
    by_line = {e.line: e.message for e in errors}
    assert "overlaps" in by_line[1]
    assert "sha256 mismatch" in by_line[2]
    assert "cannot be read" in by_line[3]
    assert "invalid JSON" in by_line[4]
    with pytest.raises(AnnotationValidationError) as err:
        load_annotations(path, root=workspace)
    assert len(err.value.errors) == 4 and "x.jsonl:4" in str(err.value)


def test_cli_exit_codes(workspace, capsys):
    good = write(workspace, record([span(4, 7)]))
    assert main(["validate", str(good), "--root", str(workspace)]) == 0
    bad = write(workspace, record([span(4, 8, text="谭作钧")]))
    assert main(["validate", str(bad), "--root", str(workspace)]) == 1
    assert "x.jsonl:1: span 0 [4:8]" in capsys.readouterr().err


def test_write_round_trip(workspace, tmp_path):
    path = write(workspace, record([span(21, 24, "LOC"), span(4, 7)][::-1]))
    docs, _ = load_annotations(path, root=workspace)
    out = write_annotations(docs, workspace / "ann" / "y.jsonl")
    again, errors = load_annotations(out, root=workspace)
    assert errors == [] and again[0].spans == docs[0].spans
