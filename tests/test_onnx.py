"""The ONNX Runtime backend (zh_policy_ner.model.onnx_backend): export at the end of training, fp32 and int8
against torch, batch invariance of int8, the export cache, and the torch path left as it was."""
import json
import logging
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: the ONNX backend is optional (pip install onnxruntime onnx)")
pytest.importorskip("onnx", reason="onnx is not installed: the ONNX export needs it (pip install onnxruntime onnx)")

from zh_policy_ner.model import onnx_backend  # noqa: E402
from zh_policy_ner.data.dataset import encode_windows  # noqa: E402
from zh_policy_ner.decoding.inference import Predictor  # noqa: E402
from zh_policy_ner.rules.guideline import saved_guideline  # noqa: E402
from zh_policy_ner.rules.layers import SpanLayers  # noqa: E402

from .conftest import ROOT, compose, tiny_config  # noqa: E402

WINDOW = {"max_length": 64, "stride": 16}


@pytest.fixture(scope="module")
def trained_dir(tiny_model_dir, tmp_path_factory):
    """A tiny model trained a few steps, exported by the train stage (train.export_onnx=true)."""
    from zh_policy_ner.training.train import train

    out = tmp_path_factory.mktemp("onnx-model")
    train(tiny_config(tiny_model_dir, out, f"train.output_dir={out}", "train.batch_size=8", "train.lr=5e-3",
                      "train.warmup=0", "train.max_steps=12", "train.export_onnx=true"))
    return out


@pytest.fixture(scope="module")
def spanful_dir(trained_dir, tmp_path_factory):
    """The trained tiny model with O's bias lowered by 3, so that it finds spans in the seeds (after
    12 steps it tags everything O): something for int8 to agree or disagree with."""
    import torch
    from transformers import AutoModelForTokenClassification

    out = tmp_path_factory.mktemp("onnx-spanful")
    shutil.copytree(trained_dir, out, dirs_exist_ok=True, ignore=shutil.ignore_patterns("onnx", "checkpoint-*"))
    model = AutoModelForTokenClassification.from_pretrained(out)
    with torch.no_grad():
        model.classifier.bias[model.config.label2id["O"]] -= 3.0
    model.save_pretrained(out)
    return out


def span_set(preds):
    return {(i, s.start, s.end, s.label) for i, p in enumerate(preds) for s in p.spans}


def f1(a, b):
    return 2 * len(a & b) / (len(a) + len(b)) if a or b else 1.0


def test_training_exports_fused_int8_model_once(trained_dir):
    import onnx

    folders = [f for f in (trained_dir / "onnx").iterdir()]
    assert len(folders) == 1 and onnx_backend.cached_export(trained_dir) == folders[0]
    info = json.loads((folders[0] / onnx_backend.INFO_FILE).read_text())
    config = json.loads((trained_dir / "config.json").read_text())
    assert info["fused_operators"]["Attention"] == config["num_hidden_layers"]  # eager attention was fused
    assert info["weights_sha256"] == onnx_backend.weights_hash(trained_dir)
    ops = {n.op_type for n in onnx.load(str(folders[0] / onnx_backend.INT8_FILE)).graph.node}
    assert {"QAttention", "MatMulInteger", "DynamicQuantizeLinear"} <= ops
    assert {"EmbedLayerNormalization", "MatMul"} <= ops  # the embeddings and the classifier head stay fp32
    assert [i.name for i in onnx.load(str(folders[0] / onnx_backend.INT8_FILE)).graph.input] == [
        "input_ids", "attention_mask", "token_type_ids"]


def test_fp32_onnx_probabilities_match_torch(trained_dir, seed_texts):
    ref = Predictor.from_pretrained(str(trained_dir), precision="fp32", **WINDOW)
    ort = Predictor.from_pretrained(str(trained_dir), precision="fp32", backend="onnx", num_threads=1, **WINDOW)
    assert ref.runner is None and ort.precision == "onnx-fp32"
    ids = encode_windows(ref.tokenizer, seed_texts, 64, 16)["input_ids"]
    a, b = ref._window_probs(ids), ort._window_probs(ids)
    assert [x.shape for x in a] == [x.shape for x in b]
    assert max(float(np.abs(x - y).max()) for x, y in zip(a, b)) < 1e-4
    assert span_set(ref.predict(seed_texts)) == span_set(ort.predict(seed_texts))


