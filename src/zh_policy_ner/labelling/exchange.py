"""The correction loop: model suggestions out to Label Studio or doccano, human corrections back in.

Export turns prediction records (``predict.py`` output) into Label Studio tasks (the model's spans
as ``predictions``) or doccano JSONL; import turns what the annotators made of them into validated,
sha256-anchored ``annotations/*.jsonl`` records::

    python -m zh_policy_ner.labelling.exchange config > labeling_config.xml
    python -m zh_policy_ner.labelling.exchange export --format labelstudio --order uncertainty predictions.jsonl tasks.json
    python -m zh_policy_ner.labelling.exchange import --format labelstudio --anchor scraped export.json annotations/scraped.jsonl
    python -m zh_policy_ner.labelling.exchange agree annotations/mine.jsonl other/theirs.jsonl

Only human annotations become gold. Label Studio's full JSON export and its ``JSON_MIN`` export are
both read by ``--format labelstudio`` (told apart by their shape); tasks that nobody annotated are
reported and left out unless ``--accept-predictions`` is given.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..reading.corpus import RawDoc, iter_documents
from ..reading.text import DecodeError, decode_bytes, jsonl_records, read_jsonl
from .annotations import LABELS, AnnotatedDoc, Span, load_annotations, sha256_bytes, span_problems, write_annotations

FORMATS = ("labelstudio", "doccano")
RULES = ("latest", "first", "ground_truth")
ORDERS = ("input", "uncertainty")
COLOURS = ("#aa9cfc", "#ff9561", "#7aecec", "#bfeeb7", "#feca74", "#e4e7d2", "#c887fb", "#9cc9cc")
Triple = tuple[int, int, str]


# ----------------------------------------------------------------------------------- export
def labelstudio_config(labels: Sequence[str] = LABELS) -> str:
    """The Label Studio labelling config for ``labels`` (paste it under Settings > Labeling Interface)."""
    rows = "".join(f'\n    <Label value="{lab}" background="{COLOURS[i % len(COLOURS)]}"/>' for i, lab in enumerate(labels))
    return f'<View>\n  <Labels name="label" toName="text">{rows}\n  </Labels>\n  <Text name="text" value="$text"/>\n</View>\n'


def confidence(record: dict) -> float:
    """A document's confidence: its least confident model span (1.0 when no span has a score)."""
    return min((s["score"] for s in record["spans"] if s.get("score") is not None), default=1.0)


def to_labelstudio(records: list[dict], texts: dict[str, str], model_version: str = "zh-policy-ner") -> list[dict]:
    """Label Studio tasks (``data.text``) with the model's spans as ``predictions``; the prediction's
    ``score`` is the document's :func:`confidence`, so Label Studio can sort tasks by it too."""
    tasks = []
    for r in records:
        text = texts.get(r["source"], texts.get(r["doc_id"]))
        result = [{"id": f"{r['doc_id']}-{i}", "from_name": "label", "to_name": "text", "type": "labels",
                   "value": {"start": s["start"], "end": s["end"], "text": s["text"], "labels": [s["label"]]},
                   **({"score": s["score"]} if s.get("score") is not None else {})}
                  for i, s in enumerate(r["spans"])]
        tasks.append({"data": {"text": text, "doc_id": r["doc_id"], "source": r["source"]},
                      "predictions": [{"model_version": model_version, "score": round(confidence(r), 4), "result": result}]})
    return tasks


def to_doccano(records: list[dict], texts: dict[str, str]) -> list[dict]:
    """doccano sequence-labelling JSONL rows: ``{"text", "label": [[start, end, label], ...]}``."""
    return [{"text": texts.get(r["source"], texts.get(r["doc_id"])), "label": [[s["start"], s["end"], s["label"]] for s in r["spans"]],
             "doc_id": r["doc_id"], "source": r["source"]} for r in records]


