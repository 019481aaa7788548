"""Evaluation on held-out articles: leave-one-article-out cross-validation or a fixed held-out
split, the model next to the baselines, entity-level P/R/F1 per label (micro totals and mean ± sd
over folds), and per-article error reports."""
from __future__ import annotations

import copy
import json
import logging
import shutil
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..common.cli import UsageError
from ..common.modeling import load_tokenizer, resolve_model_path
from ..data.dataset import PreparedDoc, bio_label_names, grouped_folds, leave_one_out, load_docs, prepare_docs, split_docs
from ..data.metrics import entity_scores, error_cases, mean_sd, scores_table, write_error_report
from ..decoding.inference import DocPrediction, Predictor, TokenProbs, check_decode, decode_spans
from ..labelling.annotations import sha256_bytes
from ..model.modelcard import command_line
from ..model.onnx_backend import weights_hash
from ..rules.baselines import make_baseline
from ..rules.guideline import check_guideline_labels, guideline_from_config, saved_guideline
from ..rules.layers import LayerError, SpanLayers, parse_layers, parse_min_score
from ..rules.lexicon import build_gazetteer
from ..rules.words import whole_word_share
from ..training.train import train_on
from ..training.trainer import run_settings, settings_key

log = logging.getLogger(__name__)
MODEL = "model"
GAZ = "model+lexicons"  # what prediction outputs: gazetteer over the model, place names under it
FOLD_CACHE = "fold_probs.npz"  # per fold: the model's token probabilities on its test articles, and their key


def _pooled(pairs: list[tuple[PreparedDoc, list]]) -> dict:
    return entity_scores([d.spans for d, _ in pairs], [p for _, p in pairs], [len(d.norm.text) for d, _ in pairs])


def _baseline_preds(names, train_docs, test_docs) -> dict[str, list[list]]:
    out = {}
    for name in names:
        tagger = make_baseline(name, train_docs)
        out[name] = [tagger.tag(d.norm.text) for d in test_docs]
    return out


def eval_layers(cfg: Any) -> list[str]:
    """The span layers scored (the ``model+lexicons`` row): ``infer.layers`` when set, else what a
    model trained with this config saves (``train.layers``)."""
    layers = cfg.infer.get("layers")
    return [str(x) for x in parse_layers(layers if layers is not None else cfg.train.layers)]


def eval_min_score(cfg: Any) -> dict[str, float]:
    """The ``min_score`` scored with :func:`eval_layers`: ``train.min_score`` (what a model trained
    with this config saves), with ``infer.min_score`` winning label by label; checked."""
    try:
        return {**parse_min_score(cfg.train.get("min_score"), "train.min_score"),
                **parse_min_score(cfg.infer.get("min_score"), "infer.min_score")}
    except LayerError as err:
        raise UsageError(str(err)) from None


def check_eval_settings(cfg: Any) -> None:
    """What decoding and scoring will need, checked before any fold trains (one-line usage errors)."""
    eval_min_score(cfg)
    try:
        check_decode(cfg.infer.decode)
    except ValueError as err:
        raise UsageError(f"infer.{err}") from None
    label = cfg.eval.get("tune_min_score")
    if cfg.eval.mode == "cv" and label:
        if label not in cfg.data.labels:
            raise UsageError(f"eval.tune_min_score={label!r} is not among data.labels={list(cfg.data.labels)}")
        if not cfg.eval.min_score_grid:
            raise UsageError("eval.min_score_grid is empty: give the scores to try, or eval.tune_min_score=null")
        parse_min_score({label: t for t in cfg.eval.min_score_grid}, "eval.min_score_grid")


def cv_folds(cfg: Any, doc_ids: list[str]) -> list[tuple[list[str], list[str]]]:
    """The cross-validation folds: ``eval.folds`` (these articles left out one at a time), else
    ``eval.k`` grouped folds by article, else (``eval.k=0``) leave-one-article-out."""
    if cfg.eval.folds:
        return leave_one_out(doc_ids, list(cfg.eval.folds))
    if not cfg.eval.k:
        return leave_one_out(doc_ids)
    return grouped_folds(doc_ids, int(cfg.eval.k), int(cfg.seed))


