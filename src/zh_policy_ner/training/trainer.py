"""The trainer: a token-classification model on any encoder, its training loop and its resume rules.

:func:`build_model` (a new head, keeping the rows of labels a token-classifier checkpoint shares),
:func:`fit` (HF ``Trainer``: layer-wise learning rates, label-weighted loss, resume from the newest
complete checkpoint), :func:`run_settings` and :func:`settings_key` (what a run learns from, one
ignore list for every cache key), :func:`check_resumable`. Nothing here imports the project's
data, lexicon or stage modules: the silver stage and the main job both build on it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from ..common.cli import UsageError
from ..common.modeling import attach_progress, last_complete_checkpoint, resolve_model_path, use_bf16

log = logging.getLogger(__name__)


def build_model(name_or_path: str, label_names: list[str], tcfg: Any = None):
    """A token-classification head on any encoder folder or hub name (head freshly initialised);
    ``tcfg`` (the train config) sets the dropout rates."""
    from transformers import AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    path = resolve_model_path(name_or_path)
    # A new or resized head is the expected case here: transformers' load report (MISSING /
    # MISMATCH "reinit") would alarm for nothing, so it is replaced by one line on what was kept.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = AutoModelForTokenClassification.from_pretrained(
            path,
            id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)},
            ignore_mismatched_sizes=True,
            **({} if tcfg is None else {"hidden_dropout_prob": tcfg.hidden_dropout,
                                        "attention_probs_dropout_prob": tcfg.attention_dropout}),
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    kept = _carry_head_rows(model, path, label_names)
    log.info("encoder %s; classifier rows %s", path, f"kept for {', '.join(kept)}, new for the others" if kept
             else "new for all labels")
    return model


def _carry_head_rows(model, path: str, label_names: list[str]) -> list[str]:
    """Starting from a token classifier with other labels (the silver stage: O and PER/LOC only),
    keep its trained rows for the labels both share; the other rows stay freshly initialised.
    Returns the labels whose rows come from the checkpoint."""
    from safetensors.torch import load_file

    src_cfg, weights = Path(path) / "config.json", Path(path) / "model.safetensors"
    if not (src_cfg.exists() and weights.exists()):
        return []
    src = json.loads(src_cfg.read_text())
    src_labels = [src.get("id2label", {}).get(str(i)) for i in range(len(src.get("id2label", {})))]
    if not src.get("architectures", [""])[0].endswith("ForTokenClassification"):
        return []
    if src_labels == label_names:
        return list(label_names)  # same head: from_pretrained loaded it whole
    state = load_file(str(weights))
    if "classifier.weight" not in state:
        return []
    head = model.classifier
    with torch.no_grad():
        for j, lab in enumerate(label_names):
            if lab in src_labels:
                i = src_labels.index(lab)
                head.weight[j] = state["classifier.weight"][i].to(head.weight.dtype)
                head.bias[j] = state["classifier.bias"][i].to(head.bias.dtype)
    return [lab for lab in label_names if lab in src_labels]


def fit(model, tokenizer, train_ds, tcfg: Any, output_dir: Path, dev_ds=None):
    """Train with HF Trainer; returns the trainer (best model loaded when a dev set is given)."""
    from transformers import DataCollatorForTokenClassification, EarlyStoppingCallback, Trainer, TrainingArguments

    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    keep = ["input_ids", "attention_mask", "labels", "token_type_ids"]
    train_ds = train_ds.remove_columns([c for c in train_ds.column_names if c not in keep])
    if dev_ds is not None:
        dev_ds = dev_ds.remove_columns([c for c in dev_ds.column_names if c not in keep])
    has_dev = dev_ds is not None and len(dev_ds) > 0
    args = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=tcfg.epochs,
        max_steps=tcfg.max_steps,
        per_device_train_batch_size=tcfg.batch_size,
        per_device_eval_batch_size=tcfg.batch_size,
        learning_rate=tcfg.lr,
        weight_decay=tcfg.weight_decay,
        warmup_steps=tcfg.warmup,
        lr_scheduler_type=tcfg.lr_scheduler,
        bf16=use_bf16(tcfg.bf16),
        use_cpu=not torch.cuda.is_available(),
        logging_steps=tcfg.logging_steps,
        eval_strategy="epoch" if has_dev else "no",
        save_strategy="epoch" if has_dev else "steps",
        save_steps=tcfg.save_steps,
        save_total_limit=tcfg.save_total_limit,
        load_best_model_at_end=has_dev,
        metric_for_best_model="eval_loss" if has_dev else None,
        seed=tcfg.seed,
        data_seed=tcfg.seed,
        report_to=[],
        disable_tqdm=tcfg.disable_tqdm if tcfg.disable_tqdm is not None else not sys.stderr.isatty(),
    )
    optimizers = (None, None)
    decay = tcfg.get("layer_lr_decay", 1.0)
    if tcfg.head_lr_multiplier != 1 or decay != 1:
        optimizers = (torch.optim.AdamW(param_groups(model, tcfg.lr, tcfg.head_lr_multiplier, decay),
                                        lr=tcfg.lr, weight_decay=tcfg.weight_decay), None)
    trainer = Trainer(
        model=model,
        args=args,
        optimizers=optimizers,
        compute_loss_func=weighted_loss(model.config.id2label, tcfg.label_weights),
        train_dataset=train_ds,
        eval_dataset=dev_ds if has_dev else None,
        data_collator=DataCollatorForTokenClassification(tokenizer),
        processing_class=tokenizer,
        callbacks=[EarlyStoppingCallback(tcfg.early_stopping_patience)] if has_dev else [],
    )
    attach_progress(trainer)
    last = None
    if tcfg.resume and output_dir.exists():
        # a checkpoint half-written when a run stopped (no trainer_state.json) is passed over and removed
        had_ckpt = any(output_dir.glob("checkpoint-*"))
        last = last_complete_checkpoint(output_dir, prune=True)
        if last is None and had_ckpt:
            log.warning("no complete checkpoint in %s: starting afresh", output_dir)
    trainer.resumed_from_step = 0
    if last:
        trainer.resumed_from_step = json.loads((Path(last) / "trainer_state.json").read_text())["global_step"]
        log.info("resuming from %s (step %d), the newest complete checkpoint", last, trainer.resumed_from_step)
    trainer.train(resume_from_checkpoint=last)
    return trainer


_LAYER = re.compile(r"\.layer\.(\d+)\.")


def param_groups(model, lr: float, head_multiplier: float = 1.0, layer_decay: float = 1.0) -> list[dict]:
    """Optimiser groups: the classifier head at ``lr x head_multiplier`` (a fresh head may learn
    faster than the pretrained encoder should move), encoder layer i (0 = lowest) of L at
    ``lr x layer_decay**(L - 1 - i)`` and the embeddings at ``lr x layer_decay**L``
    (layer-wise learning-rate decay: lower layers hold the general knowledge, and move least)."""
    n_layers = model.config.num_hidden_layers
    groups: dict[float, list] = {}
    for name, p in model.named_parameters():
        if name.startswith("classifier."):
            rate = lr * head_multiplier
        elif (m := _LAYER.search(name)) is not None:
            rate = lr * layer_decay ** (n_layers - 1 - int(m.group(1)))
        elif ".embeddings." in f".{name}":
            rate = lr * layer_decay ** n_layers
        else:  # pooler and anything above the encoder
            rate = lr
        groups.setdefault(rate, []).append(p)
    return [{"params": ps, "lr": rate} for rate, ps in sorted(groups.items())]


def weighted_loss(id2label: dict, label_weights: dict[str, float]):
    """Cross-entropy with B-X/I-X weighted by ``label_weights[X]`` (``None``: the model's own loss)."""
    if not label_weights or all(w == 1 for w in label_weights.values()):
        return None
    weight = torch.tensor([float(label_weights.get(lab[2:], 1.0)) if lab != "O" else 1.0
                           for _, lab in sorted((int(i), v) for i, v in id2label.items())])

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs.logits
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                                 weight=weight.to(logits.device), ignore_index=-100)

    return loss


