from transformers import AutoTokenizer

from zh_policy_ner.model.tokenization import build_vocab, gb2312_hanzi, make_tokenizer, unknown_rate


def test_gb2312_has_all_level_1_and_2_hanzi():
    chars = gb2312_hanzi()
    assert len(chars) == 6763 and "谭" in chars and "綦" in chars


def test_every_token_is_one_character_with_exact_offsets(tmp_path):
    tok = make_tokenizer(build_vocab(["市委书记谭作钧主持会议"], min_freq=1, include_gb2312=False))
    tok.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)  # loads with no project code
    assert tok.is_fast
    text = "谭作钧 主持\n会议ab1,龘"
    enc = tok(text, return_offsets_mapping=True)
    pieces = [text[s:e] for s, e in enc["offset_mapping"] if e > s]
    assert pieces == [c for c in text if not c.isspace()]
    tokens = tok.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert tokens[-2] == "[UNK]"  # 龘 is not in the vocabulary
    assert tok.decode(enc["input_ids"], skip_special_tokens=True).replace(" ", "") == "谭作钧主持会议ab1,"


def test_vocab_covers_the_seeds(seed_texts):
    tok = make_tokenizer(build_vocab(["无关的文本"], include_gb2312=True))
    assert unknown_rate(tok, seed_texts) < 0.01