def fold_inputs(cfg: Any, docs: list, ids: list[str]) -> dict[str, Any]:
    """What a fold's training reads besides the settings, by content: the annotation records of its
    articles (text hash and spans: a corrected label retrains the fold), the guideline terms file
    and the encoder's weights."""
    by_id = {d.doc_id: d for d in docs}
    records = [[i, by_id[i].text_sha256, [[s.start, s.end, s.label] for s in by_id[i].spans]] for i in sorted(ids)]
    terms = cfg.train.gazetteer.guideline_terms
    return {"records": settings_key(records, 64),
            "terms": sha256_bytes(Path(terms).read_bytes()) if terms and Path(terms).exists() else None,
            "encoder": weights_hash(resolve_model_path(cfg.model.name_or_path))}


def fold_model_probs(cfg: Any, docs: list, tokenizer, train_ids: list[str], test_ids: list[str],
                     fold_dir: Path) -> tuple[list[str], dict[str, TokenProbs]]:
    """The labels and the token probabilities of a fold's model on its test articles, trained on
    its train articles (fp32 torch, whatever the machine). Cached in the fold folder under a key of
    what the model learns (:func:`~zh_policy_ner.training.trainer.run_settings`: not the decoding
    settings, ``infer.*`` or the guideline's ``spans``) and of the fold's inputs
    (:func:`fold_inputs`): an interrupted cross-validation resumes at the fold it stopped in, and
    inference-only ablations (layers, decoding) re-score the cached probabilities, never retrain."""
    settings = run_settings(cfg)
    if not cfg.train.lexicon_features:  # then the gazetteer is only an output layer, built afresh (fold_gazetteer)
        settings["train"].pop("gazetteer", None)
    key = settings_key({"settings": settings, "max_steps": cfg.train.max_steps,
                        "train": sorted(train_ids), "test": sorted(test_ids),
                        "inputs": fold_inputs(cfg, docs, train_ids + test_ids)}, 64)
    cache = fold_dir / FOLD_CACHE
    if cache.exists():
        try:
            with np.load(cache) as rec:
                if str(rec["key"]) == key:
                    log.info("fold %s: reusing the model's probabilities from %s", fold_dir.name, cache)
                    return [str(x) for x in rec["labels"]], {
                        d: tuple(rec[f"{d}/{part}"] for part in ("starts", "ends", "probs")) for d in test_ids}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:  # damaged: the fold is trained again
            log.warning("fold %s: %s is unreadable (%s): training the fold again", fold_dir.name, cache, err)
    shutil.rmtree(fold_dir, ignore_errors=True)  # every fold is trained afresh
    data = prepare_docs(docs, tokenizer, {"train": train_ids, "heldout": test_ids},
                        bio_label_names(cfg.data.labels), cfg.data.max_length, cfg.data.stride)
    train_on(data, cfg, fold_dir, tokenizer)
    predictor = Predictor.from_pretrained(str(fold_dir), layers=[], backend="torch", precision="fp32",
                                          max_length=cfg.data.max_length, stride=cfg.data.stride)
    merged = dict(zip(test_ids, predictor.token_probs([data.docs[i].norm for i in test_ids])))
    arrays = {f"{d}/{part}": x for d, m in merged.items() for part, x in zip(("starts", "ends", "probs"), m)}
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez_compressed(tmp, key=np.array(key), labels=np.array(predictor.labels), **arrays)
    tmp.replace(cache)
    return list(predictor.labels), merged


@dataclass
class FoldDecoder:
    """What a fold's output is decoded from: its test articles, its model's cached probabilities
    (:func:`fold_model_probs`) and labels, its layers (:func:`fold_layers`); calling it decodes them
    as prediction does (``min_score``: another one for the layers): ``model_spans`` is the model
    row, ``norm_spans`` the output."""

    test_docs: list[PreparedDoc]
    probs: list[TokenProbs]
    labels: list[str]
    decode: str
    layers: SpanLayers

    @classmethod
    def of(cls, cfg: Any, docs: list, tokenizer, train_ids: list[str], test_ids: list[str], fold_dir: Path,
           prepared: dict[str, PreparedDoc]) -> "FoldDecoder":
        labels, probs = fold_model_probs(cfg, docs, tokenizer, train_ids, test_ids, fold_dir)
        test_docs = [prepared[i] for i in test_ids]
        return cls(test_docs, [probs[i] for i in test_ids], labels, cfg.infer.decode,
                   fold_layers(cfg, [prepared[i] for i in train_ids], test_docs))

    def __call__(self, min_score: dict[str, float] | None = None) -> list[DocPrediction]:
        layers = self.layers
        if min_score is not None:
            layers = copy.copy(layers)
            layers.min_score = min_score
        return decode_spans([d.norm for d in self.test_docs], self.probs, self.labels, self.decode, layers)


