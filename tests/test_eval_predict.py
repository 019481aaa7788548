import json

import pytest

from zh_policy_ner.baselines import DictionaryTagger, JiebaTagger, align_tokens
from zh_policy_ner.evaluation import evaluate
from zh_policy_ner.metrics import entity_scores, error_cases, write_error_report
from zh_policy_ner.predict import done_ids, run_predict

from .conftest import ROOT, SEED_IDS, compose


def test_error_report_on_crafted_case(tmp_path):
    text = "市长刘向东指出要加强核酸检测和返凤人员管理"
    gold = [(2, 5, "PER"), (10, 14, "POLICY"), (16, 17, "LOC")]
    pred = [(2, 5, "PER"), (8, 14, "POLICY"), (16, 17, "PER"), (0, 2, "LOC")]
    kinds = {c.kind: c for c in error_cases(text, gold, pred)}
    assert set(kinds) == {"wrong_boundary", "wrong_type", "spurious"}
    assert kinds["wrong_boundary"].gold[3] == "核酸检测" and kinds["wrong_boundary"].pred[3] == "加强核酸检测"
    assert "[凤]" in kinds["wrong_type"].context
    missed = error_cases(text, gold, [])
    assert [c.kind for c in missed] == ["missed"] * 3
    js, md = write_error_report({"doc": error_cases(text, gold, pred)}, tmp_path)
    assert "wrong_type" in md.read_text() and json.loads(js.read_text())["doc"][0]["kind"] == "spurious"
    scores = entity_scores([gold], [pred], [len(text)])
    assert scores["PER"]["f1"] == pytest.approx(2 / 3) and scores["POLICY"]["f1"] == 0.0  # PER: 1 right, 1 wrong-type
    assert scores["micro"]["precision"] == pytest.approx(1 / 4)


def test_baselines_tag_names_and_places():
    text = "习近平总书记在湖北武汉考察"
    assert align_tokens(text, ["习近平", " ", "总书记", "在湖北"]) == [(0, 3), (3, 6), (6, 9)]
    spans = JiebaTagger().tag(text)
    assert (0, 3, "PER") in spans and (7, 9, "LOC") in spans
    d = DictionaryTagger({"武汉": "LOC", "习近平": "PER", "凤": "LOC"})
    assert d.tag(text) == [(0, 3, "PER"), (9, 11, "LOC")]  # one-character entries are left out


def test_one_cv_fold_end_to_end(tiny_model_dir, tmp_path):
    cfg = compose(f"model.name_or_path={tiny_model_dir}", f"eval.output_dir={tmp_path}", "data.max_length=64",
                  "data.stride=16", "train.max_steps=4", "train.bf16=false", f"eval.folds=[{SEED_IDS[2]}]",
                  "eval.baselines=[dictionary,jieba]")
    results, out = evaluate(cfg)
    assert results["documents"] == [SEED_IDS[2]]
    assert set(results["micro"]) == {"model", "model+gazetteer", "dictionary", "jieba"}
    # the gazetteer row holds every dictionary match, so it finds at least what the dictionary finds
    assert results["micro"]["model+gazetteer"]["micro"]["recall"] >= results["micro"]["dictionary"]["micro"]["recall"] > 0
    assert (out / "results.md").exists() and (out / "errors.md").exists() and (out / "errors.json").exists()
    assert (out / "folds" / SEED_IDS[2] / "model.safetensors").exists()


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory):
    from zh_policy_ner.training import train

    out = tmp_path_factory.mktemp("m")
    train(compose(f"model.name_or_path={tiny_model_dir}", f"train.output_dir={out}", "data.max_length=64",
                  "data.stride=16", "train.max_steps=2", "train.bf16=false"))
    return out


