"""Inference benchmark: this project's predictor against transformers' token-classification
pipeline, same trained model, same texts, whole runs (start-up included) in fresh processes.

    python scripts/bench_predict.py --model-dir outputs/model --docs 800

Systems: ``pipeline``; ``ours:PRECISION`` (the torch forward); ``onnx:int8`` / ``onnx:fp32`` (ONNX
Runtime, :mod:`zh_policy_ner.model.onnx_backend`); ``predict.py[:BACKEND]`` (the whole ``scripts/predict.py`` command on
the texts as a JSONL file, model spans only and no reports, like the other rows; BACKEND defaults to
the configured ``infer.backend``). Each row has the worker's own time (``seconds``), the whole
process's wall time (interpreter start to exit, ``process_seconds``), the start-up (process start to
a ready predictor), and the process's peak RSS.
"""
from __future__ import annotations

import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from ..reading.corpus import RawDoc, iter_documents

ROOT = Path(__file__).resolve().parents[3]  # the repository: scripts/ and configs/
PROJECT_GUIDELINE = ROOT / "configs" / "guideline" / "zh_policy.yaml"


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
    extra: dict = {}
    threads = int(os.environ.get("BENCH_THREADS") or 0) or None
    if threads:
        import torch

        torch.set_num_threads(threads)
    if system == "pipeline":
        from transformers import pipeline

        ner = pipeline("token-classification", model=model_dir, aggregation_strategy="simple", stride=stride,
                       device=0 if _cuda() else -1)
        ready = time.time()
        for i, out in enumerate(ner(texts, batch_size=batch_size)):
            spans += [(i, int(e["start"]), int(e["end"]), e["entity_group"]) for e in out]
    else:
        from ..rules.guideline import GUIDELINE_FILE, load_guideline
        from ..decoding.inference import Predictor

        backend, _, precision = system.partition(":")
        predictor = Predictor.from_pretrained(model_dir, max_length=max_length, stride=stride, batch_size=batch_size,
                                              precision=precision or "auto", layers=[],
                                              backend="onnx" if backend == "onnx" else "torch", num_threads=threads,
                                              guideline=None if (Path(model_dir) / GUIDELINE_FILE).exists()
                                              else load_guideline(PROJECT_GUIDELINE))  # for folders saved without one
        ready = time.time()
        extra["ran"] = predictor.precision
        for k in range(0, len(texts), 256):
            for i, p in enumerate(predictor.predict(texts[k : k + 256]), start=k):
                spans += [(i, s.start, s.end, s.label) for s in p.spans]
    seconds = time.time() - t0
    n_spans = len(spans)
    Path(texts_file).with_name(f"spans_{system.replace(':', '_')}.json").write_text(json.dumps(spans))
    chars = sum(map(len, texts))
    launched = float(os.environ.get("BENCH_LAUNCHED", t0))
    return {"system": system, "docs": len(texts), "chars": chars, "seconds": round(seconds, 2),
            "chars_per_s": round(chars / seconds), "spans": n_spans,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "startup_s": round(ready - launched, 2), **extra}


