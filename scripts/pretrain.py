"""Masked-LM pretraining of the embedded char BERT: `python scripts/pretrain.py [overrides]`; exports to
outputs/models/zh-policy-char-bert (the shipped models/ copy only with `pretrain.export_dir=models/zh-policy-char-bert`)."""
import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from zh_policy_ner.common.cli import checkpoints_kept, script  # noqa: E402


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
@script(lambda cfg: checkpoints_kept(cfg.pretrain.output_dir, f"pretrain.save_steps={cfg.pretrain.save_steps} steps",
                                     "pretraining"))
def main(cfg: DictConfig) -> None:
    from zh_policy_ner.model.pretrain import pretrain

    result = pretrain(cfg.pretrain)
    print(f"pretrained model written to {result.export_dir}")


if __name__ == "__main__":
    main()
