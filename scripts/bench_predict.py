"""Inference benchmark against transformers' pipeline (see zh_policy_ner.prediction.bench)."""
import argparse
from pathlib import Path

from zh_policy_ner.prediction.bench import run_benchmark

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model-dir", default=str(ROOT / "outputs" / "model"))
    p.add_argument("--input", default=str(ROOT.parent / "shared" / "scraped"), help="reports to repeat (read in place)")
    p.add_argument("--docs", type=int, default=800)
    p.add_argument("--systems", default="pipeline,ours:fp32,ours:bf16,ours:int8,onnx:int8,predict.py",
                   help="comma-separated: pipeline, ours:fp32|bf16|int8|auto (torch), onnx:int8|fp32 (ONNX Runtime), "
                        "predict.py[:auto|torch|onnx] (the whole predict command)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--stride", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None,
                   help="torch's and ONNX Runtime's threads in every system (default: theirs); 1 on a shared machine")
    p.add_argument("--out", default=str(ROOT / "outputs" / "bench"))
    a = p.parse_args()
    run_benchmark(a.model_dir, a.input, a.docs, a.systems.split(","), Path(a.out), a.max_length, a.stride, a.batch_size,
                  a.threads)
    print(f"results written to {a.out}/bench.md")