def _run(cmd: list[str], out: Path, name: str, threads: int | None = None) -> tuple[int, str, str, float, int, float]:
    """Run ``cmd`` to the end: exit code, stdout, stderr, wall seconds, peak RSS (MB) and CPU
    seconds (user + system) of that process."""
    t0 = time.time()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "BENCH_LAUNCHED": repr(t0), "BENCH_THREADS": str(threads or "")}
    with open(out / f"{name}.stdout", "w+") as so, open(out / f"{name}.stderr", "w+") as se:
        proc = subprocess.Popen(cmd, stdout=so, stderr=se, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.time() - t0
        so.seek(0)
        se.seek(0)
        return (proc.returncode, so.read(), se.read(), wall, round(usage.ru_maxrss / 1024),
                round(usage.ru_utime + usage.ru_stime, 1))


def _predict_script(system: str, model_dir: str, texts_file: Path, out: Path, max_length: int, stride: int,
                    batch_size: int, threads: int | None = None) -> tuple[list[str], Path]:
    """The command line of ``scripts/predict.py`` on the benchmark texts (as JSONL), and its output file."""
    script = ROOT / "scripts" / "predict.py"
    texts = json.loads(texts_file.read_text(encoding="utf-8"))
    jsonl = out / "bench_texts.jsonl"
    jsonl.write_text("".join(json.dumps({"doc_id": f"d{i:06d}", "text": t}, ensure_ascii=False) + "\n"
                             for i, t in enumerate(texts)), encoding="utf-8")
    result = out / f"predict_{system.replace(':', '_')}.jsonl"
    result.unlink(missing_ok=True)  # predict.py resumes: a stale file would be skipped over
    args = [f"infer.model_dir={model_dir}", f"infer.input={jsonl}", f"infer.output={result}", "infer.reports=false",
            "infer.layers=[]", f"infer.max_length={max_length}",
            f"infer.stride={stride}", f"infer.batch_size={batch_size}", f"hydra.run.dir={out / 'hydra'}"]
    if ":" in system:
        args.append(f"infer.backend={system.split(':', 1)[1]}")
    if threads:
        args.append(f"infer.num_threads={threads}")
    return [sys.executable, str(script), *args], result


def cpu_description() -> str:
    """CPU model, cores and the vector/matrix flags that decide the int8 and bf16 kernels."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8"]
    have = [f for f in wanted if f in flags]
    return (f"{model}, {os.cpu_count()} cores, flags: {' '.join(have) or 'none of ' + ' '.join(wanted)}"
            + (f" (without {' '.join(f for f in wanted if f not in flags)})" if flags and len(have) < len(wanted) else ""))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run_benchmark(model_dir: str, input_path: str, n_docs: int, systems: list[str], out: Path,
                  max_length: int = 256, stride: int = 64, batch_size: int = 32, threads: int | None = None) -> list[dict]:
    """Run each system in its own process on the same texts; write JSON and Markdown results.
    ``threads``: torch's and ONNX Runtime's threads in every system (None: their defaults); 1 gives
    steadier comparisons on a machine that other jobs share."""
    out.mkdir(parents=True, exist_ok=True)
    texts_file = out / "bench_texts.json"
    texts_file.write_text(json.dumps(bench_texts(input_path, n_docs), ensure_ascii=False), encoding="utf-8")
    rows = []
    load = [os.getloadavg()[0] if hasattr(os, "getloadavg") else None]
    for system in systems:
        name = system.replace(":", "_")
        if system.startswith("predict.py"):
            cmd, result = _predict_script(system, model_dir, texts_file, out, max_length, stride, batch_size, threads)
        else:
            cmd = [sys.executable, "-m", "zh_policy_ner.prediction.bench", "--worker", system, model_dir, str(texts_file),
                   str(max_length), str(stride), str(batch_size)]
        code, stdout, stderr, wall, rss, cpu = _run(cmd, out, f"worker_{name}", threads)
        if code != 0:
            raise RuntimeError(f"benchmark worker {system} failed:\n{stderr[-3000:]}")
        if system.startswith("predict.py"):
            texts = json.loads(texts_file.read_text(encoding="utf-8"))
            spans = [(int(r["doc_id"][1:]), s["start"], s["end"], s["label"])
                     for r in map(json.loads, result.read_text(encoding="utf-8").splitlines()) for s in r["spans"]]
            (out / f"spans_{name}.json").write_text(json.dumps(spans))
            chars = sum(map(len, texts))
            ran = re.search(r"inference backend: (\S+)", stdout + stderr)
            row = {"system": system, "docs": len(texts), "chars": chars, "seconds": round(wall, 2),
                   "chars_per_s": round(chars / wall), "spans": len(spans), "peak_rss_mb": rss, "startup_s": None,
                   "ran": ran.group(1) if ran else "–"}
        else:
            row = json.loads(stdout.strip().splitlines()[-1])
        row["process_seconds"] = round(wall, 2)
        row["process_chars_per_s"] = round(row["chars"] / wall)
        row["peak_rss_mb"] = rss  # the whole process's, from wait4
        row["cpu_seconds"] = cpu  # steadier than wall time on a shared machine
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
    load.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
    base = next((r["chars_per_s"] for r in rows if r["system"] == "pipeline"), None)
    base_process = next((r["process_chars_per_s"] for r in rows if r["system"] == "pipeline"), None)
    reference = next((r["system"] for r in rows if r["system"] == "ours:fp32"), None)
    if reference:  # span-level agreement (exact start, end, label) with the fp32 predictor
        ref = {tuple(x) for x in json.loads((out / "spans_ours_fp32.json").read_text())}
        for r in rows:
            got = {tuple(x) for x in json.loads((out / f"spans_{r['system'].replace(':', '_')}.json").read_text())}
            tp = len(ref & got)
            r["agreement_f1_vs_fp32"] = round(2 * tp / (len(ref) + len(got)), 4) if ref or got else 1.0
    import torch

    hw = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU {platform.machine()}, {os.cpu_count()} cores"
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = "not installed"
    loads = " -> ".join(f"{v:.1f}" for v in load if v is not None)
    lines = [f"Benchmark: {n_docs} documents from {input_path}, model {model_dir}, windows {max_length} / stride {stride}, "
             f"batch {batch_size}, {hw}, {f'{threads} thread(s) per system' if threads else 'default threads'}. "
             f"Whole runs in fresh processes (start-up included).", "",
             f"CPU: {cpu_description()}; torch {torch.__version__}, onnxruntime {ort_version}; "
             f"1-minute load average {loads} (before -> after).", "",
             "| system | runs as | docs | chars | seconds | chars/s | speed-up vs pipeline | whole process s | whole-process chars/s "
             "| whole-process speed-up | start-up s | CPU s | spans | span agreement with ours:fp32 (F1) | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['chars_per_s'] / base:.1f}x" if base else "–"
        ratio_process = f"{r['process_chars_per_s'] / base_process:.2f}x" if base_process else "–"
        startup = "–" if r.get("startup_s") is None else r["startup_s"]
        lines.append(f"| {r['system']} | {r.get('ran', '–')} | {r['docs']} | {r['chars']} | {r['seconds']} | {r['chars_per_s']} "
                     f"| {ratio} | {r['process_seconds']} | {r['process_chars_per_s']} | {ratio_process} | {startup} | {r['cpu_seconds']} "
                     f"| {r['spans']} | {r.get('agreement_f1_vs_fp32', '–')} | {r['peak_rss_mb']} |")
    (out / "bench.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    (out / "bench.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows


def run_memory_benchmark(model_dir: str, input_path: str, sizes_mb: list[float], out: Path, n_docs: int = 800,
                         threads: int | None = None, extra: list[str] | None = None) -> list[dict]:
    """Peak RSS of whole ``scripts/predict.py`` runs (defaults: all layers and reports) on one report
    of each size in ``sizes_mb`` (the input reports joined and repeated to that many UTF-8 megabytes)
    and on ``n_docs`` ordinary reports; writes ``memory.json`` and ``memory.md`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    script = ROOT / "scripts" / "predict.py"
    docs = bench_texts(input_path, 40)
    joined = "\n\n".join(docs)
    cases: list[tuple[str, Path]] = []
    for mb in sizes_mb:
        folder = out / f"one_{mb:g}mb"
        folder.mkdir(exist_ok=True)
        target = int(mb * (1 << 20))
        text = (joined * (target // len(joined.encode("utf-8")) + 1)).encode("utf-8")[:target].decode("utf-8", "ignore")
        (folder / "report.txt").write_text(text, encoding="utf-8")
        cases.append((f"one report of {mb:g} MB", folder))
    many = out / f"{n_docs}_reports.jsonl"
    many.write_text("".join(json.dumps({"doc_id": f"d{i:06d}", "text": t}, ensure_ascii=False) + "\n"
                            for i, t in enumerate(bench_texts(input_path, n_docs))), encoding="utf-8")
    cases.append((f"{n_docs} ordinary reports", many))
    rows = []
    for name, path in cases:
        result = out / f"pred_{path.stem}.jsonl"
        for f in out.glob(f"pred_{path.stem}.*"):
            f.unlink()
        cmd = [sys.executable, str(script), f"infer.model_dir={model_dir}", f"infer.input={path}",
               f"infer.output={result}", f"hydra.run.dir={out / 'hydra'}", *(extra or [])]
        if threads:
            cmd.append(f"infer.num_threads={threads}")
        code, stdout, stderr, wall, rss, cpu = _run(cmd, out, f"memory_{path.stem}", threads)
        if code != 0:
            raise RuntimeError(f"predict.py on {path} failed:\n{stderr[-3000:]}")
        chars = sum(len(json.loads(line).get("text", "")) for line in path.read_text(encoding="utf-8").splitlines()) \
            if path.suffix == ".jsonl" else len(path.joinpath("report.txt").read_text(encoding="utf-8"))
        rows.append({"case": name, "bytes": sum(f.stat().st_size for f in ([path] if path.is_file() else path.iterdir())),
                     "chars": chars, "seconds": round(wall, 1), "cpu_seconds": cpu, "peak_rss_mb": rss})
        print(json.dumps(rows[-1]), flush=True)
    lines = [f"Peak RSS of whole `scripts/predict.py` runs (all layers, reports on), model {model_dir}; "
             f"CPU: {cpu_description()}; {f'{threads} thread(s)' if threads else 'default threads'}.", "",
             "| input | bytes | characters | seconds | CPU s | peak RSS MB |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['bytes']} | {r['chars']} | {r['seconds']} | {r['cpu_seconds']} | {r['peak_rss_mb']} |"
              for r in rows]
    (out / "memory.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    (out / "memory.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--worker":
    s, m, f, ml, st, bs = sys.argv[2:8]
    print(json.dumps(_worker(s, m, f, int(ml), int(st), int(bs))))
