"""Silver stage as its own job: `python scripts/silver.py model=embedded_mlm` builds the shipped default
encoder (models/zh-policy-char-bert-silver) from the masked-LM encoder and THULAC silver labels."""
import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
def main(cfg: DictConfig) -> None:
    from zh_policy_ner.silver import export_silver_model

    print(f"silver encoder written to {export_silver_model(cfg)}")


if __name__ == "__main__":
    main()
