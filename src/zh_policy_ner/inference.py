"""Span prediction for raw texts: normalise, window, batch, merge windows, map spans to raw offsets.

Windows are sorted by length and batched dynamically; overlapping windows are merged by averaging
token probabilities; tags go back to characters and spans to the raw text, so that
``raw[start:end] == text`` always holds, whatever debris or script the input had.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .annotations import Span
from .dataset import encode_windows, tags_to_spans
from .text import Normalized, normalize


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


@dataclass
class DocPrediction:
    """Predicted spans of one document in raw and normalised coordinates."""

    norm: Normalized
    spans: list[Span]          # raw offsets, text == raw[start:end]
    norm_spans: list[tuple[int, int, str]]


class Predictor:
    """Wraps a token-classification model and its tokenizer for document-level span prediction."""

    def __init__(self, model, tokenizer, max_length: int = 256, stride: int = 64, batch_size: int = 32,
                 device: str | None = None, precision: str = "auto"):
        """``precision``: ``fp32``; ``bf16`` (autocast); ``int8`` (dynamic quantisation of the
        linear layers, CPU); ``auto`` = bf16 on GPUs and on CPUs with AMX/AVX512-BF16, else fp32."""
        from .modeling import use_bf16

        self.tokenizer = tokenizer
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = model.to(self.device).eval()
        if precision == "auto":
            precision = "bf16" if use_bf16("auto") else "fp32"
        if precision == "int8":
            if self.device.type != "cpu":
                raise ValueError("int8 dynamic quantisation runs on CPU only")
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        elif precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or int8, got {precision!r}")
        self.precision = precision
        self.model = model
        self.dtype = torch.bfloat16 if precision == "bf16" else None
        self.max_length = min(max_length, getattr(tokenizer, "model_max_length", max_length) or max_length)
        # A model trained on shorter windows caps max_length; keep the overlap below the window.
        self.stride = stride if stride < self.max_length - 2 else (self.max_length - 2) // 4
        self.batch_size = batch_size
        self.id2label = {int(k): v for k, v in model.config.id2label.items()}

    @classmethod
    def from_pretrained(cls, model_dir: str, **kwargs) -> "Predictor":
        from transformers import AutoModelForTokenClassification

        from .modeling import load_tokenizer, resolve_model_path

        path = resolve_model_path(model_dir)
        return cls(AutoModelForTokenClassification.from_pretrained(path), load_tokenizer(path), **kwargs)

    @torch.inference_mode()
    def _window_probs(self, input_ids: list[list[int]]) -> list[np.ndarray]:
        order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))
        out: list[np.ndarray | None] = [None] * len(input_ids)
        pad = self.tokenizer.pad_token_id or 0
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            width = max(len(input_ids[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, : len(input_ids[i])] = torch.tensor(input_ids[i])
                mask[r, : len(input_ids[i])] = 1
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            probs = torch.softmax(logits.float(), -1).cpu().numpy()
            for r, i in enumerate(idx):
                out[i] = probs[r, : len(input_ids[i])]
        return out  # type: ignore[return-value]

    def predict_norm(self, norms: Sequence[Normalized]) -> list[DocPrediction]:
        """Predict spans for already normalised documents."""
        if not norms:
            return []
        enc = encode_windows(self.tokenizer, [n.text for n in norms], self.max_length, self.stride)
        probs = self._window_probs(enc["input_ids"])
        n_labels = len(self.id2label)
        # Merge overlapping windows per document by averaging token probabilities per character start.
        acc = [dict() for _ in norms]  # char start -> [sum probs, count, end]
        for w, d in enumerate(enc["overflow_to_sample_mapping"]):
            for (s, e), p in zip(enc["offset_mapping"][w], probs[w]):
                if e <= s:
                    continue
                slot = acc[d].setdefault(s, [np.zeros(n_labels), 0, e])
                slot[0] += p
                slot[1] += 1
        results = []
        for d, norm in enumerate(norms):
            starts = sorted(acc[d])
            offsets = [(s, acc[d][s][2]) for s in starts]
            mean = [acc[d][s][0] / acc[d][s][1] for s in starts]
            token_tags = [self.id2label[int(m.argmax())] for m in mean]
            conf = {s: float(m.max()) for s, m in zip(starts, mean)}
            tags = char_tags_from_tokens(len(norm.text), offsets, token_tags)
            norm_spans = tags_to_spans(tags)
            spans = []
            for s, e, lab in norm_spans:
                rs, re_ = norm.to_raw_span(s, e)
                scores = [conf[i] for i in range(s, e) if i in conf]
                spans.append(Span(rs, re_, lab, norm.raw[rs:re_], round(float(np.mean(scores)), 4) if scores else None))
            results.append(DocPrediction(norm, spans, norm_spans))
        return results

    def predict(self, texts: Iterable[str]) -> list[DocPrediction]:
        """Predict spans for raw texts (any script, with debris); offsets refer to the raw texts."""
        return self.predict_norm([normalize(t) for t in texts])
