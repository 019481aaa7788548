"""Shared fixtures: tiny random-weight models built on the fly, Hydra configs, paths."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SCRAPED = ROOT.parent / "shared" / "scraped"
SEED_IDS = sorted(p.stem for p in (ROOT / "seeds").glob("*.txt"))
SEEDS_ANN = ROOT / "annotations" / "seeds.jsonl"  # the five seeds alone, for tests that need few documents
GUIDELINE = ROOT / "configs" / "guideline" / "zh_policy.yaml"  # the project's guideline (configs/guideline/)


@pytest.fixture(scope="session")
def guideline():
    """The project's guideline, read (the rules' word lists and patterns)."""
    from zh_policy_ner.rules.guideline import load_guideline

    return load_guideline(GUIDELINE)


def compose(*overrides: str):
    """The project's Hydra config with overrides, as the scripts would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from zh_policy_ner.common.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


# The tiny-run settings every training test shares, set once: short windows, two steps, fp32.
TINY = ("data.max_length=64", "data.stride=16", "train.max_steps=2", "train.bf16=false")


def tiny_config(model_dir, out, *overrides: str):
    """The project's config for a tiny run: ``model_dir`` as the encoder, every output under ``out``
    (``paths.output_dir``: the model, evaluation, predictions), :data:`TINY`; ``overrides`` win over
    both (a key given twice keeps the last value, as on a command line read left to right)."""
    chosen: dict[str, str] = {}
    for item in (f"model.name_or_path={model_dir}", f"paths.output_dir={out}", *TINY, *overrides):
        chosen[item.split("=", 1)[0].lstrip("+~")] = item
    return compose(*chosen.values())


@pytest.fixture()
def tiny_cfg(tiny_model_dir, tmp_path):
    """``tiny_cfg(*overrides)``: :func:`tiny_config` on the tiny encoder, outputs under ``tmp_path``."""
    return lambda *overrides: tiny_config(tiny_model_dir, tmp_path, *overrides)


@pytest.fixture(scope="session")
def seed_texts() -> list[str]:
    from zh_policy_ner.reading.text import normalize, read_text

    return [normalize(read_text(p)).text for p in sorted((ROOT / "seeds").glob("*.txt"))]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, seed_texts) -> Path:
    """A 2-layer, 32-wide BERT masked LM with a char vocabulary from the seeds, random weights."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from zh_policy_ner.model.tokenization import build_vocab, make_tokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = build_vocab(seed_texts, min_freq=1, include_gb2312=False)
    tokenizer = make_tokenizer(vocab, model_max_length=128)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture()
def scraped_dir() -> Path:
    if not SCRAPED.is_dir():
        pytest.skip(f"scraped reports not found at {SCRAPED} (they live in ../shared/scraped, read in place)")
    return SCRAPED


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A tiny token classifier trained for two steps by the main job's code (its folder)."""
    from zh_policy_ner.training.train import train

    out = tmp_path_factory.mktemp("m")
    train(tiny_config(tiny_model_dir, out, f"train.output_dir={out}"))
    return out
