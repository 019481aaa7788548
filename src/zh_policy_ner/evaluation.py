"""Evaluation on held-out articles: leave-one-article-out cross-validation or a fixed held-out
split, the model next to the baselines, entity-level P/R/F1 per label (micro totals and mean ± sd
over folds), and per-article error reports."""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from .baselines import make_baseline
from .dataset import PreparedDoc, bio_label_names, leave_one_out, load_docs, prepare_docs, split_docs
from .lexicon import DictionaryTagger, layered, place_tagger
from .metrics import entity_scores, error_cases, mean_sd, scores_table, write_error_report

log = logging.getLogger(__name__)
MODEL = "model"
GAZ = "model+lexicons"  # what prediction outputs: gazetteer over the model, place names under it


def _pooled(pairs: list[tuple[PreparedDoc, list]]) -> dict:
    return entity_scores([d.spans for d, _ in pairs], [p for _, p in pairs], [len(d.norm.text) for d, _ in pairs])


def _baseline_preds(names, train_docs, test_docs) -> dict[str, list[list]]:
    out = {}
    for name in names:
        tagger = make_baseline(name, train_docs)
        out[name] = [tagger.tag(d.norm.text) for d in test_docs]
    return out


def _output(cfg: Any, text: str, model_spans: list, gazetteer: DictionaryTagger | None) -> list:
    """The spans ``scripts/predict.py`` would output under ``cfg.infer`` (the ``model+lexicons`` row)."""
    return layered(text, model_spans, gazetteer, place_tagger() if cfg.infer.places else None,
                   cfg.infer.abbreviations)


def cross_validate(cfg: Any) -> dict[str, Any]:
    """Leave-one-article-out: train on the others, score the held-out article, for each fold."""
    from .inference import GAZETTEER_FILE
    from .modeling import load_tokenizer
    from .training import train_on

    out = Path(cfg.eval.output_dir)
    docs = load_docs(cfg)
    tokenizer = load_tokenizer(cfg.model.name_or_path)
    ids = [d.doc_id for d in docs]
    per_system: dict[str, list[tuple[PreparedDoc, list]]] = {}
    fold_scores: dict[str, list[dict]] = {}
    errors: dict[str, dict] = {MODEL: {}, GAZ: {}}  # per system: doc_id -> error cases
    t0 = time.time()
    for k, (train_ids, test_id) in enumerate(leave_one_out(ids, cfg.eval.folds)):
        log.info("fold %d: held out %s", k, test_id)
        data = prepare_docs(docs, tokenizer, {"train": train_ids, "heldout": [test_id]},
                            bio_label_names(cfg.data.labels), cfg.data.max_length, cfg.data.stride)
        fold_dir = out / "folds" / test_id
        shutil.rmtree(fold_dir, ignore_errors=True)  # every fold is trained afresh
        result = train_on(data, cfg, fold_dir, tokenizer)
        test_doc = data.docs[test_id]
        train_docs = [data.docs[i] for i in train_ids]
        preds = {MODEL: [result.predictions[test_id].norm_spans]}
        gazetteer = DictionaryTagger.load(fold_dir / GAZETTEER_FILE) if cfg.infer.gazetteer else None
        preds[GAZ] = [_output(cfg, test_doc.norm.text, preds[MODEL][0], gazetteer)]
        preds.update(_baseline_preds(cfg.eval.baselines, train_docs, [test_doc]))
        for name, p in preds.items():
            per_system.setdefault(name, []).append((test_doc, p[0]))
            fold_scores.setdefault(name, []).append(entity_scores([test_doc.spans], p, [len(test_doc.norm.text)]))
        for name, table in errors.items():
            table[test_id] = error_cases(test_doc.norm.text, test_doc.spans, preds[name][0])
    return _report(cfg, out, per_system, fold_scores, errors, mode="leave-one-article-out cross-validation",
                   seconds=time.time() - t0)


def evaluate_heldout(cfg: Any) -> dict[str, Any]:
    """Score a trained model folder (``eval.model_dir``) on ``data.heldout`` articles."""
    from .inference import GAZETTEER_FILE, Predictor

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
    predictor = Predictor.from_pretrained(cfg.eval.model_dir, max_length=cfg.data.max_length, stride=cfg.data.stride,
                                          decode=cfg.infer.decode)
    splits = split_docs([d.doc_id for d in docs], cfg.data.heldout, cfg.data.dev)
    data = prepare_docs(docs, predictor.tokenizer, splits, bio_label_names(cfg.data.labels), cfg.data.max_length, cfg.data.stride)
    test_docs = [data.docs[i] for i in splits["heldout"]]
    t0 = time.time()
    preds = {MODEL: [p.norm_spans for p in predictor.predict_norm([d.norm for d in test_docs])]}
    gaz = Path(cfg.eval.model_dir) / GAZETTEER_FILE
    tagger = DictionaryTagger.load(gaz) if cfg.infer.gazetteer and gaz.exists() else None
    preds[GAZ] = [_output(cfg, d.norm.text, p, tagger) for p, d in zip(preds[MODEL], test_docs)]
    preds.update(_baseline_preds(cfg.eval.baselines, [data.docs[i] for i in splits["train"]], test_docs))
    per_system = {n: list(zip(test_docs, p)) for n, p in preds.items()}
    fold_scores = {n: [entity_scores([d.spans], [q], [len(d.norm.text)]) for d, q in zip(test_docs, p)] for n, p in preds.items()}
    errors = {name: {d.doc_id: error_cases(d.norm.text, d.spans, p) for d, p in zip(test_docs, preds[name])}
              for name in (MODEL, GAZ)}
    return _report(cfg, out, per_system, fold_scores, errors, mode=f"held-out articles, model {cfg.eval.model_dir}",
                   seconds=time.time() - t0)


def _report(cfg, out: Path, per_system, fold_scores, errors, mode: str, seconds: float) -> dict[str, Any]:
    from .modelcard import command_line

    labels = list(cfg.data.labels)
    micro = {name: _pooled(pairs) for name, pairs in per_system.items()}
    spread = {name: mean_sd(fs, labels) for name, fs in fold_scores.items()}
    results = {"mode": mode, "command": command_line(), "model": str(cfg.model.name_or_path),
               "documents": [d.doc_id for d, _ in per_system[MODEL]], "seconds": round(seconds, 1),
               "micro": micro, "per_document_f1": spread}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    md = [f"# Evaluation: {mode}", "", f"Command: `{results['command']}`", "",
          "Entity-level (strict, exact span and label), pooled over all held-out articles:", "",
          scores_table(micro, labels), "", "F1 mean ± sd over articles:", "",
          "| system | " + " | ".join([*labels, "micro"]) + " |", "|---|" + "---|" * (len(labels) + 1)]
    for name, s in spread.items():
        md.append(f"| {name} | " + " | ".join(f"{s[c]['f1_mean']:.2f} ± {s[c]['f1_sd']:.2f}" if c in s else "–"
                                              for c in [*labels, "micro"]) + " |")
    infer = cfg.infer
    md += ["", f"`{GAZ}`: what `scripts/predict.py` outputs with these settings (`infer.gazetteer={infer.gazetteer}`, "
           f"`infer.places={infer.places}`, `infer.abbreviations={infer.abbreviations}`): the gazetteer saved with "
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
    if cfg.eval.mode == "cv":
        return cross_validate(cfg), Path(cfg.eval.output_dir)
    if cfg.eval.mode == "heldout":
        return evaluate_heldout(cfg), Path(cfg.eval.output_dir)
    raise ValueError(f"eval.mode must be cv or heldout, got {cfg.eval.mode!r}")
