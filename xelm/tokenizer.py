"""A language-balanced Unigram tokenizer with byte fallback, saved in Hugging Face format.

Byte fallback is what keeps a small vocabulary honest on UDHR's ~5,000 distinct characters:
a character the vocabulary lacks becomes its UTF-8 bytes (``<0xE1>``...), never ``[UNK]``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from xelm.data.sampling import sample_texts
from xelm.errors import XelmError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]


def train_tokenizer(texts_by_lang: dict[str, list[str]], vocab_size: int, out_dir: str | Path,
                    temperature: float = 0.3, n_chars: int = 2_000_000, seed: int = 0,
                    show_progress: bool = True) -> PreTrainedTokenizerFast:
    """Train on ~``n_chars`` of temperature-sampled text; save to ``out_dir``; return it."""
    min_size = len(SPECIAL_TOKENS) + len(BYTE_TOKENS) + 100
    if vocab_size < min_size:
        raise XelmError(f"vocab size {vocab_size} is too small: at least {min_size} "
                        f"({len(SPECIAL_TOKENS)} special + 256 byte tokens + 100 pieces)")
    texts = sample_texts(texts_by_lang, temperature, n_chars, seed)
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size - len(BYTE_TOKENS), special_tokens=SPECIAL_TOKENS,
        unk_token="[UNK]", shrinking_factor=0.75, max_piece_length=16, n_sub_iterations=2,
        show_progress=show_progress)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    # Rebuild with the 256 byte pieces (lowest scores) and byte fallback switched on.
    pieces = json.loads(tok.to_str())["model"]["vocab"]
    floor = min(score for _, score in pieces) - 1.0
    have = {p for p, _ in pieces}
    vocab = [(p, s) for p, s in pieces] + [(b, floor) for b in BYTE_TOKENS if b not in have]
    tok.model = models.Unigram(vocab, unk_id=SPECIAL_TOKENS.index("[UNK]"), byte_fallback=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=8192)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise XelmError(f"no tokenizer at {path}: expected {path / 'tokenizer.json'} "
                        "(train one with `xelm tokenizer train`)")
    return AutoTokenizer.from_pretrained(str(path))


def byte_token_ids(tokenizer: PreTrainedTokenizerFast) -> np.ndarray:
    ids = [tokenizer.convert_tokens_to_ids(b) for b in BYTE_TOKENS]
    return np.array([i for i in ids if i is not None and i != tokenizer.unk_token_id])


def tokenizer_stats(tokenizer: PreTrainedTokenizerFast, texts: list[str], langs: list[str],
                    scripts: list[str]) -> dict[str, dict]:
    """Per language: fertility (tokens per word and per character), unknown and byte rates."""
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    byte_ids = set(byte_token_ids(tokenizer).tolist())
    unk = tokenizer.unk_token_id
    acc: dict[str, dict] = defaultdict(lambda: dict(tokens=0, words=0, chars=0, unk=0, bytes=0))
    script_of = {}
    for ids, text, lang, script in zip(enc, texts, langs, scripts):
        a = acc[lang]
        a["tokens"] += len(ids)
        a["words"] += len(text.split())
        a["chars"] += len(text)
        a["unk"] += sum(i == unk for i in ids)
        a["bytes"] += sum(i in byte_ids for i in ids)
        script_of[lang] = script
    return {lang: {
        "script": script_of[lang],
        "tokens": a["tokens"],
        "tokens_per_word": a["tokens"] / max(a["words"], 1),
        "tokens_per_char": a["tokens"] / max(a["chars"], 1),
        "unk_rate": a["unk"] / max(a["tokens"], 1),
        "byte_rate": a["bytes"] / max(a["tokens"], 1),
    } for lang, a in sorted(acc.items())}


def plot_fertility(stats: dict[str, dict], path: str | Path) -> Path:
    """Tokens per character by script, one dot per language: the vocabulary bottleneck."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_script: dict[str, list[float]] = defaultdict(list)
    for s in stats.values():
        by_script[s["script"]].append(s["tokens_per_char"])
    order = sorted(by_script, key=lambda k: -np.median(by_script[k]))
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(order)), 4))
    for i, script in enumerate(order):
        ys = by_script[script]
        ax.scatter(np.full(len(ys), i) + np.random.default_rng(i).uniform(-0.2, 0.2, len(ys)),
                   ys, s=8, alpha=0.6)
    ax.set_xticks(range(len(order)), order, rotation=90)
    ax.set_ylabel("tokens per character")
    ax.set_title("Tokenizer fertility by script (one dot per language)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