def export_predictions(predictions: str | Path, fmt: str, out: str | Path, order: str = "input",
                       labels: Sequence[str] = LABELS) -> Path:
    """Prediction JSONL -> Label Studio JSON (plus ``labeling_config.xml``) or doccano JSONL.

    ``order="uncertainty"`` puts the least confident documents first (Prodigy's ``ner.correct``
    and active learning do the same): correcting them teaches the model most.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}")
    records = read_jsonl(predictions)
    if order == "uncertainty":
        records.sort(key=confidence)
    texts: dict[str, str] = {}
    for r in records:
        src = r["source"]
        file = src.rsplit(":", 1)[0] if ".jsonl:" in src else src
        if src not in texts:
            for d in iter_documents(file):
                if isinstance(d, RawDoc):
                    texts[d.source] = d.text
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "labelstudio":
        out.write_text(json.dumps(to_labelstudio(records, texts), ensure_ascii=False, indent=1), encoding="utf-8")
        (out.parent / "labeling_config.xml").write_text(labelstudio_config(labels), encoding="utf-8")
    else:
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in to_doccano(records, texts)), encoding="utf-8")
    return out


# ----------------------------------------------------------------------------------- import: reading
@dataclass
class Candidate:
    """One human annotation of a task."""

    spans: list[Triple]
    when: str = ""
    who: str = ""
    ground_truth: bool = False


@dataclass
class Task:
    """A task as read from an export: its data, its human annotations, the model's suggestions."""

    data: dict
    where: str
    candidates: list[Candidate] = field(default_factory=list)
    suggested: list[Triple] | None = None


def _ls_spans(results: Iterable) -> list[Triple]:
    """(start, end, label) of the ``labels`` regions of a Label Studio result (full or JSON_MIN)."""
    out = []
    for r in results or []:
        if not isinstance(r, dict):
            continue
        v = r.get("value", r)
        if r.get("type", "labels") == "labels" and isinstance(v, dict) and {"start", "end"} <= set(v) and v.get("labels"):
            out.append((v["start"], v["end"], v["labels"][0]))
    return out


def _labelstudio_full(items: list[dict], path: Path) -> list[Task]:
    tasks = []
    for n, t in enumerate(items, start=1):
        data = t.get("data")
        if not isinstance(data, dict) or "text" not in data:
            raise ValueError(f"{path}: task {n} has no data.text (is this a Label Studio export of this project?)")
        task = Task(data, f"{path}: task {n} ({data.get('doc_id') or t.get('id', n)})")
        for a in t.get("annotations") or t.get("completions") or []:
            if isinstance(a, dict) and not (a.get("was_cancelled") or a.get("skipped")):
                who = a.get("completed_by")
                who = who.get("email", who.get("id")) if isinstance(who, dict) else who
                task.candidates.append(Candidate(_ls_spans(a.get("result")), str(a.get("updated_at") or a.get("created_at") or ""),
                                                 str(who if who is not None else a.get("id", "")), bool(a.get("ground_truth"))))
        # In Label Studio's own full export ``predictions`` is a list of ids; only objects hold spans.
        preds = [p for p in t.get("predictions") or [] if isinstance(p, dict)]
        if preds:
            task.suggested = _ls_spans(preds[-1].get("result"))
        tasks.append(task)
    return tasks


_MIN_META = {"id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time", "agreement"}


def _labelstudio_min(items: list[dict], path: Path) -> list[Task]:
    """JSON_MIN: one flat row per human annotation (task fields, ``annotator``, the region list
    under the control's name, absent when the annotation has no region)."""
    by_task: dict[object, Task] = {}
    for n, row in enumerate(items, start=1):
        if "text" not in row:
            raise ValueError(f"{path}: row {n} has neither data nor text: not a Label Studio export")
        regions = [k for k, v in row.items() if isinstance(v, list) and v and all(isinstance(x, dict) and "start" in x for x in v)]
        data = {k: v for k, v in row.items() if k not in _MIN_META and k not in regions}
        key = row.get("id", data.get("doc_id", n))
        task = by_task.setdefault(key, Task(data, f"{path}: task {key} ({data.get('doc_id') or key})"))
        if "annotation_id" in row and row["annotation_id"] is None:
            continue   # a task nobody annotated (export with download_all_tasks): no human annotation
        spans = [s for k in regions for s in _ls_spans(row[k])]
        task.candidates.append(Candidate(spans, str(row.get("updated_at") or row.get("created_at") or ""),
                                         str(row.get("annotator", "")), False))
    return list(by_task.values())


def read_labelstudio(path: str | Path) -> list[Task]:
    """Tasks of a Label Studio export: full JSON (``data`` + ``annotations``) or JSON_MIN (flat rows)."""
    path = Path(path)
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e}); export JSON or JSON_MIN from Label Studio") from None
    items = [items] if isinstance(items, dict) else items
    if not isinstance(items, list) or not all(isinstance(t, dict) for t in items):
        raise ValueError(f"{path}: expected a list of tasks")
    if any("data" in t for t in items):
        return _labelstudio_full(items, path)
    return _labelstudio_min(items, path)


