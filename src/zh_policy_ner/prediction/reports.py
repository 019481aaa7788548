"""Reports over batch predictions: entity CSV, aggregate table, sentence co-occurrence table, HTML.

All read the predictions JSONL (``{"doc_id", "source", "spans": [...]}``, offsets into the raw
decoded text) and the input documents again (the same reader as the predict stage, so that the
offsets agree; for HTML inputs that is the *extracted* text, not the markup).

Every CSV cell that begins with ``= + - @`` (or a tab or carriage return) is prefixed with a single
quote, so that a spreadsheet does not run it as a formula (OWASP "CSV injection").
"""
from __future__ import annotations

import csv
import html
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..reading.corpus import HTML_SUFFIXES, RawDoc, iter_documents
from ..reading.text import normalize, read_jsonl, to_simplified

log = logging.getLogger(__name__)

LABELS = ("PER", "LOC", "POLICY")
COLORS = {"PER": "#aa9cfc", "LOC": "#ff9561", "POLICY": "#7aecec"}
LABEL_NAMES = {"PER": "person 人名", "LOC": "place 地名", "POLICY": "measure 政策措施"}
SIDECAR = "SOURCES.tsv"
SIDECAR_FIELDS = ("date", "place", "url")


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """The records of a predictions JSONL file."""
    return read_jsonl(path)


# --------------------------------------------------------------------------- CSV
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralize(cell: Any) -> Any:
    """A CSV cell that a spreadsheet would not evaluate: strings starting with ``= + - @`` (tab, CR)
    get a leading ``'``; anything else is returned unchanged."""
    if isinstance(cell, str) and cell.startswith(_FORMULA_START):
        return "'" + cell
    return cell


class _SafeWriter:
    """``csv.writer`` whose rows are neutralised cell by cell."""

    def __init__(self, f):
        self._w = csv.writer(f)

    def writerow(self, row: Iterable[Any]) -> None:
        self._w.writerow([neutralize(c) for c in row])


