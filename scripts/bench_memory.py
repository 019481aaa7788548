"""Memory benchmark of the predict stage: peak RSS on one large report and on many ordinary ones
(see zh_policy_ner.prediction.bench.run_memory_benchmark)."""
import argparse
from pathlib import Path

from zh_policy_ner.prediction.bench import run_memory_benchmark

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model-dir", default=str(ROOT / "outputs" / "model"))
    p.add_argument("--input", default=str(ROOT.parent / "shared" / "scraped"), help="reports to repeat (read in place)")
    p.add_argument("--sizes-mb", default="1,8", help="comma-separated sizes of the single large report")
    p.add_argument("--docs", type=int, default=800, help="number of ordinary reports in the many-reports case")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "outputs" / "bench-memory"))
    p.add_argument("overrides", nargs="*", help="extra predict.py overrides (infer.backend=torch ...)")
    a = p.parse_args()
    run_memory_benchmark(a.model_dir, a.input, [float(x) for x in a.sizes_mb.split(",")], Path(a.out), a.docs,
                         a.threads, a.overrides)
    print(f"results written to {a.out}/memory.md")
