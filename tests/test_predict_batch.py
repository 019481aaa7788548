"""Batch prediction: pieces with a memory ceiling, outputs that cannot eat inputs, lock, manifest,
error log, unique ids, input hygiene."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from zh_policy_ner.common.cli import UsageError
from zh_policy_ner.reading.corpus import RawDoc, StreamDoc, iter_documents
from zh_policy_ner.prediction.batch import Piece, Pieces, RunOutput, cut_pieces, done_ids, predict_pieces
from zh_policy_ner.prediction.predict import run_predict

from .conftest import compose

SENTENCE = "市委书记谭作钧主持会议,要求加强核酸检测,外防输入、内防反弹。"


@dataclass
class ChunkedDoc:
    """A document whose text arrives in small chunks, like a StreamDoc reading a large file."""

    doc_id: str
    source: str
    text: str
    step: int
    warnings: tuple[str, ...] = ()

    def chunks(self):
        for i in range(0, len(self.text), self.step):
            yield self.text[i:i + self.step]


def _long_text(n_lines: int = 60) -> str:
    return "".join(f"{SENTENCE}第{i}段。\n" if i % 3 else f"{SENTENCE * 4}" for i in range(n_lines))


def _owned(pieces: list[Piece]) -> list[tuple[int, int]]:
    return [(p.base + p.lo, p.base + p.hi) for p in pieces]


@pytest.mark.parametrize("step", [7, 1000, 10 ** 6])
def test_pieces_tile_the_text_whatever_the_chunks(step):
    text = _long_text()
    how = Pieces(size=200, context=30)
    pieces = list(cut_pieces(ChunkedDoc("d", "d.txt", text, step), how))
    owned = _owned(pieces)
    assert owned[0][0] == 0 and owned[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(owned, owned[1:]))  # contiguous, no gap, no overlap
    assert all(p.text == text[p.base:p.base + len(p.text)] for p in pieces)
    assert all(len(p.text) <= how.size + 2 * how.context for p in pieces)  # the memory ceiling
    assert [p.first for p in pieces] == [True] + [False] * (len(pieces) - 1)
    assert [p.last for p in pieces] == [False] * (len(pieces) - 1) + [True]
    assert len(pieces) > 5
    # the cut falls after a line end where there is one
    assert all(text[e - 1] in "\n。" for _, e in owned[:-1])
    # the same pieces however the text arrives
    assert owned == _owned(list(cut_pieces(ChunkedDoc("d", "d.txt", text, 13), how)))


def test_short_document_is_one_piece_the_whole_text():
    (piece,) = cut_pieces(RawDoc("d", "d.txt", SENTENCE), Pieces(size=200, context=30))
    assert (piece.base, piece.text, piece.lo, piece.hi, piece.first, piece.last) == (0, SENTENCE, 0, len(SENTENCE), True, True)


def test_size_limit_ends_a_streamed_document_as_an_error():
    pieces = list(cut_pieces(ChunkedDoc("d", "d.txt", _long_text(), 50), Pieces(size=200, context=30, max_doc_chars=500)))
    assert pieces[-1].error and "infer.max_doc_chars=500" in pieces[-1].error
    assert all(p.error is None for p in pieces[:-1])


def test_streaming_prediction_keeps_a_memory_ceiling_and_exact_offsets(model_dir):
    """A document of many windows, predicted in pieces: no call sees more than a piece and its
    context, spans are exact and ordered, and away from the cuts they are those of the whole text."""
    from zh_policy_ner.decoding.inference import Predictor

    predictor = Predictor.from_pretrained(str(model_dir), max_length=32, stride=8, layers=["gazetteer"])
    seen = []
    original = predictor.predict

    def spy(texts):
        texts = list(texts)
        seen.extend(len(t) for t in texts)
        return original(texts)

    predictor.predict = spy
    text = _long_text(120)
    how = Pieces(size=300, context=64)
    got = [s for _, spans in predict_pieces(predictor, cut_pieces(ChunkedDoc("d", "d.txt", text, 97), how), 4)
           for s in spans]
    assert max(seen) <= how.size + 2 * how.context and len(seen) > 10
    assert all(text[s.start:s.end] == s.text for s in got)
    assert all(a.end <= b.start for a, b in zip(got, got[1:]))
    whole = original([text])[0].spans
    cuts = [p.base + p.hi for p in cut_pieces(RawDoc("d", "d.txt", text), how)]
    far = lambda s: all(abs(s.start - c) > how.context and abs(s.end - c) > how.context for c in cuts)  # noqa: E731
    gazetteer_spans = lambda spans: {(s.start, s.end, s.label) for s in spans if s.score is None and far(s)}  # noqa: E731
    assert gazetteer_spans(got) == gazetteer_spans(whole) and gazetteer_spans(got)


def _inputs(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.txt").write_text(SENTENCE, encoding="utf-8")
    (folder / "b.txt").write_text(SENTENCE * 3, encoding="utf-8")
    (folder / "bin.txt").write_bytes(bytes(range(256)) * 8)
    (folder / "dup.jsonl").write_text(
        json.dumps({"doc_id": "x", "text": "大连市召开会议"}, ensure_ascii=False) + "\n"
        + json.dumps({"doc_id": "x", "text": SENTENCE}, ensure_ascii=False) + "\n"
        + json.dumps({"doc_id": "名\u2028字", "text": "长春\u2029市"}, ensure_ascii=False) + "\n", encoding="utf-8")
    return folder


def _cfg(model_dir, inputs, out, *extra):
    return compose(f"infer.model_dir={model_dir}", f"infer.input={inputs}", f"infer.output={out}",
                   "infer.max_length=64", "infer.stride=16", "infer.backend=torch", *extra)


def test_outputs_never_eat_inputs(model_dir, tmp_path):
    inputs = _inputs(tmp_path / "in")
    before = (inputs / "a.txt").read_bytes()
    for out in (inputs / "a.txt", inputs / "p.jsonl", inputs / "sub" / "p.jsonl"):
        with pytest.raises(UsageError, match="input"):
            run_predict(_cfg(model_dir, inputs / "a.txt" if out.name == "a.txt" else inputs, out))
    assert (inputs / "a.txt").read_bytes() == before and not (inputs / "p.jsonl").exists()
    # an output named like a report: the reports get names of their own
    out = tmp_path / "o" / "x.html"
    s = run_predict(_cfg(model_dir, inputs, out))
    assert s.documents == 5
    assert [json.loads(line)["doc_id"] for line in out.read_text(encoding="utf-8").split("\n") if line]
    assert s.extras["html"] == tmp_path / "o" / "x.html.html" and s.extras["html"].exists()


def test_duplicate_ids_are_made_unique_and_the_report_shows_each_text(model_dir, tmp_path):
    inputs = _inputs(tmp_path / "in")
    out = tmp_path / "p.jsonl"
    run_predict(_cfg(model_dir, inputs, out))
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").split("\n") if line]
    ids = [r["doc_id"] for r in records]
    assert len(ids) == len(set(ids)) and {"x", "x#2", "名\u2028字"} <= set(ids)
    html = re.sub(r"<[^>]+>", "", out.with_suffix(".html").read_text(encoding="utf-8"))
    assert "大连市召开会议" in html and "外防输入、内防反弹" in html
    # resume reads ids with U+2028 in them: nothing is redone or duplicated
    again = run_predict(_cfg(model_dir, inputs, out))
    assert again.documents == 0 and again.skipped_done == 5
    assert out.read_text(encoding="utf-8").count("\n") == 5


def test_errors_are_logged_once_per_source_across_reruns(model_dir, tmp_path):
    inputs = _inputs(tmp_path / "in")
    out = tmp_path / "p.jsonl"
    for _ in range(2):
        s = run_predict(_cfg(model_dir, inputs, out, "infer.reports=false"))
        assert s.errors == 1
    errors = [json.loads(line) for line in out.with_suffix(".errors.jsonl").read_text().splitlines()]
    assert [Path(e["source"]).name for e in errors] == ["bin.txt"]


def test_a_second_run_on_the_same_output_is_refused_naming_the_holder(model_dir, tmp_path):
    inputs = _inputs(tmp_path / "in")
    out = tmp_path / "p.jsonl"
    with RunOutput(out, {"model_sha256": "m"}):
        with pytest.raises(UsageError, match=f"pid {os.getpid()}"):
            run_predict(_cfg(model_dir, inputs, out))
    assert not out.with_suffix(".lock").exists()
    assert run_predict(_cfg(model_dir, inputs, out, "infer.reports=false")).documents == 5


def test_resuming_with_other_settings_or_model_is_refused(model_dir, tmp_path):
    inputs = _inputs(tmp_path / "in")
    out = tmp_path / "p.jsonl"
    run_predict(_cfg(model_dir, inputs, out, "infer.reports=false"))
    (inputs / "c.txt").write_text(SENTENCE, encoding="utf-8")
    with pytest.raises(UsageError, match="another model or settings"):
        run_predict(_cfg(model_dir, inputs, out, "infer.reports=false", "infer.decode=argmax"))
    manifest = json.loads(out.with_suffix(".manifest.json").read_text())
    assert manifest["model_sha256"] and manifest["settings"]["decode"] == "viterbi"
    assert run_predict(_cfg(model_dir, inputs, out, "infer.reports=false")).documents == 1


def test_large_files_stream_and_oversized_documents_are_skipped_and_reported(model_dir, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    text = _long_text(80)
    (inputs / "big.txt").write_text(text, encoding="utf-8")
    (inputs / "small.txt").write_text(SENTENCE, encoding="utf-8")
    assert isinstance(next(iter_documents(inputs, stream_bytes=1000)), StreamDoc)
    out = tmp_path / "p.jsonl"
    s = run_predict(_cfg(model_dir, inputs, out, "infer.reports=false", "infer.stream_bytes=1000",
                         "infer.segment_chars=400", "infer.context_chars=64"))
    (big, small) = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert s.characters == len(text) + len(SENTENCE)
    assert all(text[x["start"]:x["end"]] == x["text"] for x in big["spans"]) and big["spans"]
    # too long: the streamed record is taken back, the error names the limit, the next document is kept
    out2 = tmp_path / "q.jsonl"
    s2 = run_predict(_cfg(model_dir, inputs, out2, "infer.reports=false", "infer.stream_bytes=1000",
                          "infer.segment_chars=400", "infer.context_chars=64", f"infer.max_doc_chars={len(text) // 2}"))
    assert s2.errors == 1 and s2.documents == 1
    assert [json.loads(line)["doc_id"] for line in out2.read_text(encoding="utf-8").splitlines()] == ["small"]
    (err,) = [json.loads(line) for line in out2.with_suffix(".errors.jsonl").read_text().splitlines()]
    assert err["source"].endswith("big.txt") and "max_doc_chars" in err["error"]


def test_inputs_that_are_not_read_are_reported(model_dir, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.txt").write_text(SENTENCE, encoding="utf-8")
    (inputs / "folder.txt").mkdir()
    (inputs / "folder.txt" / "inner.txt").write_text(SENTENCE, encoding="utf-8")
    outside = tmp_path / "secret.txt"
    outside.write_text("机密", encoding="utf-8")
    (inputs / "link.txt").symlink_to(outside)
    (inputs / "inside.txt").symlink_to(inputs / "a.txt")
    os.mkfifo(inputs / "pipe.txt")
    out = tmp_path / "p.jsonl"
    s = run_predict(_cfg(model_dir, inputs, out, "infer.reports=false"))
    ids = {json.loads(line)["doc_id"] for line in out.read_text(encoding="utf-8").splitlines()}
    assert ids == {"a", "folder.txt/inner", "inside"}
    errors = {Path(e["source"]).name: e["error"] for e in map(json.loads, out.with_suffix(".errors.jsonl").read_text().splitlines())}
    assert set(errors) == {"folder.txt", "link.txt", "pipe.txt"} and s.errors == 3
    assert "outside the input folder" in errors["link.txt"] and "FIFO" in errors["pipe.txt"]


def test_invalid_bytes_are_replaced_with_a_warning_or_skipped(model_dir, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "bad.txt").write_bytes(SENTENCE.encode("utf-8") + b"\xff" + SENTENCE.encode("utf-8"))
    out = tmp_path / "p.jsonl"
    run_predict(_cfg(model_dir, inputs, out, "infer.reports=false"))
    (record,) = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert record["warnings"] and "1" in record["warnings"][0]
    out2 = tmp_path / "q.jsonl"
    s = run_predict(_cfg(model_dir, inputs, out2, "infer.reports=false", "infer.on_decode_error=skip"))
    assert s.errors == 1 and s.documents == 0
    assert done_ids(out2) == set()


def test_resume_after_kill_9_gives_the_records_of_an_uninterrupted_run_on_onnx(model_dir, tmp_path):
    """``scripts/predict.py`` killed with SIGKILL mid-run, then rerun: the same records, in the same
    order, as one uninterrupted run (ONNX Runtime int8 backend)."""
    import signal
    import subprocess
    import sys
    import time

    pytest.importorskip("onnxruntime")
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(400):
        (inputs / f"d{i:03d}.txt").write_text(f"{SENTENCE}第{i}次会议。" * (1 + i % 5), encoding="utf-8")
    root = Path(__file__).resolve().parents[1]

    def command(out: Path) -> list[str]:
        return [sys.executable, str(root / "scripts" / "predict.py"), f"infer.model_dir={model_dir}", f"infer.input={inputs}",
                f"infer.output={out}", "infer.backend=onnx", "infer.reports=false", "infer.max_length=64",
                "infer.stride=16", f"hydra.run.dir={tmp_path / 'hydra'}"]

    whole = tmp_path / "whole.jsonl"
    subprocess.run(command(whole), check=True, capture_output=True)
    killed = tmp_path / "killed.jsonl"
    proc = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not killed.exists() or killed.read_bytes().count(b"\n") < 50):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lines = killed.read_bytes().count(b"\n")
    assert 50 <= lines < 400, lines  # it was killed mid-run
    subprocess.run(command(killed), check=True, capture_output=True)
    assert killed.read_bytes() == whole.read_bytes()


def test_span_layers_saved_with_the_model_are_the_default_and_an_override_wins(model_dir, tmp_path):
    """One list of span layers: saved by training, used by prediction unless overridden, written
    into the run's manifest; a layer name that does not exist is refused before the model loads."""
    from zh_policy_ner.rules.layers import saved_layers

    assert saved_layers(model_dir) == ["places:fill", "gazetteer:overwrite", "abbreviations:fill"]
    inputs = _inputs(tmp_path / "in")
    used = {}
    for name, extra in (("saved", ()), ("fill", ("infer.layers=[places,gazetteer:fill]",)), ("bare", ("infer.layers=[]",))):
        out = tmp_path / f"{name}.jsonl"
        run_predict(_cfg(model_dir, inputs, out, "infer.reports=false", *extra))
        settings = json.loads(out.with_suffix(".manifest.json").read_text())["settings"]
        used[name] = settings["layers"]
        assert settings["min_score"] == {"PER": 0.0, "LOC": 0.0, "POLICY": 0.8}  # what the model saved
    assert used == {"saved": ["places:fill", "gazetteer:overwrite", "abbreviations:fill"],
                    "fill": ["places:fill", "gazetteer:fill"], "bare": []}
    bare = [json.loads(line) for line in (tmp_path / "bare.jsonl").read_text(encoding="utf-8").split("\n") if line]
    assert all(s["score"] is not None for r in bare for s in r["spans"])  # the model's own spans only
    with pytest.raises(UsageError, match="unknown span layer 'place'"):
        run_predict(_cfg(model_dir, inputs, tmp_path / "x.jsonl", "infer.layers=[place]"))