def test_int8_spans_agree_with_fp32_torch(spanful_dir, seed_texts):
    ref = span_set(Predictor.from_pretrained(str(spanful_dir), precision="fp32", **WINDOW).predict(seed_texts))
    int8 = Predictor.from_pretrained(str(spanful_dir), backend="onnx", num_threads=1, **WINDOW)
    assert int8.precision == "onnx-int8" and int8.runner.per_window
    got = span_set(int8.predict(seed_texts))
    assert len(ref) > 50 and f1(ref, got) >= 0.98  # 1.0 when written


@pytest.mark.skipif(not (ROOT / "outputs" / "model" / "model.safetensors").exists(),
                    reason="no trained model in outputs/model (python scripts/train.py)")
def test_int8_spans_of_the_trained_model_agree_with_fp32_torch(seed_texts, tmp_path, guideline):
    folder = tmp_path / "model"  # a copy: the test leaves no export behind in outputs/model
    shutil.copytree(ROOT / "outputs" / "model", folder, ignore=shutil.ignore_patterns("onnx", "checkpoint-*"))
    ref = span_set(Predictor.from_pretrained(str(folder), precision="fp32", guideline=guideline).predict(seed_texts))
    got = span_set(Predictor.from_pretrained(str(folder), backend="onnx", guideline=guideline).predict(seed_texts))
    assert len(ref) > 100 and f1(ref, got) >= 0.99


def test_int8_spans_do_not_depend_on_the_batch(spanful_dir, seed_texts):
    """Dynamic int8 scales activations per run: each window runs alone, so the documents and
    windows that share a batch cannot change a document's spans or scores."""
    p = Predictor.from_pretrained(str(spanful_dir), backend="onnx", num_threads=1, batch_size=1, **WINDOW)
    base = [d.spans for d in p.predict(seed_texts)]
    assert sum(map(len, base)) > 50
    for batch_size in (3, 64):
        p.batch_size = batch_size
        assert [d.spans for d in p.predict(seed_texts)] == base
        assert [d.spans for d in p.predict(seed_texts[::-1])] == base[::-1]
    assert [p.predict([t])[0].spans for t in seed_texts] == base  # one document at a time
    assert [p.predict(seed_texts + seed_texts[:2])[k].spans for k in range(len(seed_texts))] == base


