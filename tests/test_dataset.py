import pytest
from hypothesis import given
from hypothesis import strategies as st

from zh_policy_ner.labelling.annotations import load_annotations
from zh_policy_ner.data.dataset import (
    bio_label_names,
    grouped_folds,
    leave_one_out,
    prepare,
    spans_to_tags,
    split_docs,
    tags_to_spans,
)

from .conftest import SEED_IDS, SEEDS_ANN, compose


@st.composite
def span_sets(draw):
    length = draw(st.integers(1, 60))
    cuts = sorted(set(draw(st.lists(st.integers(0, length), max_size=12))))
    spans = []
    for a, b in zip(cuts[::2], cuts[1::2]):
        if a < b:
            spans.append((a, b, draw(st.sampled_from(["PER", "LOC", "POLICY"]))))
    return length, spans


@given(span_sets())
def test_bio_round_trip(case):
    length, spans = case
    assert tags_to_spans(spans_to_tags(length, spans)) == spans


def test_lenient_decoding_and_overlap_rejected():
    assert tags_to_spans(["I-LOC", "I-LOC", "O", "B-PER", "I-LOC"]) == [(0, 2, "LOC"), (3, 4, "PER"), (4, 5, "LOC")]
    with pytest.raises(ValueError):
        spans_to_tags(5, [(0, 3, "PER"), (2, 4, "LOC")])


def test_splits_are_by_article():
    ids = ["a", "b", "c"]
    assert split_docs(ids, heldout=["c"]) == {"train": ["a", "b"], "heldout": ["c"]}
    assert split_docs(ids, heldout=["c"], dev=["b"])["train"] == ["a"]
    with pytest.raises(KeyError, match="zz"):
        split_docs(ids, heldout=["zz"])
    assert leave_one_out(ids) == [(["b", "c"], ["a"]), (["a", "c"], ["b"]), (["a", "b"], ["c"])]


def test_grouped_folds_never_split_an_article():
    ids = [f"d{i:02d}" for i in range(23)]
    folds = grouped_folds(ids, 5, seed=1)
    tested = [d for _, test in folds for d in test]
    assert sorted(tested) == ids                       # every article tested exactly once
    for train, test in folds:
        assert not set(train) & set(test) and sorted(train + test) == ids
    assert {len(t) for _, t in folds} == {4, 5}
    assert grouped_folds(ids, 5, seed=1) == folds and grouped_folds(ids, 5, seed=2) != folds
    with pytest.raises(ValueError, match="eval.k=30"):
        grouped_folds(ids, 30, seed=1)


@pytest.fixture(scope="module")
def prepared(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    cfg = compose(f"model.name_or_path={tiny_model_dir}", f"data.output_dir={out}", "data.max_length=64",
                  "data.stride=16", f"data.heldout=[{SEED_IDS[-1]}]", "data.loao_folds=true", f"data.annotations={SEEDS_ANN}")
    return prepare(cfg)


def test_prepare_counts_match_annotations(prepared):
    data, out = prepared
    docs, _ = load_annotations(SEEDS_ANN)
    assert data.manifest["dropped_spans"] == []
    for split, info in data.manifest["splits"].items():
        expected = {}
        for d in docs:
            if d.doc_id in info["doc_ids"]:
                for s in d.spans:
                    expected[s.label] = expected.get(s.label, 0) + 1
        assert info["spans"] == dict(sorted(expected.items())), split
    assert (out / "manifest.json").exists() and (out / "train").is_dir() and (out / "heldout").is_dir()


def test_windows_cover_every_character_and_keep_article_ids(prepared):
    data, _ = prepared
    for split, ds in data.datasets.items():
        assert set(ds["doc_id"]) == set(data.manifest["splits"][split]["doc_ids"])
        for doc_id in set(ds["doc_id"]):
            text = data.docs[doc_id].norm.text
            covered = set()
            for offsets in ds.filter(lambda r: r["doc_id"] == doc_id)["offset_mapping"]:
                covered.update(s for s, e in offsets if e > s)
            assert covered == {i for i, ch in enumerate(text) if not ch.isspace()}
    assert len(data.datasets["heldout"]) > 1


def test_token_labels_match_gold_spans(prepared):
    data, _ = prepared
    names = data.manifest["label_names"]
    assert names == bio_label_names()
    ds = data.datasets["train"]
    for row in ds.select(range(min(20, len(ds)))):
        doc = data.docs[row["doc_id"]]
        starts = {s: lab for s, _, lab in doc.spans}
        for (s, e), lab in zip(row["offset_mapping"], row["labels"]):
            if e <= s:
                assert lab == -100
            elif names[lab].startswith("B-"):
                assert starts.get(s) == names[lab][2:]


def test_loao_folds_written_by_article(prepared):
    import json

    _, out = prepared
    folds = sorted(p.name for p in (out / "folds").iterdir())
    assert folds == SEED_IDS
    for fold in folds:
        m = json.loads((out / "folds" / fold / "manifest.json").read_text())
        assert m["splits"]["heldout"]["doc_ids"] == [fold] and fold not in m["splits"]["train"]["doc_ids"]
