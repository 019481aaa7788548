"""ONNX Runtime backend for batch inference on CPU: export, optimise, quantise, cache, run.

A trained model folder is exported once (``torch.onnx.export`` with eager attention, dynamic batch
and sequence axes, one ``logits`` output), optimised with ONNX Runtime's transformer optimizer
(fused attention, LayerNorm, GELU) and dynamically quantised to int8 weights. The files are cached
beside the model, ``<model_dir>/onnx/<key>/`` with ``model.fp32.onnx`` (optimised fp32) and
``model.int8.onnx``; ``key`` hashes the weights, the config and the export settings, so a retrained
model gets a new export and an unchanged one reuses it (one export is kept per model folder: those
of other weights or settings are removed when a new one is built). The train stage builds it (``train.export_onnx``), the predict stage
builds it on first use if it is missing.

:class:`OrtRunner` replaces the torch forward in :class:`~zh_policy_ner.decoding.inference.Predictor`:
``runner(input_ids, attention_mask[, token_type_ids]) -> logits`` on the padded batches that the
predictor builds (token-type ids carry the lexicon features of a model trained with them).
Dynamic int8 quantisation scales activations per run (over the whole input tensor), so a window's
logits would depend on the windows that share its batch; the int8 runner therefore runs each window
alone at its own length (``per_window``), which makes the spans of a document independent of the
batch size and of the other documents, at little cost (see ``tests/test_onnx.py``).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..common.modeling import use_bf16

log = logging.getLogger(__name__)

EXPORT_VERSION = 2   # bump when the export, optimisation or quantisation code changes what it writes
OPSET = 17
ONNX_DIR = "onnx"
FP32_FILE = "model.fp32.onnx"
INT8_FILE = "model.int8.onnx"
INFO_FILE = "export.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# int8 weights per tensor at 8 bits for the encoder's MatMul and Attention nodes; the embeddings
# and the classifier head stay fp32. Measured against fp32 torch on 340 documents (40 scraped
# reports, 300 news articles; 8,471 model spans; AVX512-VNNI CPU): span F1 0.9884 with everything
# quantised (per-channel 0.9885, 7-bit 0.9837, per-channel 7-bit 0.9887), 0.9925 with fp32
# embeddings, 0.9927 with the head fp32 too (per-channel: 0.9924), at the same speed. On an AVX2
# CPU without VNNI (emulated: qemu-x86_64 -cpu EPYC-Rome; 12 windows, 3,072 tokens) per-tensor 8-bit
# weights gave the same logits error as with VNNI (mean |logit - fp32| 0.0174 both), per-channel
# 8-bit got worse (0.0162 -> 0.0222: the u8s8 saturation that reduce_range is ONNX Runtime's advice
# against), per-channel 7-bit 0.0177, per-tensor 7-bit 0.0231: per-tensor 8-bit needs no reduce_range.
DEFAULT_QUANT = {"per_channel": False, "reduce_range": False, "op_types": ["MatMul", "Attention"], "fp32_head": True}


def available() -> bool:
    """True when onnxruntime and onnx can be imported (the export needs both)."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def _weight_files(model_dir: Path) -> list[Path]:
    files = [model_dir / f for f in WEIGHT_FILES if (model_dir / f).exists()]
    return files[:1] or sorted(model_dir.glob("*.safetensors"))


def weights_hash(model_dir: str | Path) -> str:
    """sha256 of the model folder's weights file(s) and config.json."""
    model_dir = Path(model_dir)
    files = _weight_files(model_dir)
    if not files:
        raise FileNotFoundError(f"no weights file ({', '.join(WEIGHT_FILES)}) in {model_dir}")
    h = hashlib.sha256()
    for f in files + [model_dir / "config.json"]:
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def export_settings(quant: dict | None = None) -> dict:
    """What decides the exported files besides the weights (part of the cache key)."""
    return {"version": EXPORT_VERSION, "opset": OPSET, "attention": "eager", "optimizer": "bert",
            "quant": {**DEFAULT_QUANT, **(quant or {}), "weight_type": "QInt8"}}


def export_key(model_dir: str | Path, quant: dict | None = None, weights: str | None = None) -> str:
    settings = json.dumps(export_settings(quant), sort_keys=True)
    return hashlib.sha256(f"{weights or weights_hash(model_dir)}\n{settings}".encode()).hexdigest()[:16]