def read_doccano(path: str | Path) -> list[Task]:
    """doccano sequence-labelling JSONL: ``label`` ([start, end, label] triples) or the ``entities``
    shape of projects with relations (``{"start_offset", "end_offset", "label"}``). Every row is a
    human annotation. A row with neither field is refused (it would import zero spans in silence)."""
    path = Path(path)
    tasks = []
    for n, row in jsonl_records(path):
        key = next((k for k in ("label", "labels", "entities") if k in row), None)
        if key is None or "text" not in row:
            raise ValueError(f"{path}:{n}: a doccano row needs 'text' and 'label' (or 'entities'); found {sorted(row)}")
        spans = []
        for x in row[key]:
            if isinstance(x, dict):
                spans.append((x.get("start_offset"), x.get("end_offset"), x.get("label")))
            elif isinstance(x, (list, tuple)) and len(x) == 3:
                spans.append(tuple(x))
            else:
                raise ValueError(f"{path}:{n}: cannot read span {x!r} (expected [start, end, label] or an entity object)")
        tasks.append(Task(row, f"{path}:{n} ({row.get('doc_id') or n})", [Candidate(spans)]))
    return tasks


# ----------------------------------------------------------------------------------- import: deciding
def choose(candidates: list[Candidate], rule: str) -> Candidate:
    """The annotation to keep: the latest (default), the first, or the one marked ground truth."""
    order = sorted(range(len(candidates)), key=lambda i: (candidates[i].when, i))
    if rule == "ground_truth":
        gts = [i for i in order if candidates[i].ground_truth]
        return candidates[(gts or order)[-1]]
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}")
    return candidates[order[0] if rule == "first" else order[-1]]


def correction_cost(suggested: Sequence[Triple], gold: Sequence[Triple]) -> Counter:
    """How the human treated the model's suggestions: ``accepted`` (kept as is), ``changed``
    (boundary or label fixed: overlaps a gold span), ``deleted`` (overlaps none); ``added``: gold
    spans that no suggestion overlapped."""
    gold_set = set(gold)
    cost = Counter(accepted=0, changed=0, deleted=0, added=0)
    touched = set()
    for s in suggested:
        hit = [g for g in gold if g[0] < s[1] and s[0] < g[1]]
        touched.update(hit)
        cost["accepted" if s in gold_set else "changed" if hit else "deleted"] += 1
    cost["added"] = sum(1 for g in gold if g not in touched)
    return cost


@dataclass
class ImportReport:
    """What an import did: records written, spans left out, tasks skipped, notes, correction cost."""

    docs: list[AnnotatedDoc]
    problems: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cost: Counter = field(default_factory=Counter)
    from_predictions: int = 0

    def summary(self, out: Path) -> str:
        spans = Counter(s.label for d in self.docs for s in d.spans)
        lines = [f"wrote {len(self.docs)} documents ({', '.join(f'{k} {v}' for k, v in sorted(spans.items())) or 'no spans'}) to {out}"]
        if self.from_predictions:
            lines.append(f"{self.from_predictions} document(s) took the model's predictions as gold (--accept-predictions)")
        if self.skipped:
            lines.append(f"{len(self.skipped)} task(s) left out without a human annotation")
        if self.problems:
            lines.append(f"{len(self.problems)} span(s) left out as invalid")
        if sum(self.cost.values()):
            c = self.cost
            lines.append(f"correction cost: suggestions accepted {c['accepted']}, changed {c['changed']}, "
                         f"deleted {c['deleted']}; spans added {c['added']}")
        return "\n".join(lines)


class Anchors:
    """In-repository copies of source files, found by the sha256 of their bytes or by their text."""

    def __init__(self, folders: Iterable[str | Path] = ()):
        self.by_sha: dict[str, Path] = {}
        self.by_text: dict[str, Path] = {}
        for folder in folders:
            folder = Path(folder)
            if not folder.is_dir():
                raise FileNotFoundError(f"anchor folder not found: {folder}")
            for p in sorted(folder.rglob("*")):
                if p.is_file() and not p.is_symlink() and p.suffix not in (".tsv", ".md", ".json", ".jsonl"):
                    data = p.read_bytes()
                    self.by_sha.setdefault(sha256_bytes(data), p)
                    try:
                        self.by_text.setdefault(decode_bytes(data, source=str(p)), p)
                    except DecodeError:
                        pass

    def find(self, text: str, source: Path | None) -> Path | None:
        if source is not None and self.by_sha:
            hit = self.by_sha.get(sha256_bytes(source.read_bytes()))
            if hit is not None:
                return hit
        return self.by_text.get(text)


