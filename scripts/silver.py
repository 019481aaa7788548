"""Silver stage as its own job: `python scripts/silver.py model=embedded_mlm` builds the default encoder
from the masked-LM encoder and THULAC silver labels, into outputs/models/zh-policy-char-bert-silver;
the shipped copy in models/ is replaced only when named: `train.silver.export_dir=models/zh-policy-char-bert-silver`."""
import os
from pathlib import Path

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from zh_policy_ner.common.cli import script  # noqa: E402


@hydra.main(version_base="1.3", config_path="../configs", config_name="config")
@script(lambda cfg: f"the silver tags done so far are kept in "
                    f"{cfg.train.silver.cache_dir}/tags-{cfg.train.silver.tagger}.jsonl; "
                    f"the same command tags only the rest (the silver pass itself starts afresh)")
def main(cfg: DictConfig) -> None:
    from zh_policy_ner.training.silver import export_silver_model

    print(f"silver encoder written to {export_silver_model(cfg)}")


if __name__ == "__main__":
    main()
