"""The Ray Data engine (infer.engine=ray) writes what the local engine writes: the same record lines
in the same order, the same errors, and resumes to the same file.

Byte-identical records need a backend whose scores do not depend on which windows share a batch
(workers batch other documents together than the local engine): torch fp32 and ONNX (one window
at a time). bf16 (``precision=auto`` on AMX CPUs) gives the same spans, scores within 0.01."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from .conftest import compose
from zh_policy_ner.common.cli import UsageError

HAS_RAY = importlib.util.find_spec("ray") is not None
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated:DeprecationWarning")  # Ray Data's own settings
needs_ray = pytest.mark.skipif(not HAS_RAY, reason='Ray is not installed (pip install -e ".[ray]")')

SENTENCES = ["市委书记谭作钧主持会议,要求加强核酸检测。", "大连市召开疫情防控工作会议,市长陈绍旺出席。",
             "会议传达学习了省委常委会议精神,部署春节期间安全生产工作。", "长春市委常委会召开会议,研究乡村振兴战略。"]


def write_inputs(folder: Path) -> None:
    """Reports of every kind the engines read: text, HTML, JSONL (a duplicate id), a binary file."""
    folder.mkdir(parents=True)
    for k in range(5):
        (folder / f"r{k:02d}.txt").write_text("\n".join(SENTENCES[k % 4:] + SENTENCES[: k % 4]) * (k + 1),
                                              encoding="utf-8")
    (folder / "sub").mkdir()
    (folder / "sub" / "gbk.txt").write_bytes("沈阳市委书记王新伟强调,全力做好核酸检测。".encode("gb18030"))
    (folder / "page.html").write_text("<html><script>var x=1;</script><p>市委书记<b>谭作钧</b>主持会议</p>"
                                      "<p>要求加强核酸检测。</p></html>", encoding="utf-8")
    records = [{"doc_id": "j1", "text": SENTENCES[1]}, {"doc_id": "r01", "text": SENTENCES[2]}]  # r01: also a file
    (folder / "docs.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
                                       + "not json\n", encoding="utf-8")
    (folder / "binary.txt").write_bytes(bytes(range(256)) * 8)


def run(model_dir: Path, inputs: Path, out: Path, *overrides: str):
    from zh_policy_ner.prediction.predict import run_predict

    return run_predict(compose(f"infer.model_dir={model_dir}", f"infer.input={inputs}", f"infer.output={out}",
                               "infer.max_length=64", "infer.stride=16", "infer.reports=false",
                               "infer.backend=torch", "infer.precision=fp32",
                               "infer.layers=[gazetteer,abbreviations]", *overrides))  # place names: not the point


def errors_of(out: Path) -> list[dict]:
    path = out.with_suffix(".errors.jsonl")
    return sorted((json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()),
                  key=lambda e: (e["source"], e["error"])) if path.exists() else []


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (two CPUs) for the module: run_predict uses it as it is and leaves it running."""
    if not HAS_RAY:
        pytest.skip('Ray is not installed (pip install -e ".[ray]")')
    import ray

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ray") / "in"
    write_inputs(folder)
    return folder


@pytest.fixture(scope="module")
def local_out(model_dir, inputs) -> Path:
    out = inputs.parent / "local" / "pred.jsonl"
    s = run(model_dir, inputs, out, "infer.engine=local")
    assert s.errors == 2 and s.documents == 9  # binary.txt, docs.jsonl:3; r01.txt becomes "r01.txt" (docs.jsonl took r01)
    return out