def write_entity_csv(records: list[dict], path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = _SafeWriter(f)
        w.writerow(["doc_id", "source", "start", "end", "label", "text", "score"])
        for r in records:
            for s in r["spans"]:
                w.writerow([r["doc_id"], r["source"], s["start"], s["end"], s["label"], s["text"], s.get("score", "")])
    return path


def write_aggregate(records: list[dict], path: Path) -> Path:
    """One row per (normalised entity, label): mentions and documents, most frequent first."""
    count: Counter = Counter()
    docs: dict[tuple[str, str], set] = defaultdict(set)
    for r in records:
        for s in r["spans"]:
            key = (normalize(s["text"]).text, s["label"])
            count[key] += 1
            docs[key].add(r["doc_id"])
    with path.open("w", newline="", encoding="utf-8") as f:
        w = _SafeWriter(f)
        w.writerow(["entity", "label", "count", "documents"])
        for (entity, label), n in sorted(count.items(), key=lambda kv: (-kv[1], kv[0])):
            w.writerow([entity, label, n, len(docs[(entity, label)])])
    return path


# --------------------------------------------------------------------------- sidecar metadata
@lru_cache(maxsize=256)
def _read_sidecar(folder: str) -> dict[str, dict[str, str]]:
    path = Path(folder) / SIDECAR
    if not path.is_file():
        return {}
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        log.warning("%s: not read (%s); documents there get no metadata", path, err)
        return {}
    return {(row.get("file") or "").strip(): {k: (v or "").strip() for k, v in row.items() if k} for row in rows
            if (row.get("file") or "").strip()}


def source_metadata(source: str) -> dict[str, str]:
    """The ``SOURCES.tsv`` row (``file, url, place, date, ...``) of a document, matched by file name
    in the document's own folder; ``{}`` when there is no sidecar or no row. For a JSONL line
    (``docs.jsonl:3``) the row of the JSONL file applies."""
    path = Path(re.sub(r":\d+$", "", source))
    return dict(_read_sidecar(str(path.parent)).get(path.name, {}))


# --------------------------------------------------------------------------- co-occurrence
_SENTENCE_END = re.compile(r"[。！？；!?;\r\n]")


def sentences(text: str) -> Iterator[tuple[int, int, int, int]]:
    """``(seg_start, seg_end, start, end)`` per sentence: the segment between two breaks (after
    ``。！？；!?;`` or a newline, the break kept with its sentence), and the sentence inside it
    with surrounding whitespace trimmed. Segments cover the whole text; empty sentences are skipped."""
    pos = 0
    for m in _SENTENCE_END.finditer(text):
        yield from _trimmed(text, pos, m.end())
        pos = m.end()
    yield from _trimmed(text, pos, len(text))


def _trimmed(text: str, a: int, b: int) -> Iterator[tuple[int, int, int, int]]:
    start, end = a, b
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start < end:
        yield a, b, start, end


def _spans_fit(text: str, spans: list[dict]) -> bool:
    return all(0 <= s["start"] < s["end"] <= len(text) and text[s["start"]:s["end"]] == s["text"] for s in spans)


def _dedup(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def cooccurrence_rows(record: dict, text: str, meta: Mapping[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Sentences of one document with at least one POLICY span and at least one PER or LOC span;
    a span belongs to the sentence it starts in. Span texts are joined with ``|`` (each once, in
    order of appearance)."""
    meta = meta or {}
    spans = sorted(record["spans"], key=lambda s: (s["start"], s["end"]))
    i = 0
    for seg_start, seg_end, start, end in sentences(text):
        inside: dict[str, list[str]] = defaultdict(list)
        while i < len(spans) and spans[i]["start"] < seg_end:
            if spans[i]["start"] >= seg_start:
                inside[spans[i]["label"]].append(spans[i]["text"])
            i += 1
        if inside["POLICY"] and (inside["PER"] or inside["LOC"]):
            yield {"doc_id": record["doc_id"], "start": start, "end": end, "sentence": text[start:end],
                   **{lab: "|".join(_dedup(inside[lab])) for lab in LABELS},
                   **{k: meta.get(k, "") for k in SIDECAR_FIELDS}}


COOCCURRENCE_COLUMNS = ("doc_id", "start", "end", "sentence", *LABELS, *SIDECAR_FIELDS)


def write_cooccurrence(rows: Iterable[Mapping[str, Any]], path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = _SafeWriter(f)
        w.writerow(COOCCURRENCE_COLUMNS)
        for row in rows:
            w.writerow([row.get(c, "") for c in COOCCURRENCE_COLUMNS])
    return path


# --------------------------------------------------------------------------- HTML
@lru_cache(maxsize=1)
def _s2t():
    import opencc

    return opencc.OpenCC("s2t")


@lru_cache(maxsize=65536)
def _char_script(ch: str) -> int:
    """+1: a traditional-only character (t2s changes it); -1: simplified-only (s2t changes it and
    t2s does not); 0: the same in both scripts, or not Chinese."""
    if to_simplified(ch) != ch:
        return 1
    if _s2t().convert(ch) != ch:
        return -1
    return 0


def script_lang(text: str) -> str:
    """``zh-Hant`` when the text has more traditional-only than simplified-only characters (OpenCC,
    character by character), else ``zh-Hans``."""
    score = Counter(_char_script(ch) for ch in text if ord(ch) >= 0x2E80)
    return "zh-Hant" if score[1] > score[-1] else "zh-Hans"


def _esc(text: str) -> str:
    """Escaped text whose DOM text is ``text`` exactly (a literal CR would become LF when parsed)."""
    return html.escape(text, quote=False).replace("\r", "&#13;")


def _attr(text: Any) -> str:
    return html.escape(str(text), quote=True).replace("\r", "&#13;").replace("\n", "&#10;")


_CSS = """
:root{--sc:"Noto Sans CJK SC","Noto Sans SC","Source Han Sans SC","PingFang SC","Hiragino Sans GB","Microsoft YaHei",sans-serif;
--tc:"Noto Sans CJK TC","Noto Sans TC","Source Han Sans TC","PingFang TC","Microsoft JhengHei","Microsoft YaHei",sans-serif}
body{font-family:var(--sc);max-width:62em;margin:0 auto;padding:1em 1.5em;color:#222;line-height:1.6}
:lang(zh-Hant){font-family:var(--tc)}
h1{font-size:1.5em}h2{font-size:1.2em;margin:0}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em 1em}
:where(.legend span){background:#ddd}.legend span{display:inline-block;padding:.15em .6em;margin-right:.6em;border-radius:.35em;font-size:.9em}
table.index{border-collapse:collapse;font-size:.9em}
table.index th,table.index td{border-bottom:1px solid #ddd;padding:.2em .7em;text-align:right}
table.index th:nth-child(2),table.index td:nth-child(2){text-align:left}
article{border-top:1px solid #ccc;padding:1em 0}
article header{margin-bottom:.6em}
.meta{color:#666;font-size:.85em;margin:.2em 0}
.doc{white-space:pre-wrap;line-height:2.5;overflow-wrap:anywhere}
mark{padding:.3em .45em;margin:0 .15em;border-radius:.35em;line-height:1;background:#ddd;color:inherit;
-webkit-box-decoration-break:clone;box-decoration-break:clone}
mark[data-label]::after{content:attr(data-label);font-size:.65em;font-weight:bold;line-height:1;
padding:.2em .3em;border-radius:.35em;vertical-align:middle;margin-left:.4em;
font-family:system-ui,sans-serif;user-select:none;-webkit-user-select:none}
""".strip()


def _label_css(labels: Iterable[str]) -> str:
    """A colour per label; only plain label names go into the style sheet (others stay grey)."""
    return "".join(f'[data-label="{lab}"]{{background:{COLORS.get(lab, "#ddd")}}}' for lab in labels
                   if re.fullmatch(r"[A-Za-z0-9_-]+", lab))


def _render_text(text: str, spans: list[dict]) -> str:
    """The text with each span wrapped in ``<mark data-label>``; the label itself is drawn by CSS,
    so the element's text content is exactly ``text``. Overlapping or out-of-range spans are not drawn."""
    parts, pos = [], 0
    for s in sorted(spans, key=lambda s: (s["start"], s["end"])):
        if s["start"] < pos or not s["start"] < s["end"] <= len(text):
            continue
        score = s.get("score")
        tip = s["label"] + (f" {score:.2f}" if isinstance(score, (int, float)) else "")
        parts.append(_esc(text[pos:s["start"]]))
        parts.append(f'<mark data-label="{_attr(s["label"])}" data-start="{s["start"]}" data-end="{s["end"]}" '
                     f'title="{_attr(tip)}">{_esc(text[s["start"]:s["end"]])}</mark>')
        pos = s["end"]
    parts.append(_esc(text[pos:]))
    return "".join(parts)


def _link(url: str) -> str:
    if re.match(r"https?://", url, re.I):
        return f'<a href="{_attr(url)}" rel="noopener noreferrer">{_esc(url)}</a>'
    return _esc(url)


def render_html(records: list[dict], texts: Mapping[str, str], path: Path, title: str = "zh-policy-ner predictions",
                total: int | None = None, full_results: Iterable[str | Path] = (),
                metadata: Mapping[str, Mapping[str, str]] | None = None) -> Path:
    """A displaCy-style page (``ent`` style) of ``records`` with their texts (by doc_id): an index
    with per-document counts by label, a legend, then each document's raw text with its spans
    highlighted; ``lang`` is ``zh-Hans`` or ``zh-Hant`` per document, by script. ``total`` (all
    documents, when more than ``records``) and ``full_results`` (file names) give the note on
    documents left out. No script; everything escaped."""
    metadata = metadata or {}
    total = len(records) if total is None else total
    labels = list(LABELS) + sorted({s["label"] for r in records for s in r["spans"]} - set(LABELS))
    counts = [Counter(s["label"] for s in r["spans"]) for r in records]
    from_html = [r["doc_id"] for r in records if Path(re.sub(r":\d+$", "", r.get("source", ""))).suffix.lower() in HTML_SUFFIXES]

    out = ['<!doctype html>\n<html lang="zh"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{_esc(title)}</title><style>{_CSS}{_label_css(labels)}</style></head><body>",
           f'<header id="index"><h1>{_esc(title)}</h1>']
    if total > len(records):
        files = ", ".join(f'<a href="{_attr(Path(p).name)}">{_esc(Path(p).name)}</a>' for p in full_results)
        out.append(f'<p class="note" id="left-out">{total - len(records)} of {total} documents are left out of '
                   f"this page (only the first {len(records)} are shown; <code>infer.html_max_docs</code>)."
                   + (f" Full results for all documents: {files}." if files else "") + "</p>")
    out.append('<p class="note" id="offsets">Each document is shown exactly as it was read; span offsets count '
               "characters of this text. " + ("For HTML inputs that is the text extracted from the page (tags and "
               "scripts removed, entities decoded), not the markup." if from_html else "") + "</p>")
    out.append('<p class="legend" id="legend">' + "".join(
        f'<span data-label="{_attr(lab)}">{_esc(lab)}: {_esc(LABEL_NAMES.get(lab, lab))}</span>' for lab in labels) + "</p>")
    out.append('<table class="index"><thead><tr><th>#</th><th>document</th>'
               + "".join(f"<th>{_esc(lab)}</th>" for lab in labels) + "<th>all</th></tr></thead><tbody>")
    for k, (r, c) in enumerate(zip(records, counts), start=1):
        out.append(f'<tr data-doc-id="{_attr(r["doc_id"])}"><td>{k}</td><td><a href="#doc-{k}">{_esc(r["doc_id"])}</a></td>'
                   + "".join(f'<td data-label-count="{_attr(lab)}">{c[lab]}</td>' for lab in labels)
                   + f"<td>{sum(c.values())}</td></tr>")
    out.append("</tbody></table></header><main>")

    for k, r in enumerate(records, start=1):
        text = texts.get(r["doc_id"])
        lang = script_lang(text) if text is not None else "zh"
        meta = metadata.get(r["doc_id"], {})
        info = [f'source: {_esc(r.get("source", ""))}'] + [
            f"{name}: {_link(meta[name]) if name == 'url' else _esc(meta[name])}" for name in SIDECAR_FIELDS if meta.get(name)]
        out.append(f'<article id="doc-{k}" lang="{lang}" data-doc-id="{_attr(r["doc_id"])}"><header>'
                   f'<h2>{_esc(r["doc_id"])} <a href="#index" title="back to the index">↑</a></h2>'
                   f'<p class="meta">{" · ".join(info)} · {len(r["spans"])} spans</p></header>')
        if text is None:
            out.append('<p class="note">Source text not available (input moved or changed since prediction).</p></article>')
        elif not _spans_fit(text, r["spans"]):
            out.append('<p class="note">The input changed since prediction (span texts do not match); shown without spans.</p>'
                       f'<div class="doc">{_esc(text)}</div></article>')
        else:
            out.append(f'<div class="doc">{_render_text(text, r["spans"])}</div></article>')
    out.append("</main></body></html>\n")
    path.write_text("".join(out), encoding="utf-8", errors="xmlcharrefreplace")
    return path


# --------------------------------------------------------------------------- all reports
PREDICTION_SUFFIXES = (".jsonl", ".ndjson")
SIDE_FILES = {"errors": ".errors.jsonl", "manifest": ".manifest.json", "lock": ".lock",
              "entities_csv": ".entities.csv", "aggregate_csv": ".aggregate.csv",
              "cooccurrence_csv": ".cooccurrence.csv", "html": ".html"}


def output_paths(output: str | Path) -> dict[str, Path]:
    """Every file a predict run writes beside its predictions file ``output``: ``<base>.errors.jsonl``,
    ``.manifest.json``, ``.lock``, ``.entities.csv``, ``.aggregate.csv``, ``.cooccurrence.csv`` and
    ``.html``, where ``base`` is ``output`` without a ``.jsonl``/``.ndjson`` suffix and otherwise its
    whole name (``x.html`` gives ``x.html.html``), so that none of them can be ``output`` itself."""
    output = Path(output)
    base = output.with_suffix("") if output.suffix.lower() in PREDICTION_SUFFIXES else output
    return {name: base.with_name(base.name + suffix) for name, suffix in SIDE_FILES.items()}


def write_reports(output: Path, input_path: str | Path, html_max_docs: int = 500) -> dict[str, Path]:
    """Entity CSV, aggregate table and sentence co-occurrence table over all documents; HTML report
    of the first ``html_max_docs``. Documents are matched to predictions by ``source``."""
    output = Path(output)
    records = read_predictions(output)
    by_source = {r["source"]: r for r in records}
    shown = records[:html_max_docs]
    shown_sources = {r["source"] for r in shown}
    paths = output_paths(output)
    extras = {
        "entities_csv": write_entity_csv(records, paths["entities_csv"]),
        "aggregate_csv": write_aggregate(records, paths["aggregate_csv"]),
    }
    texts: dict[str, str] = {}
    metadata: dict[str, dict[str, str]] = {}

    def rows() -> Iterator[dict[str, Any]]:
        for doc in iter_documents(input_path, exclude=paths.values()):
            if not isinstance(doc, RawDoc) or doc.source not in by_source:
                continue
            record = by_source[doc.source]
            meta = source_metadata(doc.source)
            if doc.source in shown_sources:
                texts[record["doc_id"]], metadata[record["doc_id"]] = doc.text, meta
            if not _spans_fit(doc.text, record["spans"]):
                log.warning("%s: input changed since prediction; left out of the co-occurrence table", doc.source)
                continue
            yield from cooccurrence_rows(record, doc.text, meta)

    _read_sidecar.cache_clear()
    extras["cooccurrence_csv"] = write_cooccurrence(rows(), paths["cooccurrence_csv"])
    extras["html"] = render_html(shown, texts, paths["html"], total=len(records),
                                 full_results=[output, *extras.values()], metadata=metadata)
    return extras
