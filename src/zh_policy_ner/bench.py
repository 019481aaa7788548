"""Inference benchmark: this project's predictor against transformers' token-classification
pipeline, same trained model, same texts, whole runs (start-up included) in fresh processes.

    python scripts/bench_predict.py --model-dir outputs/model --docs 800
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from .corpus import RawDoc, iter_documents


def bench_texts(input_path: str | Path, n_docs: int) -> list[str]:
    """``n_docs`` raw texts: the input documents repeated in order as often as needed."""
    docs = [d.text for d in iter_documents(input_path) if isinstance(d, RawDoc) and d.text.strip()]
    if not docs:
        raise ValueError(f"no readable documents under {input_path}")
    return [docs[i % len(docs)] for i in range(n_docs)]


def _worker(system: str, model_dir: str, texts_file: str, max_length: int, stride: int, batch_size: int) -> dict:
    t0 = time.time()
    texts = json.loads(Path(texts_file).read_text(encoding="utf-8"))
    spans: list[tuple[int, int, int, str]] = []
    if system == "pipeline":
        from transformers import pipeline

        ner = pipeline("token-classification", model=model_dir, aggregation_strategy="simple", stride=stride,
                       device=0 if _cuda() else -1)
        for i, out in enumerate(ner(texts, batch_size=batch_size)):
            spans += [(i, int(e["start"]), int(e["end"]), e["entity_group"]) for e in out]
    else:
        from .inference import Predictor

        predictor = Predictor.from_pretrained(model_dir, max_length=max_length, stride=stride, batch_size=batch_size,
                                              precision=system.split(":", 1)[1] if ":" in system else "auto")
        for k in range(0, len(texts), 256):
            for i, p in enumerate(predictor.predict(texts[k : k + 256]), start=k):
                spans += [(i, s.start, s.end, s.label) for s in p.spans]
    seconds = time.time() - t0
    n_spans = len(spans)
    Path(texts_file).with_name(f"spans_{system.replace(':', '_')}.json").write_text(json.dumps(spans))
    chars = sum(map(len, texts))
    return {"system": system, "docs": len(texts), "chars": chars, "seconds": round(seconds, 2),
            "chars_per_s": round(chars / seconds), "spans": n_spans,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_benchmark(model_dir: str, input_path: str, n_docs: int, systems: list[str], out: Path,
                  max_length: int = 256, stride: int = 64, batch_size: int = 32) -> list[dict]:
    """Run each system in its own process on the same texts; write JSON and Markdown results."""
    out.mkdir(parents=True, exist_ok=True)
    texts_file = out / "bench_texts.json"
    texts_file.write_text(json.dumps(bench_texts(input_path, n_docs), ensure_ascii=False), encoding="utf-8")
    rows = []
    for system in systems:
        cmd = [sys.executable, "-m", "zh_policy_ner.bench", "--worker", system, model_dir, str(texts_file),
               str(max_length), str(stride), str(batch_size)]
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        if res.returncode != 0:
            raise RuntimeError(f"benchmark worker {system} failed:\n{res.stderr[-3000:]}")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    base = next((r["chars_per_s"] for r in rows if r["system"] == "pipeline"), None)
    reference = next((r["system"] for r in rows if r["system"] == "ours:fp32"), None)
    if reference:  # span-level agreement (exact start, end, label) with the fp32 predictor
        ref = {tuple(x) for x in json.loads((out / "spans_ours_fp32.json").read_text())}
        for r in rows:
            got = {tuple(x) for x in json.loads((out / f"spans_{r['system'].replace(':', '_')}.json").read_text())}
            tp = len(ref & got)
            r["agreement_f1_vs_fp32"] = round(2 * tp / (len(ref) + len(got)), 4) if ref or got else 1.0
    import torch

    hw = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU {platform.machine()}, {os.cpu_count()} cores"
    lines = [f"Benchmark: {n_docs} documents from {input_path}, model {model_dir}, windows {max_length} / stride {stride}, "
             f"batch {batch_size}, {hw}. Whole runs in fresh processes (start-up included).", "",
             "| system | docs | chars | seconds | chars/s | speed-up vs pipeline | spans | span agreement with ours:fp32 (F1) | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['chars_per_s'] / base:.1f}x" if base else "–"
        lines.append(f"| {r['system']} | {r['docs']} | {r['chars']} | {r['seconds']} | {r['chars_per_s']} | {ratio} | {r['spans']} "
                     f"| {r.get('agreement_f1_vs_fp32', '–')} | {r['peak_rss_mb']} |")
    (out / "bench.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    (out / "bench.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--worker":
    s, m, f, ml, st, bs = sys.argv[2:8]
    print(json.dumps(_worker(s, m, f, int(ml), int(st), int(bs))))
