import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

from zh_policy_ner.data.dataset import bio_label_names
from zh_policy_ner.decoding.inference import (
    Predictor,
    SpanConstraints,
    allowed_transitions,
    char_tags_from_tokens,
    viterbi_bio,
)
from zh_policy_ner.rules.guideline import Guideline
from zh_policy_ner.rules.lexicon import doc_mentions
from zh_policy_ner.rules.words import whole_word_share, word_boundaries
from zh_policy_ner.training.silver import silver_docs
from zh_policy_ner.training.trainer import build_model
from zh_policy_ner.training.train import train

from .conftest import SEED_IDS, compose, tiny_config


def tiny_train_cfg(model_dir, out, *extra):
    return tiny_config(model_dir, out, f"train.output_dir={out}", "train.batch_size=8", "train.lr=5e-3",
                       "train.warmup=0", "train.logging_steps=2", "train.save_steps=4", *extra)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    cfg = tiny_train_cfg(tiny_model_dir, out, "train.max_steps=12", f"data.heldout=[{SEED_IDS[0]}]")
    return out, train(cfg)


def test_loss_falls_and_folder_is_complete(trained):
    out, result = trained
    losses = [h["loss"] for h in json.loads((out / "checkpoint-12" / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert losses[-1] < losses[0]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "label_map.json", "resolved_config.yaml", "metrics.json"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 12 and set(metrics["heldout"]) >= {"micro"}


def test_gazetteer_withholds_guideline_terms_found_in_heldout_articles(trained):
    from zh_policy_ner.rules.lexicon import doc_mentions, read_terms
    from zh_policy_ner.data.dataset import load_docs, project_doc

    out, _ = trained
    gaz = json.loads((out / "gazetteer.json").read_text(encoding="utf-8"))["mentions"]
    cfg = compose()
    docs = {d.doc_id: project_doc(d) for d in load_docs(cfg)}
    held = docs[SEED_IDS[0]].norm.text
    trained_on = doc_mentions([d for i, d in docs.items() if i != SEED_IDS[0]])
    terms = read_terms(cfg.train.gazetteer.guideline_terms)
    withheld = [t for t in terms if t in held and t not in trained_on]
    kept = [t for t in terms if t not in held]
    assert withheld and kept  # the seed holds some guideline terms, not all
    assert not any(t in gaz for t in withheld) and all(gaz[t] == terms[t] for t in kept if t not in trained_on)


def test_gazetteer_keeps_training_mentions_that_are_mostly_labelled():
    from zh_policy_ner.data.dataset import PreparedDoc
    from zh_policy_ner.reading.text import normalize

    # 严峻 is a name once and "severe" twice; 核酸检测 is labelled once and once inside a longer measure
    text = "严峻出席。形势严峻,任务严峻。要开展核酸检测和全员核酸检测。"
    spans = [(0, 2, "PER"), (text.index("核酸检测"), text.index("核酸检测") + 4, "POLICY"),
             (text.index("全员核酸检测"), text.index("全员核酸检测") + 6, "POLICY")]
    doc = PreparedDoc("d", normalize(text), spans)
    assert set(doc_mentions([doc])) == {"严峻", "核酸检测", "全员核酸检测"}
    assert set(doc_mentions([doc], 0.5)) == {"核酸检测", "全员核酸检测"}  # 严峻: 1 of 3
    assert set(doc_mentions([doc], 0.3)) == {"严峻", "核酸检测", "全员核酸检测"}
    # 华山: a name twice, a place twice; the majority label (PER, first seen) is right half the times
    text = "华山出席。华山主持。前往华山。登上华山。"
    spans = [(0, 2, "PER"), (5, 7, "PER"), (12, 14, "LOC"), (17, 19, "LOC")]
    doc = PreparedDoc("h", normalize(text), spans)
    assert doc_mentions([doc], 0.5) == {"华山": "PER"} and doc_mentions([doc], 0.6) == {}


def test_decoding_rules_enter_cache_keys_only_where_something_learns_from_them():
    from zh_policy_ner.training.trainer import run_settings

    plain, whole = compose(), compose("guideline.spans.whole_words=[]")
    assert run_settings(plain) == run_settings(whole)  # decoding only: cached probabilities are re-decoded
    rounds = "train.self_training.rounds=1"  # pseudo-labels are decoded spans: then the rule is learnt
    assert run_settings(compose(rounds)) != run_settings(compose(rounds, "guideline.spans.whole_words=[]"))
    assert run_settings(compose("train.min_score.POLICY=0.5")) == run_settings(plain)


def test_folder_loads_back_and_predicts_spans_with_raw_offsets(trained):
    out, _ = trained
    predictor = Predictor.from_pretrained(str(out), max_length=64, stride=16, layers=[])  # the model's own spans
    raw = "市委書(shū)記王魯明主持召開會(huì)議,要求加強核酸檢測。" * 3
    (pred,) = predictor.predict([raw])
    for s in pred.spans:
        assert raw[s.start:s.end] == s.text and s.label in {"PER", "LOC", "POLICY"} and 0 <= s.score <= 1


def test_folder_works_in_transformers_pipeline(trained):
    out, _ = trained
    model = AutoModelForTokenClassification.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.model_max_length == 64 and model.config.id2label[0] == "O"
    ner = pipeline("token-classification", model=model, tokenizer=tok, aggregation_strategy="simple")
    ents = ner("市委书记谭作钧主持会议,要求加强核酸检测和集中隔离。")
    assert isinstance(ents, list)
    assert all({"entity_group", "start", "end"} <= set(e) for e in ents)


def test_resume_after_interruption(tiny_model_dir, tmp_path):
    cfg = tiny_train_cfg(tiny_model_dir, tmp_path, "train.max_steps=4")
    first = train(cfg)
    assert first.metrics["steps"] == 4 and (tmp_path / "checkpoint-4").is_dir()
    # An interrupted longer run: the rerun picks up at the checkpoint instead of step 0.
    cfg = tiny_train_cfg(tiny_model_dir, tmp_path, "train.max_steps=6")
    second = train(cfg)
    assert second.metrics["steps"] == 6 and second.metrics["resumed_from_step"] == 4
    assert first.metrics["resumed_from_step"] == 0
    # checkpoints of a run with other settings are never taken for this run's
    with pytest.raises(ValueError, match="other settings"):
        train(tiny_train_cfg(tiny_model_dir, tmp_path, "train.max_steps=8", "train.lr=1e-3"))
    assert train(tiny_train_cfg(tiny_model_dir, tmp_path, "train.max_steps=2", "train.lr=1e-3",
                                "train.resume=false")).metrics["resumed_from_step"] == 0
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]


def test_char_tags_from_multichar_tokens_and_gaps():
    # a word-piece token "2020" covering 4 chars, and a space between two tokens of one entity
    tags = char_tags_from_tokens(9, [(0, 4), (4, 5), (6, 7), (7, 9)], ["B-LOC", "O", "B-PER", "I-PER"])
    assert tags == ["B-LOC", "I-LOC", "I-LOC", "I-LOC", "O", "O", "B-PER", "I-PER", "I-PER"]
    assert char_tags_from_tokens(3, [(0, 1), (2, 3)], ["B-PER", "I-PER"]) == ["B-PER", "I-PER", "I-PER"]


LABELS = bio_label_names()  # O, B-PER, I-PER, B-LOC, I-LOC, B-POLICY, I-POLICY


def test_viterbi_joins_fragments_that_argmax_splits():
    # 谭作钧: argmax says B-PER, O, I-PER (two broken pieces); the best valid sequence is one name
    probs = np.full((4, 7), 0.01)
    probs[0, 1], probs[1, 0], probs[1, 2], probs[2, 2], probs[3, 0] = 0.9, 0.5, 0.4, 0.9, 0.9
    assert [LABELS[i] for i in probs.argmax(1)] == ["B-PER", "O", "I-PER", "O"]
    assert [LABELS[i] for i in viterbi_bio(probs, LABELS)] == ["B-PER", "I-PER", "I-PER", "O"]
    # an I-POLICY after a B-LOC cannot continue it: the type switches with a new B
    probs = np.full((2, 7), 0.01)
    probs[0, 3], probs[1, 6], probs[1, 5] = 0.9, 0.6, 0.3
    assert [LABELS[i] for i in viterbi_bio(probs, LABELS)] == ["B-LOC", "B-POLICY"]


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 30), st.integers(0, 10_000))
def test_viterbi_output_is_always_valid_bio(n, seed):
    probs = np.random.default_rng(seed).dirichlet(np.ones(7), size=n)
    path = viterbi_bio(probs, LABELS)
    ok = allowed_transitions(LABELS)
    assert len(path) == n and not LABELS[path[0]].startswith("I-")
    assert all(ok[a, b] for a, b in zip(path, path[1:]))


