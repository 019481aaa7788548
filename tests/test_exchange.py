"""The correction loop: Label Studio (full JSON and JSON_MIN) and doccano imports, anchoring,
correction cost, agreement, export order."""
from __future__ import annotations

import json
import shutil

import pytest

from zh_policy_ner.labelling.annotations import load_annotations
from zh_policy_ner.labelling.exchange import (agreement, correction_cost, export_predictions, import_corrected, labelstudio_config,
                                    main)
from zh_policy_ner.reading.text import jsonl_lines

RAW = "市委書(shū)記王魯明主持會議,要求加強核酸檢測。返威人員"
PER, POL, LOC = (9, 12, "PER"), (21, 25, "POLICY"), (27, 28, "LOC")


def _region(s, e, lab, raw=RAW):
    return {"id": f"x{s}", "from_name": "label", "to_name": "text", "type": "labels",
            "value": {"start": s, "end": e, "text": raw[s:e], "labels": [lab]}}


@pytest.fixture()
def report(tmp_path):
    src = tmp_path / "outside" / "r1.txt"
    src.parent.mkdir()
    src.write_text(RAW, encoding="utf-8")
    return src


def _task(doc_id, source, annotations, predictions):
    return {"id": hash(doc_id) % 1000, "data": {"text": RAW, "doc_id": doc_id, "source": str(source)},
            "annotations": annotations, "predictions": predictions}


def test_labelstudio_full_export_only_human_annotations_become_gold(report, tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    # Label Studio's own export: predictions as integer ids; a cancelled (skipped) annotation;
    # two annotators who disagree; a task nobody annotated.
    tasks = [
        _task("a", report, [{"id": 1, "completed_by": 1, "was_cancelled": False, "created_at": "2026-01-01T10:00:00Z",
                             "result": [_region(*PER)]},
                            {"id": 2, "completed_by": {"id": 2, "email": "b@x"}, "was_cancelled": False,
                             "created_at": "2026-01-02T10:00:00Z", "result": [_region(*PER), _region(*LOC)]}], [7]),
        _task("b", report, [{"id": 3, "was_cancelled": True, "result": [_region(*POL)]}], [8]),
        _task("c", report, [], [{"model_version": "m", "result": [_region(*PER)]}]),
    ]
    exported = tmp_path / "export.json"
    exported.write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
    rep = import_corrected(exported, "labelstudio", root / "annotations" / "new.jsonl", root=root)
    assert [d.doc_id for d in rep.docs] == ["a"]
    assert [(s.start, s.end, s.label) for s in rep.docs[0].spans] == [PER, LOC]   # the latest annotator
    assert len(rep.skipped) == 2 and "no human annotation" in rep.skipped[0]
    assert any("disagree" in n and "b@x" in n for n in rep.notes)
    assert rep.docs[0].source == "../outside/r1.txt"                            # relative, never absolute
    first = import_corrected(exported, "labelstudio", root / "first.jsonl", root=root, rule="first")
    assert [(s.start, s.end, s.label) for s in first.docs[0].spans] == [PER]
    accepted = import_corrected(exported, "labelstudio", root / "acc.jsonl", root=root, accept_predictions=True)
    assert [d.doc_id for d in accepted.docs] == ["a", "c"] and accepted.from_predictions == 1


def test_labelstudio_json_min_and_anchor_to_repository_copy(report, tmp_path):
    root = tmp_path / "repo"
    (root / "scraped").mkdir(parents=True)
    shutil.copy(report, root / "scraped" / "r1.txt")
    rows = [{"text": RAW, "doc_id": "r1", "source": str(report), "id": 5, "annotator": "a@x", "annotation_id": 9,
             "created_at": "2026", "updated_at": "2026", "lead_time": 3.2,
             "label": [{"start": s, "end": e, "text": RAW[s:e], "labels": [lab]} for s, e, lab in (PER, POL, LOC)]},
            {"text": RAW, "doc_id": "r2", "source": "nowhere.txt", "id": 6, "annotator": "a@x"}]   # annotated, no region
    exported = tmp_path / "min.json"
    exported.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    out = root / "annotations" / "new.jsonl"
    rep = import_corrected(exported, "labelstudio", out, root=root, anchors=[root / "scraped"])
    assert [d.source for d in rep.docs] == ["scraped/r1.txt", "scraped/r1.txt"]   # same text: the same copy
    loaded, errors = load_annotations(out, root=root)
    assert errors == []
    assert [(s.start, s.end, s.label, s.text) for s in loaded[0].spans] == [
        (9, 12, "PER", "王魯明"), (21, 25, "POLICY", "核酸檢測"), (27, 28, "LOC", "威")]
    assert loaded[1].spans == []


def test_correction_cost_counts_each_kind():
    suggested = [(0, 3, "PER"), (5, 8, "LOC"), (10, 12, "POLICY")]
    gold = [(0, 3, "PER"), (5, 9, "LOC"), (20, 22, "LOC")]
    assert dict(correction_cost(suggested, gold)) == {"accepted": 1, "changed": 1, "deleted": 1, "added": 1}


def test_doccano_entities_shape_is_imported_and_unknown_shape_refused(report, tmp_path):
    rows = [{"text": RAW, "doc_id": "r1", "source": str(report), "relations": [],
             "entities": [{"id": 1, "start_offset": 9, "end_offset": 12, "label": "PER"}]}]
    f = tmp_path / "ents.jsonl"
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    rep = import_corrected(f, "doccano", tmp_path / "a.jsonl", root=tmp_path)
    assert [(s.start, s.end, s.label) for s in rep.docs[0].spans] == [PER]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": RAW, "spans": [[9, 12, "PER"]]}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*'label' \(or 'entities'\)"):
        import_corrected(bad, "doccano", tmp_path / "b.jsonl", root=tmp_path)


