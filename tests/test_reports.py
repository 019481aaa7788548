"""Reports over batch predictions: HTML page, sentence co-occurrence table, CSV neutralisation."""
from __future__ import annotations

import csv
import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from zh_policy_ner.reading.corpus import html_to_text
from zh_policy_ner.prediction.reports import cooccurrence_rows, neutralize, render_html, script_lang, sentences, write_reports

ROOT = Path(__file__).resolve().parents[1]
SIMPLIFIED, TRADITIONAL = "004_383dab57bb4e398a", "002_ea77f5f8472cfacb"  # 002 has glosses: 會(huì)議


def seed_record(doc_id: str) -> dict:
    for line in (ROOT / "annotations" / "seeds.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r["doc_id"] == doc_id:
            return r
    raise KeyError(doc_id)


def make_inputs(folder: Path) -> tuple[Path, dict[str, str]]:
    """Two seed reports (simplified, traditional with pinyin glosses), an HTML page and a
    SOURCES.tsv sidecar in ``folder``; predictions (the gold spans) in ``folder/../out/p.jsonl``."""
    folder.mkdir(parents=True)
    texts, records = {}, []
    for doc_id in (TRADITIONAL, SIMPLIFIED):
        src = folder / f"{doc_id}.txt"
        shutil.copyfile(ROOT / "seeds" / f"{doc_id}.txt", src)
        texts[doc_id] = src.read_text(encoding="utf-8")
        spans = [dict(s, score=0.9) if k % 2 else s for k, s in enumerate(seed_record(doc_id)["spans"])]
        records.append({"doc_id": doc_id, "source": str(src), "spans": spans})
    page = folder / "page.html"
    page.write_text("<html><script>alert(1)</script><p>市委书记<b>谭作钧</b>在大连主持会议,部署核酸检测&amp;隔离。</p></html>",
                    encoding="utf-8")
    texts["page"] = html_to_text(page.read_text(encoding="utf-8"))  # what the predict stage reads
    assert texts["page"].startswith("市委书记谭作钧在大连主持会议,部署核酸检测&隔离。")
    t = texts["page"]
    records.append({"doc_id": "page", "source": str(page), "spans": [
        {"start": t.index(w), "end": t.index(w) + len(w), "label": lab, "text": w, "score": None}
        for w, lab in (("谭作钧", "PER"), ("大连", "LOC"), ("核酸检测", "POLICY"))]})
    (folder / "SOURCES.tsv").write_text(
        "file\turl\tplace\tdate\tscript\n"
        f"{SIMPLIFIED}.txt\thttps://example.org/a\t大连市\t2020-08-05\tsimplified\n"
        f"{TRADITIONAL}.txt\t\t\t3月3日\ttraditional\n"
        "page.html\t=HYPERLINK(\"x\")\t@place\t-1\tsimplified\n", encoding="utf-8")
    out = folder.parent / "out" / "p.jsonl"
    out.parent.mkdir()
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return out, texts


class Page(HTMLParser):
    """Collects, per ``<article>``, its attributes and the text content of its ``div.doc``; marks;
    everything in ``<script>``; the index rows; the legend."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.articles: list[dict] = []
        self.marks: list[dict] = []
        self.scripts = 0
        self.rows: list[list[str]] = []
        self.legend: list[str] = []
        self.notes: dict[str, str] = {}
        self._stack: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "article":
            self.articles.append({"attrs": a, "text": ""})
        if tag == "mark":
            self.marks.append(a)
        if tag == "tr" and any(t == "tbody" for t, _ in self._stack):
            self.rows.append([])
        if tag == "span" and any(x.get("class") == "legend" for _, x in self._stack):
            self.legend.append(a.get("data-label"))
        if tag not in ("meta", "br"):
            self._stack.append((tag, a))

    def handle_endtag(self, tag):
        while self._stack and self._stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        if any(t == "div" and a.get("class") == "doc" for t, a in self._stack):
            self.articles[-1]["text"] += data
        if any(t == "td" for t, _ in self._stack) and self.rows:
            self.rows[-1].append(data)
        for _, a in self._stack:
            if a.get("class") == "note" and a.get("id"):
                self.notes[a["id"]] = self.notes.get(a["id"], "") + data


def parse(path: Path) -> Page:
    p = Page()
    p.feed(path.read_text(encoding="utf-8"))
    return p


# --------------------------------------------------------------------------- HTML
def test_script_lang():
    assert script_lang("市委书记谭作钧主持会议") == "zh-Hans"
    assert script_lang("市委書記劉宏濤主持會(huì)議") == "zh-Hant"
    assert script_lang((ROOT / "seeds" / f"{SIMPLIFIED}.txt").read_text(encoding="utf-8")) == "zh-Hans"
    assert script_lang((ROOT / "seeds" / f"{TRADITIONAL}.txt").read_text(encoding="utf-8")) == "zh-Hant"
    assert script_lang("2020 COVID-19") == "zh-Hans"  # nothing to tell: the default


def test_html_report_lang_legend_index_text_and_no_script(tmp_path):
    out, texts = make_inputs(tmp_path / "in")
    extras = write_reports(out, tmp_path / "in")
    page = parse(extras["html"])
    raw_html = extras["html"].read_text(encoding="utf-8")
    assert page.scripts == 0 and "<script" not in raw_html.lower() and "alert(1)" not in raw_html
    assert 'lang="zh"' in raw_html and "Noto Sans CJK SC" in raw_html and "Noto Sans CJK TC" in raw_html
    assert "mark[data-label]::after{content:attr(data-label)" in raw_html
    assert page.legend == ["PER", "LOC", "POLICY"]
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    by_id = {a["attrs"]["data-doc-id"]: a for a in page.articles}
    assert list(by_id) == [r["doc_id"] for r in records]
    for k, r in enumerate(records, start=1):
        art = by_id[r["doc_id"]]
        assert art["attrs"]["id"] == f"doc-{k}"
        assert art["text"] == texts[r["doc_id"]]  # the label is CSS, not text: copying gives the raw text
    assert by_id[SIMPLIFIED]["attrs"]["lang"] == "zh-Hans" and by_id[TRADITIONAL]["attrs"]["lang"] == "zh-Hant"
    assert by_id["page"]["attrs"]["lang"] == "zh-Hans"
    assert len(page.marks) == sum(len(r["spans"]) for r in records)
    assert all(m["data-label"] in ("PER", "LOC", "POLICY") for m in page.marks)
    # the index: one row per document, counts by label, a link to its anchor
    assert len(page.rows) == len(records)
    for row, r in zip(page.rows, records):
        n = {lab: sum(s["label"] == lab for s in r["spans"]) for lab in ("PER", "LOC", "POLICY")}
        assert row == ["%d" % (records.index(r) + 1), r["doc_id"], str(n["PER"]), str(n["LOC"]), str(n["POLICY"]),
                       str(len(r["spans"]))]
    assert f'href="#doc-{len(records)}"' in raw_html
    assert "left-out" not in page.notes  # all shown
    assert "extracted" in page.notes["offsets"]  # an HTML input: offsets count the extracted text
    assert 'href="https://example.org/a"' in raw_html and "=HYPERLINK" in raw_html and 'href="=HYPERLINK' not in raw_html


def test_html_escapes_everything_and_keeps_carriage_returns(tmp_path):
    text = '<script>alert("x")</script>\r\n市委书记<b>谭作钧</b> & 大连'
    start = text.index("谭作钧")
    records = [{"doc_id": '<img src=x onerror="alert(1)">', "source": "x.txt",
                "spans": [{"start": start, "end": start + 3, "label": '"><script>', "text": "谭作钧", "score": 0.5}]}]
    path = render_html(records, {records[0]["doc_id"]: text}, tmp_path / "r.html", title="<script>t</script>")
    raw_html = path.read_text(encoding="utf-8")
    assert "<script" not in raw_html.lower() and "<img" not in raw_html and "<b>" not in raw_html
    page = parse(path)
    assert page.articles[0]["text"] == text and page.articles[0]["attrs"]["data-doc-id"] == records[0]["doc_id"]
    assert page.marks[0]["data-label"] == '"><script>'


def test_html_note_when_documents_are_left_out(tmp_path):
    out, _ = make_inputs(tmp_path / "in")
    extras = write_reports(out, tmp_path / "in", html_max_docs=1)
    page = parse(extras["html"])
    assert len(page.articles) == 1 and len(page.rows) == 1
    note = page.notes["left-out"]
    assert "2 of 3 documents are left out" in note and "html_max_docs" in note
    for name in ("p.jsonl", "p.entities.csv", "p.aggregate.csv", "p.cooccurrence.csv"):
        assert name in note and (out.parent / name).exists()
    # the CSV files still hold every document
    with extras["entities_csv"].open(encoding="utf-8") as f:
        assert {row["doc_id"] for row in csv.DictReader(f)} == {SIMPLIFIED, TRADITIONAL, "page"}


# --------------------------------------------------------------------------- co-occurrence
def test_sentences_split_and_trim():
    text = "  第一句。第二句！\n\n第三句;第四句？ 最后"
    got = [text[s:e] for _, _, s, e in sentences(text)]
    assert got == ["第一句。", "第二句！", "第三句;", "第四句？", "最后"]
    segs = list(sentences(text))
    assert segs[0][0] == 0 and segs[-1][1] == len(text)


def test_cooccurrence_rows_need_policy_and_per_or_loc():
    text = "谭作钧在大连部署核酸检测、核酸检测。王五讲话。大连开展流调溯源；只有核酸检测。"
    spans = []
    for w, lab in (("谭作钧", "PER"), ("大连", "LOC"), ("核酸检测", "POLICY"), ("王五", "PER"), ("流调溯源", "POLICY")):
        i = -1
        while (i := text.find(w, i + 1)) >= 0:
            spans.append({"start": i, "end": i + len(w), "label": lab, "text": w})
    rows = list(cooccurrence_rows({"doc_id": "d", "spans": spans}, text, {"date": "2020-08-01"}))
    assert [(r["sentence"], r["PER"], r["LOC"], r["POLICY"]) for r in rows] == [
        ("谭作钧在大连部署核酸检测、核酸检测。", "谭作钧", "大连", "核酸检测"),
        ("大连开展流调溯源；", "", "大连", "流调溯源"),
    ]
    assert all(text[r["start"]:r["end"]] == r["sentence"] for r in rows)
    assert rows[0]["date"] == "2020-08-01" and rows[0]["place"] == "" and rows[0]["url"] == ""


def test_cooccurrence_csv_with_sources_sidecar(tmp_path):
    out, texts = make_inputs(tmp_path / "in")
    extras = write_reports(out, tmp_path / "in")
    assert extras["cooccurrence_csv"] == out.with_suffix(".cooccurrence.csv")
    with extras["cooccurrence_csv"].open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["doc_id", "start", "end", "sentence", "PER", "LOC", "POLICY", "date", "place", "url"]
    assert {r["doc_id"] for r in rows} == {SIMPLIFIED, TRADITIONAL, "page"}
    for r in rows:
        assert texts[r["doc_id"]][int(r["start"]):int(r["end"])] == r["sentence"]
        assert r["POLICY"] and (r["PER"] or r["LOC"])
        spans = seed_record(r["doc_id"])["spans"] if r["doc_id"] != "page" else []
        for s in spans:
            if int(r["start"]) <= s["start"] < int(r["end"]):
                assert s["text"] in r[s["label"]].split("|")
    simp = [r for r in rows if r["doc_id"] == SIMPLIFIED]
    assert all((r["date"], r["place"], r["url"]) == ("2020-08-05", "大连市", "https://example.org/a") for r in simp)
    assert all((r["date"], r["place"], r["url"]) == ("3月3日", "", "") for r in rows if r["doc_id"] == TRADITIONAL)
    page = [r for r in rows if r["doc_id"] == "page"]
    assert [(r["PER"], r["LOC"], r["POLICY"]) for r in page] == [("谭作钧", "大连", "核酸检测")]
    assert (page[0]["date"], page[0]["place"], page[0]["url"]) == ("'-1", "'@place", "'=HYPERLINK(\"x\")")


def test_cooccurrence_without_sidecar_has_empty_metadata(tmp_path):
    out, _ = make_inputs(tmp_path / "in")
    (tmp_path / "in" / "SOURCES.tsv").unlink()
    extras = write_reports(out, tmp_path / "in")
    with extras["cooccurrence_csv"].open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["date"] == r["place"] == r["url"] == "" for r in rows)


# --------------------------------------------------------------------------- CSV neutralisation
def test_neutralize():
    assert [neutralize(x) for x in ("=1+2", "+86", "-x", "@SUM(A1)", "\tx", "大连", "a=b", "", 3, -1.5, None)] == [
        "'=1+2", "'+86", "'-x", "'@SUM(A1)", "'\tx", "大连", "a=b", "", 3, -1.5, None]


def test_all_csvs_are_neutralised(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    text = "=cmd|' /C calc'A0在@大连推行+核酸检测,-张三出席;"
    (folder / "=evil.txt").write_text(text, encoding="utf-8")
    spans = [{"start": text.index(w), "end": text.index(w) + len(w), "label": lab, "text": w, "score": 0.5}
             for w, lab in (("=cmd", "PER"), ("@大连", "LOC"), ("+核酸检测", "POLICY"), ("-张三", "PER"))]
    out = tmp_path / "p.jsonl"
    out.write_text(json.dumps({"doc_id": "=evil", "source": str(folder / "=evil.txt"), "spans": spans},
                              ensure_ascii=False) + "\n", encoding="utf-8")
    extras = write_reports(out, folder)
    for name in ("entities_csv", "aggregate_csv", "cooccurrence_csv"):
        with extras[name].open(encoding="utf-8", newline="") as f:
            cells = [c for row in csv.reader(f) for c in row]
        assert cells, name
        assert not [c for c in cells if c[:1] in ("=", "+", "-", "@")], name
    with extras["entities_csv"].open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["text"] for r in rows] == ["'=cmd", "'@大连", "'+核酸检测", "'-张三"] and rows[0]["doc_id"] == "'=evil"
    with extras["cooccurrence_csv"].open(encoding="utf-8", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["sentence"].startswith("'=cmd") and row["PER"] == "'=cmd|-张三" and row["POLICY"] == "'+核酸检测"


# --------------------------------------------------------------------------- in a real browser
CHROMIUM = Path("/usr/bin/chromium")


def test_html_report_in_chromium(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    if not CHROMIUM.exists():
        pytest.skip(f"no system Chromium at {CHROMIUM} (apt-get install chromium); playwright's own browser download is not used")
    out, texts = make_inputs(tmp_path / "in")
    report = write_reports(out, tmp_path / "in")["html"]
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1300})
            page.goto(report.resolve().as_uri())
            assert page.locator("script").count() == 0
            docs = page.eval_on_selector_all("article", """els => els.map(a => ({
                id: a.dataset.docId, lang: a.lang, text: a.querySelector('.doc').textContent,
                marks: [...a.querySelectorAll('mark')].map(m => ({
                    label: m.dataset.label, text: m.textContent, start: +m.dataset.start,
                    after: getComputedStyle(m, '::after').content,
                    visible: m.getBoundingClientRect().width > 0}))}))""")
            assert [d["id"] for d in docs] == [r["doc_id"] for r in records]
            for d, r in zip(docs, records):
                assert d["text"] == texts[r["doc_id"]]
                assert d["lang"] == ("zh-Hant" if r["doc_id"] == TRADITIONAL else "zh-Hans")
                want = sorted((s["start"], s["label"], s["text"]) for s in r["spans"])
                assert sorted((m["start"], m["label"], m["text"]) for m in d["marks"]) == want
                assert all(m["after"] == f'"{m["label"]}"' and m["visible"] for m in d["marks"])
            # the index links to each document
            page.click("a[href='#doc-2']")
            assert page.evaluate("location.hash") == "#doc-2"
            assert page.evaluate("getComputedStyle(document.querySelector('article[lang=\"zh-Hant\"]')).fontFamily"
                                 ).startswith('"Noto Sans CJK TC"')
            page.evaluate("window.scrollTo(0, 0)")
            shot = ROOT / "docs" / "report.png" if os.environ.get("SAVE_SCREENSHOT") == "1" else tmp_path / "report.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
