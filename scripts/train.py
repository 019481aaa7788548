"""The main job: `python scripts/train.py [model=...] [train.max_steps=...] [data.heldout=[...]]`."""
import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from zh_policy_ner.common.cli import checkpoints_kept, script  # noqa: E402


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
@script(lambda cfg: checkpoints_kept(cfg.train.output_dir, f"train.save_steps={cfg.train.save_steps} steps, "
                                     "or every epoch with data.dev", "training"))
def main(cfg: DictConfig) -> None:
    from zh_policy_ner.training.train import format_metrics, train

    result = train(cfg)
    print(format_metrics(result.metrics))
    print(f"model written to {result.output_dir}")


if __name__ == "__main__":
    main()
