"""Self-training: the trained model labels unlabelled reports; confident spans become training data.

Predicted spans whose mean token probability reaches ``threshold`` are kept as labels; the others
are dropped (their characters count as ``O``). The pseudo-labelled windows join the gold windows and
the encoder is fine-tuned again from its starting point.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.dataset import PreparedDoc, build_windows, to_dataset
from ..decoding.features import window_type_ids
from ..decoding.inference import Predictor
from ..reading.corpus import RawDoc, iter_documents
from ..reading.text import already_normalized
from ..rules.guideline import guideline_from_config
from ..rules.layers import SpanLayers


def unlabelled_texts(st: Any) -> list[str]:
    texts = []
    for source in st.sources:
        if source and Path(source).exists():
            texts += [d.text for d in iter_documents(source) if isinstance(d, RawDoc) and d.text.strip()]
    return texts[: st.max_docs]


def pseudo_labelled(model, tokenizer, cfg: Any, label_names: list[str], features=None):
    """A dataset of windows from unlabelled texts with the model's confident spans as labels
    (with ``features``, a model trained on lexicon features: their token-type ids too)."""
    st = cfg.train.self_training
    predictor = Predictor(model, tokenizer, cfg.data.max_length, cfg.data.stride, precision="fp32", features=features,
                          layers=SpanLayers(guideline=guideline_from_config(cfg)))  # the model, tidied
    docs = []
    for k, pred in enumerate(predictor.predict(unlabelled_texts(st))):
        spans = [(s, e, lab) for (s, e, lab), sp in zip(pred.norm_spans, pred.spans) if (sp.score or 0) >= st.threshold]
        docs.append(PreparedDoc(f"pseudo-{k}", already_normalized(pred.norm.text), spans))
    cols = build_windows(docs, tokenizer, label_names, cfg.data.max_length, cfg.data.stride)
    if features is not None:
        chars = {d.doc_id: features.char_ids(d.norm.text) for d in docs}
        cols["token_type_ids"] = [window_type_ids(chars[doc], offsets)
                                  for doc, offsets in zip(cols["doc_id"], cols["offset_mapping"])]
    return to_dataset(cols)
