import json

import pytest
import torch

from zh_policy_ner.common.cli import UsageError
from zh_policy_ner.rules.baselines import JiebaTagger, align_tokens
from zh_policy_ner.rules.layers import LayerError, SpanLayers, parse_layers
from zh_policy_ner.rules.lexicon import (DictionaryTagger, admin_places, admin_units, build_gazetteer, measure_phrases,
                                   place_abbreviations, place_tagger, quoted_formulas, read_terms)
from zh_policy_ner.evaluation.evaluate import evaluate
from zh_policy_ner.data.metrics import entity_scores, error_cases, write_error_report
from zh_policy_ner.prediction.batch import done_ids
from zh_policy_ner.prediction.predict import run_predict

from .conftest import ROOT, SEED_IDS, SEEDS_ANN, compose, tiny_config


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
    d = DictionaryTagger({"武汉": "LOC", "习近平": "PER", "凤": "LOC", "考察组": "O", "察": "LOC"})
    assert d.tag(text) == [(0, 3, "PER"), (9, 11, "LOC")]  # one-character entries are left out
    # a longer entry sharing the first characters of the text's end never yields a span past the end
    assert DictionaryTagger({"大连": "LOC", "大连市委": "O"}).tag("会议在大连") == [(3, 5, "LOC")]


def test_quoted_formulas_follow_the_guideline(guideline):
    text = "坚持“两手抓”,落实“八个坚决、八个严防”和“四方”责任,增强“四个意识”,《关于“三保一统筹”的通知》,“十三五”,“两会”,“信用大连”"
    found = [text[s:e] for s, e, _ in quoted_formulas(text, guideline)]
    # a numeral-led quote is a formula; two characters are too few; no spans inside 《》; plan periods and
    # meetings are not measures; 四个意识 is (it is a guideline "O" term, see below)
    assert found == ["两手抓", "八个坚决、八个严防", "四个意识"]
    tagger = DictionaryTagger({"四个意识": "O", "联防联控机制": "O", "联防联控": "POLICY"}, formulas=True, guideline=guideline)
    text += "。国务院联防联控机制要求联防联控"
    spans = [(text[s:e], lab) for s, e, lab in tagger.tag(text)]
    assert spans == [("两手抓", "POLICY"), ("八个坚决、八个严防", "POLICY"), ("联防联控", "POLICY")]


def test_measure_phrases_after_verbs_without_verb_degree_or_head(guideline):
    text = ("要加强社区管控,用好网格。要加大流调溯源力度,严格执行居家隔离措施,进一步强化疫苗接种;"
            "落实好出院患者管理,抓细各项防控工作,做好疫情防控工作,加强统一管理,加强领导")
    assert [text[s:e] for s, e, _ in measure_phrases(text, guideline)] == ["社区管控", "流调溯源", "居家隔离", "疫苗接种", "出院患者管理"]
    tagger = DictionaryTagger({"社区管控": "O"}, phrases=True, guideline=guideline)  # a mention (even an O one) wins over a phrase
    assert [text[s:e] for s, e, _ in tagger.tag(text)][:2] == ["流调溯源", "居家隔离"]


def test_model_spans_tidied_by_the_guideline(guideline):
    from zh_policy_ner.rules.layers import tidy_spans

    text = "市委书记王凯强调, 编辑: 谭立勇 威海 李友传达丹东 学习习近平 刘国强调研 长春 江城"

    def at(word, label, extra=0):
        i = text.index(word)
        return (i, i + len(word) + extra, label)

    spans = [at("王凯强", "PER"), at("谭立勇", "PER", 1), at("威海", "LOC"), at("李友传达", "PER"), at("学", "PER"),
             at("习近平", "PER"), at("刘国强", "PER"), at("长春 江城", "LOC")]
    assert [(text[s:e], lab) for s, e, lab in tidy_spans(text, spans, guideline)] == [
        ("王凯", "PER"), ("谭立勇", "PER"), ("威海", "LOC"), ("李友", "PER"), ("习近平", "PER"), ("刘国强", "PER"),
        ("长春", "LOC"), ("江城", "LOC")]


