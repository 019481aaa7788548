"""A character-level vocabulary and fast tokenizer: every token is one character with exact offsets.

The tokenizer is a plain `tokenizers` WordLevel model behind a whitespace split and a one-character
split, wrapped in :class:`transformers.PreTrainedTokenizerFast`, so ``AutoTokenizer.from_pretrained``
loads it from a folder with no project code.
"""
from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Always in the vocabulary, whatever the corpus: ASCII printables and common CJK punctuation.
BASE_CHARS = (
    string.ascii_letters
    + string.digits
    + string.punctuation
    + "，。、；：？！“”‘’「」『』《》〈〉【】（）〔〕—…·～￥％＋－×÷＝＜＞°℃№‰①②③④⑤⑥⑦⑧⑨⑩"
)


def gb2312_hanzi() -> list[str]:
    """The 6,763 characters of GB2312 (levels 1 and 2): a floor for simplified-Chinese coverage."""
    chars = []
    for hi in range(0xB0, 0xF8):
        for lo in range(0xA1, 0xFF):
            try:
                chars.append(bytes([hi, lo]).decode("gb2312"))
            except UnicodeDecodeError:
                continue
    return chars


def build_vocab(texts: Iterable[str], min_freq: int = 2, include_gb2312: bool = True) -> list[str]:
    """Vocabulary (list of tokens, index = id): specials, base characters, GB2312 hanzi, then every
    other non-space corpus character seen at least ``min_freq`` times, by falling frequency."""
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text)
    vocab = list(SPECIAL_TOKENS)
    seen = set(vocab)
    fixed = list(BASE_CHARS) + (gb2312_hanzi() if include_gb2312 else [])
    for ch in fixed + [c for c, n in counts.most_common() if n >= min_freq]:
        if ch not in seen and not ch.isspace():
            vocab.append(ch)
            seen.add(ch)
    return vocab


def make_tokenizer(vocab: list[str], model_max_length: int = 512) -> PreTrainedTokenizerFast:
    """Fast tokenizer: whitespace dropped, one token per character, ``[CLS] ... [SEP]`` around."""
    ids = {tok: i for i, tok in enumerate(vocab)}
    tok = Tokenizer(models.WordLevel(vocab=ids, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
    )


def unknown_rate(tokenizer: PreTrainedTokenizerFast, texts: Iterable[str]) -> float:
    """Share of non-space characters that the tokenizer maps to ``[UNK]``."""
    unk = tokenizer.unk_token_id
    total = n_unk = 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        total += len(ids)
        n_unk += sum(i == unk for i in ids)
    return n_unk / total if total else 0.0


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: str | Path) -> None:
    Path(folder).mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