def test_doccano_label_format_round_trip(report, tmp_path):
    preds = tmp_path / "pred.jsonl"
    preds.write_text(json.dumps({"doc_id": "r1", "source": str(report),
                                 "spans": [{"start": 9, "end": 12, "label": "PER", "text": "王魯明", "score": 0.9}]},
                                ensure_ascii=False) + "\n", encoding="utf-8")
    out = export_predictions(preds, "doccano", tmp_path / "tasks.jsonl")
    row = json.loads(out.read_text(encoding="utf-8"))
    assert row["text"] == RAW and row["label"] == [[9, 12, "PER"]]
    rep = import_corrected(out, "doccano", tmp_path / "a.jsonl", root=tmp_path)
    assert rep.docs[0].spans[0].text == "王魯明"


def test_export_orders_by_uncertainty_and_config_follows_labels(report, tmp_path):
    recs = [{"doc_id": d, "source": str(report), "spans": [{"start": 9, "end": 12, "label": "PER", "text": "王魯明", "score": sc}]}
            for d, sc in (("sure", 0.99), ("unsure", 0.41))]
    preds = tmp_path / "pred.jsonl"
    preds.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    out = export_predictions(preds, "labelstudio", tmp_path / "tasks.json", order="uncertainty")
    tasks = json.loads(out.read_text(encoding="utf-8"))
    assert [t["data"]["doc_id"] for t in tasks] == ["unsure", "sure"]
    assert tasks[0]["predictions"][0]["score"] == 0.41
    assert 'value="ORG"' in labelstudio_config(["PER", "ORG"]) and 'value="POLICY"' not in labelstudio_config(["PER", "ORG"])


def test_agreement_scores_and_lists_disagreements(tmp_path, capsys):
    (tmp_path / "r.txt").write_text(RAW, encoding="utf-8")
    from zh_policy_ner.labelling.annotations import sha256_bytes

    sha = sha256_bytes((tmp_path / "r.txt").read_bytes())
    for name, spans in (("a.jsonl", [PER, POL]), ("b.jsonl", [PER, LOC])):
        rec = {"doc_id": "r", "source": "r.txt", "text_sha256": sha,
               "spans": [{"start": s, "end": e, "label": lab, "text": RAW[s:e]} for s, e, lab in spans]}
        (tmp_path / name).write_text(json.dumps(rec, ensure_ascii=False) + "\n", encoding="utf-8")
    a, _ = load_annotations(tmp_path / "a.jsonl", root=tmp_path)
    b, _ = load_annotations(tmp_path / "b.jsonl", root=tmp_path)
    scores, diffs = agreement(a, b)
    assert scores["PER"]["f1"] == 1.0 and scores["POLICY"]["f1"] == 0.0 and scores["all"]["f1"] == 0.5
    assert len(diffs) == 2 and "A only\tPOLICY" in diffs[0]
    assert main(["agree", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), "--root", str(tmp_path)]) == 0
    assert "all\t0.500" in capsys.readouterr().out