def cache_root(model_dir: str | Path) -> Path:
    """``<model_dir>/onnx``, or a per-user cache folder when the model folder is read-only."""
    root = Path(model_dir) / ONNX_DIR
    if os.access(model_dir, os.W_OK) or (root.is_dir() and os.access(root, os.W_OK)):
        return root
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "zh_policy_ner" / "onnx"
    return base / hashlib.sha256(str(Path(model_dir).resolve()).encode()).hexdigest()[:12]


def cached_export(model_dir: str | Path, quant: dict | None = None) -> Path | None:
    """The folder of a finished export of these weights and settings, or None."""
    folder = cache_root(model_dir) / export_key(model_dir, quant)
    return folder if (folder / INFO_FILE).exists() else None


def _export_raw(model_dir: Path, path: Path) -> None:
    """Plain ONNX export (eager attention, so that the optimizer's attention fusion matches)."""
    import torch
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(model_dir, attn_implementation="eager").eval()

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits

    n = min(16, model.config.max_position_embeddings)
    ids = torch.randint(5, model.config.vocab_size, (2, n))
    mask = torch.ones_like(ids)
    mask[1, n // 2 :] = 0
    types = torch.zeros_like(ids)  # token-type ids: the lexicon features of a model trained with them, else 0
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {0: "batch", 1: "sequence"}
    # the TorchScript exporter: its graphs are the ones ONNX Runtime's BERT fusions match (and it
    # needs no onnxscript); torch >= 2.9 defaults to the dynamo exporter
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python values in the mask code
        torch.onnx.export(Logits(model), (ids, mask, types), str(path), input_names=names, output_names=["logits"],
                          dynamic_axes={**{k: axes for k in names}, "logits": axes}, opset_version=OPSET,
                          do_constant_folding=True, **legacy)


@contextlib.contextmanager
def _quiet_tools():
    """Keep the optimizer's INFO lines (one per fusion) and the quantizer's advice, logged on the
    root logger, out of the run's log (Hydra logs INFO)."""
    names = ("onnx_model", "onnx_model_bert", "fusion_base", "fusion_utils", "fusion_attention", "fusion_options")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]

    def drop(record: logging.LogRecord) -> bool:
        return record.levelno > logging.WARNING

    root = logging.getLogger()
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _head_nodes(model) -> list[str]:
    """The classifier's MatMul (the last one before ``logits``), to keep in fp32."""
    producer = {o: n for n in model.graph.node for o in n.output}
    node, seen = producer.get("logits"), 0
    while node is not None and node.op_type != "MatMul" and seen < 4:
        node, seen = next((producer[i] for i in node.input if i in producer), None), seen + 1
    return [node.name] if node is not None and node.op_type == "MatMul" else []