def test_a_gazetteer_layer_without_its_file_is_refused_before_the_model_loads(model_dir, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder, ignore=shutil.ignore_patterns("onnx", "checkpoint-*"))
    (folder / "gazetteer.json").unlink()
    inputs = _inputs(tmp_path / "in")
    with pytest.raises(UsageError, match=r"gazetteer layer needs.*infer.layers=\[places:fill,abbreviations:fill\]"):
        run_predict(_cfg(folder, inputs, tmp_path / "p.jsonl"))
    assert not (tmp_path / "p.jsonl").exists()


def test_unconfident_model_spans_yield_to_the_layers(tmp_path, guideline):
    """``min_score``: with layers, a model span less probable than its label's score is left out of
    the output (the bare model keeps it, and ``model_spans`` always has it); saved with the layers."""
    import numpy as np

    from zh_policy_ner.data.dataset import bio_label_names
    from zh_policy_ner.decoding.inference import decode_spans
    from zh_policy_ner.reading.text import normalize
    from zh_policy_ner.rules.layers import SpanLayers, parse_layers, resolve_min_score, save_layers, saved_min_score

    labels = bio_label_names()
    norm = normalize("要强化疫苗接种和核酸检测。")
    probs = np.full((len(norm.text), len(labels)), 0.01)
    probs[:, 0] = 0.9
    for word, p in (("疫苗接种", 0.9), ("核酸检测", 0.55)):
        i = norm.text.index(word)
        probs[i, :], probs[i + 1 : i + 4, :] = 0.01, 0.01
        probs[i, labels.index("B-POLICY")], probs[i + 1 : i + 4, labels.index("I-POLICY")] = p, p
        probs[i : i + 4, 0] = 1 - p
    merged = [(np.arange(len(norm.text)), np.arange(1, len(norm.text) + 1), probs)]
    both = [(norm.text.index(w), norm.text.index(w) + 4, "POLICY") for w in ("疫苗接种", "核酸检测")]
    layered = SpanLayers(parse_layers(["abbreviations"]), guideline=guideline, min_score={"POLICY": 0.8})
    [pred] = decode_spans([norm], merged, labels, "viterbi", layered)
    assert pred.model_spans == both and pred.norm_spans == both[:1]
    assert [s.score for s in pred.spans] == [0.9]
    [bare] = decode_spans([norm], merged, labels, "viterbi", SpanLayers(guideline=guideline, min_score={"POLICY": 0.8}))
    assert bare.norm_spans == both  # no layers: nothing to yield to
    save_layers(tmp_path, ["abbreviations"], {"POLICY": 0.8})
    assert saved_min_score(tmp_path) == {"POLICY": 0.8} == resolve_min_score(None, tmp_path)
    assert resolve_min_score({"POLICY": 0}, tmp_path) == {"POLICY": 0.0}
