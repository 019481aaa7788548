"""Structured configs: the settings of each stage as dataclasses, registered in Hydra's ConfigStore
as the schema of their config group (``<group>/schema``).

The values and their comments stay in the YAML files of ``configs/`` (one place to read and edit
them); each group's file starts with ``defaults: [schema, _self_]``, so composing a config checks
it against these types: an unknown key (a typo in an override or an experiment) or a value of the
wrong type fails at start-up with the key's name, before any work. The ``guideline`` group is data,
checked by :mod:`zh_policy_ner.rules.guideline` instead. :func:`register_configs` runs when :mod:`zh_policy_ner.common.cli` is imported,
which every script does before Hydra composes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    seeds_dir: str = MISSING
    annotations_dir: str = MISSING
    models_dir: str = MISSING
    scraped_dir: str = MISSING
    output_dir: str = MISSING


@dataclass
class DataConfig:
    annotations: str = MISSING
    source_root: str = MISSING
    labels: List[str] = MISSING
    max_length: int = MISSING
    stride: int = MISSING
    heldout: List[str] = MISSING
    dev: List[str] = MISSING
    loao_folds: bool = MISSING
    output_dir: str = MISSING


@dataclass
class ModelConfig:
    name_or_path: str = MISSING


@dataclass
class GazetteerConfig:
    guideline_terms: Optional[str] = MISSING
    quoted_formulas: bool = MISSING
    measure_phrases: bool = MISSING
    min_precision: float = MISSING


@dataclass
class SilverConfig:
    enabled: bool = MISSING
    tagger: str = MISSING
    news_articles: int = MISSING
    min_domain_words: int = MISSING
    places: bool = MISSING
    scraped: Optional[str] = MISSING
    max_chars_per_text: int = MISSING
    workers: int = MISSING
    epochs: int = MISSING
    lr: float = MISSING
    cache_dir: str = MISSING
    export_dir: str = MISSING
    replay: float = MISSING
    replay_o: bool = MISSING
    replay_policy: bool = MISSING


@dataclass
class MentionSwapConfig:
    copies: int = MISSING


@dataclass
class SelfTrainingConfig:
    rounds: int = MISSING
    threshold: float = MISSING
    sources: List[str] = MISSING
    max_docs: int = MISSING


@dataclass
class TrainConfig:
    output_dir: str = MISSING
    epochs: int = MISSING              # whole epochs (train.max_steps caps the steps)
    max_steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    head_lr_multiplier: float = MISSING
    layer_lr_decay: float = MISSING
    lexicon_features: bool = MISSING
    label_weights: Dict[str, float] = MISSING
    weight_decay: float = MISSING
    hidden_dropout: float = MISSING
    attention_dropout: float = MISSING
    warmup: Any = MISSING              # a fraction (< 1) of all steps, or a number of steps
    lr_scheduler: str = MISSING
    early_stopping_patience: int = MISSING
    logging_steps: int = MISSING
    save_steps: int = MISSING
    save_total_limit: Optional[int] = MISSING
    bf16: Any = MISSING                # auto | true | false
    disable_tqdm: Optional[bool] = MISSING
    resume: bool = MISSING
    num_threads: Optional[int] = MISSING
    export_onnx: bool = MISSING
    seed: int = MISSING
    layers: List[str] = MISSING
    min_score: Dict[str, float] = MISSING
    gazetteer: GazetteerConfig = field(default_factory=GazetteerConfig)
    silver: SilverConfig = field(default_factory=SilverConfig)
    mention_swap: MentionSwapConfig = field(default_factory=MentionSwapConfig)
    self_training: SelfTrainingConfig = field(default_factory=SelfTrainingConfig)


@dataclass
class EvalConfig:
    mode: str = MISSING
    k: int = MISSING
    folds: Optional[List[str]] = MISSING
    model_dir: str = MISSING
    curve_sizes: List[Any] = MISSING   # numbers of training articles, or "all"
    baselines: List[str] = MISSING
    output_dir: str = MISSING
    subsets: Optional[Dict[str, str]] = MISSING
    tune_min_score: Optional[str] = MISSING
    min_score_grid: List[float] = MISSING


@dataclass
class RayConfig:
    address: Optional[str] = MISSING
    workers: int = MISSING
    cpus_per_worker: float = MISSING
    gpus_per_worker: float = MISSING
    batch_files: int = MISSING
    split_lines: Optional[int] = MISSING


@dataclass
class InferConfig:
    model_dir: str = MISSING
    input: Optional[str] = MISSING
    output: str = MISSING
    max_length: int = MISSING
    stride: int = MISSING
    batch_size: int = MISSING
    docs_per_batch: int = MISSING
    batch_chars: int = MISSING
    precision: str = MISSING
    decode: str = MISSING
    layers: Optional[List[str]] = MISSING
    min_score: Any = MISSING  # null (the model's) or {label: score}: Any, so that a dict replaces the null
    num_threads: Optional[int] = MISSING
    backend: str = MISSING
    reports: bool = MISSING
    html_max_docs: int = MISSING
    engine: str = MISSING
    on_decode_error: str = MISSING
    segment_chars: int = MISSING
    context_chars: int = MISSING
    stream_bytes: int = MISSING
    max_doc_chars: int = MISSING
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass
class CorpusConfig:
    inews: bool = MISSING
    seeds: Optional[str] = MISSING
    extra: List[str] = MISSING
    heldout_fraction: float = MISSING
    eval_reports: Optional[str] = MISSING


@dataclass
class VocabConfig:
    min_freq: int = MISSING
    include_gb2312: bool = MISSING


@dataclass
class EncoderConfig:
    hidden_size: int = MISSING
    num_hidden_layers: int = MISSING
    num_attention_heads: int = MISSING
    intermediate_size: int = MISSING
    max_position_embeddings: int = MISSING
    dropout: float = MISSING


@dataclass
class PretrainConfig:
    init_from: Optional[str] = MISSING
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    model: EncoderConfig = field(default_factory=EncoderConfig)
    seq_len: int = MISSING
    cpu_bf16: Any = MISSING            # auto | true | false
    mlm_probability: float = MISSING
    batch_size: int = MISSING
    grad_accum: int = MISSING
    lr: float = MISSING
    lr_scheduler: str = MISSING
    warmup_steps: int = MISSING
    weight_decay: float = MISSING
    max_steps: int = MISSING
    max_minutes: Optional[float] = MISSING
    logging_steps: int = MISSING
    save_steps: int = MISSING
    eval_steps: int = MISSING
    eval_chunks: int = MISSING
    dataloader_workers: int = MISSING
    num_threads: Optional[int] = MISSING
    resume: bool = MISSING
    output_dir: str = MISSING
    export_dir: Optional[str] = MISSING
    export_dropout: Optional[float] = MISSING
    seed: int = MISSING


SCHEMAS = {"paths": PathsConfig, "data": DataConfig, "model": ModelConfig, "train": TrainConfig,
           "eval": EvalConfig, "infer": InferConfig, "pretrain": PretrainConfig}


def register_configs() -> None:
    """Store each group's schema as ``<group>/schema`` (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, schema in SCHEMAS.items():
        store.store(group=group, name="schema", node=schema)