def _tags(probs, constraints=SpanConstraints(), word_starts=None):
    return [LABELS[i] for i in viterbi_bio(probs, LABELS, constraints, word_starts)]


def test_whole_word_spans_end_where_a_word_ends():
    # 疫苗接种: the model tags 疫苗接 POLICY and 种 O; with 疫苗|接种 as words the span takes 种 too
    probs = np.full((5, 7), 0.01)
    probs[0, 0] = 0.9                                                   # 要
    probs[1, 5], probs[2, 6], probs[3, 6] = 0.9, 0.9, 0.9               # 疫苗接
    probs[4, 0], probs[4, 6] = 0.6, 0.3                                 # 种
    starts = np.array([True, True, False, True, False])                 # 要|疫苗|接种
    assert _tags(probs)[1:] == ["B-POLICY", "I-POLICY", "I-POLICY", "O"]
    whole = SpanConstraints(whole_words=frozenset({"POLICY"}))
    assert _tags(probs, whole, starts)[1:] == ["B-POLICY", "I-POLICY", "I-POLICY", "I-POLICY"]
    # nor does a span start inside a word: 苗接种 becomes 疫苗接种
    probs = np.full((5, 7), 0.01)
    probs[0, 0], probs[1, 0], probs[1, 5] = 0.9, 0.7, 0.25               # 要 疫
    probs[2, 5], probs[2, 6], probs[2, 0] = 0.6, 0.3, 0.05               # 苗
    probs[3, 6], probs[4, 6] = 0.9, 0.9                                  # 接种
    assert _tags(probs)[1:] == ["O", "B-POLICY", "I-POLICY", "I-POLICY"]
    assert _tags(probs, whole, starts)[1:] == ["B-POLICY", "I-POLICY", "I-POLICY", "I-POLICY"]