def tune_min_score(cfg: Any, decoders: list[FoldDecoder]) -> dict[str, Any] | None:
    """The output scored at each ``eval.min_score_grid`` value of ``eval.tune_min_score``'s label,
    pooled over the folds, and nested: each fold scored at the value that is best (micro F1) on the
    other folds, so that choosing the value is part of what is measured."""
    label = cfg.eval.get("tune_min_score")
    if not label or len(decoders) < 2:
        return None
    grid = [float(x) for x in cfg.eval.min_score_grid]
    base = decoders[0].layers.min_score
    per_fold = {t: [[(d, p.norm_spans) for d, p in zip(f.test_docs, f({**base, label: t}))] for f in decoders]
                for t in grid}
    pooled = {t: _pooled([x for fold in folds for x in fold]) for t, folds in per_fold.items()}
    chosen, nested = [], []
    for k in range(len(decoders)):
        others = {t: _pooled([x for j, fold in enumerate(folds) if j != k for x in fold])["micro"]["f1"]
                  for t, folds in per_fold.items()}
        best = max(grid, key=lambda t: others[t])
        chosen.append(best)
        nested += per_fold[best][k]
    return {"label": label, "grid": grid, "pooled": {str(t): v for t, v in pooled.items()},
            "nested": {"chosen": chosen, "micro": _pooled(nested)}}


def _all_docs(cfg: Any) -> tuple[list, Any, dict[str, PreparedDoc]]:
    """The annotated documents, the model's tokenizer, and every document prepared (for scoring)."""
    docs = load_docs(cfg)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    prepared = prepare_docs(docs, tokenizer, {"train": [d.doc_id for d in docs]}, bio_label_names(cfg.data.labels),
                            cfg.data.max_length, cfg.data.stride).docs
    return docs, tokenizer, prepared


def fold_layers(cfg: Any, train_docs: list[PreparedDoc], test_docs: list[PreparedDoc]) -> SpanLayers:
    """The span layers of a fold's model (:func:`eval_layers`), with the gazetteer it would be saved
    with (``train.gazetteer`` over its training articles, guideline terms found in the test articles
    withheld), built afresh so that changing its settings re-scores cached folds instead of
    retraining them."""
    layers = parse_layers(eval_layers(cfg))
    guideline = guideline_from_config(cfg)
    gazetteer = None
    if any(layer.name == "gazetteer" for layer in layers):
        gazetteer = build_gazetteer(train_docs, cfg.train.gazetteer, guideline, [d.norm.text for d in test_docs])
    return SpanLayers(layers, gazetteer, guideline=guideline, min_score=eval_min_score(cfg))