def test_jsonl_lines_split_on_newline_only():
    text = json.dumps({"t": "a\u2028b\u2029c\x85d"}, ensure_ascii=False) + "\n\n" + "{}\n"
    assert [n for n, _ in jsonl_lines(text)] == [1, 3]
    assert json.loads(jsonl_lines(text)[0][1])["t"] == "a\u2028b\u2029c\x85d"


def test_validator_confines_source_and_names_wrong_type(tmp_path):
    ann = tmp_path / "annotations" / "x.jsonl"
    ann.parent.mkdir()
    ann.write_text(json.dumps({"doc_id": "a", "source": "../../etc/passwd", "text_sha256": "0", "spans": []}) + "\n"
                   + json.dumps({"doc_id": "b", "source": 5, "text_sha256": "0", "spans": []}) + "\n", encoding="utf-8")
    _, errors = load_annotations(ann, strict=False)
    assert [e.line for e in errors] == [1, 2]
    assert "outside the root" in errors[0].message and "must be a path" in errors[1].message


def test_resume_reads_records_with_line_separators_inside(tmp_path):
    from zh_policy_ner.reading.corpus import read_appended_jsonl
    from zh_policy_ner.prediction.batch import done_ids
    from zh_policy_ner.prediction.reports import read_predictions

    out = tmp_path / "p.jsonl"
    recs = [{"doc_id": "a\u2028b", "spans": [{"text": "x\u2029y\x85"}]}, {"doc_id": "c", "spans": []}]
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    assert read_appended_jsonl(out) == recs and read_predictions(out) == recs
    assert done_ids(out) == {"a\u2028b", "c"}


def test_readme_correction_loop_runs_as_written(model_dir, tmp_path):
    """The README's 'Labelling more reports' commands, run as written in a fresh folder (the
    Label Studio step, done by a person, is simulated: every suggestion accepted, one span added)."""
    import os
    import re
    import subprocess
    import sys

    from .conftest import ROOT

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"### Labelling more reports.*?```bash\n(.*?)```", readme, re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(commands) >= 5
    (tmp_path / "outputs").mkdir()
    shutil.copytree(model_dir, tmp_path / "outputs" / "model")
    new = tmp_path / "new_reports"
    new.mkdir()
    (new / "r1.txt").write_text(RAW, encoding="utf-8")
    (new / "r2.txt").write_text("市委书记谭作钧主持会议,要求落实核酸检测。", encoding="utf-8")
    env = {**os.environ, "PROJECT_ROOT": str(tmp_path), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

    def run(cmd):
        cmd = cmd.replace("NEW_REPORTS", str(new)).replace("python scripts/", f"{sys.executable} {ROOT}/scripts/")
        cmd = cmd.replace("python -m", f"{sys.executable} -m")
        res = subprocess.run(cmd, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, f"{cmd}\n{res.stdout}\n{res.stderr}"
        return res

    for cmd in commands:
        if "exchange import" in cmd:  # a person corrects the tasks in Label Studio and exports them
            tasks = json.loads((tmp_path / "outputs" / "new" / "tasks.json").read_text(encoding="utf-8"))
            for t in tasks:
                result = list(t["predictions"][0]["result"])
                if t["data"]["doc_id"] == "r1":
                    result = [r for r in result if r["value"]["start"] != 27] + [_region(*LOC)]
                t["annotations"] = [{"id": 1, "completed_by": 1, "result": result}]
            (tmp_path / "export.json").write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
        out = run(cmd)
    assert "OK: 2 documents" in out.stdout
    docs, errors = load_annotations(tmp_path / "annotations", root=tmp_path)
    assert errors == [] and {d.source for d in docs} == {"reports/r1.txt", "reports/r2.txt"}
    r1 = next(d for d in docs if d.doc_id == "r1")
    assert (27, 28, "LOC") in {(s.start, s.end, s.label) for s in r1.spans}
