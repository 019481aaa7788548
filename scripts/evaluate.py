"""Evaluation: `python scripts/evaluate.py` (leave-one-article-out CV) or
`python scripts/evaluate.py eval.mode=heldout eval.model_dir=DIR data.heldout=[doc_id]`."""
import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> None:
    from zh_policy_ner.evaluation import evaluate

    _, out = evaluate(cfg)
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"results, error reports (errors.md/.json for the model, errors-output.md/.json for what predict outputs) "
          f"and fold models written to {out}")


if __name__ == "__main__":
    main()