def _decoded(path: Path) -> str | None:
    try:
        return decode_bytes(path.read_bytes(), source=str(path))
    except (OSError, DecodeError):
        return None


def _source_file(source, root: Path, beside: Path) -> Path | None:
    if not isinstance(source, str) or not source or ".jsonl:" in source:
        return None
    p = Path(source)
    for cand in ([p] if p.is_absolute() else [root / p, beside / p]):
        if cand.is_file():
            return cand
    return None


def relative_source(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (with ``..`` where it lies outside), never absolute."""
    return Path(os.path.relpath(path.resolve(), root.resolve())).as_posix()


def import_corrected(path: str | Path, fmt: str, out: str | Path, root: str | Path = ".",
                     texts_dir: str | Path | None = None, anchors: Iterable[str | Path] = (),
                     rule: str = "latest", accept_predictions: bool = False,
                     labels: Sequence[str] = LABELS) -> ImportReport:
    """Corrected Label Studio / doccano export -> annotation records written to ``out``.

    The source is anchored, in this order, to an ``anchors`` file with the same bytes (sha256) or
    text, to the task's ``source`` file when its text equals the task text, or else to a copy of
    the text written to ``texts_dir`` (default ``<out folder>/texts``); paths are stored relative
    to ``root``. Invalid spans are left out and reported with the task and span; the rest is kept.
    """
    path, out, root = Path(path), Path(out), Path(root)
    tasks = read_labelstudio(path) if fmt == "labelstudio" else read_doccano(path) if fmt == "doccano" else None
    if tasks is None:
        raise ValueError(f"format must be one of {FORMATS}")
    anchor = Anchors(anchors)
    texts_dir = Path(texts_dir) if texts_dir else out.parent / "texts"
    report = ImportReport([])
    for n, task in enumerate(tasks, start=1):
        text = task.data.get("text")
        if not isinstance(text, str):
            report.skipped.append(f"{task.where}: no text")
            continue
        if task.candidates:
            kept = choose(task.candidates, rule)
            if len({tuple(sorted(c.spans)) for c in task.candidates}) > 1:
                report.notes.append(f"{task.where}: {len(task.candidates)} annotations disagree "
                                    f"({', '.join(c.who or '?' for c in task.candidates)}); kept the {rule.replace('_', ' ')} one ({kept.who or '?'})")
            spans = kept.spans
            if task.suggested is not None:
                report.cost.update(correction_cost(task.suggested, spans))
        elif accept_predictions and task.suggested is not None:
            spans = task.suggested
            report.from_predictions += 1
        else:
            why = ("and this export carries no prediction spans (export full JSON with predictions)" if accept_predictions
                   else "(--accept-predictions takes the model's)")
            report.skipped.append(f"{task.where}: no human annotation; left out {why}")
            continue
        doc_id = str(task.data.get("doc_id") or f"{path.stem}-{n}")
        src = _source_file(task.data.get("source"), root, path.parent)
        if src is not None and _decoded(src) != text:
            src = None
        src = anchor.find(text, src) or src
        if src is None:
            texts_dir.mkdir(parents=True, exist_ok=True)
            src = texts_dir / f"{doc_id.replace('/', '_')}.txt"
            src.write_text(text, encoding="utf-8")
        rel = relative_source(src, root)
        if rel.startswith("../"):
            report.notes.append(f"{task.where}: source {rel} lies outside {root}; copy it into the repository "
                                f"and pass --anchor FOLDER to anchor the annotation there")
        good: list[Span] = []
        for start, end, label in sorted(spans, key=lambda s: (s[0] if isinstance(s[0], int) else -1, str(s[1]))):
            issues = span_problems(text, start, end, label, text[start:end] if isinstance(start, int) and isinstance(end, int) else None, labels)
            if good and isinstance(start, int) and start < good[-1].end:
                issues.append(f"overlaps [{good[-1].start}:{good[-1].end}]")
            if issues:
                report.problems.append(f"{task.where}: span [{start}:{end}] {label}: " + "; ".join(issues))
                continue
            good.append(Span(start, end, label, text[start:end]))
        report.docs.append(AnnotatedDoc(doc_id, rel, sha256_bytes(src.read_bytes()), text, good))
    write_annotations(report.docs, out)
    return report


# ----------------------------------------------------------------------------------- agreement
def agreement(a: Sequence[AnnotatedDoc], b: Sequence[AnnotatedDoc], labels: Sequence[str] = LABELS) -> tuple[dict, list[str]]:
    """Per-label exact-span agreement F1 of two annotators over the documents both labelled
    (matched by the sha256 of the source), and the spans only one of them has, in context."""
    b_by = {d.text_sha256: d for d in b}
    tp, na, nb, diffs = Counter(), Counter(), Counter(), []
    for da in a:
        db = b_by.get(da.text_sha256)
        if db is None:
            continue
        sa, sb = {(s.start, s.end, s.label) for s in da.spans}, {(s.start, s.end, s.label) for s in db.spans}
        for lab in labels:
            tp[lab] += sum(1 for s in sa & sb if s[2] == lab)
            na[lab] += sum(1 for s in sa if s[2] == lab)
            nb[lab] += sum(1 for s in sb if s[2] == lab)
        for who, only in (("A", sa - sb), ("B", sb - sa)):
            for s, e, lab in sorted(only):
                diffs.append(f"{da.doc_id}\t{who} only\t{lab}\t[{s}:{e}]\t…{da.text[max(0, s - 8):s]}[{da.text[s:e]}]{da.text[e:e + 8]}…".replace("\n", " "))
    scores = {}
    for lab in [*labels, "all"]:
        t = sum(tp.values()) if lab == "all" else tp[lab]
        x = sum(na.values()) if lab == "all" else na[lab]
        y = sum(nb.values()) if lab == "all" else nb[lab]
        scores[lab] = {"f1": round(2 * t / (x + y), 4) if x + y else 1.0, "A": x, "B": y, "both": t}
    return scores, diffs


# ----------------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zh_policy_ner.labelling.exchange", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cf = sub.add_parser("config", help="print the Label Studio labelling config for the labels")
    cf.add_argument("--labels", default=",".join(LABELS))
    ex = sub.add_parser("export", help="predictions.jsonl -> Label Studio tasks or doccano JSONL")
    ex.add_argument("--format", choices=FORMATS, required=True)
    ex.add_argument("--order", choices=ORDERS, default="input", help="uncertainty: least confident documents first")
    ex.add_argument("--labels", default=",".join(LABELS))
    ex.add_argument("predictions")
    ex.add_argument("out")
    im = sub.add_parser("import", help="corrected Label Studio (JSON or JSON_MIN) / doccano file -> annotations JSONL")
    im.add_argument("--format", choices=FORMATS, required=True)
    im.add_argument("corrected")
    im.add_argument("out")
    im.add_argument("--root", default=".", help="repository root that annotation `source` paths are relative to")
    im.add_argument("--anchor", action="append", default=[], metavar="FOLDER",
                    help="in-repository folder holding copies of the reports (matched by sha256 or text); repeatable")
    im.add_argument("--rule", choices=RULES, default="latest", help="which annotation to keep when several annotators labelled a task")
    im.add_argument("--accept-predictions", action="store_true", help="import the model's predictions for tasks nobody annotated")
    im.add_argument("--labels", default=",".join(LABELS))
    ag = sub.add_parser("agree", help="agreement F1 of two annotation files, and the spans they disagree on")
    ag.add_argument("a")
    ag.add_argument("b")
    ag.add_argument("--root", default=".")
    ag.add_argument("--labels", default=",".join(LABELS))
    args = parser.parse_args(argv)
    labels = tuple(args.labels.split(","))
    try:
        if args.command == "config":
            print(labelstudio_config(labels), end="")
            return 0
        if args.command == "export":
            print(f"wrote {export_predictions(args.predictions, args.format, args.out, args.order, labels)}")
            return 0
        if args.command == "agree":
            a, _ = load_annotations(args.a, root=args.root, labels=labels)
            b, _ = load_annotations(args.b, root=args.root, labels=labels)
            scores, diffs = agreement(a, b, labels)
            print("\n".join(diffs))
            print("label\tF1\tA\tB\tboth")
            for lab, s in scores.items():
                print(f"{lab}\t{s['f1']:.3f}\t{s['A']}\t{s['B']}\t{s['both']}")
            return 0
        report = import_corrected(args.corrected, args.format, args.out, args.root, anchors=args.anchor, rule=args.rule,
                                  accept_predictions=args.accept_predictions, labels=labels)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in [*report.skipped, *report.notes, *report.problems]:
        print(line, file=sys.stderr)
    _, errors = load_annotations(args.out, root=args.root, labels=labels, strict=False)
    for e in errors:
        print(e, file=sys.stderr)
    print(report.summary(Path(args.out)) + (f"\n{len(errors)} validation error(s)" if errors else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