def test_guideline_terms_withheld_and_training_mentions_win(tmp_path, guideline):
    from zh_policy_ner.data.dataset import PreparedDoc
    from zh_policy_ner.reading.text import normalize

    terms = tmp_path / "terms.tsv"
    terms.write_text("# comment\n核酸检测\tPOLICY\n閉環管理\tPOLICY\n大连\tPOLICY\n", encoding="utf-8")
    assert read_terms(terms) == {"核酸检测": "POLICY", "闭环管理": "POLICY", "大连": "POLICY"}  # normalised
    train = [PreparedDoc("t", normalize("大连召开会议"), [(0, 2, "LOC")])]
    gcfg = compose(f"train.gazetteer.guideline_terms={terms}").train.gazetteer
    gaz = build_gazetteer(train, gcfg, guideline, withheld_texts=["会上要求加强核酸检测"])
    assert gaz.mentions == {"闭环管理": "POLICY", "大连": "LOC"}  # 核酸检测 occurs in a held-out text
    path = tmp_path / "gazetteer.json"
    gaz.save(path)
    assert DictionaryTagger.load(path, guideline).tag("大连实行闭环管理,“两手抓”") == [(0, 2, "LOC"), (4, 8, "POLICY"), (10, 13, "POLICY")]
    path.write_text('{"大连": "LOC"}', encoding="utf-8")  # the flat format of earlier versions
    assert DictionaryTagger.load(path).tag("大连“两手抓”") == [(0, 2, "LOC")]
    terms.write_text("核酸检测\tPOLICY\n核酸检测 POLICY\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"terms.tsv:2: expected 'term<TAB>label'"):
        read_terms(terms)


def test_place_names_fill_in_under_the_model_and_the_gazetteer_wins(guideline):
    places = admin_places(guideline)
    assert places["大连市"] == places["大连"] == places["广西"] == places["虹口区"] == "LOC"
    assert "城区" not in places and "东方" not in places and "虹口" not in places  # common words; district short forms
    text = "大连晚报讯 李长春在长春市调研核酸检测"
    model = [(6, 9, "PER"), (10, 12, "LOC")]  # 长春 where the guideline keeps the suffix: 长春市
    gazetteer = DictionaryTagger({"核酸检测": "POLICY", "长春市": "LOC"})
    spans = SpanLayers(parse_layers(["places", "gazetteer"]), gazetteer, DictionaryTagger(places), guideline)(text, model)
    # 大连 comes from the place names, 李长春 stays the model's PER (a place name never breaks a model
    # span), the gazetteer's 长春市 replaces the model's overlapping span
    assert [(text[s:e], lab) for s, e, lab in spans] == [("大连", "LOC"), ("李长春", "PER"), ("长春市", "LOC"),
                                                         ("核酸检测", "POLICY")]
    assert SpanLayers()(text, model) == model
    # a place match wins over a truncated model LOC inside it (长春|市委, 大|连), a model PER that is a
    # place name becomes LOC (威海新闻网)
    text = "长春市委书记 信用大连 编辑: 威海新闻网"
    model = [(0, 2, "LOC"), (9, 10, "LOC"), (16, 18, "PER")]
    assert [(text[s:e], lab) for s, e, lab in SpanLayers(parse_layers(["places"]), guideline=guideline)(text, model)] == [
        ("长春市", "LOC"), ("大连", "LOC"), ("威海", "LOC")]


def test_prefecture_short_forms_and_place_abbreviations(guideline):
    shorts = {u.name: u.short for u in admin_units(guideline.ambiguous_places)}
    assert shorts["延边朝鲜族自治州"] == "延边" and shorts["巴音郭楞蒙古自治州"] == "巴音郭楞" and shorts["丹东市"] == "丹东"
    assert shorts["虹口区"] is None
    text = "丹东市召开会议,要加强返凤人员、来威人员和返乡人员管理,返鄂人员,留‘凤’过年,返岗人员"
    spans = SpanLayers(parse_layers(["places"]), places=place_tagger(guideline), guideline=guideline)(text, [])
    found = [(text[s - 1 : s], text[s:e]) for s, e, _ in place_abbreviations(text, spans, guideline)]
    # 凤 starts 凤城市, a city under 丹东市; 鄂 is Hubei's; 威 names nothing here; 乡 and 岗 are not places
    assert found == [("返", "凤"), ("返", "鄂"), ("‘", "凤")]
    assert [text[s:e] for s, e, _ in SpanLayers(parse_layers(["places", "abbreviations"]), guideline=guideline)(text, [])] == [
        "丹东市", "凤", "鄂", "凤"]


def test_one_cv_fold_end_to_end(tiny_model_dir, tmp_path):
    overrides = ["train.max_steps=4", f"eval.folds=[{SEED_IDS[2]}]", "eval.baselines=[dictionary,jieba]"]
    results, out = evaluate(tiny_config(tiny_model_dir, tmp_path, f"eval.output_dir={tmp_path}", *overrides))
    assert results["documents"] == [SEED_IDS[2]]
    assert set(results["micro"]) == {"model", "model+lexicons", "dictionary", "jieba"}
    # the gazetteer row holds every dictionary match, so it finds at least what the dictionary finds
    assert results["micro"]["model+lexicons"]["micro"]["recall"] >= results["micro"]["dictionary"]["micro"]["recall"] > 0
    assert all((out / f).exists() for f in ("results.md", "errors.md", "errors.json", "errors-output.md", "errors-output.json"))
    whole = results["gold_whole_words"]  # the held-out article's labels, as whole words of the segmentation
    assert set(whole) == {"PER", "LOC", "POLICY"} and all(0 < x["whole"] <= x["spans"] for x in whole.values())
    weights = (out / "folds" / SEED_IDS[2] / "model.safetensors").read_bytes()
    # a fold is reproducible: the same fold trained again (random state moved on since) gives the same weights
    torch.manual_seed(123)
    evaluate(tiny_config(tiny_model_dir, tmp_path / "again", f"eval.output_dir={tmp_path / 'again'}", *overrides))
    assert (tmp_path / "again" / "folds" / SEED_IDS[2] / "model.safetensors").read_bytes() == weights


def test_cv_resumes_from_fold_cache_and_inference_ablations_do_not_retrain(tiny_cfg, tmp_path):
    base = [f"eval.output_dir={tmp_path}", "eval.k=2", "eval.baselines=[]", f"data.annotations={SEEDS_ANN}"]
    first, _ = evaluate(tiny_cfg(*base))
    assert sorted(first["documents"]) == SEED_IDS              # two folds by article cover every article once
    tuning = first["min_score_tuning"]  # the output at each POLICY min_score, and nested over the folds
    assert tuning["label"] == "POLICY" and list(tuning["pooled"]) == [str(float(t)) for t in (0, .5, .6, .7, .8, .9)]
    assert len(tuning["nested"]["chosen"]) == 2 and set(tuning["nested"]["chosen"]) <= set(tuning["grid"])
    assert tuning["pooled"]["0.8"]["micro"] == first["micro"]["model+lexicons"]["micro"]  # the default's row
    weights = sorted((tmp_path / "folds").glob("fold*/model.safetensors"))
    assert len(weights) == 2
    stamps = [w.stat().st_mtime_ns for w in weights]
    # inference only: layers, decoding and the guideline's spans rule re-score the cached probabilities
    ablation, _ = evaluate(tiny_cfg(*base, "infer.layers=[gazetteer,abbreviations]"))
    assert ablation["micro"]["model"] == first["micro"]["model"]
    argmax, _ = evaluate(tiny_cfg(*base, "infer.decode=argmax"))
    loose, _ = evaluate(tiny_cfg(*base, "guideline.spans.whole_words=[]", "guideline.spans.never_adjacent=[]"))
    assert [w.stat().st_mtime_ns for w in weights] == stamps and argmax["documents"] == loose["documents"]
    # settings that could only fail at decoding are refused before a fold trains
    for bad, message in (("infer.min_score=0.8", "infer.min_score must map labels"),
                         ("infer.min_score={POLICY:2}", "infer.min_score.POLICY must be in"),
                         ("infer.decode=beam", "infer.decode must be viterbi or argmax"),
                         ("eval.tune_min_score=MEASURE", "not among data.labels"),
                         ("eval.min_score_grid=[]", "eval.min_score_grid is empty")):
        with pytest.raises(UsageError, match=message):
            evaluate(tiny_cfg(*base, "train.lr=7e-3", bad))
    assert [w.stat().st_mtime_ns for w in weights] == stamps
    weights[1].parent.joinpath("fold_probs.npz").unlink()   # as if interrupted in the second fold
    evaluate(tiny_cfg(*base))
    assert weights[0].stat().st_mtime_ns == stamps[0] and weights[1].stat().st_mtime_ns != stamps[1]
    evaluate(tiny_cfg(*base, "train.lr=1e-3"))                     # a training setting: every fold retrains
    assert weights[0].stat().st_mtime_ns != stamps[0]
    # the guideline's learnt part (lexicon features: here the measure-phrase verbs) retrains too
    changes = ["train.lr=1e-3", "guideline.measure_phrases.verbs=['加强']"]
    stamp = weights[0].stat().st_mtime_ns
    evaluate(tiny_cfg(*base, *changes))
    assert weights[0].stat().st_mtime_ns != stamp
    # a corrected annotation (one span removed) retrains the folds that read the article, here both
    lines = SEEDS_ANN.read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    first["spans"] = first["spans"][1:]
    edited = tmp_path / "edited.jsonl"
    edited.write_text("\n".join([json.dumps(first, ensure_ascii=False), *lines[1:]]) + "\n", encoding="utf-8")
    stamps = [w.stat().st_mtime_ns for w in weights]
    evaluate(tiny_cfg(*[o for o in base if not o.startswith("data.annotations")], *changes, f"data.annotations={edited}"))
    assert all(w.stat().st_mtime_ns != s for w, s in zip(weights, stamps))


def test_learning_curve_on_three_documents(tiny_cfg, tmp_path):
    lines = (ROOT / "annotations" / "seeds.jsonl").read_text(encoding="utf-8").splitlines()[:3]
    ann = tmp_path / "three.jsonl"
    ann.write_text("\n".join(lines) + "\n", encoding="utf-8")
    results, out = evaluate(tiny_cfg(f"data.annotations={ann}", "eval.mode=curve", "eval.k=3", "eval.curve_sizes=[1,2]"))
    assert [r["train_docs"] for r in results["rows"]] == [1, 2]
    assert all({"model", "model+lexicons"} <= set(r) for r in results["rows"])
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| 1 |" in (out / "curve.md").read_text(encoding="utf-8")


def test_heldout_evaluation_warns_when_the_model_saw_the_article(model_dir, tmp_path, caplog):
    cfg = compose(f"eval.model_dir={model_dir}", "eval.mode=heldout", f"data.heldout=[{SEED_IDS[1]}]",
                  f"eval.output_dir={tmp_path}", "eval.baselines=[]", "data.max_length=64", "data.stride=16")
    results, out = evaluate(cfg)
    assert results["documents"] == [SEED_IDS[1]] and (out / "errors-output.md").exists()
    assert "not held-out scores" in caplog.text and SEED_IDS[1] in caplog.text


def test_gazetteer_overrides_model_spans(model_dir):
    from zh_policy_ner.decoding.inference import Predictor

    gaz = json.loads((model_dir / "gazetteer.json").read_text(encoding="utf-8"))
    assert gaz["mentions"]["谭作钧"] == "PER" and gaz["mentions"]["大连市"] == "LOC" and gaz["quoted_formulas"]
    assert gaz["mentions"]["核酸检测"] == "POLICY"  # a guideline term (the fixture trains without held-out docs)
    text = "市委书记谭作钧在大连市主持会议"
    spans = Predictor.from_pretrained(str(model_dir), layers=["gazetteer"]).predict([text])[0].spans
    assert {(s.text, s.label) for s in spans} >= {("谭作钧", "PER"), ("大连市", "LOC")}
    assert all(s.score is None for s in spans if s.text in ("谭作钧", "大连市"))  # lexicon spans have no model score
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
    from zh_policy_ner.reading.corpus import iter_documents

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
    from zh_policy_ner.labelling.annotations import load_annotations
    from zh_policy_ner.labelling.exchange import export_predictions, import_corrected

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
    report = import_corrected(exported, fmt, out, root=tmp_path)
    assert len(report.problems) == (1 if fmt == "doccano" else 0)
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
    from zh_policy_ner.prediction.bench import run_benchmark

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.txt").write_text("市委书记谭作钧主持会议,要求加强核酸检测。" * 20, encoding="utf-8")
    rows = run_benchmark(str(model_dir), str(inputs), 3, ["pipeline", "ours:fp32", "ours:int8"], tmp_path / "b",
                         max_length=64, stride=16, batch_size=4)
    assert [r["system"] for r in rows] == ["pipeline", "ours:fp32", "ours:int8"]
    assert all(r["docs"] == 3 and r["chars_per_s"] > 0 and r["peak_rss_mb"] > 0 for r in rows)
    assert rows[1]["agreement_f1_vs_fp32"] == 1.0
    assert "speed-up vs pipeline" in (tmp_path / "b" / "bench.md").read_text()


def test_gazetteer_modes_decide_who_wins_an_overlap():
    text = "要落实排查管控和全员核酸检测"
    gaz = DictionaryTagger({"排查": "POLICY", "全员核酸检测": "POLICY"})
    model = [(3, 7, "POLICY"), (10, 14, "POLICY")]          # 排查管控 (longer), 核酸检测 (shorter)
    words = lambda spans: [text[s:e] for s, e, _ in spans]  # noqa: E731
    layered = lambda mode: SpanLayers(parse_layers([f"gazetteer:{mode}"]), gaz)(text, model)  # noqa: E731
    assert words(layered("overwrite")) == ["排查", "全员核酸检测"]
    assert words(layered("fill")) == ["排查管控", "核酸检测"]
    assert words(layered("longest")) == ["排查管控", "全员核酸检测"]
    with pytest.raises(LayerError, match="no mode 'sideways'"):
        layered("sideways")
    with pytest.raises(LayerError, match="unknown span layer 'gazeteer'"):
        parse_layers(["gazeteer"])