def test_gazetteer_overrides_model_spans(model_dir):
    from zh_policy_ner.inference import Predictor

    gaz = json.loads((model_dir / "gazetteer.json").read_text(encoding="utf-8"))
    assert gaz["谭作钧"] == "PER" and gaz["大连市"] == "LOC"
    text = "市委书记谭作钧在大连市主持会议"
    spans = Predictor.from_pretrained(str(model_dir), gazetteer=True).predict([text])[0].spans
    assert {(s.text, s.label) for s in spans} >= {("谭作钧", "PER"), ("大连市", "LOC")}
    assert all(not (a.start < b.end and b.start < a.end) for a in spans for b in spans if a is not b)


def write_inputs(folder):
    seed = (ROOT / "seeds" / "002_ea77f5f8472cfacb.txt").read_text(encoding="utf-8")
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text(seed, encoding="utf-8")
    simplified = (ROOT / "seeds" / "004_383dab57bb4e398a.txt").read_text(encoding="utf-8").replace("•", "-")
    (folder / "sub" / "gbk.txt").write_bytes(simplified.encode("gbk"))
    (folder / "sub" / "utf8.txt").write_text(simplified, encoding="utf-8")
    (folder / "empty.txt").write_bytes(b"")
    (folder / "binary.txt").write_bytes(b"\x00\x01\x02PK\x03\x04" * 50)
    (folder / "long.txt").write_text(seed * 20, encoding="utf-8")
    (folder / "page.html").write_text("<html><script>var x=1;</script><p>市委书记<b>谭作钧</b>主持会议</p></html>", encoding="utf-8")
    (folder / "docs.jsonl").write_text('{"doc_id": "j1", "text": "大连市召开会议"}\nnot json\n', encoding="utf-8")
    (folder / "a.html").write_text("<p>大连市召开会议</p>", encoding="utf-8")  # same stem as a.txt


