"""The span layers: configured components laid, in order, over the model's (tidied) spans.

Like spaCy's ``SpanRuler`` beside the ``ner`` component, each layer is a function
``(text, spans) -> spans`` named in a list with a mode; the list is saved with the trained model
(``layers.json``), so that prediction, held-out evaluation and cross-validation run the very same
code. ``infer.layers`` overrides it (``[]``: the bare model), and the list a run used is written into
its outputs. Before them, the model's spans are tidied by the guideline's span rules
(:func:`tidy_spans`); tidying and layers run the guideline the model was trained with
(:mod:`~zh_policy_ner.rules.guideline`). Layers:

- ``places``: China's administrative place names (:func:`~zh_policy_ner.rules.lexicon.place_tagger`)
  where the model found nothing, or found a truncated place (mode ``fill``);
- ``gazetteer``: the model folder's ``gazetteer.json`` (training mentions, the guideline's terms and
  rules): mode ``overwrite`` (its matches replace the spans below them), ``fill`` (only where nothing
  stands) or ``longest`` (of two overlapping spans the longer wins);
- ``abbreviations``: one-character place abbreviations, 返[凤]人员 (mode ``fill``).

A layer is written ``name`` (its first mode) or ``name:mode``.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data.dataset import NormSpan
from ..labelling.annotations import QUOTE_MARKS, is_edge_junk
from .guideline import Guideline
from .lexicon import DictionaryTagger, overlay, place_abbreviations, place_tagger, with_places

LAYERS_FILE = "layers.json"
GAZETTEER_FILE = "gazetteer.json"
MODES = {"places": ("fill",), "gazetteer": ("overwrite", "fill", "longest"), "abbreviations": ("fill",)}
DEFAULT_LAYERS = ("places", "gazetteer:overwrite", "abbreviations")  # models saved before layers.json


class LayerError(ValueError):
    """A layer list that names an unknown layer or mode, or a layer whose data is missing."""


@dataclass(frozen=True)
class Layer:
    name: str
    mode: str

    def __str__(self) -> str:
        return f"{self.name}:{self.mode}"


def parse_layers(items: Iterable[str]) -> tuple[Layer, ...]:
    """``["places", "gazetteer:fill"]`` -> layers, checked: unknown names or modes raise :class:`LayerError`."""
    layers = []
    for item in items:
        name, _, mode = str(item).partition(":")
        if name not in MODES:
            raise LayerError(f"unknown span layer {name!r}: the layers are {', '.join(MODES)}")
        mode = mode or MODES[name][0]
        if mode not in MODES[name]:
            raise LayerError(f"span layer {name} has no mode {mode!r}: use {' or '.join(MODES[name])}")
        layers.append(Layer(name, mode))
    return tuple(layers)


def check_layers(items: Iterable[str], gazetteer_path: str | Path | None) -> tuple[Layer, ...]:
    """:func:`parse_layers`, and a :class:`LayerError` saying how to go on when the list names the
    gazetteer layer and ``gazetteer_path`` (the model folder's ``gazetteer.json``) does not exist;
    ``gazetteer_path=None``: the caller has the gazetteer. Cheap: nothing is loaded."""
    layers = parse_layers(items)
    if gazetteer_path is not None and any(layer.name == "gazetteer" for layer in layers) \
            and not Path(gazetteer_path).exists():
        raise LayerError(f"{gazetteer_path}: the gazetteer layer needs the model folder's {GAZETTEER_FILE}: train "
                         f"the model with this version, or leave the layer out "
                         f"(infer.layers=[{','.join(str(x) for x in layers if x.name != 'gazetteer')}])")
    return layers


def gazetteer_spans(spans: Sequence[NormSpan], found: Sequence[NormSpan], mode: str) -> list[NormSpan]:
    """The gazetteer's matches ``found`` laid over ``spans`` by ``mode``."""
    if mode == "fill":
        return overlay(found, spans)
    if mode == "longest":
        return overlay(spans, [g for g in found
                               if all(g[1] - g[0] >= m[1] - m[0] for m in spans if m[0] < g[1] and g[0] < m[1])])
    return overlay(spans, found)


def tidy_spans(text: str, spans: Sequence[NormSpan], guideline: Guideline) -> list[NormSpan]:
    """Apply the guideline's span rules to model spans: no edge whitespace or punctuation, no PER or
    LOC across whitespace (split there), a name never includes the speech verb after it
    (李友传达 -> 李友, 王凯强|调 -> 王凯; ``names.speech_verbs``), and a one-character PER (a surname
    alone) is dropped. PER and LOC are the labels of the guideline's ``names`` and ``places``."""
    per, loc = guideline.label("names"), guideline.label("places")
    pieces = []
    for s, e, lab in spans:  # a name or place never spans whitespace: 长春 江城 are two places
        cut = [s] + [i for i in range(s + 1, e) if text[i].isspace() != text[i - 1].isspace()] + [e]
        pieces += [(a, b, lab) for a, b in zip(cut, cut[1:])] if lab in (per, loc) else [(s, e, lab)]
    out = []
    for s, e, lab in pieces:
        while s < e and is_edge_junk(text[s]):
            s += 1
        while e > s and is_edge_junk(text[e - 1]):
            e -= 1
        if lab == per:
            for verb in guideline.speech_verbs:
                if e - s > len(verb) + 1 and text[s:e].endswith(verb):
                    e -= len(verb)
            # 王凯[强]调: a speech verb straddles the end of a three-character name (``names.straddling``)
            for verb, not_before in guideline.straddling.items():
                if e - s > 2 and text.startswith(verb, e - 1) and text[e - 1 + len(verb) : e + len(verb)] not in not_before:
                    e -= 1
            if e - s < 2:
                continue
        if e > s and not QUOTE_MARKS & set(text[s:e]):
            out.append((s, e, lab))
    return out



class SpanLayers:
    """An ordered list of :class:`Layer` with the data they need and the guideline whose rules they
    run (none given: no rules); ``layers.tidy(text, spans)`` tidies the model's spans,
    ``layers(text, spans)`` lays the layers over them."""

    def __init__(self, layers: Sequence[Layer] = (), gazetteer: DictionaryTagger | None = None,
                 places: DictionaryTagger | None = None, guideline: Guideline | None = None,
                 min_score: Mapping[str, float] | None = None):
        self.layers = tuple(layers)
        self.min_score = parse_min_score(min_score)
        self.guideline = guideline if guideline is not None else Guideline({}, "no guideline")
        names = {layer.name for layer in self.layers}
        if "gazetteer" in names and gazetteer is None:
            raise LayerError("the gazetteer layer needs a gazetteer (the model folder's gazetteer.json)")
        self.gazetteer = gazetteer
        self.places = places if places is not None or "places" not in names else place_tagger(self.guideline)

    @property
    def names(self) -> list[str]:
        return [str(layer) for layer in self.layers]

    def __bool__(self) -> bool:
        return bool(self.layers)

    def tidy(self, text: str, spans: Sequence[NormSpan]) -> list[NormSpan]:
        """The model's spans tidied by the guideline's span rules (:func:`tidy_spans`)."""
        return tidy_spans(text, spans, self.guideline)

    def confident(self, spans: Sequence[NormSpan], scores: Sequence[float]) -> list[NormSpan]:
        """The model's spans that the layers are laid over: with layers, a span whose mean
        probability is below its label's ``min_score`` yields to them (is left out); without
        layers (the bare model) all are kept."""
        if not self.layers or not self.min_score:
            return list(spans)
        return [x for x, score in zip(spans, scores) if score >= self.min_score.get(x[2], 0.0)]

    def __call__(self, text: str, spans: Sequence[NormSpan]) -> list[NormSpan]:
        spans = list(spans)
        for layer in self.layers:
            if layer.name == "places":
                spans = with_places(text, spans, self.places.tag(text), self.guideline)  # type: ignore[union-attr]
            elif layer.name == "gazetteer":
                spans = gazetteer_spans(spans, self.gazetteer.tag(text), layer.mode)  # type: ignore[union-attr]
            elif layer.name == "abbreviations":
                spans = sorted(spans + place_abbreviations(text, spans, self.guideline))
        return spans

    @classmethod
    def build(cls, items: Iterable[str], guideline: Guideline, gazetteer_path: str | Path | None = None,
              gazetteer: DictionaryTagger | None = None, min_score: Mapping[str, float] | None = None) -> "SpanLayers":
        """Layers from their names, running ``guideline``; the gazetteer is ``gazetteer`` or loaded from
        ``gazetteer_path`` when the list names it (a missing file raises :class:`LayerError` saying how
        to go on); ``min_score``: see :meth:`confident`."""
        layers = check_layers(items, None if gazetteer is not None else gazetteer_path)
        if gazetteer is None and gazetteer_path is not None and any(layer.name == "gazetteer" for layer in layers):
            gazetteer = DictionaryTagger.load(Path(gazetteer_path), guideline)
        # the constructor refuses a gazetteer layer without one
        return cls(layers, gazetteer, guideline=guideline, min_score=min_score)


def _saved(model_dir: str | Path) -> dict:
    path = Path(model_dir) / LAYERS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def saved_layers(model_dir: str | Path) -> list[str]:
    """The layer list saved with a trained model (``layers.json``); :data:`DEFAULT_LAYERS` for a
    folder saved before there was one."""
    return list(_saved(model_dir).get("layers", DEFAULT_LAYERS))


def saved_min_score(model_dir: str | Path) -> dict[str, float]:
    """The ``min_score`` saved with a trained model's layers (none for a folder saved before)."""
    return parse_min_score(_saved(model_dir).get("min_score"), str(Path(model_dir) / LAYERS_FILE))


def save_layers(model_dir: str | Path, items: Iterable[str], min_score: Mapping[str, float] | None = None) -> None:
    names = [str(layer) for layer in parse_layers(items)]
    record = {"layers": names, "min_score": parse_min_score(min_score)}
    (Path(model_dir) / LAYERS_FILE).write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def resolve_layers(override: Iterable[str] | None, model_dir: str | Path) -> list[str]:
    """What a run uses: ``override`` (``infer.layers``) when set, else the list saved with the model."""
    return [str(x) for x in override] if override is not None else saved_layers(model_dir)


def parse_min_score(value: Any, source: str = "min_score") -> dict[str, float]:
    """``{label: score}`` with scores in [0, 1] (``None``: none); anything else raises
    :class:`LayerError` naming ``source`` and what is wrong."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise LayerError(f"{source} must map labels to scores, e.g. {{POLICY: 0.8}}, got {value!r}")
    out = {}
    for label, score in value.items():
        try:
            out[str(label)] = float(score)
        except (TypeError, ValueError):
            raise LayerError(f"{source}.{label} must be a number in [0, 1], got {score!r}") from None
        if not 0.0 <= out[str(label)] <= 1.0:
            raise LayerError(f"{source}.{label} must be in [0, 1], got {score!r}")
    return out


def resolve_min_score(override: Mapping[str, float] | None, model_dir: str | Path) -> dict[str, float]:
    """What a run uses: what the model saved, with ``override`` (``infer.min_score``) winning label by label."""
    return {**saved_min_score(model_dir), **parse_min_score(override, "infer.min_score")}