def cross_validate(cfg: Any) -> dict[str, Any]:
    """Cross-validation by article (``cv_folds``): train on the other articles, score the held-out
    ones with the model alone, with what ``predict.py`` outputs, and with the baselines."""
    out = Path(cfg.eval.output_dir)
    docs, tokenizer, prepared = _all_docs(cfg)
    ids = [d.doc_id for d in docs]
    per_system: dict[str, list[tuple[PreparedDoc, list]]] = {}
    fold_scores: dict[str, list[dict]] = {}
    errors: dict[str, dict] = {MODEL: {}, GAZ: {}}  # per system: doc_id -> error cases
    t0 = time.time()
    folds = cv_folds(cfg, ids)
    decoders: list[FoldDecoder] = []
    for k, (train_ids, test_ids) in enumerate(folds):
        log.info("fold %d/%d: held out %s", k + 1, len(folds), ", ".join(test_ids))
        fold_dir = out / "folds" / (test_ids[0] if len(test_ids) == 1 else f"fold{k + 1}-of-{len(folds)}")
        decoders.append(FoldDecoder.of(cfg, docs, tokenizer, train_ids, test_ids, fold_dir, prepared))
        fold, test_docs = decoders[-1](), decoders[-1].test_docs
        preds = {MODEL: [p.model_spans for p in fold], GAZ: [p.norm_spans for p in fold]}
        preds.update(_baseline_preds(cfg.eval.baselines, [prepared[i] for i in train_ids], test_docs))
        for name, p in preds.items():
            per_system.setdefault(name, []).extend(zip(test_docs, p))
            fold_scores.setdefault(name, []).append(entity_scores([d.spans for d in test_docs], p,
                                                                  [len(d.norm.text) for d in test_docs]))
        for name, table in errors.items():
            for d, p in zip(test_docs, preds[name]):
                table[d.doc_id] = error_cases(d.norm.text, d.spans, p)
    scheme = (f"leave-one-article-out over {len(folds)} article(s)" if cfg.eval.folds or not cfg.eval.k
              else f"{len(folds)}-fold cross-validation by article (seed {cfg.seed})")
    return _report(cfg, out, per_system, fold_scores, errors, mode=scheme, seconds=time.time() - t0,
                   sources={d.doc_id: d.source for d in docs}, tuning=tune_min_score(cfg, decoders))


