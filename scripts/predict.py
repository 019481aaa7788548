"""Batch inference: `python scripts/predict.py infer.model_dir=DIR infer.input=PATH infer.output=FILE.jsonl`."""
import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from zh_policy_ner.common.cli import script  # noqa: E402


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
@script(lambda cfg: f"the documents done so far are kept in {cfg.infer.output}; "
        "the same command resumes where it stopped")
def main(cfg: DictConfig) -> None:
    from zh_policy_ner.prediction.predict import run_predict

    s = run_predict(cfg)
    errors = s.output.with_suffix(".errors.jsonl")
    print(f"{s.documents} documents ({s.characters} characters) in {s.seconds:.1f} s; "
          f"{s.skipped_done} already done, {s.errors} unreadable" + (f" (see {errors})" if errors.exists() else ""))
    print(f"predictions written to {s.output}")
    for name, path in s.extras.items():  # entities_csv, aggregate_csv, cooccurrence_csv, html
        if Path(path).exists():
            print(f"{name}: {path}")


if __name__ == "__main__":
    main()
