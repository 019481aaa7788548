"""Evaluation: `python scripts/evaluate.py` (5-fold cross-validation by article),
`python scripts/evaluate.py eval.mode=heldout eval.model_dir=DIR data.heldout=[doc_id]`, or
`python scripts/evaluate.py eval.mode=curve` (learning curve)."""
import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from zh_policy_ner.common.cli import script  # noqa: E402


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
@script(lambda cfg: "nothing is kept: held-out scoring starts afresh" if cfg.eval.mode == "heldout" else
        f"finished folds are kept in {cfg.eval.output_dir} (fold_probs.npz in each fold folder); "
        f"the same command reuses them and trains only the others")
def main(cfg: DictConfig) -> None:
    from zh_policy_ner.evaluation.evaluate import evaluate

    _, out = evaluate(cfg)
    if cfg.eval.mode == "curve":
        print((out / "curve.md").read_text(encoding="utf-8"))
        print(f"learning curve written to {out}/curve.md, curve.json and curve.png")
        return
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"results, error reports (errors.md/.json for the model, errors-output.md/.json for what predict outputs) "
          f"and fold models written to {out}")


if __name__ == "__main__":
    main()
