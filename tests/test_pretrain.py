import math

import pytest
from transformers import AutoModelForMaskedLM, AutoTokenizer

from zh_policy_ner.model.pretrain import pretrain

from .conftest import ROOT, compose

TINY = ["pretrain.corpus.inews=false", f"pretrain.corpus.seeds={ROOT / 'seeds'}", "pretrain.corpus.eval_reports=null",
        "pretrain.corpus.heldout_fraction=0.2", "pretrain.vocab.include_gb2312=false", "pretrain.vocab.min_freq=1",
        "pretrain.model.hidden_size=32", "pretrain.model.num_hidden_layers=2", "pretrain.model.num_attention_heads=2",
        "pretrain.model.intermediate_size=64", "pretrain.model.max_position_embeddings=64", "pretrain.seq_len=64",
        "pretrain.batch_size=8", "pretrain.lr=3e-3", "pretrain.warmup_steps=0", "pretrain.lr_scheduler=constant",
        "pretrain.save_steps=10", "pretrain.eval_steps=10", "pretrain.logging_steps=5", "pretrain.cpu_bf16=false"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    cfg = compose(*TINY, "pretrain.max_steps=30", f"pretrain.output_dir={out / 'run'}", f"pretrain.export_dir={out / 'export'}")
    return out, cfg, pretrain(cfg.pretrain)


def test_loss_falls_and_model_exports(run):
    out, _, result = run
    m = result.metrics
    assert m["steps"] == 30
    first, last = m["loss_curve"][0][1], m["loss_curve"][-1][1]
    assert first > math.log(m["vocab_size"]) - 1.0  # random init starts near ln(V)
    assert last < first - 0.5
    assert 0.0 <= m["heldout_masked_accuracy"] <= 1.0
    model = AutoModelForMaskedLM.from_pretrained(out / "export")
    tok = AutoTokenizer.from_pretrained(out / "export")
    assert type(model).__name__ == "BertForMaskedLM" and len(tok) == model.config.vocab_size
    card = (out / "export" / "README.md").read_text()
    assert "masked" in card and "python scripts/" in card or "pretrain" in card


def test_resume_continues_from_checkpoint(run):
    out, _, _ = run
    cfg = compose(*TINY, "pretrain.max_steps=40", f"pretrain.output_dir={out / 'run'}", "pretrain.export_dir=null")
    assert pretrain(cfg.pretrain).metrics["steps"] == 40
    lines = (out / "run" / "runs.jsonl").read_text().splitlines()
    assert len(lines) == 2


def test_continued_pretraining_of_an_existing_masked_lm(tiny_model_dir, tmp_path):
    cfg = compose(*TINY, f"pretrain.init_from={tiny_model_dir}", "pretrain.max_steps=3",
                  f"pretrain.output_dir={tmp_path / 'run'}", f"pretrain.export_dir={tmp_path / 'export'}")
    result = pretrain(cfg.pretrain)
    assert result.metrics["steps"] == 3
    assert result.metrics["vocab_size"] == len(AutoTokenizer.from_pretrained(tiny_model_dir))  # its own tokenizer
    AutoModelForMaskedLM.from_pretrained(tmp_path / "export")