def test_never_adjacent_joins_touching_fragments():
    # 疫|苗接种 decoded as two measures that touch: one measure when POLICY spans never touch
    probs = np.full((4, 7), 0.01)
    probs[0, 5], probs[1, 5], probs[1, 6], probs[2, 6], probs[3, 6] = 0.9, 0.6, 0.35, 0.9, 0.9
    assert _tags(probs) == ["B-POLICY", "B-POLICY", "I-POLICY", "I-POLICY"]
    apart = SpanConstraints(never_adjacent=frozenset({"POLICY"}))
    assert _tags(probs, apart) == ["B-POLICY", "I-POLICY", "I-POLICY", "I-POLICY"]
    # names may still touch (a list of names without separators: 谭作钧陈绍旺)
    probs = np.full((4, 7), 0.01)
    probs[0, 1], probs[1, 2], probs[2, 1], probs[3, 2] = 0.9, 0.9, 0.9, 0.9
    assert _tags(probs, apart) == ["B-PER", "I-PER", "B-PER", "I-PER"]


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 30), st.integers(0, 10_000))
def test_constrained_viterbi_keeps_every_constraint(n, seed):
    rng = np.random.default_rng(seed)
    probs, starts = rng.dirichlet(np.ones(7), size=n), rng.random(n) < 0.5
    starts[0] = True
    tags = _tags(probs, SpanConstraints(frozenset({"POLICY", "PER"}), frozenset({"POLICY"})), starts)
    assert not tags[0].startswith("I-")
    ok = allowed_transitions(LABELS)
    for k in range(1, n):
        prev, cur = tags[k - 1], tags[k]
        assert ok[LABELS.index(prev), LABELS.index(cur)]
        if prev[2:] == "POLICY":
            assert cur != "B-POLICY"  # two measures never touch
        if not starts[k]:  # inside a word: no PER/POLICY span starts or ends here
            assert not (cur.startswith("B-") and cur[2:] in ("PER", "POLICY"))
            assert not (prev[2:] in ("PER", "POLICY") and cur != f"I-{prev[2:]}")


def test_word_boundaries_follow_jieba():
    text = "要强化疫苗接种工作"
    bounds = word_boundaries(text)
    assert len(bounds) == len(text) + 1 and bounds[0] and bounds[-1]
    assert bounds[text.index("疫苗")] and bounds[text.index("工作")] and not bounds[text.index("苗")]
    share = whole_word_share([(text, [(3, 7, "POLICY"), (3, 6, "POLICY"), (1, 3, "PER")])])
    assert share == {"PER": {"whole": 1, "spans": 1, "share": 1.0}, "POLICY": {"whole": 1, "spans": 2, "share": 0.5}}


