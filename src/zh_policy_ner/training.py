"""Fine-tuning the token classifier (the main job) with HF Trainer.

Writes a self-contained folder: model + tokenizer (``pipeline("token-classification")`` works on it),
``label_map.json``, ``resolved_config.yaml`` and ``metrics.json``. Checkpoints and resume come from
Trainer; early stopping when a dev split is configured; torchrun/accelerate for several GPUs.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .cli import UsageError
from .dataset import PreparedData, PreparedDoc, load_prepared
from .features import LexiconFeatures, enable_features, window_type_ids
from .layers import save_layers
from .lexicon import build_gazetteer, place_tagger
from .metrics import entity_scores
from .modeling import attach_progress, last_complete_checkpoint, use_bf16

log = logging.getLogger(__name__)


def build_model(name_or_path: str, label_names: list[str], tcfg: Any = None):
    """A token-classification head on any encoder folder or hub name (head freshly initialised);
    ``tcfg`` (the train config) sets the dropout rates."""
    from transformers import AutoModelForTokenClassification
    from transformers.utils import logging as hf_logging

    from .modeling import resolve_model_path

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


RUN_KEYS = ("model", "data", "train", "seed")  # what a resumed run must share with the checkpoint's run


def run_settings(cfg: Any) -> dict:
    """The settings that decide what a training run learns (model, data, train, seed), without the
    ones that only say where and how it runs, and without ``train.max_steps`` (a resumed run may
    extend it)."""
    from omegaconf import OmegaConf

    settings = {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k] for k in RUN_KEYS}
    for k in ("output_dir", "resume", "max_steps", "disable_tqdm", "logging_steps", "save_steps", "save_total_limit",
              "num_threads", "export_onnx", "layers"):  # layers: saved with the model, not learnt
        settings["train"].pop(k, None)
    for k in ("output_dir", "loao_folds"):
        settings["data"].pop(k, None)
    return json.loads(json.dumps(settings))


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
        import shutil

        log.warning("train.resume=false: removing the old checkpoints in %s", output_dir)
        for old_ckpt in output_dir.glob("checkpoint-*"):
            shutil.rmtree(old_ckpt)
    output_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(settings, indent=2, ensure_ascii=False, sort_keys=True), encoding="utf-8")


def with_features(train_ds, data: PreparedData, gold: list[PreparedDoc], cfg: Any, held: list[str],
                  features: LexiconFeatures):
    """The training windows with lexicon feature ids as ``token_type_ids``. Each training article
    gets them from a gazetteer built without its own mentions (cross-fitting: at prediction time a
    new report's mentions are not in the list either); windows of other origin (boosters) get the
    full gazetteer's."""
    per_doc = {}
    for d in gold:
        others = [g for g in gold if g.doc_id != d.doc_id]
        crossed = LexiconFeatures(features.labels, build_gazetteer(others, cfg.train.gazetteer, held), features.places)
        per_doc[d.doc_id] = crossed.char_ids(d.norm.text)

    def add(row):
        chars = per_doc.get(row["doc_id"])
        if chars is None and row["doc_id"] in data.docs:
            chars = per_doc[row["doc_id"]] = features.char_ids(data.docs[row["doc_id"]].norm.text)
        return {"token_type_ids": window_type_ids(chars, row["offset_mapping"])}

    return train_ds.map(add)


def score_docs(predictor, docs: list[PreparedDoc]) -> tuple[dict, dict]:
    """Entity scores of a predictor on prepared docs, plus the predictions by doc_id."""
    preds = predictor.predict_norm([d.norm for d in docs])
    scores = entity_scores([d.spans for d in docs], [p.norm_spans for p in preds], [len(d.norm.text) for d in docs])
    return scores, {d.doc_id: p for d, p in zip(docs, preds)}


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict[str, Any]
    predictions: dict[str, Any] = field(default_factory=dict)  # held-out doc_id -> DocPrediction


def train_on(data: PreparedData, cfg: Any, output_dir: Path, tokenizer) -> TrainResult:
    """Fine-tune on ``data``'s train split, save the model folder, score the held-out split."""
    from datasets import concatenate_datasets
    from omegaconf import OmegaConf
    from transformers import set_seed

    from .inference import GAZETTEER_FILE, Predictor

    t0 = time.time()
    set_seed(cfg.seed)  # the new head rows: every run (and every cross-validation fold) starts alike
    label_names = data.manifest["label_names"]
    start = cfg.model.name_or_path
    if cfg.train.silver.enabled:
        from .silver import silver_model

        start = silver_model(cfg, tokenizer)
    model = build_model(start, label_names, cfg.train)
    gold = [data.docs[i] for i in data.manifest["splits"]["train"]["doc_ids"]]
    tokenizer.model_max_length = min(cfg.data.max_length, model.config.max_position_embeddings)
    train_ds = data.datasets["train"]
    if cfg.train.mention_swap.copies > 0:
        from .augment import mention_pools, mention_swap_docs
        from .dataset import build_windows, to_dataset

        silver: list[PreparedDoc] = []
        if cfg.train.silver.enabled:  # the silver mentions widen the pools of names and places
            from .silver import silver_docs

            silver = silver_docs(cfg.train.silver, cfg.seed, Path(cfg.train.silver.cache_dir))
        pools = mention_pools(gold + silver)
        extra = mention_swap_docs(gold, pools, cfg.train.mention_swap.copies, cfg.seed)
        train_ds = concatenate_datasets([train_ds, to_dataset(build_windows(extra, tokenizer, label_names,
                                                                             cfg.data.max_length, cfg.data.stride))])
    held = [data.docs[i].norm.text for split in ("heldout", "dev") if split in data.manifest["splits"]
            for i in data.manifest["splits"][split]["doc_ids"]]
    gazetteer = build_gazetteer(gold, cfg.train.gazetteer, held)
    if cfg.train.silver.replay > 0:
        from .silver import silver_replay

        n = round(cfg.train.silver.replay * len(data.datasets["train"]))
        train_ds = concatenate_datasets([train_ds, silver_replay(
            cfg, tokenizer, label_names, n, gazetteer if cfg.train.silver.replay_policy else None)])
    features = None
    if cfg.train.lexicon_features:
        features = LexiconFeatures(tuple(cfg.data.labels), gazetteer, place_tagger())
        enable_features(model, cfg.data.labels)
        train_ds = with_features(train_ds, data, gold, cfg, held, features)
    check_resumable(cfg, output_dir)
    trainer = fit(model, tokenizer, train_ds, cfg.train, output_dir, data.datasets.get("dev"))
    st = cfg.train.self_training
    pseudo_windows = []
    for round_ in range(st.rounds):
        from .selftrain import pseudo_labelled

        pseudo = pseudo_labelled(trainer.model, tokenizer, cfg, label_names, features)
        log.info("self-training round %d: %d windows of confident pseudo-labels", round_ + 1, len(pseudo))
        pseudo_windows.append(len(pseudo))
        train_ds = concatenate_datasets([train_ds, pseudo])
        model = build_model(start, label_names, cfg.train)
        if features is not None:
            enable_features(model, cfg.data.labels)
        trainer = fit(model, tokenizer, train_ds,
                      OmegaConf.merge(cfg.train, {"resume": False}), output_dir / f"self-training-{round_ + 1}",
                      data.datasets.get("dev"))
    trainer.save_model(str(output_dir))
    metrics: dict[str, Any] = {
        "train_seconds": round(time.time() - t0, 1),
        "steps": trainer.state.global_step,
        "resumed_from_step": trainer.resumed_from_step,
        "train_windows": len(train_ds),
        "silver_start": start if cfg.train.silver.enabled else None,
        "self_training_windows": pseudo_windows,
        "train_docs": data.manifest["splits"]["train"]["doc_ids"],
        "final_train_loss": next((h["train_loss"] for h in reversed(trainer.state.log_history) if "train_loss" in h), None),
    }
    if "heldout" in data.datasets:
        predictor = Predictor(trainer.model, tokenizer, cfg.data.max_length, cfg.data.stride, decode=cfg.infer.decode,
                              features=features)
        heldout_docs = [data.docs[i] for i in data.manifest["splits"]["heldout"]["doc_ids"]]
        metrics["heldout"], predictions = score_docs(predictor, heldout_docs)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")
    gazetteer.save(output_dir / GAZETTEER_FILE)
    save_layers(output_dir, cfg.train.layers)
    (output_dir / "label_map.json").write_text(json.dumps(dict(enumerate(label_names)), indent=2), encoding="utf-8")
    (output_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    (output_dir / "prepare_manifest.json").write_text(json.dumps(data.manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    return TrainResult(output_dir, metrics, predictions if "heldout" in data.datasets else {})


def train(cfg: Any) -> TrainResult:
    """The main job: prepare the annotations, fine-tune, write the model folder and metrics."""
    import datasets
    from transformers import set_seed

    from .modeling import load_tokenizer

    datasets.disable_progress_bars()
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    data = load_prepared(cfg, tokenizer)
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = train_on(data, cfg, out, tokenizer)
    if cfg.train.get("export_onnx", False):  # the main job only: cross-validation folds call train_on
        from .onnx_backend import export_onnx

        export_onnx(out, strict=False)
    return result


def format_metrics(metrics: dict[str, Any]) -> str:
    """One-paragraph summary of a training run for the terminal."""
    lines = [f"trained {metrics['steps']} steps on {metrics['train_windows']} windows in {metrics['train_seconds']} s "
             f"(final training loss {metrics['final_train_loss']:.4f})"]
    if "heldout" in metrics:
        lines.append("held-out entity F1: " + ", ".join(f"{k} {v['f1']:.3f}" for k, v in metrics["heldout"].items()))
    return "\n".join(lines)