def test_predict_robust_exact_offsets_and_resume(model_dir, tmp_path):
    inputs = tmp_path / "in"
    write_inputs(inputs)
    out = tmp_path / "out" / "pred.jsonl"
    cfg = compose(f"infer.model_dir={model_dir}", f"infer.input={inputs}", f"infer.output={out}", "infer.max_length=64",
                  "infer.stride=16")
    summary = run_predict(cfg)
    records = {r["doc_id"]: r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    assert summary.errors == 2  # binary.txt and the bad JSONL line, each reported
    errors = [json.loads(l) for l in out.with_suffix(".errors.jsonl").read_text().splitlines()]
    assert {e["source"].split("/")[-1] for e in errors} == {"binary.txt", "docs.jsonl:2"}
    assert set(records) == {"a", "a.txt", "sub/gbk", "sub/utf8", "empty", "long", "page", "j1"}
    assert records["empty"]["spans"] == []
    from zh_policy_ner.corpus import iter_documents

    texts = {d.source: d.text for d in iter_documents(inputs) if hasattr(d, "text")}
    for r in records.values():
        for s in r["spans"]:
            assert texts[r["source"]][s["start"]:s["end"]] == s["text"]
    assert records["sub/gbk"]["spans"] == records["sub/utf8"]["spans"]
    for ext in (".entities.csv", ".aggregate.csv", ".html"):
        assert out.with_suffix("").with_suffix(ext).exists()
    assert "<mark" in out.with_suffix(".html").read_text() or all(not r["spans"] for r in records.values())
    # interrupted run: a torn last line is dropped and redone, nothing is duplicated
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:10], encoding="utf-8")
    assert len(done_ids(out)) == 3
    again = run_predict(cfg)
    assert again.skipped_done == 3 and again.documents == len(records) - 3
    ids = [json.loads(l)["doc_id"] for l in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(ids) == sorted(records)


def test_predict_smoke_on_scraped_reports(model_dir, scraped_dir, tmp_path):
    out = tmp_path / "p.jsonl"
    s = run_predict(compose(f"infer.model_dir={model_dir}", f"infer.input={scraped_dir}", f"infer.output={out}",
                            "infer.reports=false"))
    assert s.documents == len(list(scraped_dir.glob("r*.txt"))) and s.errors == 0
    for r in map(json.loads, out.read_text(encoding="utf-8").splitlines()):
        raw = (scraped_dir / f"{r['doc_id']}.txt").read_text(encoding="utf-8")
        assert all(raw[x["start"]:x["end"]] == x["text"] for x in r["spans"])


@pytest.mark.parametrize("fmt", ["labelstudio", "doccano"])
def test_labelstudio_and_doccano_round_trip(fmt, tmp_path):
    from zh_policy_ner.annotations import load_annotations
    from zh_policy_ner.exchange import export_predictions, import_corrected

    src = tmp_path / "reports" / "r1.txt"
    src.parent.mkdir()
    raw = "市委書(shū)記王魯明主持會議,要求加強核酸檢測。返威人員"
    src.write_text(raw, encoding="utf-8")
    pred = [{"start": 9, "end": 12, "label": "PER", "text": raw[9:12], "score": 0.9},
            {"start": 21, "end": 25, "label": "POLICY", "text": raw[21:25], "score": 0.8}]
    preds = tmp_path / "pred.jsonl"
    preds.write_text(json.dumps({"doc_id": "r1", "source": str(src), "spans": pred}, ensure_ascii=False) + "\n", encoding="utf-8")
    exported = export_predictions(preds, fmt, tmp_path / ("tasks.json" if fmt == "labelstudio" else "tasks.jsonl"))
    # a person corrects it: adds the missed one-character place, keeps the rest
    if fmt == "labelstudio":
        tasks = json.loads(exported.read_text(encoding="utf-8"))
        result = tasks[0]["predictions"][0]["result"]
        result.append({"from_name": "label", "to_name": "text", "type": "labels",
                       "value": {"start": 27, "end": 28, "text": "威", "labels": ["LOC"]}})
        tasks[0]["annotations"] = [{"result": result}]
        exported.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
    else:
        row = json.loads(exported.read_text(encoding="utf-8"))
        row["label"].append([27, 28, "LOC"])
        row["label"].append([0, 3, "BOGUS"])
        exported.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "annotations" / "new.jsonl"
    docs, problems = import_corrected(exported, fmt, out, root=tmp_path)
    assert len(problems) == (1 if fmt == "doccano" else 0)
    loaded, errors = load_annotations(out, root=tmp_path)
    assert errors == []
    assert [(s.start, s.end, s.label, s.text) for s in loaded[0].spans] == [
        (9, 12, "PER", "王魯明"), (21, 25, "POLICY", "核酸檢測"), (27, 28, "LOC", "威")]
    assert loaded[0].source == "reports/r1.txt"


def test_predict_shards_by_rank(model_dir, tmp_path, monkeypatch):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(5):
        (inputs / f"d{i}.txt").write_text(f"市委书记谭作钧主持会议{i}", encoding="utf-8")
    out = tmp_path / "p.jsonl"
    ids = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        s = run_predict(compose(f"infer.model_dir={model_dir}", f"infer.input={inputs}", f"infer.output={out}"))
        assert s.output.name == f"p.rank{rank:03d}-of-002.jsonl"
        ids += [json.loads(l)["doc_id"] for l in s.output.read_text().splitlines()]
    assert sorted(ids) == [f"d{i}" for i in range(5)]


def test_benchmark_runs_both_systems(model_dir, tmp_path):
    from zh_policy_ner.bench import run_benchmark

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.txt").write_text("市委书记谭作钧主持会议,要求加强核酸检测。" * 20, encoding="utf-8")
    rows = run_benchmark(str(model_dir), str(inputs), 3, ["pipeline", "ours:fp32", "ours:int8"], tmp_path / "b",
                         max_length=64, stride=16, batch_size=4)
    assert [r["system"] for r in rows] == ["pipeline", "ours:fp32", "ours:int8"]
    assert all(r["docs"] == 3 and r["chars_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in rows)
    assert rows[1]["agreement_f1_vs_fp32"] == 1.0
    assert "speed-up vs pipeline" in (tmp_path / "b" / "bench.md").read_text()