def test_predicted_measures_and_names_are_whole_words(tiny_model_dir, seed_texts, guideline):
    """The model's PER and POLICY spans start and end at word boundaries, as the guideline's
    ``spans`` rule says; with the rule left out a random-head model's spans cut words. (The
    guideline's other rules are left out: tidying may still cut a span, 提出明确 -> 明确.)"""
    from zh_policy_ner.common.modeling import load_tokenizer
    from zh_policy_ner.rules.layers import SpanLayers

    torch.manual_seed(0)
    model = build_model(str(tiny_model_dir), LABELS)
    texts = [t[:400] for t in seed_texts]

    def cut_words(rules):
        predictor = Predictor(model, load_tokenizer(str(tiny_model_dir)), 64, 16, precision="fp32",
                              layers=SpanLayers(guideline=rules))
        preds = predictor.predict(texts)
        spans = [(p.norm.text, s, e) for p in preds for s, e, lab in p.norm_spans if lab != "LOC"]
        assert len(spans) > 20  # the random head finds many spans
        return [t[s:e] for t, s, e in spans if not (word_boundaries(t)[s] and word_boundaries(t)[e])]

    assert guideline.whole_words == {"PER", "POLICY"}
    assert cut_words(Guideline({"spans": guideline.data["spans"]})) == []
    assert cut_words(Guideline({}))  # the test could fail


def test_silver_pass_and_mention_swap(tiny_model_dir, tmp_path, guideline):
    cfg = tiny_train_cfg(tiny_model_dir, tmp_path / "m", "train.max_steps=2", "train.silver.enabled=true",
                         "train.silver.tagger=jieba", "train.silver.news_articles=3", "train.silver.scraped=null",
                         f"train.silver.cache_dir={tmp_path / 'silver'}", "train.silver.workers=1",
                         "train.mention_swap.copies=1")
    result = train(cfg)
    assert result.metrics["silver_start"].startswith(str(tmp_path / "silver"))
    silver_head = AutoModelForTokenClassification.from_pretrained(result.metrics["silver_start"])
    assert list(silver_head.config.id2label.values()) == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    gold = build_model(result.metrics["silver_start"], bio_label_names(), cfg.train)
    assert torch.equal(gold.classifier.weight[:5], silver_head.classifier.weight)  # O, PER, LOC rows kept
    assert not torch.equal(gold.classifier.weight[5], gold.classifier.weight[0])   # POLICY rows fresh
    tags = tmp_path / "silver" / "tags-jieba.jsonl"
    assert len(tags.read_text().splitlines()) == 3
    # tags are cached per text: a torn last line is redone, a larger corpus tags only the new text
    tags.write_text(tags.read_text()[:-5])
    docs = silver_docs(cfg.train.silver, cfg.seed, tmp_path / "silver", guideline)
    assert len(docs) == 3 and len(tags.read_text().splitlines()) == 3 and any(d.spans for d in docs)
    more = OmegaConf.merge(cfg.train.silver, {"news_articles": 4})
    assert len(silver_docs(more, cfg.seed, tmp_path / "silver", guideline)) == 4
    assert len(tags.read_text().splitlines()) == 4
    base = train(tiny_train_cfg(tiny_model_dir, tmp_path / "b", "train.max_steps=1", "train.resume=false"))
    assert result.metrics["train_windows"] > base.metrics["train_windows"]  # swapped copies were added
    # silver replay: half as many silver windows as gold ones join the gold pass, their O labels ignored
    replay = train(OmegaConf.merge(cfg, {"train": {"mention_swap": {"copies": 0}, "silver": {"replay": 0.5},
                                                  "output_dir": str(tmp_path / "r")}}))
    from zh_policy_ner.training.silver import silver_replay

    labels = silver_replay(cfg, AutoTokenizer.from_pretrained(tiny_model_dir), bio_label_names(), 10_000)["labels"]
    n = base.metrics["train_windows"]
    assert replay.metrics["train_windows"] == n + min(round(0.5 * n), len(labels))
    assert 0 not in {y for row in labels for y in row}  # no O label left
    assert {y for row in labels for y in row} - {-100}  # but PER/LOC labels are


def test_swap_mentions_keeps_spans_aligned():
    import random

    from zh_policy_ner.training.augment import swap_mentions
    from zh_policy_ner.data.dataset import PreparedDoc
    from zh_policy_ner.reading.text import normalize

    doc = PreparedDoc("d", normalize("市长刘向东要求返凤人员到大连市"), [(2, 5, "PER"), (8, 9, "LOC"), (12, 15, "LOC")])
    new = swap_mentions(doc, {"PER": ["欧阳娜娜"], "LOC": ["长春"]}, random.Random(0), "x")
    assert new.norm.text == "市长欧阳娜娜要求返凤人员到长春"
    assert [new.norm.text[s:e] for s, e, _ in new.spans] == ["欧阳娜娜", "凤", "长春"]


