"""The shipped embedded model and the hub-model configs."""
import time

import pytest
from transformers import AutoModelForMaskedLM, AutoModelForTokenClassification, AutoTokenizer

from zh_policy_ner.common.modeling import DEFAULT_MODEL_DIR, MLM_MODEL_DIR, ModelNotAvailable, resolve_model_path
from zh_policy_ner.reading.text import normalize, read_text
from zh_policy_ner.model.tokenization import unknown_rate

from .conftest import ROOT, compose


def test_default_model_config_points_to_the_shipped_model():
    cfg = compose()
    assert cfg.model.name_or_path == str(DEFAULT_MODEL_DIR)
    assert compose("model=embedded_mlm").model.name_or_path == str(MLM_MODEL_DIR)


def test_rebuilding_the_shipped_models_writes_to_outputs_unless_named():
    cfg = compose()
    outputs = f"{cfg.paths.output_dir}/models/"
    assert cfg.train.silver.export_dir == outputs + DEFAULT_MODEL_DIR.name
    assert cfg.pretrain.export_dir == outputs + MLM_MODEL_DIR.name
    assert compose(f"pretrain.export_dir={MLM_MODEL_DIR}").pretrain.export_dir == str(MLM_MODEL_DIR)
    for card in (MLM_MODEL_DIR / "README.md", DEFAULT_MODEL_DIR / "README.md"):  # the rebuild command names models/
        assert f"export_dir=models/{card.parent.name}" in card.read_text(encoding="utf-8")


def test_shipped_model_loads_offline_small_and_covers_the_reports(seed_texts):
    assert (MLM_MODEL_DIR / "model.safetensors").exists(), "the embedded model must be committed"
    size = sum(p.stat().st_size for p in [*MLM_MODEL_DIR.iterdir(), *DEFAULT_MODEL_DIR.iterdir()])
    assert size <= 25 * 1024 * 1024
    model = AutoModelForMaskedLM.from_pretrained(MLM_MODEL_DIR)
    tok = AutoTokenizer.from_pretrained(MLM_MODEL_DIR)
    assert tok.is_fast and len(tok) == model.config.vocab_size
    assert unknown_rate(tok, seed_texts) < 0.01
    assert (MLM_MODEL_DIR / "README.md").exists() and (DEFAULT_MODEL_DIR / "README.md").exists()
    # the default encoder: the same vocabulary, a head that knows O and PER/LOC only (silver stage)
    silver = AutoModelForTokenClassification.from_pretrained(DEFAULT_MODEL_DIR)
    assert AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR).get_vocab() == tok.get_vocab()
    assert list(silver.config.id2label.values()) == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    scraped = sorted((ROOT.parent / "shared" / "scraped").glob("r*.txt"))
    if scraped:
        assert unknown_rate(tok, [normalize(read_text(p)).text for p in scraped]) < 0.01


@pytest.mark.parametrize("name", ["bert-base-chinese", "chinese-roberta-wwm-ext", "rbt3"])
def test_hub_configs_fail_fast_offline_naming_the_override(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_name = compose(f"model={name}").model.name_or_path
    t = time.time()
    with pytest.raises(ModelNotAvailable, match="model=embedded"):
        resolve_model_path(hub_name)
    assert time.time() - t < 5


def test_local_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelNotAvailable, match="config.json"):
        resolve_model_path(tmp_path)
