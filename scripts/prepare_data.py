"""Prepare stage: `python scripts/prepare_data.py [data.heldout=[doc_id,...]] [data.max_length=...]`."""
import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from zh_policy_ner.common.cli import script  # noqa: E402


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
@script(lambda cfg: f"{cfg.data.output_dir} is as it was (it is replaced only once complete); "
        "run the same command again")
def main(cfg: DictConfig) -> None:
    from zh_policy_ner.data.dataset import prepare, summary_table

    data, out = prepare(cfg)
    print(summary_table(data.manifest))
    print(f"datasets and manifest.json written to {out}")


if __name__ == "__main__":
    main()
