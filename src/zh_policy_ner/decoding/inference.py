"""Span prediction for raw texts: normalise, window, batch, merge windows, map spans to raw offsets.

Windows are sorted by length and batched dynamically; overlapping windows are merged by averaging
token probabilities; tags go back to characters and spans to the raw text, so that
``raw[start:end] == text`` always holds, whatever debris or script the input had.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..common.modeling import load_tokenizer, resolve_model_path, use_bf16
from ..data.dataset import encode_windows, tags_to_spans
from ..labelling.annotations import Span
from ..model.onnx_backend import load_runner, resolve_backend
from ..reading.text import Normalized, normalize
from ..rules.guideline import Guideline, guideline_from_config, saved_guideline
from ..rules.layers import GAZETTEER_FILE, SpanLayers, resolve_layers, resolve_min_score
from ..rules.lexicon import DictionaryTagger, place_tagger
from ..rules.words import word_boundaries
from .features import LexiconFeatures, feature_labels, window_type_ids

log = logging.getLogger(__name__)



def char_tags_from_tokens(length: int, offsets: Sequence[tuple[int, int]], token_tags: Sequence[str]) -> list[str]:
    """Per-character tags from per-token tags. A multi-character token continues its tag; a
    character no token covers (whitespace) continues a span only if the next token does."""
    tags = ["O"] * length
    covered = [False] * length
    for (s, e), tag in zip(offsets, token_tags):
        if e <= s:
            continue
        tags[s] = tag
        covered[s] = True
        for i in range(s + 1, e):
            tags[i] = "O" if tag == "O" else f"I-{tag[2:]}"
            covered[i] = True
    nxt = "O"
    for i in range(length - 1, -1, -1):
        if covered[i]:
            nxt = tags[i]
        elif nxt.startswith("I-") and i > 0 and tags[i - 1] != "O" and tags[i - 1][2:] == nxt[2:]:
            tags[i] = nxt
    return tags


def allowed_transitions(labels: Sequence[str], never_adjacent: Iterable[str] = ()) -> np.ndarray:
    """``[i, j]`` is True where tag ``labels[j]`` may follow ``labels[i]`` in BIO (I-X only after B-X
    or I-X); for X in ``never_adjacent`` a B-X never follows B-X or I-X (two X spans never touch)."""
    apart = set(never_adjacent)
    ok = np.ones((len(labels), len(labels)), dtype=bool)
    for j, b in enumerate(labels):
        if b.startswith("I-"):
            ok[:, j] = [a in (f"B-{b[2:]}", b) for a in labels]
        elif b.startswith("B-") and b[2:] in apart:
            ok[:, j] = [a[2:] != b[2:] for a in labels]
    return ok


def inside_word_transitions(labels: Sequence[str], whole_words: Iterable[str], ok: np.ndarray) -> np.ndarray:
    """``ok`` narrowed for a token that does not start a word: a span of a label in ``whole_words``
    neither starts there (no B-X) nor ends just before it (after B-X or I-X only I-X)."""
    whole = set(whole_words)
    inside = ok.copy()
    for j, b in enumerate(labels):
        if b.startswith("B-") and b[2:] in whole:
            inside[:, j] = False
    for i, a in enumerate(labels):
        if a != "O" and a[2:] in whole:
            inside[i] &= np.array([b == f"I-{a[2:]}" for b in labels])
    return inside


@dataclass(frozen=True)
class SpanConstraints:
    """What a decoded span may be (the guideline's ``spans`` rule): labels whose spans start and end
    at word boundaries (``whole_words``), labels two of whose spans never touch (``never_adjacent``)."""

    whole_words: frozenset[str] = frozenset()
    never_adjacent: frozenset[str] = frozenset()

    @classmethod
    def of(cls, guideline: Guideline) -> "SpanConstraints":
        return cls(guideline.whole_words, guideline.never_adjacent)

    def transitions(self, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Allowed transitions into a token that starts a word, and into one inside a word."""
        ok = allowed_transitions(labels, self.never_adjacent)
        return ok, inside_word_transitions(labels, self.whole_words, ok)


def viterbi_bio(probs: np.ndarray, labels: Sequence[str], constraints: SpanConstraints = SpanConstraints(),
                word_starts: np.ndarray | None = None) -> list[int]:
    """Most probable valid BIO tag sequence (product of per-token probabilities, no I-X without a B-X
    before it): argmax decoding's fragments such as B-PER O I-PER become one span or none.
    ``constraints`` narrow what is valid; ``word_starts`` (per token) says where words start."""
    return decode_bio([probs], labels, constraints, None if word_starts is None else [word_starts])[0].tolist()


def decode_bio(seqs: Sequence[np.ndarray], labels: Sequence[str], constraints: SpanConstraints = SpanConstraints(),
               word_starts: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
    """:func:`viterbi_bio` for many sequences at once (``word_starts``: one boolean array per
    sequence, ``True`` where a token starts a word; none: every token does). Where the argmax
    sequence is already valid it is the optimum and is kept; the others are decoded together,
    padded with forced ``O``."""
    ok, inside = constraints.transitions(labels)
    may_start = np.array([not lab.startswith("I-") for lab in labels])
    starts = [np.ones(len(p), dtype=bool) for p in seqs] if word_starts is None else [np.asarray(w, bool) for w in word_starts]
    out: list[np.ndarray | None] = [None] * len(seqs)
    hard = []
    for k, p in enumerate(seqs):
        a = p.argmax(1) if len(p) else np.zeros(0, dtype=np.int64)
        if len(a) == 0 or (may_start[a[0]] and np.where(starts[k][1:], ok[a[:-1], a[1:]], inside[a[:-1], a[1:]]).all()):
            out[k] = a
        else:
            hard.append(k)
    if hard:
        n_lab, width = len(labels), max(len(seqs[k]) for k in hard)
        logp = np.full((len(hard), width, n_lab), -1e9)
        logp[:, :, labels.index("O")] = 0.0  # padding: O, which may follow anything
        at_start = np.ones((len(hard), width), dtype=bool)
        for r, k in enumerate(hard):
            logp[r, : len(seqs[k])] = np.log(np.clip(seqs[k], 1e-12, None))
            at_start[r, : len(seqs[k])] = starts[k]
        trans, trans_inside = np.where(ok, 0.0, -1e9), np.where(inside, 0.0, -1e9)
        score = np.where(may_start, 0.0, -1e9) + logp[:, 0]
        back = np.zeros((len(hard), width, n_lab), dtype=np.int64)
        for t in range(1, width):
            step = np.where(at_start[:, t, None, None], trans, trans_inside)  # [seq, previous, next]
            cand = score[:, :, None] + step
            back[:, t] = cand.argmax(1)
            score = np.take_along_axis(cand, back[:, t][:, None, :], 1)[:, 0] + logp[:, t]
        path = np.zeros((len(hard), width), dtype=np.int64)
        path[:, -1] = score.argmax(1)
        rows = np.arange(len(hard))
        for t in range(width - 1, 0, -1):
            path[:, t - 1] = back[rows, t, path[:, t]]
        for r, k in enumerate(hard):
            out[k] = path[r, : len(seqs[k])]
    return out  # type: ignore[return-value]


def merge_windows(n_docs: int, window_doc: Sequence[int], window_offsets: Sequence, window_probs: Sequence[np.ndarray]
                  ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per document: sorted token start characters, their end characters, and the token
    probabilities averaged over the overlapping windows that saw them (special tokens dropped)."""
    parts: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(n_docs)]
    for d, offs, probs in zip(window_doc, window_offsets, window_probs):
        offs = np.asarray(offs, dtype=np.int64).reshape(-1, 2)
        keep = offs[:, 1] > offs[:, 0]
        parts[d].append((offs[keep], probs[keep]))
    out = []
    n_lab = window_probs[0].shape[1] if len(window_probs) else 0
    for d in range(n_docs):
        if not parts[d]:
            out.append((np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros((0, n_lab))))
            continue
        offs = np.concatenate([o for o, _ in parts[d]])
        probs = np.concatenate([p for _, p in parts[d]])
        starts, first, inv = np.unique(offs[:, 0], return_index=True, return_inverse=True)
        sums = np.stack([np.bincount(inv, weights=probs[:, j], minlength=len(starts)) for j in range(n_lab)], 1)
        out.append((starts, offs[first, 1], sums / np.bincount(inv, minlength=len(starts))[:, None]))
    return out


@dataclass
class DocPrediction:
    """Predicted spans of one document in raw and normalised coordinates."""

    norm: Normalized
    spans: list[Span]          # raw offsets, text == raw[start:end]
    norm_spans: list[tuple[int, int, str]]
    model_spans: list[tuple[int, int, str]] = field(default_factory=list)  # the tidied model's, before the layers


DECODE_MODES = ("viterbi", "argmax")


def check_decode(decode: str) -> str:
    """``decode`` if it is one of :data:`DECODE_MODES`, else a ``ValueError`` saying which are."""
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be {' or '.join(DECODE_MODES)}, got {decode!r}")
    return decode


TokenProbs = tuple[np.ndarray, np.ndarray, np.ndarray]  # token start characters, end characters, probabilities


def decode_spans(norms: Sequence[Normalized], merged: Sequence[TokenProbs], labels: Sequence[str],
                 decode: str = "viterbi", layers: SpanLayers | None = None) -> list[DocPrediction]:
    """Spans from token probabilities (:meth:`Predictor.token_probs`): decoded (``viterbi`` under the
    guideline's span constraints, or ``argmax``), turned into character spans, tidied, the
    unconfident ones left to the layers (:meth:`~zh_policy_ner.rules.layers.SpanLayers.confident`)
    and the layers laid over them, mapped to raw offsets. Model spans carry their mean probability as
    ``score``; ``model_spans`` keeps the tidied model's spans before the layers."""
    layers = layers if layers is not None else SpanLayers()
    labels = list(labels)
    means = [m for _, _, m in merged]
    if check_decode(decode) == "viterbi":
        constraints = SpanConstraints.of(layers.guideline)
        word_starts = None
        if constraints.whole_words:  # a token starts a word where its first character does
            word_starts = [word_boundaries(n.text)[starts] for n, (starts, _, _) in zip(norms, merged)]
        paths = decode_bio(means, labels, constraints, word_starts)
    else:
        paths = [m.argmax(1) for m in means]
    results = []
    for norm, (starts, ends, mean), ids in zip(norms, merged, paths):
        offsets = list(zip(starts.tolist(), ends.tolist()))
        conf = mean[np.arange(len(ids)), ids]
        tags = char_tags_from_tokens(len(norm.text), offsets, [labels[i] for i in ids])
        model_spans = layers.tidy(norm.text, tags_to_spans(tags))
        scores = {x: round(float(conf[np.searchsorted(starts, x[0]) : np.searchsorted(starts, x[1])].mean()), 4)
                  for x in model_spans if np.searchsorted(starts, x[1]) > np.searchsorted(starts, x[0])}
        kept = layers.confident(model_spans, [scores.get(x, 0.0) for x in model_spans])
        norm_spans, from_model = layers(norm.text, kept), set(kept)
        spans = []
        for s, e, lab in norm_spans:
            rs, re_ = norm.to_raw_span(s, e)
            score = scores.get((s, e, lab)) if (s, e, lab) in from_model else None  # lexicon spans: no model score
            spans.append(Span(rs, re_, lab, norm.raw[rs:re_], score))
        results.append(DocPrediction(norm, spans, norm_spans, model_spans))
    return results


class _NoModel(torch.nn.Module):
    """Stands in for the torch model when ONNX Runtime computes the logits: it carries the config."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.dummy = torch.nn.Parameter(torch.zeros(0), requires_grad=False)


def _plain(value: Any) -> Any:
    """A config mapping as a plain dict (picklable for Ray workers); anything else as it is."""
    return dict(value) if isinstance(value, Mapping) else value


def predictor_settings(cfg: Any) -> dict[str, Any]:
    """The keyword arguments of :meth:`Predictor.from_pretrained` that ``infer.*`` configures
    (:meth:`Predictor.from_config`; also what a Ray worker builds its predictor from)."""
    infer = cfg.infer
    layers = infer.get("layers")
    return dict(max_length=infer.max_length, stride=infer.stride, batch_size=infer.batch_size,
                precision=infer.precision, decode=infer.decode, layers=None if layers is None else list(layers),
                min_score=_plain(infer.get("min_score")),  # checked and merged over the model's by resolve_min_score
                backend=infer.get("backend", "torch"), num_threads=infer.num_threads,
                guideline=guideline_from_config(cfg))


class Predictor:
    """Wraps a token-classification model and its tokenizer for document-level span prediction."""

    def __init__(self, model, tokenizer, max_length: int = 256, stride: int = 64, batch_size: int = 32,
                 device: str | None = None, precision: str = "auto", decode: str = "viterbi",
                 layers: SpanLayers | None = None, runner=None, features=None, config=None):
        """``decode``: ``viterbi`` (best valid BIO sequence; the guideline's ``spans`` rule narrows what is
        valid, :class:`SpanConstraints`) or ``argmax`` (per token). ``layers``: the
        :class:`~zh_policy_ner.rules.layers.SpanLayers` that tidy the model's spans and are laid over them
        (their spans carry no score); none: the bare model, untidied by any guideline. ``precision``: ``fp32``; ``bf16`` (weights cast to bfloat16: 1.4x faster than autocast on
        the 2-core AMX CPU, same spans on the benchmark); ``int8`` (dynamic quantisation of the
        linear layers, CPU); ``auto`` = bf16 on GPUs and on CPUs with AMX/AVX512-BF16, else fp32.
        ``runner``: an :class:`~zh_policy_ner.model.onnx_backend.OrtRunner` that computes the logits in
        place of ``model`` (ONNX Runtime, CPU; ``model`` may then be ``None`` with ``config`` giving the
        labels: the torch weights are never loaded)."""
        self.tokenizer = tokenizer
        self.runner = runner
        self.features = features  # LexiconFeatures for a model trained with lexicon features (token-type ids)
        if runner is not None:
            device, precision = "cpu", "fp32"  # the torch model (if given) stays as it is: it does no forward pass
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if model is None:  # ONNX Runtime computes the logits; the model's config gives the labels
            if runner is None or config is None:
                raise ValueError("Predictor needs a model, or a runner and the model's config")
            model = _NoModel(config)
        model = model.to(self.device).eval()
        if precision == "auto":
            precision = "bf16" if use_bf16("auto") else "fp32"
        if precision == "int8":
            if self.device.type != "cpu":
                raise ValueError("int8 dynamic quantisation runs on CPU only")
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        elif precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or int8, got {precision!r}")
        self.decode = check_decode(decode)
        self.layers = layers if layers is not None else SpanLayers()
        self.precision = precision if runner is None else runner.name
        if precision == "bf16" and next(model.parameters()).dtype != torch.bfloat16:
            model = copy.deepcopy(model).to(torch.bfloat16)  # the caller's model (a trainer's) stays as it is
        self.model = model
        # A model trained on shorter windows (its tokenizer's model_max_length) caps max_length, and
        # the overlap must stay below the window: both said, never silent.
        self.max_length = min(max_length, getattr(tokenizer, "model_max_length", max_length) or max_length)
        self.stride = stride if stride < self.max_length - 2 else (self.max_length - 2) // 4
        if (self.max_length, self.stride) != (max_length, stride):
            log.warning("windows of %d tokens with %d shared (asked: %d and %d): the model was trained on windows "
                        "of %d tokens", self.max_length, self.stride, max_length, stride, self.max_length)
        self.batch_size = batch_size
        self.labels = [lab for _, lab in sorted((int(k), v) for k, v in model.config.id2label.items())]

    @classmethod
    def from_pretrained(cls, model_dir: str, layers: list[str] | None = None, backend: str = "torch",
                        num_threads: int | None = None, guideline: Guideline | None = None,
                        min_score: dict[str, float] | None = None, **kwargs) -> "Predictor":
        """Load a trained folder with its span layers: ``layers`` (names, see :mod:`~zh_policy_ner.rules.layers`;
        ``[]``: the bare model) or, by default, the list saved with the model (``layers.json``); tidying
        and layers run the guideline saved with the model (``guideline.yaml``; ``guideline``: the one
        to run for a folder trained before models saved theirs); ``min_score``: per label, the mean
        probability below which a model span yields to the layers (default: what the model saved).
        ``backend``: ``torch``, ``onnx`` (ONNX Runtime on CPU: int8 for precision ``auto``/``int8``,
        fp32 for ``fp32``; exported once and cached in ``<model_dir>/onnx``, see
        :mod:`~zh_policy_ner.model.onnx_backend`) or ``auto`` (onnx on CPU when onnxruntime is installed
        and the precision is ``auto``/``int8``, except on bf16 CPUs; else torch: see
        :func:`~zh_policy_ner.model.onnx_backend.resolve_backend`); ``num_threads``: ONNX Runtime's threads."""
        from pathlib import Path

        from transformers import AutoConfig, AutoModelForTokenClassification

        path = resolve_model_path(model_dir)
        rules = saved_guideline(path, guideline)
        span_layers = SpanLayers.build(resolve_layers(layers, path), rules, Path(path) / GAZETTEER_FILE,
                                       min_score=resolve_min_score(min_score, path))
        kwargs["layers"] = span_layers
        config = AutoConfig.from_pretrained(path)
        labels = feature_labels(config)
        if labels:  # trained with lexicon features: the saved gazetteer is part of the model's input
            gaz = Path(path) / GAZETTEER_FILE
            if not gaz.exists():
                raise FileNotFoundError(f"{gaz} not found: this model was trained with lexicon features and needs it")
            kwargs["features"] = LexiconFeatures(labels, span_layers.gazetteer or DictionaryTagger.load(gaz, rules),
                                                 span_layers.places or place_tagger(rules))
        if backend != "torch":
            if resolve_backend(backend, kwargs.get("device"), kwargs.get("precision", "auto")) == "onnx":
                try:
                    kwargs["runner"] = load_runner(path, kwargs.get("precision", "auto"), num_threads)
                except Exception as err:  # auto: the torch forward is always there to fall back on
                    if backend == "onnx":
                        raise
                    log.warning("ONNX backend unavailable (%s: %s): using torch", type(err).__name__, err)
        # with ONNX Runtime the torch weights are not needed (their load is most of the start-up)
        model = None if kwargs.get("runner") is not None else AutoModelForTokenClassification.from_pretrained(path)
        predictor = cls(model, load_tokenizer(path), config=config, **kwargs)
        log.info("inference backend: %s on %s; span layers: %s; guideline: %s", predictor.precision, predictor.device,
                 ", ".join(span_layers.names) or "none (the bare model)", rules.name)
        return predictor

    @classmethod
    def from_config(cls, model_dir: str, cfg: Any, **overrides: Any) -> "Predictor":
        """The one way a stage loads a trained folder: the ``infer.*`` settings
        (:func:`predictor_settings`), with ``overrides`` winning."""
        return cls.from_pretrained(model_dir, **{**predictor_settings(cfg), **overrides})

    @torch.inference_mode()
    def _window_probs(self, input_ids: list[list[int]], type_ids: list[list[int]] | None = None) -> list[np.ndarray]:
        order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))
        out: list[np.ndarray | None] = [None] * len(input_ids)
        pad = self.tokenizer.pad_token_id or 0
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            width = max(len(input_ids[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            types = torch.zeros((len(idx), width), dtype=torch.long) if type_ids is not None else None
            for r, i in enumerate(idx):
                ids[r, : len(input_ids[i])] = torch.tensor(input_ids[i])
                mask[r, : len(input_ids[i])] = 1
                if types is not None:
                    types[r, : len(type_ids[i])] = torch.tensor(type_ids[i])
            if self.runner is not None:
                logits = torch.from_numpy(self.runner(ids.numpy(), mask.numpy(), *([] if types is None else [types.numpy()])))
            else:
                extra = {} if types is None else {"token_type_ids": types.to(self.device)}
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device), **extra).logits
            probs = torch.softmax(logits.float(), -1).cpu().numpy()
            for r, i in enumerate(idx):
                out[i] = probs[r, : len(input_ids[i])]
        return out  # type: ignore[return-value]

    def token_probs(self, norms: Sequence[Normalized]) -> list[TokenProbs]:
        """Per document: its tokens' start and end characters and their label probabilities,
        averaged over the overlapping windows (:func:`merge_windows`)."""
        enc = encode_windows(self.tokenizer, [n.text for n in norms], self.max_length, self.stride)
        type_ids = None
        if self.features is not None:
            chars = [self.features.char_ids(n.text) for n in norms]
            type_ids = [window_type_ids(chars[d], offsets)
                        for d, offsets in zip(enc["overflow_to_sample_mapping"], enc["offset_mapping"])]
        probs = self._window_probs(enc["input_ids"], type_ids)
        return merge_windows(len(norms), enc["overflow_to_sample_mapping"], enc["offset_mapping"], probs)

    def predict_norm(self, norms: Sequence[Normalized]) -> list[DocPrediction]:
        """Predict spans for already normalised documents."""
        if not norms:
            return []
        return decode_spans(norms, self.token_probs(norms), self.labels, self.decode, self.layers)

    def predict(self, texts: Iterable[str]) -> list[DocPrediction]:
        """Predict spans for raw texts (any script, with debris); offsets refer to the raw texts."""
        return self.predict_norm([normalize(t) for t in texts])