def test_export_cache_is_reused_and_renewed_with_new_weights(trained_dir, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForTokenClassification

    folder = tmp_path / "m"
    shutil.copytree(trained_dir, folder)
    (old,) = (folder / "onnx").iterdir()
    stamp = (old / onnx_backend.INT8_FILE).stat().st_mtime_ns
    real_export = onnx_backend._export_raw

    def no_export(*args):
        raise AssertionError("exported again although the cache holds this model")

    monkeypatch.setattr(onnx_backend, "_export_raw", no_export)
    assert onnx_backend.load_runner(folder).path == old / onnx_backend.INT8_FILE
    assert onnx_backend.export_onnx(folder) == old / onnx_backend.INT8_FILE
    assert (old / onnx_backend.INT8_FILE).stat().st_mtime_ns == stamp
    # retrained weights: a new key, one export, and the stale one removed
    model = AutoModelForTokenClassification.from_pretrained(folder)
    with torch.no_grad():
        model.classifier.bias += 0.5
    model.save_pretrained(folder)
    calls = []
    monkeypatch.setattr(onnx_backend, "_export_raw", lambda *a: calls.append(a) or real_export(*a))
    runner = onnx_backend.load_runner(folder)
    assert len(calls) == 1 and runner.path.parent != old and not old.exists()
    assert [f.name for f in (folder / "onnx").iterdir()] == [runner.path.parent.name]


def test_torch_backend_is_unchanged(trained_dir, tmp_path):
    from transformers import AutoModelForTokenClassification

    from zh_policy_ner.common.modeling import load_tokenizer
    from zh_policy_ner.prediction.batch import RunOutput
    from zh_policy_ner.prediction.predict import predict_files, run_predict

    inputs = tmp_path / "in"
    inputs.mkdir()
    for p in sorted((ROOT / "seeds").glob("*.txt"))[:3]:
        shutil.copy(p, inputs / p.name)
    out = tmp_path / "torch.jsonl"
    run_predict(compose(f"infer.model_dir={trained_dir}", f"infer.input={inputs}", f"infer.output={out}",
                        "infer.max_length=64", "infer.stride=16", "infer.backend=torch", "infer.reports=false",
                        "infer.layers=[]"))
    direct = Predictor(AutoModelForTokenClassification.from_pretrained(trained_dir), load_tokenizer(trained_dir), **WINDOW,
                       layers=SpanLayers(guideline=saved_guideline(trained_dir)))  # tidied like predict.py
    assert direct.runner is None
    with RunOutput(tmp_path / "direct.jsonl", {}) as run:
        ref = predict_files(direct, inputs, run, progress=False).output
    assert out.read_bytes() == ref.read_bytes()


def test_predict_stage_runs_on_onnx(trained_dir, tmp_path, caplog):
    from zh_policy_ner.prediction.predict import run_predict

    inputs = tmp_path / "in"
    inputs.mkdir()
    for p in sorted((ROOT / "seeds").glob("*.txt"))[:2]:
        shutil.copy(p, inputs / p.name)
    out = tmp_path / "onnx.jsonl"
    with caplog.at_level(logging.INFO, logger="zh_policy_ner.decoding.inference"):
        run_predict(compose(f"infer.model_dir={trained_dir}", f"infer.input={inputs}", f"infer.output={out}",
                            "infer.max_length=64", "infer.stride=16", "infer.backend=onnx", "infer.num_threads=1",
                            "infer.reports=false"))
    assert "inference backend: onnx-int8" in caplog.text
    raw = {p.stem: p.read_text(encoding="utf-8") for p in inputs.iterdir()}
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 2 and any(r["spans"] for r in records)
    for r in records:
        text = raw[r["doc_id"]]
        assert all(text[s["start"] : s["end"]] == s["text"] for s in r["spans"])


def test_auto_backend_choice(monkeypatch):
    resolve = onnx_backend.resolve_backend
    assert resolve("torch", "cpu") == "torch" and resolve("onnx", "cpu", "fp32") == "onnx"
    assert resolve("auto", "cuda:0") == "torch"  # GPUs: torch
    assert resolve("auto", "cpu", "fp32") == resolve("auto", "cpu", "bf16") == "torch"  # an explicit torch precision
    assert resolve("auto", "cpu", "int8") == "onnx"
    monkeypatch.setattr(onnx_backend, "use_bf16", lambda setting="auto": False)
    assert resolve("auto", "cpu") == "onnx"   # AVX2/AVX-512 CPUs without bf16: ONNX int8
    monkeypatch.setattr(onnx_backend, "use_bf16", lambda setting="auto": True)
    assert resolve("auto", "cpu") == "torch"  # AMX/AVX512-BF16: torch bf16 is faster
    monkeypatch.setattr(onnx_backend, "available", lambda: False)
    assert resolve("auto", "cpu", "int8") == "torch"
    with pytest.raises(ImportError, match="onnxruntime"):
        resolve("onnx", "cpu")
    with pytest.raises(ValueError):
        resolve("tensorrt", "cpu")


def test_export_without_onnxruntime_logs_one_line_and_goes_on(monkeypatch, caplog, tmp_path):
    monkeypatch.setattr(onnx_backend, "available", lambda: False)
    with caplog.at_level(logging.INFO, logger="zh_policy_ner.model.onnx_backend"):
        assert onnx_backend.export_onnx(tmp_path) is None
    assert len(caplog.records) == 1 and "onnxruntime" in caplog.text


def test_benchmark_runs_onnx_and_the_predict_command(trained_dir, tmp_path):
    from zh_policy_ner.prediction.bench import run_benchmark

    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a.txt").write_text("市委书记谭作钧主持会议,要求加强核酸检测。" * 20, encoding="utf-8")
    systems = ["ours:fp32", "onnx:int8", "predict.py:onnx"]
    rows = run_benchmark(str(trained_dir), str(inputs), 3, systems, tmp_path / "b", max_length=64, stride=16,
                         batch_size=4, threads=1)
    assert [r["system"] for r in rows] == systems
    assert [r["ran"] for r in rows] == ["fp32", "onnx-int8", "onnx-int8"]
    assert all(r["docs"] == 3 and r["process_seconds"] > 0 and r["peak_rss_mb"] > 0 for r in rows)
    assert rows[1]["startup_s"] > 0 and rows[2]["agreement_f1_vs_fp32"] == rows[1]["agreement_f1_vs_fp32"]
    md = (tmp_path / "b" / "bench.md").read_text()
    assert "whole-process chars/s" in md and "1 thread(s) per system" in md and "CPU: " in md