@needs_ray
def test_ray_writes_the_local_records(local_ray, model_dir, inputs, local_out):
    out = inputs.parent / "ray" / "pred.jsonl"
    s = run(model_dir, inputs, out, "infer.engine=ray", "infer.ray.workers=2", "infer.ray.batch_files=2")  # both work
    assert out.read_bytes() == local_out.read_bytes()  # same lines, same order
    assert errors_of(out) == errors_of(local_out) and len(errors_of(out)) == 2
    assert (s.documents, s.errors, s.skipped_done) == (9, 2, 0)
    ids = [json.loads(line)["doc_id"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert "r01.txt" in ids and any(json.loads(line)["spans"] for line in out.read_text(encoding="utf-8").splitlines())
    assert local_ray.is_initialized()  # a Ray it did not start is left running


@needs_ray
def test_ray_resumes_to_the_uninterrupted_output(local_ray, model_dir, inputs, local_out):
    """Interrupted after two records (and a torn third): the rerun predicts the rest, in order. One
    line per JSONL task (split_lines=1) checks that a file's records may be cut among workers."""
    out = inputs.parent / "resume" / "pred.jsonl"
    full = run(model_dir, inputs, out, "infer.engine=ray", "infer.ray.split_lines=1", "infer.ray.batch_files=1")
    assert out.read_bytes() == local_out.read_bytes() and full.documents == 9
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text("".join(lines[:2]) + lines[2][:15], encoding="utf-8")
    again = run(model_dir, inputs, out, "infer.engine=ray", "infer.ray.split_lines=1", "infer.ray.batch_files=1")
    assert out.read_bytes() == local_out.read_bytes()
    assert errors_of(out) == errors_of(local_out)
    assert (again.skipped_done, again.documents, again.errors) == (2, 7, 2)
    done = run(model_dir, inputs, out, "infer.engine=ray")  # nothing left: no worker is started
    assert (done.skipped_done, done.documents) == (9, 0) and out.read_bytes() == local_out.read_bytes()


@needs_ray
def test_ray_resumes_text_files_from_their_names(local_ray, model_dir, tmp_path):
    """Only text files with distinct names: the done ones are known without reading them. A local
    run interrupted is finished by the Ray engine."""
    folder = tmp_path / "txt"
    folder.mkdir()
    for k in range(4):
        (folder / f"t{k}.txt").write_text(SENTENCES[k] * (k + 1), encoding="utf-8")
    ref, out = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    run(model_dir, folder, ref, "infer.engine=local")
    lines = ref.read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text(lines[0] + lines[2], encoding="utf-8")  # t0 and t2 done
    ref.with_suffix(".manifest.json").replace(out.with_suffix(".manifest.json"))
    (folder / "t2.txt").write_bytes(b"\x00\x01")  # not read again: its id is done
    again = run(model_dir, folder, out, "infer.engine=ray")
    assert (again.skipped_done, again.documents, again.errors) == (2, 2, 0)
    assert out.read_text(encoding="utf-8").splitlines(keepends=True) == [lines[k] for k in (0, 2, 1, 3)]


def spans_of(out: Path) -> list[tuple[str, list]]:
    return [(r["doc_id"], r["spans"]) for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())]


@needs_ray
@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_ray_matches_local_in_int8_and_bf16(local_ray, model_dir, inputs, precision):
    """ONNX int8 runs each window alone: identical records. bf16 scores move with the padding of a
    batch: the same spans, scores within 0.01."""
    if precision == "int8":
        pytest.importorskip("onnxruntime")
    backend = ["infer.backend=onnx", "infer.precision=int8"] if precision == "int8" else ["infer.precision=bf16"]
    ref, out = inputs.parent / precision / "local.jsonl", inputs.parent / precision / "ray.jsonl"
    run(model_dir, inputs, ref, "infer.engine=local", *backend)
    run(model_dir, inputs, out, "infer.engine=ray", *backend)
    if precision == "int8":
        assert out.read_bytes() == ref.read_bytes()
    got, want = spans_of(out), spans_of(ref)
    assert [(d, [(s["start"], s["end"], s["label"], s["text"]) for s in spans]) for d, spans in got] == \
        [(d, [(s["start"], s["end"], s["label"], s["text"]) for s in spans]) for d, spans in want]
    for (_, a), (_, b) in zip(got, want):
        for x, y in zip(a, b):
            assert (x.get("score") is None) == (y.get("score") is None)
            assert abs((x.get("score") or 0) - (y.get("score") or 0)) <= 0.01


def test_ray_missing_is_a_usage_error(monkeypatch, model_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    from zh_policy_ner.prediction.ray_engine import predict_ray

    with pytest.raises(UsageError, match=r'pip install -e "\.\[ray\]"'):
        predict_ray(compose(f"infer.model_dir={model_dir}", f"infer.input={tmp_path}", "infer.engine=ray"),
                    None, None, None)


def test_ray_settings_are_checked():
    from zh_policy_ner.prediction.ray_engine import RaySettings

    s = RaySettings.from_cfg(compose("infer.engine=ray"))
    assert (s.address, s.workers, s.cpus_per_worker, s.threads) == (None, 2, 1.0, 1)
    assert RaySettings.from_cfg(compose("infer.ray.address=auto", "infer.ray.cpus_per_worker=4")).threads == 4
    with pytest.raises(UsageError, match="workers=0"):
        RaySettings.from_cfg(compose("infer.ray.workers=0"))
