"""Batch inference: `python scripts/predict.py infer.model_dir=DIR infer.input=PATH infer.output=FILE.jsonl`."""
import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> None:
    from zh_policy_ner.predict import run_predict

    s = run_predict(cfg)
    print(f"{s.documents} documents ({s.characters} characters) in {s.seconds:.1f} s; "
          f"{s.skipped_done} already done, {s.errors} unreadable (see {s.output.with_suffix('.errors.jsonl')})")
    print(f"predictions written to {s.output}")
    for name, path in s.extras.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
