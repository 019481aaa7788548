import json

from zh_policy_ner.reading.corpus import DocError, RawDoc, iter_documents


def test_jsonl_lines_are_decoded_one_by_one_and_bad_lines_reported(tmp_path):
    path = tmp_path / "mixed.jsonl"
    good = json.dumps({"doc_id": "u", "text": "大连市召开会议"}, ensure_ascii=False).encode("utf-8")
    gbk = json.dumps({"doc_id": "g", "text": "市委书记谭作钧主持会议"}, ensure_ascii=False).encode("gbk")
    path.write_bytes(b"\n".join([good, gbk, b"{not json", b"", json.dumps({"x": 1}).encode()]) + b"\n")
    items = list(iter_documents(path))
    docs = [d for d in items if isinstance(d, RawDoc)]
    errors = [d for d in items if isinstance(d, DocError)]
    assert [(d.doc_id, d.text) for d in docs] == [("u", "大连市召开会议"), ("g", "市委书记谭作钧主持会议")]
    assert [e.source for e in errors] == [f"{path}:3", f"{path}:5"]
    assert "invalid JSON" in errors[0].error and "no string field" in errors[1].error


def test_utf16_and_binary_jsonl(tmp_path):
    utf16 = tmp_path / "a.jsonl"
    utf16.write_text('{"doc_id": "a", "text": "長春"}\n', encoding="utf-16")
    assert [(d.doc_id, d.text) for d in iter_documents(utf16)] == [("a", "長春")]
    binary = tmp_path / "b.jsonl"
    binary.write_bytes(b"\x00\x01PK\x03\x04" * 100)
    (err,) = list(iter_documents(binary))
    assert isinstance(err, DocError) and "binary" in err.error and err.source == str(binary)