def test_self_training_round_adds_pseudo_labelled_windows(tiny_model_dir, tmp_path):
    unl = tmp_path / "unlabelled"
    unl.mkdir()
    (unl / "r.txt").write_text("市委书记谭作钧主持会议,要求加强核酸检测和集中隔离。" * 10, encoding="utf-8")
    cfg = tiny_train_cfg(tiny_model_dir, tmp_path / "m", "train.max_steps=2", "train.self_training.rounds=1",
                         "train.self_training.threshold=0.0", f"train.self_training.sources=[{unl}]")
    result = train(cfg)
    assert result.metrics["self_training_windows"][0] > 0
    assert (tmp_path / "m" / "self-training-1").is_dir() and (tmp_path / "m" / "model.safetensors").exists()


def test_same_seed_same_weights(tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    for name in ("a", "b"):
        train(tiny_train_cfg(tiny_model_dir, tmp_path / name, "train.max_steps=3"))
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_param_groups_decay_by_layer_and_lift_the_head(tiny_model_dir):
    from zh_policy_ner.training.trainer import build_model, param_groups

    model = build_model(str(tiny_model_dir), ["O", "B-PER", "I-PER"])
    groups = param_groups(model, 1e-3, head_multiplier=10, layer_decay=0.5)
    rate = {id(p): g["lr"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert rate[id(named["classifier.weight"])] == pytest.approx(1e-2)
    assert rate[id(named["bert.encoder.layer.1.output.dense.weight"])] == pytest.approx(1e-3)   # top of 2 layers
    assert rate[id(named["bert.encoder.layer.0.output.dense.weight"])] == pytest.approx(5e-4)
    assert rate[id(named["bert.embeddings.word_embeddings.weight"])] == pytest.approx(2.5e-4)
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_lexicon_features_are_cross_fitted_and_rebuilt_at_prediction(tiny_model_dir, tmp_path, guideline):
    from transformers import AutoConfig

    from zh_policy_ner.data.dataset import load_prepared
    from zh_policy_ner.decoding.features import LexiconFeatures
    from zh_policy_ner.rules.lexicon import DictionaryTagger
    from zh_policy_ner.common.modeling import load_tokenizer
    from zh_policy_ner.training.train import train, with_features

    from .conftest import SEEDS_ANN

    feats = LexiconFeatures(("PER", "LOC", "POLICY"), DictionaryTagger({"谭作钧": "PER", "核酸检测": "POLICY"}))
    assert feats.char_ids("市委书记谭作钧要求核酸检测").tolist() == [0, 0, 0, 0, 1, 2, 2, 0, 0, 5, 6, 6, 6]
    cfg = tiny_config(tiny_model_dir, tmp_path, f"train.output_dir={tmp_path}", "train.lexicon_features=true",
                  f"data.annotations={SEEDS_ANN}", "train.gazetteer.guideline_terms=null",
                  "train.gazetteer.quoted_formulas=false", "train.gazetteer.measure_phrases=false")
    # cross-fitting: a name that only one training article holds is not a feature of that article
    data = load_prepared(cfg, load_tokenizer(str(tiny_model_dir)))
    gold = [data.docs[i] for i in data.manifest["splits"]["train"]["doc_ids"]]
    full = LexiconFeatures(feats.labels, DictionaryTagger({d.norm.text[s:e]: lab for d in gold for s, e, lab in d.spans}))
    ds = with_features(data.datasets["train"], data, gold, cfg, [], full, guideline)
    doc = next(d for d in gold if "谭作钧" in d.norm.text)
    assert not any("谭作钧" in d.norm.text for d in gold if d is not doc)
    at = doc.norm.text.index("谭作钧")
    row = next(r for r in ds if r["doc_id"] == doc.doc_id and any(s == at for s, _ in r["offset_mapping"]))
    k = [s for s, _ in row["offset_mapping"]].index(at)
    assert full.char_ids(doc.norm.text)[at] == 1 and row["token_type_ids"][k] == 0
    train(cfg)
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.lexicon_features == ["PER", "LOC", "POLICY"] and config.type_vocab_size == 7
    predictor = Predictor.from_pretrained(str(tmp_path))
    assert predictor.features is not None and predictor.predict(["市委书记谭作钧主持会议。"])
