"""Entity-level scores (seqeval, strict IOB2) and per-article error reports."""
from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .dataset import NormSpan, spans_to_tags


def entity_scores(gold: Sequence[Sequence[NormSpan]], pred: Sequence[Sequence[NormSpan]], lengths: Sequence[int]) -> dict[str, dict[str, float]]:
    """Per-label and micro precision/recall/F1 over documents, exact span and label match
    (seqeval ``classification_report`` in strict IOB2 mode on per-character tags)."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    y_true = [spans_to_tags(n, g) for n, g in zip(lengths, gold)]
    y_pred = [spans_to_tags(n, p) for n, p in zip(lengths, pred)]
    report = classification_report(y_true, y_pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    out = {}
    for key, vals in report.items():
        name = "micro" if key == "micro avg" else key
        if name in ("macro avg", "weighted avg"):
            continue
        out[name] = {"precision": float(vals["precision"]), "recall": float(vals["recall"]),
                     "f1": float(vals["f1-score"]), "support": int(vals["support"])}
    return out


def mean_sd(fold_scores: Sequence[dict[str, dict[str, float]]], labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Mean and (sample) standard deviation of F1 across folds per label (labels absent from a
    fold's gold and predictions are skipped for that fold)."""
    out = {}
    for lab in [*labels, "micro"]:
        vals = [f[lab]["f1"] for f in fold_scores if lab in f]
        if vals:
            out[lab] = {"f1_mean": statistics.fmean(vals), "f1_sd": statistics.stdev(vals) if len(vals) > 1 else 0.0, "folds": len(vals)}
    return out


@dataclass
class ErrorCase:
    kind: str            # missed | spurious | wrong_boundary | wrong_type | wrong_boundary_and_type
    gold: tuple[int, int, str, str] | None
    pred: tuple[int, int, str, str] | None
    context: str


def _overlaps(a: NormSpan, b: NormSpan) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _context(text: str, start: int, end: int, width: int = 15) -> str:
    left = text[max(0, start - width) : start].replace("\n", " ")
    right = text[end : end + width].replace("\n", " ")
    return f"{left}[{text[start:end]}]{right}"


def error_cases(text: str, gold: Sequence[NormSpan], pred: Sequence[NormSpan]) -> list[ErrorCase]:
    """Classify every non-matching span: missed gold, spurious prediction, wrong boundary (same
    label, overlapping), wrong type (same boundary), or both."""
    gold_set, pred_set = set(gold), set(pred)
    cases: list[ErrorCase] = []
    used_gold: set[NormSpan] = set()
    show = lambda s: (s[0], s[1], s[2], text[s[0]:s[1]])  # noqa: E731
    for p in pred:
        if p in gold_set:
            continue
        hits = [g for g in gold if _overlaps(g, p) and g not in pred_set]
        if not hits:
            cases.append(ErrorCase("spurious", None, show(p), _context(text, p[0], p[1])))
            continue
        g = hits[0]
        used_gold.add(g)
        same_bounds, same_label = (g[0], g[1]) == (p[0], p[1]), g[2] == p[2]
        kind = "wrong_type" if same_bounds else "wrong_boundary" if same_label else "wrong_boundary_and_type"
        cases.append(ErrorCase(kind, show(g), show(p), _context(text, min(g[0], p[0]), max(g[1], p[1]))))
    for g in gold:
        if g not in pred_set and g not in used_gold:
            cases.append(ErrorCase("missed", show(g), None, _context(text, g[0], g[1])))
    return sorted(cases, key=lambda c: (c.gold or c.pred)[0])


def write_error_report(docs: dict[str, list[ErrorCase]], folder: Path, title: str = "Error report",
                       stem: str = "errors") -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` (one section per article, counts per kind)."""
    folder.mkdir(parents=True, exist_ok=True)
    js = folder / f"{stem}.json"
    js.write_text(json.dumps({d: [asdict(c) for c in cs] for d, cs in docs.items()}, indent=1, ensure_ascii=False), encoding="utf-8")
    lines = [f"# {title}", ""]
    for doc_id, cases in docs.items():
        kinds: dict[str, int] = {}
        for c in cases:
            kinds[c.kind] = kinds.get(c.kind, 0) + 1
        lines += [f"## {doc_id}", "", ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())) or "no errors", ""]
        if cases:
            lines += ["| kind | gold | predicted | context |", "|---|---|---|---|"]
            for c in cases:
                g = f"{c.gold[3]} ({c.gold[2]})" if c.gold else ""
                p = f"{c.pred[3]} ({c.pred[2]})" if c.pred else ""
                lines.append(f"| {c.kind} | {g} | {p} | {c.context.replace('|', '/')} |")
            lines.append("")
    md = folder / f"{stem}.md"
    md.write_text("\n".join(lines), encoding="utf-8")
    return js, md


def scores_table(rows: dict[str, dict[str, dict[str, float]]], labels: Sequence[str]) -> str:
    """Markdown table: one row per system, P/R/F1 per label and micro."""
    cols = [*labels, "micro"]
    head = "| system | " + " | ".join(f"{c} P / R / F1" for c in cols) + " |"
    lines = [head, "|---|" + "---|" * len(cols)]
    for name, sc in rows.items():
        cells = []
        for c in cols:
            s = sc.get(c)
            cells.append(f"{s['precision']:.2f} / {s['recall']:.2f} / **{s['f1']:.2f}**" if s else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
