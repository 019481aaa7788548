"""Lexicon layers around the model's spans, and the dictionary tagger they are made of.

- :class:`DictionaryTagger`: known mentions, longest match first (the ``dictionary`` baseline; the
  gazetteer saved with every trained model, :func:`build_gazetteer`: training mentions, the
  guideline's terms, and two rules the guideline states, :func:`quoted_formulas` and
  :func:`measure_phrases`).
- :func:`admin_places`: China's administrative divisions (cpca's table), the place-name layer, and
  :func:`place_abbreviations` (返[凤]人员).
- :func:`with_places`, :func:`overlay`: how they combine with the model's spans (the layers of
  :mod:`~zh_policy_ner.rules.layers` are made of them).

All work on normalised (simplified) text and return spans in its coordinates. The word lists and
patterns come from a :class:`~zh_policy_ner.rules.guideline.Guideline` passed in, never from this code.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..data.dataset import NormSpan
from ..reading.text import normalize
from .guideline import Guideline

_QUOTED = re.compile(r'“([^“”\n]{2,16})”|「([^「」\n]{2,16})」|‘([^‘’\n]{2,16})’|"([^"\n]{2,16})"')
_TITLE = re.compile(r"《[^《》\n]*》")
_FORMULA_CHARS = re.compile(r"^[\u4e00-\u9fff、()()]+$")


def quoted_formulas(text: str, guideline: Guideline) -> list[NormSpan]:
    """The guideline's named formulas: what stands inside quotation marks when it starts with a
    Chinese numeral and holds only Chinese characters (lists with 、 included), e.g. “两手抓”,
    “八个坚决、八个严防”; never inside a 《》 title, never a goal (“两个确保”目标); not plan periods,
    meetings or numbered groups (the guideline's ``formulas.not_formula``). POLICY spans, sorted."""
    if not guideline.has("formulas"):
        return []
    not_formula, label = guideline.not_formula, guideline.label("formulas")
    titles = [m.span() for m in _TITLE.finditer(text)]
    spans = []
    for m in _QUOTED.finditer(text):
        g = next(i for i in range(1, 5) if m.group(i) is not None)
        body, (s, e) = m.group(g), m.span(g)
        if (len(body) >= guideline.min_formula_length and body[0] in guideline.numerals
                and _FORMULA_CHARS.match(body) and not (not_formula and not_formula.search(body))
                and not any(text.startswith(w, m.end()) for w in guideline.not_before)
                and not any(a <= s and e <= b for a, b in titles)):
            spans.append((s, e, label))
    return spans


# Measures named after a verb of carrying them out (guideline, POLICY 2: "no verb of carrying it out
# ..., no degree words ..., and no generic head"): 加强[社区管控], 加大[流调溯源]力度, 严格执行[居家隔离]措施.
# Verbs, degree words, measure heads, phrase ends and leads: the guideline file's measure_phrases.
def measure_phrases(text: str, guideline: Guideline) -> list[NormSpan]:
    """Measures named right after a verb of carrying them out, up to a generic head or punctuation,
    when they end in a measure word: 要加强[社区管控], 加大[流调溯源]力度, 严格[环境监管执法]; leading
    verbs, degree words and 我市/全市 stay out; the whole effort, manner and generic words are not
    measures (``measure_phrases.not_measure``). POLICY spans, sorted."""
    if guideline.phrase is None:
        return []
    lead_pattern, not_measure, label = guideline.phrase_lead, guideline.not_measure, guideline.label("measure_phrases")
    spans = []
    for m in guideline.phrase.finditer(text):
        start, phrase = m.start(1), m.group(1)
        lead = lead_pattern.match(phrase)
        if lead:
            start, phrase = start + lead.end(), phrase[lead.end():]
        if len(phrase) >= 2 and not (not_measure and not_measure.search(phrase)):
            spans.append((start, m.end(1), label))
    return spans


class DictionaryTagger:
    """Tags every occurrence of a known mention, longest first, without overlaps. Mentions labelled
    ``O`` tag nothing but block shorter matches inside them (a guideline "not a measure" such as
    国务院联防联控机制 stops 联防联控 inside it). With ``formulas``, quoted numbered formulas
    (:func:`quoted_formulas`), with ``phrases`` measures named after a verb (:func:`measure_phrases`),
    are tagged POLICY where no mention overlaps them; both rules need the ``guideline``."""

    name = "dictionary"

    def __init__(self, mentions: dict[str, str], min_length: int = 2, formulas: bool = False, phrases: bool = False,
                 guideline: Guideline | None = None):
        if (formulas or phrases) and guideline is None:
            raise ValueError("quoted formulas and measure phrases are the guideline's rules: pass the guideline")
        self.mentions = {m: lab for m, lab in mentions.items() if len(m) >= min_length}
        self.formulas = formulas
        self.phrases = phrases
        self.guideline = guideline
        lengths: dict[str, set[int]] = {}  # first character -> mention lengths, tried longest first
        for m in self.mentions:
            lengths.setdefault(m[0], set()).add(len(m))
        self._lengths = {c: sorted(n, reverse=True) for c, n in lengths.items()}

    @classmethod
    def from_docs(cls, docs, **kwargs) -> "DictionaryTagger":
        """From prepared documents' gold spans (the most frequent label wins for a string)."""
        return cls(doc_mentions(docs), **kwargs)

    def save(self, path: Path) -> None:
        data = {"mentions": self.mentions, "quoted_formulas": self.formulas, "measure_phrases": self.phrases}
        path.write_text(json.dumps(data, ensure_ascii=False, indent=0, sort_keys=True), encoding="utf-8")

    @classmethod
    def load(cls, path: Path, guideline: Guideline | None = None) -> "DictionaryTagger":
        """A saved gazetteer; its rules (if it was saved with them on) run by ``guideline``."""
        data = json.loads(path.read_text(encoding="utf-8"))
        if "mentions" not in data:  # a flat {mention: label} file (earlier versions)
            return cls(data)
        return cls(data["mentions"], formulas=data.get("quoted_formulas", False),
                   phrases=data.get("measure_phrases", False), guideline=guideline)

    def _matches(self, text: str) -> list[NormSpan]:
        spans, i = [], 0
        while i < len(text):
            for n in self._lengths.get(text[i], ()):
                if i + n > len(text):
                    continue
                lab = self.mentions.get(text[i : i + n])
                if lab:
                    spans.append((i, i + n, lab))
                    i += n
                    break
            else:
                i += 1
        return spans

    def tag(self, text: str) -> list[NormSpan]:
        found = self._matches(text)
        if self.phrases:  # a known mention (even an O one) wins over a measure phrase
            found = overlay(measure_phrases(text, self.guideline), found)  # type: ignore[arg-type]
        if self.formulas:
            found = overlay(quoted_formulas(text, self.guideline), found)  # type: ignore[arg-type]
        return [s for s in found if s[2] != "O"]


def doc_mentions(docs, min_precision: float = 0.0) -> dict[str, str]:
    """Gold mention strings of prepared documents, each with its most frequent label. With
    ``min_precision``, only those labelled at least that share of the times they occur in the
    documents outside other labelled spans: 严峻, once a name, many times "severe", is left out, as is
    a measure word the annotators label only in some places (the occurrences inside a longer span,
    核酸检测 of 全员核酸检测, count neither way; one labelled otherwise counts against it)."""
    from collections import Counter

    votes: dict[str, Counter] = {}
    for d in docs:
        for s, e, lab in d.spans:
            votes.setdefault(d.norm.text[s:e], Counter())[lab] += 1
    mentions = {m: c.most_common(1)[0][0] for m, c in votes.items()}
    if min_precision <= 0:
        return mentions
    labelled, seen = Counter(), Counter()
    for d in docs:
        text, gold = d.norm.text, {(s, e): lab for s, e, lab in d.spans}
        owner = [-1] * len(text)  # the labelled span each character is in
        for k, (s, e, _) in enumerate(d.spans):
            owner[s:e] = [k] * (e - s)
        for m in mentions:
            i = text.find(m)
            while i >= 0:
                j = i + len(m)
                label = gold.get((i, j))
                if label == mentions[m]:  # labelled, and with the label the gazetteer gives it
                    labelled[m] += 1
                    seen[m] += 1
                elif label is not None or owner[i] < 0 or owner[i] != owner[j - 1]:  # not inside a longer span
                    seen[m] += 1
                i = text.find(m, i + 1)
    return {m: lab for m, lab in mentions.items() if labelled[m] >= min_precision * seen[m]}


def read_terms(path: str | Path) -> dict[str, str]:
    """``term<TAB>label`` lines (``#`` comments), e.g. ``annotations/guideline_terms.tsv``; the terms
    are normalised like the text they are matched on. Errors name the file and line."""
    terms = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise ValueError(f"{path}:{n}: expected 'term<TAB>label', got {line!r}")
        terms[normalize(parts[0].strip()).text] = parts[1].strip()
    return terms


def build_gazetteer(train_docs, gcfg: Any, guideline: Guideline, withheld_texts: Sequence[str] = ()) -> DictionaryTagger:
    """The gazetteer saved with a trained model: the training mentions, plus (``gcfg``, the
    ``train.gazetteer`` config) the guideline's terms and quoted formulas. Guideline terms that
    occur in ``withheld_texts`` (held-out articles) are left out, so that a held-out score never
    credits the guideline with what it may have copied from those articles; training mentions win
    over guideline terms."""
    mentions: dict[str, str] = {}
    if gcfg.guideline_terms:
        mentions = {t: lab for t, lab in read_terms(gcfg.guideline_terms).items()
                    if not any(t in text for text in withheld_texts)}
    mentions.update(doc_mentions(train_docs, float(gcfg.get("min_precision", 0.0))))
    return DictionaryTagger(mentions, formulas=bool(gcfg.quoted_formulas), phrases=bool(gcfg.measure_phrases),
                            guideline=guideline)


_NOT_ADMIN = {"市辖区", "县", "省直辖县级行政区划", "自治区直辖县级行政区划"}
_PROVINCE_SUFFIX = re.compile(r"(省|市|特别行政区|(壮族|回族|维吾尔)?自治区)$")


@dataclass(frozen=True)
class AdminUnit:
    code: str              # 12-digit administrative code: province PP0000, city PPCC00, county PPCCDD
    name: str              # full name: 大连市
    short: str | None      # short form where it is safe to match: 大连


@lru_cache(maxsize=4)
def admin_units(ambiguous: frozenset[str] = frozenset()) -> tuple[AdminUnit, ...]:
    """China's administrative divisions from cpca's table (3,500 provinces, cities and counties, MIT),
    with the short forms of provinces, cities and autonomous prefectures (大连, 广西, 凤城, 延边).
    Short forms of counties and districts, two-character county names and names that are also
    common words (``ambiguous``: the guideline's ``places.ambiguous``) are left out (``short`` None,
    or the unit dropped)."""
    import csv
    from importlib.metadata import distribution

    resources = distribution("cpca").locate_file("cpca/resources")
    nations = [n.strip() for n in (resources / "56_nations.csv").read_text(encoding="utf-8").split() if n.strip()]
    # 延边朝鲜族自治州 -> 延边, 巴音郭楞蒙古自治州 -> 巴音郭楞: the ethnic names (族 or not) before 自治州
    prefecture = re.compile("(?:" + "|".join(sorted({x for n in nations for x in (n, n.removesuffix("族"))},
                                                       key=len, reverse=True)) + ")+自治州$")
    units = []
    with open(resources / "adcodes.csv", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            name, code = row["name"].strip(), row["adcode"]
            # two-character counties and districts (任县, 和县, 范县) mostly match across words:
            # 担任县委, 市和县, 示范县
            if name in _NOT_ADMIN or name in ambiguous or (len(name) == 2 and name[-1] in "县区旗"):
                continue
            if code[2:6] == "0000":
                short = _PROVINCE_SUFFIX.sub("", name)
            elif name.endswith("地区"):
                short = name[:-2]
            elif name.endswith("市"):
                short = name[:-1]
            elif code[4:6] == "00" and name.endswith("自治州"):
                short = prefecture.sub("", name)
            else:
                short = None
            units.append(AdminUnit(code, name, short if short and len(short) >= 2 and short not in ambiguous else None))
    return tuple(units)


@lru_cache(maxsize=4)
def admin_places(guideline: Guideline) -> dict[str, str]:
    """Every full name and safe short form of :func:`admin_units`, labelled as the guideline's
    ``places`` rule says (none without that rule)."""
    label = guideline.label("places")
    places = {}
    for u in admin_units(guideline.ambiguous_places) if label else ():
        places[u.name] = label
        if u.short:
            places[u.short] = label
    return places


@lru_cache(maxsize=4)
def admin_subunit_initials(ambiguous: frozenset[str] = frozenset()) -> dict[str, frozenset[str]]:
    """For each province or city name (full and short), the first characters of the units under it
    (丹东 -> 凤 of 凤城市, 东 of 东港市, ...): the candidates for one-character abbreviations."""
    units = admin_units(ambiguous)
    out: dict[str, set[str]] = {}
    for parent in units:
        level = 2 if parent.code[2:6] == "0000" else 4 if parent.code[4:6] == "00" else 0
        if not level:
            continue
        initials = {u.name[0] for u in units if u is not parent and u.code[:level] == parent.code[:level]}
        for key in filter(None, (parent.name, parent.short)):
            out.setdefault(key, set()).update(initials)
    return {k: frozenset(v) for k, v in out.items()}


@lru_cache(maxsize=4)
def place_tagger(guideline: Guideline) -> "DictionaryTagger":
    """A tagger of :func:`admin_places` (the ``places`` span layer and ``train.silver.places``)."""
    return DictionaryTagger(admin_places(guideline))


def place_abbreviations(text: str, spans: Sequence[NormSpan], guideline: Guideline) -> list[NormSpan]:
    """The guideline's one-character place abbreviations: 返[凤]人员, 来[威]人员, 返[雅]、来[雅]人员,
    留“[凤]”过年, where the character is a province abbreviation, belongs to a place the document
    names elsewhere (威 of 威海) or starts a unit under such a place (凤 of 凤城市 in a report that
    names 丹东市). LOC spans that overlap none of ``spans``; the guideline's ``places`` rule gives
    the pattern, the province abbreviations and what is never one (返乡, 返岗)."""
    loc, pattern = guideline.label("places"), guideline.abbreviation
    if pattern is None:
        return []
    initials = admin_subunit_initials(guideline.ambiguous_places)
    places = {text[s:e] for s, e, lab in spans if lab == loc and e - s >= 2}
    known = {c for p in places for c in p}
    known |= {c for p in places for c in initials.get(p, ())}
    known = (known - guideline.not_abbreviation) | guideline.province_abbreviations
    found = []
    for m in pattern.finditer(text):
        g = 1 if m.group(1) else 2
        s, e = m.span(g)
        if text[s] in known and all(e <= a or s >= b for a, b, _ in spans):
            found.append((s, e, loc))
    return found


def with_places(text: str, model: Sequence[NormSpan], places: Sequence[NormSpan], guideline: Guideline) -> list[NormSpan]:
    """Place-name matches under the model's spans, except that a match wins over the model's LOC
    spans it strictly contains (the model's 长春 of 长春市委, 大 of 大连: the guideline keeps the
    attached suffix) and a model PER that is exactly a place name becomes LOC (威海新闻网)."""
    loc, per = guideline.label("places"), guideline.label("names")
    names = {text[s:e] for s, e, _ in places}
    model = [(s, e, loc) if lab == per and text[s:e] in names else (s, e, lab) for s, e, lab in model]
    wins = []
    for p in places:
        inside = [m for m in model if m[0] < p[1] and p[0] < m[1]]
        if inside and all(m[2] == loc and p[0] <= m[0] and m[1] <= p[1] and m[:2] != p[:2] for m in inside):
            wins.append(p)
    kept = [m for m in model if not any(p[0] <= m[0] and m[1] <= p[1] for p in wins)]
    return overlay(places, sorted(kept + wins))


def overlay(base: Sequence[NormSpan], over: Sequence[NormSpan]) -> list[NormSpan]:
    """``over``'s spans, plus those of ``base`` that overlap none of them (sorted)."""
    kept = [b for b in base if all(b[1] <= s or b[0] >= e for s, e, _ in over)]
    return sorted([*kept, *over])
