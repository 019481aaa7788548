"""The main job: training data (gold, boosters, lexicon features) through the trainer into a model folder.

:func:`train_on` orchestrates: the silver start (:mod:`zh_policy_ner.training.silver`), mention swap (:mod:`zh_policy_ner.training.augment`),
silver replay, lexicon features, :func:`~zh_policy_ner.training.trainer.fit`, self-training
(:mod:`zh_policy_ner.training.selftrain`), then the artifacts. Writes a self-contained folder: model + tokenizer (``pipeline("token-classification")`` works on it),
``label_map.json``, ``resolved_config.yaml``, ``metrics.json`` and what the span pipeline runs
(``gazetteer.json``, ``layers.json``, ``guideline.yaml``). Checkpoints and resume come from
Trainer; early stopping when a dev split is configured; torchrun/accelerate for several GPUs.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.modeling import load_tokenizer
from ..data.dataset import PreparedData, PreparedDoc, build_windows, load_prepared, to_dataset
from ..data.metrics import entity_scores
from ..decoding.features import LexiconFeatures, enable_features, window_type_ids
from ..decoding.inference import GAZETTEER_FILE, Predictor
from ..model.onnx_backend import export_onnx
from ..rules.guideline import Guideline, check_guideline_labels, guideline_from_config
from ..rules.layers import SpanLayers, save_layers
from ..rules.lexicon import build_gazetteer, place_tagger
from .augment import mention_pools, mention_swap_docs
from .selftrain import pseudo_labelled
from .silver import silver_docs, silver_model, silver_replay
from .trainer import build_model, check_resumable, fit

log = logging.getLogger(__name__)


def with_features(train_ds, data: PreparedData, gold: list[PreparedDoc], cfg: Any, held: list[str],
                  features: LexiconFeatures, guideline: Guideline):
    """The training windows with lexicon feature ids as ``token_type_ids``. Each training article
    gets them from a gazetteer built without its own mentions (cross-fitting: at prediction time a
    new report's mentions are not in the list either); windows of other origin (boosters) get the
    full gazetteer's."""
    per_doc = {}
    for d in gold:
        others = [g for g in gold if g.doc_id != d.doc_id]
        crossed = LexiconFeatures(features.labels, build_gazetteer(others, cfg.train.gazetteer, guideline, held),
                                  features.places)
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

    t0 = time.time()
    guideline = guideline_from_config(cfg)
    set_seed(cfg.seed)  # the new head rows: every run (and every cross-validation fold) starts alike
    label_names = data.manifest["label_names"]
    start = cfg.model.name_or_path
    if cfg.train.silver.enabled:
        start = silver_model(cfg, tokenizer)
    model = build_model(start, label_names, cfg.train)
    gold = [data.docs[i] for i in data.manifest["splits"]["train"]["doc_ids"]]
    tokenizer.model_max_length = min(cfg.data.max_length, model.config.max_position_embeddings)
    train_ds = data.datasets["train"]
    if cfg.train.mention_swap.copies > 0:
        silver: list[PreparedDoc] = []
        if cfg.train.silver.enabled:  # the silver mentions widen the pools of names and places
            silver = silver_docs(cfg.train.silver, cfg.seed, Path(cfg.train.silver.cache_dir), guideline)
        pools = mention_pools(gold + silver)
        extra = mention_swap_docs(gold, pools, cfg.train.mention_swap.copies, cfg.seed)
        train_ds = concatenate_datasets([train_ds, to_dataset(build_windows(extra, tokenizer, label_names,
                                                                             cfg.data.max_length, cfg.data.stride))])
    held = [data.docs[i].norm.text for split in ("heldout", "dev") if split in data.manifest["splits"]
            for i in data.manifest["splits"][split]["doc_ids"]]
    gazetteer = build_gazetteer(gold, cfg.train.gazetteer, guideline, held)
    if cfg.train.silver.replay > 0:
        n = round(cfg.train.silver.replay * len(data.datasets["train"]))
        train_ds = concatenate_datasets([train_ds, silver_replay(
            cfg, tokenizer, label_names, n, gazetteer if cfg.train.silver.replay_policy else None)])
    features = None
    if cfg.train.lexicon_features:
        features = LexiconFeatures(tuple(cfg.data.labels), gazetteer, place_tagger(guideline))
        enable_features(model, cfg.data.labels)
        train_ds = with_features(train_ds, data, gold, cfg, held, features, guideline)
    check_resumable(cfg, output_dir)
    trainer = fit(model, tokenizer, train_ds, cfg.train, output_dir, data.datasets.get("dev"))
    st = cfg.train.self_training
    pseudo_windows = []
    for round_ in range(st.rounds):
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
                              features=features, layers=SpanLayers(guideline=guideline))  # the model, tidied
        heldout_docs = [data.docs[i] for i in data.manifest["splits"]["heldout"]["doc_ids"]]
        metrics["heldout"], predictions = score_docs(predictor, heldout_docs)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")
    gazetteer.save(output_dir / GAZETTEER_FILE)
    save_layers(output_dir, cfg.train.layers, cfg.train.min_score)
    guideline.save(output_dir)
    (output_dir / "label_map.json").write_text(json.dumps(dict(enumerate(label_names)), indent=2), encoding="utf-8")
    (output_dir / "resolved_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    (output_dir / "prepare_manifest.json").write_text(json.dumps(data.manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    return TrainResult(output_dir, metrics, predictions if "heldout" in data.datasets else {})


def train(cfg: Any) -> TrainResult:
    """The main job: prepare the annotations, fine-tune, write the model folder and metrics."""
    import datasets
    from transformers import set_seed

    datasets.disable_progress_bars()
    check_guideline_labels(cfg)
    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    data = load_prepared(cfg, tokenizer)
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = train_on(data, cfg, out, tokenizer)
    if cfg.train.get("export_onnx", False):  # the main job only: cross-validation folds call train_on

        export_onnx(out, strict=False)
    return result


def format_metrics(metrics: dict[str, Any]) -> str:
    """One-paragraph summary of a training run for the terminal."""
    lines = [f"trained {metrics['steps']} steps on {metrics['train_windows']} windows in {metrics['train_seconds']} s "
             f"(final training loss {metrics['final_train_loss']:.4f})"]
    if "heldout" in metrics:
        lines.append("held-out entity F1: " + ", ".join(f"{k} {v['f1']:.3f}" for k, v in metrics["heldout"].items()))
    return "\n".join(lines)