def learning_curve(cfg: Any) -> dict[str, Any]:
    """F1 per label (model alone and output) against the number of training articles, on the fixed
    ``eval.k`` grouped folds: each fold trains on nested subsets (a seeded order of its training
    articles, the first n of them) of the sizes in ``eval.curve_sizes``. Writes curve.md/.json/.png."""
    import random

    out = Path(cfg.eval.output_dir)
    docs, tokenizer, prepared = _all_docs(cfg)
    ids = [d.doc_id for d in docs]
    folds = grouped_folds(ids, int(cfg.eval.k), int(cfg.seed))
    labels = list(cfg.data.labels)
    rows: list[dict] = []
    t0 = time.time()
    for size in cfg.eval.curve_sizes:
        pairs: dict[str, list] = {MODEL: [], GAZ: []}
        used = []
        for k, (train_ids, test_ids) in enumerate(folds):
            order = sorted(train_ids)
            random.Random(cfg.seed).shuffle(order)
            subset = order[: min(int(size), len(order))] if size != "all" else order
            used.append(len(subset))
            log.info("curve: %d training articles, fold %d/%d", len(subset), k + 1, len(folds))
            fold_dir = out / "curve" / f"n{size}" / f"fold{k + 1}"
            for i, p in zip(test_ids, FoldDecoder.of(cfg, docs, tokenizer, subset, test_ids, fold_dir, prepared)()):
                pairs[MODEL].append((prepared[i], p.model_spans))
                pairs[GAZ].append((prepared[i], p.norm_spans))
        rows.append({"train_docs": round(sum(used) / len(used), 1), "size": size,
                     **{name: _pooled(p) for name, p in pairs.items()}})
    results = {"mode": f"learning curve on {len(folds)} fixed folds by article (seed {cfg.seed})",
               "seconds": round(time.time() - t0, 1), "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.json").write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    head = "| training articles | " + " | ".join(f"{n} {c}" for n in (MODEL, "output") for c in [*labels, "all"]) + " |"
    md = [f"# Learning curve: {results['mode']}", "", head, "|---|" + "---|" * (2 * len(labels) + 2)]
    for r in rows:
        md.append(f"| {r['train_docs']:g} | " + " | ".join(f"{r[n].get(c, {}).get('f1', 0):.2f}" for n in (MODEL, GAZ)
                                                            for c in [*labels, "micro"]) + " |")
    (out / "curve.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    _plot_curve(rows, [*labels, "micro"], out / "curve.png")
    return results


def _plot_curve(rows: list[dict], labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    x = [r["train_docs"] for r in rows]
    for ax, (name, title) in zip(axes, ((MODEL, "model alone"), (GAZ, "output (model + lexicon layers)"))):
        for lab in labels:
            ax.plot(x, [r[name].get(lab, {}).get("f1", 0) for r in rows], marker="o", label="all" if lab == "micro" else lab)
        ax.set_title(title)
        ax.set_xlabel("training articles")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("entity F1 (strict)")
    axes[0].set_ylim(0, 1)
    axes[1].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_heldout(cfg: Any) -> dict[str, Any]:
    """Score a trained model folder (``eval.model_dir``) on ``data.heldout`` articles."""
    if not cfg.data.heldout:
        raise ValueError("eval.mode=heldout needs data.heldout=[doc_id,...]")
    out = Path(cfg.eval.output_dir)
    docs = load_docs(cfg)
    trained = Path(cfg.eval.model_dir) / "metrics.json"
    seen = set(json.loads(trained.read_text()).get("train_docs", [])) if trained.exists() else set()
    if seen & set(cfg.data.heldout):
        log.warning("%s was trained on held-out article(s) %s (and its gazetteer holds their mentions): the scores "
                    "below are not held-out scores; train with data.heldout=[...] first", cfg.eval.model_dir,
                    ", ".join(sorted(seen & set(cfg.data.heldout))))
    # the backend scripts/predict.py uses (infer.backend, infer.precision): the scores are of what users get
    predictor = Predictor.from_config(cfg.eval.model_dir, cfg, max_length=cfg.data.max_length, stride=cfg.data.stride)
    log.info("held-out evaluation on %s (infer.backend=%s)", predictor.precision, cfg.infer.backend)
    splits = split_docs([d.doc_id for d in docs], cfg.data.heldout, cfg.data.dev)
    data = prepare_docs(docs, predictor.tokenizer, splits, bio_label_names(cfg.data.labels), cfg.data.max_length, cfg.data.stride)
    test_docs = [data.docs[i] for i in splits["heldout"]]
    t0 = time.time()
    predicted = predictor.predict_norm([d.norm for d in test_docs])  # the model row and the output, as predict.py
    preds = {MODEL: [p.model_spans for p in predicted], GAZ: [p.norm_spans for p in predicted]}
    layers = predictor.layers
    preds.update(_baseline_preds(cfg.eval.baselines, [data.docs[i] for i in splits["train"]], test_docs))
    per_system = {n: list(zip(test_docs, p)) for n, p in preds.items()}
    fold_scores = {n: [entity_scores([d.spans], [q], [len(d.norm.text)]) for d, q in zip(test_docs, p)] for n, p in preds.items()}
    errors = {name: {d.doc_id: error_cases(d.norm.text, d.spans, p) for d, p in zip(test_docs, preds[name])}
              for name in (MODEL, GAZ)}
    return _report(cfg, out, per_system, fold_scores, errors, mode=f"held-out articles, model {cfg.eval.model_dir}",
                   layer_names=layers.names, min_score=layers.min_score,
                   seconds=time.time() - t0, sources={d.doc_id: d.source for d in docs})


def _report(cfg, out: Path, per_system, fold_scores, errors, mode: str, seconds: float,
            sources: dict[str, str] | None = None, layer_names: list[str] | None = None,
            min_score: dict[str, float] | None = None, tuning: dict[str, Any] | None = None) -> dict[str, Any]:
    labels = list(cfg.data.labels)
    micro = {name: _pooled(pairs) for name, pairs in per_system.items()}
    spread = {name: mean_sd(fs, labels) for name, fs in fold_scores.items()}
    layer_names = eval_layers(cfg) if layer_names is None else layer_names
    min_score = eval_min_score(cfg) if min_score is None else min_score
    results = {"mode": mode, "command": command_line(), "model": str(cfg.model.name_or_path), "span_layers": layer_names,
               "min_score": min_score,
               "documents": [d.doc_id for d, _ in per_system[MODEL]], "seconds": round(seconds, 1),
               "micro": micro, "per_document_f1": spread}
    subsets = {}
    for name, prefix in (cfg.eval.get("subsets") or {}).items():  # e.g. the documents no rule was written from
        picked = {n: [(d, p) for d, p in pairs if (sources or {}).get(d.doc_id, "").startswith(prefix)]
                  for n, pairs in per_system.items()}
        if picked[MODEL]:
            subsets[name] = {"documents": len(picked[MODEL]), "micro": {n: _pooled(p) for n, p in picked.items()}}
    results["subsets"] = subsets
    if tuning:
        results["min_score_tuning"] = tuning
    # what the guideline's spans.whole_words rule assumes: the labelled spans that are whole words
    results["gold_whole_words"] = whole_word_share((d.norm.text, d.spans) for d, _ in per_system[MODEL])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    md = [f"# Evaluation: {mode}", "", f"Command: `{results['command']}`", "",
          "Entity-level (strict, exact span and label), pooled over all held-out articles:", "",
          scores_table(micro, labels), "", "F1 mean ± sd over articles:", "",
          "| system | " + " | ".join([*labels, "micro"]) + " |", "|---|" + "---|" * (len(labels) + 1)]
    for name, s in spread.items():
        md.append(f"| {name} | " + " | ".join(f"{s[c]['f1_mean']:.2f} ± {s[c]['f1_sd']:.2f}" if c in s else "–"
                                              for c in [*labels, "micro"]) + " |")
    for name, sub in subsets.items():
        md += ["", f"Pooled over the {sub['documents']} `{name}` documents (source under "
               f"`{cfg.eval.subsets[name]}`) alone:", "", scores_table(sub["micro"], labels)]
    if tuning:
        lab, row = tuning["label"], lambda m: " | ".join(f"{m[c]['f1']:.2f}" if c in m else "–" for c in [*labels, "micro"])
        md += ["", f"The output at each `min_score` of {lab} (model spans less probable yield to the layers), pooled; "
               "last row nested: each fold at the value best on the other folds "
               f"(chosen: {', '.join(f'{t:g}' for t in tuning['nested']['chosen'])}):", "",
               f"| {lab} min_score | " + " | ".join([*labels, "micro"]) + " |", "|---|" + "---|" * (len(labels) + 1)]
        md += [f"| {t} | {row(m)} |" for t, m in tuning["pooled"].items()]
        md.append(f"| nested | {row(tuning['nested']['micro'])} |")
    md += ["", "Labelled spans that are whole words of jieba's segmentation (what the guideline's "
           "`spans.whole_words` rule assumes): " + ", ".join(f"{lab} {x['whole']}/{x['spans']} ({x['share']:.0%})"
                                                          for lab, x in results["gold_whole_words"].items()) + "."]
    md += ["", f"`{GAZ}`: what `scripts/predict.py` outputs with the span layers {', '.join(layer_names) or 'none'} "
           f"(`infer.layers`, default `train.layers`; model spans below "
           f"{', '.join(f'{k} {v:g}' for k, v in min_score.items()) or 'no'} mean probability left to the layers, "
           "`train.min_score`): the gazetteer saved with "
           "the model (training mentions; guideline terms, withheld where they occur in a held-out article; quoted "
           "formulas and measure phrases) over the model's spans, administrative place names under them, "
           "one-character place abbreviations. Baselines have no POLICY label. THULAC is under a research-use "
           "licence.", ""]
    (out / "results.md").write_text("\n".join(md), encoding="utf-8")
    write_error_report(errors[MODEL], out, title=f"Model errors ({mode})")
    write_error_report(errors[GAZ], out, title=f"Errors of the output, {GAZ} ({mode})", stem="errors-output")
    return results


def evaluate(cfg: Any) -> tuple[dict[str, Any], Path]:
    """Dispatch on ``eval.mode`` (``cv`` or ``heldout``); returns results and the output folder."""
    if cfg.eval.mode == "heldout":  # the model runs the guideline saved with it
        check_guideline_labels(cfg, saved_guideline(cfg.eval.model_dir, guideline_from_config(cfg)))
    else:
        check_guideline_labels(cfg)
    check_eval_settings(cfg)
    if cfg.eval.mode == "cv":
        return cross_validate(cfg), Path(cfg.eval.output_dir)
    if cfg.eval.mode == "heldout":
        return evaluate_heldout(cfg), Path(cfg.eval.output_dir)
    if cfg.eval.mode == "curve":
        return learning_curve(cfg), Path(cfg.eval.output_dir)
    raise ValueError(f"eval.mode must be cv, heldout or curve, got {cfg.eval.mode!r}")
