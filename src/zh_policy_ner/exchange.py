"""Pre-annotation export for human correction (Label Studio, doccano) and import back.

Export turns prediction records (``predict.py`` output) into Label Studio tasks with predictions,
or doccano JSONL; import turns the corrected files into ``annotations/*.jsonl`` records (validated,
sha256-anchored), so users can grow their training set::

    python -m zh_policy_ner.exchange export --format labelstudio predictions.jsonl tasks.json
    python -m zh_policy_ner.exchange import --format labelstudio corrected.json annotations/batch2.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .annotations import LABELS, AnnotatedDoc, Span, load_annotations, sha256_bytes, span_problems, write_annotations
from .corpus import RawDoc, iter_documents

FORMATS = ("labelstudio", "doccano")


def to_labelstudio(records: list[dict], texts: dict[str, str], model_version: str = "zh-policy-ner") -> list[dict]:
    """Label Studio tasks (``data.text``) with the model's spans as ``predictions``."""
    tasks = []
    for r in records:
        text = texts.get(r["source"], texts.get(r["doc_id"]))
        result = [{"id": f"{r['doc_id']}-{i}", "from_name": "label", "to_name": "text", "type": "labels",
                   "value": {"start": s["start"], "end": s["end"], "text": s["text"], "labels": [s["label"]]},
                   **({"score": s["score"]} if s.get("score") is not None else {})}
                  for i, s in enumerate(r["spans"])]
        tasks.append({"data": {"text": text, "doc_id": r["doc_id"], "source": r["source"]},
                      "predictions": [{"model_version": model_version, "result": result}]})
    return tasks


def to_doccano(records: list[dict], texts: dict[str, str]) -> list[dict]:
    """doccano sequence-labelling JSONL rows: ``{"text", "label": [[start, end, label], ...]}``."""
    return [{"text": texts.get(r["source"], texts.get(r["doc_id"])), "label": [[s["start"], s["end"], s["label"]] for s in r["spans"]],
             "doc_id": r["doc_id"], "source": r["source"]} for r in records]


LABEL_STUDIO_CONFIG = """<View>
  <Labels name="label" toName="text">
    <Label value="PER" background="#aa9cfc"/><Label value="LOC" background="#ff9561"/><Label value="POLICY" background="#7aecec"/>
  </Labels>
  <Text name="text" value="$text"/>
</View>"""


def _from_labelstudio(task: dict) -> tuple[dict, list[tuple[int, int, str]]]:
    """Data and spans of a Label Studio task: the latest annotation, else the predictions."""
    results = None
    for ann in reversed(task.get("annotations") or []):
        if not ann.get("was_cancelled"):
            results = ann.get("result", [])
            break
    if results is None:
        results = (task.get("predictions") or [{}])[-1].get("result", [])
    spans = [(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in results
             if r.get("type") == "labels" and r.get("value", {}).get("labels")]
    return task["data"], spans


def _from_doccano(row: dict) -> tuple[dict, list[tuple[int, int, str]]]:
    labels = row.get("label", row.get("labels", []))
    spans = [tuple(x) if isinstance(x, list) else (x["start_offset"], x["end_offset"], x["label"]) for x in labels]
    return row, spans


def import_corrected(path: str | Path, fmt: str, out: str | Path, root: str | Path = ".",
                     texts_dir: str | Path | None = None) -> tuple[list[AnnotatedDoc], list[str]]:
    """Corrected Label Studio / doccano files -> annotation records written to ``out``.

    A task's ``source`` file is used as the anchor when its decoded text equals the task text;
    otherwise the text is written to ``texts_dir`` (default: ``<out folder>/texts``) and anchored
    there. Spans are checked like the annotation loader checks them; problems are returned (with
    the task's doc_id and span) and those spans are left out, the rest is kept.
    """
    path, out, root = Path(path), Path(out), Path(root)
    raw = path.read_text(encoding="utf-8")
    if fmt == "labelstudio":
        items = [_from_labelstudio(t) for t in json.loads(raw)]
    elif fmt == "doccano":
        items = [_from_doccano(json.loads(line)) for line in raw.splitlines() if line.strip()]
    else:
        raise ValueError(f"format must be one of {FORMATS}")
    texts_dir = Path(texts_dir) if texts_dir else out.parent / "texts"
    docs, problems = [], []
    for n, (data, spans) in enumerate(items, start=1):
        text, doc_id = data["text"], str(data.get("doc_id") or f"{path.stem}-{n}")
        source = data.get("source")
        src_path = root / source if source else None
        if not (src_path and src_path.is_file() and _decoded(src_path) == text):
            texts_dir.mkdir(parents=True, exist_ok=True)
            src_path = texts_dir / f"{doc_id.replace('/', '_')}.txt"
            src_path.write_text(text, encoding="utf-8")
        kept = []
        for start, end, label in sorted(spans):
            issues = span_problems(text, start, end, label, text[start:end] if isinstance(start, int) else None)
            if kept and isinstance(start, int) and start < kept[-1].end:
                issues.append(f"overlaps [{kept[-1].start}:{kept[-1].end}]")
            if issues:
                problems.append(f"{path}: task {n} ({doc_id}) span [{start}:{end}] {label}: " + "; ".join(issues))
                continue
            kept.append(Span(start, end, label, text[start:end]))
        rel = _relative(src_path, root)
        docs.append(AnnotatedDoc(doc_id, rel, sha256_bytes(src_path.read_bytes()), text, kept))
    write_annotations(docs, out)
    return docs, problems


def _decoded(path: Path) -> str:
    from .text import read_text

    try:
        return read_text(path)
    except ValueError:
        return ""


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path.resolve())


def export_predictions(predictions: str | Path, fmt: str, out: str | Path) -> Path:
    """Prediction JSONL -> Label Studio JSON (plus ``labeling_config.xml``) or doccano JSONL."""
    records = [json.loads(line) for line in Path(predictions).read_text(encoding="utf-8").splitlines() if line.strip()]
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
        (out.parent / "labeling_config.xml").write_text(LABEL_STUDIO_CONFIG, encoding="utf-8")
    elif fmt == "doccano":
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in to_doccano(records, texts)), encoding="utf-8")
    else:
        raise ValueError(f"format must be one of {FORMATS}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zh_policy_ner.exchange", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="predictions.jsonl -> Label Studio tasks or doccano JSONL")
    ex.add_argument("--format", choices=FORMATS, required=True)
    ex.add_argument("predictions")
    ex.add_argument("out")
    im = sub.add_parser("import", help="corrected Label Studio / doccano file -> annotations JSONL")
    im.add_argument("--format", choices=FORMATS, required=True)
    im.add_argument("corrected")
    im.add_argument("out")
    im.add_argument("--root", default=".", help="repository root that annotation `source` paths are relative to")
    args = parser.parse_args(argv)
    if args.command == "export":
        print(f"wrote {export_predictions(args.predictions, args.format, args.out)}")
        return 0
    docs, problems = import_corrected(args.corrected, args.format, args.out, args.root)
    for p in problems:
        print(p, file=sys.stderr)
    _, errors = load_annotations(args.out, root=args.root, labels=LABELS, strict=False)
    for e in errors:
        print(e, file=sys.stderr)
    print(f"wrote {len(docs)} documents to {args.out}; {len(problems)} span(s) left out, {len(errors)} validation error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