def build_export(model_dir: str | Path, quant: dict | None = None, force: bool = False) -> Path:
    """Export, optimise and quantise the model in ``model_dir`` (once); returns the export folder
    holding ``model.fp32.onnx``, ``model.int8.onnx`` and ``export.json``."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    model_dir = Path(model_dir)
    quant = {**DEFAULT_QUANT, **(quant or {})}
    weights = weights_hash(model_dir)
    key = export_key(model_dir, quant, weights)
    root = cache_root(model_dir)
    folder = root / key
    if (folder / INFO_FILE).exists() and not force:
        return folder
    t0 = time.time()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root))
    tmp.chmod(0o755)  # mkdtemp's 0700 would stay on the renamed folder
    try:
        config = json.loads((model_dir / "config.json").read_text())
        raw = tmp / "model.raw.onnx"
        _export_raw(model_dir, raw)
        with _quiet_tools():
            opt = optimize_model(str(raw), model_type="bert", num_heads=config["num_attention_heads"],
                                 hidden_size=config["hidden_size"], opt_level=0)
            fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
            opt.save_model_to_file(str(tmp / FP32_FILE))
            raw.unlink()
            quantize_dynamic(tmp / FP32_FILE, tmp / INT8_FILE, weight_type=QuantType.QInt8,
                             per_channel=quant["per_channel"], reduce_range=quant["reduce_range"],
                             op_types_to_quantize=quant.get("op_types"),
                             nodes_to_exclude=_head_nodes(opt.model) if quant.get("fp32_head") else None,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})  # fused ops lack shape inference
        info = {"key": key, "weights_sha256": weights, "settings": export_settings(quant), "fused_operators": fused,
                "onnxruntime": onnxruntime.__version__, "seconds": round(time.time() - t0, 1),
                "id2label": config.get("id2label")}
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
        if force and folder.exists():
            shutil.rmtree(folder)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process (a torchrun rank) finished the same export first
            if not (folder / INFO_FILE).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(root, folder)
    log.info("ONNX export of %s in %.1f s: %s (fused: %s)", model_dir, time.time() - t0, folder,
             ", ".join(f"{k} {v}" for k, v in fused.items()))
    return folder


def _prune(root: Path, keep: Path) -> None:
    """Remove the other finished exports (other weights: a retrained model; other settings or an older
    export version): one export per model folder. Unfinished ones (another process's) stay."""
    for other in root.iterdir():
        if other != keep and (other / INFO_FILE).exists():
            shutil.rmtree(other, ignore_errors=True)


def export_onnx(model_dir: str | Path, quant: dict | None = None, strict: bool = True) -> Path | None:
    """For the train stage: build (or find) the export of a finished model folder. Returns the
    int8 model's path, or None (one log line) when onnxruntime/onnx are not installed, or, with
    ``strict=False``, when the export fails (the predict stage then tries again or uses torch)."""
    if not available():
        log.info("onnxruntime/onnx not installed: no ONNX export of %s (pip install onnxruntime onnx)", model_dir)
        return None
    try:
        return build_export(model_dir, quant) / INT8_FILE
    except Exception as err:
        if strict:
            raise
        log.warning("ONNX export of %s failed (%s: %s); predict will use torch", model_dir, type(err).__name__, err)
        return None


class OrtRunner:
    """``runner(input_ids, attention_mask[, token_type_ids]) -> logits`` (float32 numpy, the shape
    of torch's) with an ONNX Runtime CPU session. ``per_window``: run each row alone at its own
    length (no padding), so that dynamic int8 activation scales never mix windows: batch-invariant
    outputs (and, with less padding, faster: 0.75 against 1.10 CPU seconds on 55 windows)."""

    def __init__(self, path: str | Path, num_threads: int | None = None, per_window: bool | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.quantized = self.path.name == INT8_FILE
        self.name = "onnx-int8" if self.quantized else "onnx-fp32"
        self.per_window = self.quantized if per_window is None else per_window
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(num_threads or 0)  # 0: ONNX Runtime's default (physical cores)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray,
                 token_type_ids: np.ndarray | None = None) -> np.ndarray:
        feeds = {"input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
                 "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
                 "token_type_ids": (np.zeros(np.shape(input_ids), dtype=np.int64) if token_type_ids is None
                                    else np.ascontiguousarray(token_type_ids, dtype=np.int64))}
        if not self.per_window:
            return self.session.run(["logits"], feeds)[0]
        out = None
        for r, n in enumerate(feeds["attention_mask"].sum(1).tolist()):
            n = max(int(n), 1)
            logits = self.session.run(["logits"], {k: v[r : r + 1, :n] for k, v in feeds.items()})[0]
            if out is None:
                out = np.zeros((*feeds["input_ids"].shape, logits.shape[-1]), dtype=np.float32)
            out[r, :n] = logits[0]
        return out


def resolve_backend(backend: str = "auto", device: Any = None, precision: str = "auto") -> str:
    """``torch`` or ``onnx``. ``auto``: ONNX Runtime int8 on CPU when it is installed and the
    precision is ``auto`` or ``int8``; torch on GPUs, for explicit fp32/bf16, without onnxruntime, and
    for ``auto`` on CPUs where torch runs bf16 (AMX/AVX512-BF16: torch's bf16 forward measured about
    twice as fast as ONNX Runtime's int8 one on such a CPU, with exactly the fp32 spans)."""
    if backend not in ("auto", "torch", "onnx"):
        raise ValueError(f"backend must be auto, torch or onnx, got {backend!r}")
    if backend == "onnx" and not available():
        raise ImportError("infer.backend=onnx needs onnxruntime and onnx: pip install onnxruntime onnx")
    if backend != "auto":
        return backend
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") or precision not in ("auto", "int8") or not available():
        return "torch"
    if precision == "auto" and use_bf16("auto"):
        return "torch"
    return "onnx"


def load_runner(model_dir: str | Path, precision: str = "auto", num_threads: int | None = None,
                quant: dict | None = None, per_window: bool | None = None) -> OrtRunner:
    """The runner for a model folder: int8 (``auto``/``int8``) or optimised fp32 (``fp32``),
    exporting first if no export of these weights and settings is cached."""
    if precision not in ("auto", "int8", "fp32"):
        raise ValueError(f"the onnx backend runs int8 or fp32, not {precision!r}")
    folder = cached_export(model_dir, quant) or build_export(model_dir, quant)
    return OrtRunner(folder / (FP32_FILE if precision == "fp32" else INT8_FILE), num_threads, per_window)