RUN_KEYS = ("model", "data", "guideline", "train", "seed")  # what a resumed run must share with the checkpoint's run
# settings that say where and how a run goes, not what it learns: left out of every cache key
RUN_IGNORE = {"train": ("output_dir", "resume", "max_steps", "disable_tqdm", "logging_steps", "save_steps",
                        "save_total_limit", "num_threads", "export_onnx", "layers", "min_score"),  # saved, not learnt
              "data": ("output_dir", "loao_folds"),
              "guideline": ("spans",)}  # spans: what decoding may output, learnt only from self-training's pseudo-labels


def run_settings(cfg: Any, keys: tuple[str, ...] = RUN_KEYS) -> dict:
    """The settings that decide what a training run learns (``keys`` of the resolved config:
    model, data, guideline, train, seed), without :data:`RUN_IGNORE` (where and how it runs, and
    ``train.max_steps``: a resumed run may extend it)."""
    from omegaconf import OmegaConf

    settings = {k: OmegaConf.to_container(cfg.get(k), resolve=True) if OmegaConf.is_config(cfg.get(k)) else cfg.get(k)
                for k in keys}
    self_training = ((settings.get("train") or {}).get("self_training") or {}).get("rounds", 0) > 0
    for group, names in RUN_IGNORE.items():
        for k in names:
            if group == "guideline" and self_training:  # pseudo-labels are decoded spans: then it is learnt
                continue
            if isinstance(settings.get(group), dict):
                settings[group].pop(k, None)
    weights = (settings.get("train") or {}).get("label_weights")
    if isinstance(weights, dict):  # a weight of 1 is no weight: {POLICY: 1.0} learns what {} does
        settings["train"]["label_weights"] = {k: v for k, v in weights.items() if v != 1}
    return json.loads(json.dumps(settings))


def settings_key(settings: Any, length: int = 16) -> str:
    """A cache key: the hash of settings (from :func:`run_settings`, plus whatever else shapes the
    cached thing), so that no setting can change without changing the key."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:length]


def check_resumable(cfg: Any, output_dir: Path) -> None:
    """Record the run's settings next to its checkpoints; refuse to resume checkpoints that another
    configuration wrote (a stale folder would otherwise be taken for a finished run)."""
    settings = run_settings(cfg)
    record = output_dir / "run_settings.json"
    has_ckpt = last_complete_checkpoint(output_dir) is not None
    if cfg.train.resume and has_ckpt:
        old = json.loads(record.read_text()) if record.exists() else None
        if old != settings:
            raise UsageError(f"{output_dir} holds checkpoints of a run with other settings "
                             f"({'none recorded' if old is None else record}); resume it with the same settings, "
                             f"or start afresh with train.resume=false or another train.output_dir")
    elif not cfg.train.resume and output_dir.is_dir() and any(output_dir.glob("checkpoint-*")):
        # a fresh run: old checkpoints (complete or not) would later be taken for this run's
        log.warning("train.resume=false: removing the old checkpoints in %s", output_dir)
        for old_ckpt in output_dir.glob("checkpoint-*"):
            shutil.rmtree(old_ckpt)
    output_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(settings, indent=2, ensure_ascii=False, sort_keys=True), encoding="utf-8")
