"""A language-balanced Unigram tokenizer with byte fallback, saved in Hugging Face format.

Byte fallback is what keeps a small vocabulary honest on UDHR's ~5,000 distinct characters:
a character the vocabulary lacks becomes its UTF-8 bytes (``<0xE1>``...), never ``[UNK]``.
Text is NFC-normalised; ``decode(encode(text))`` gives back ``NFC(text)`` exactly, whitespace
included (special-token strings such as "[CLS]" written in the text are read as special tokens).
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tqdm.auto import tqdm

from xelm.data.sampling import sample_texts
from xelm.errors import XelmError
from xelm.files import check_output_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast  # imported where used: seconds of every command's start-up

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
BYTE_PIECE_CHARS = sorted(set("".join(BYTE_TOKENS)))
# What ``train_tokenizer`` writes as the class (the first: transformers 5; the second: 4). Such a
# tokenizer loads without ``AutoTokenizer``, which imports PyTorch when it is installed (seconds of
# every command's start-up); an imported checkpoint's own class still goes through it.
OWN_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
# What ``train_tokenizer`` (transformers 5; 4 adds the map) and ``xelm tokenizer stats`` write: a
# folder holding only these is an earlier output, written over without ``overwrite``.
TOKENIZER_FILES = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "fertility_by_script.png"}
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + len(BYTE_TOKENS) + 100
STATS_CHUNK = 256  # texts encoded at once by ``tokenizer_stats`` (a step of its progress bar)


def check_vocab_size(vocab_size: int, name: str) -> None:
    """The smallest vocabulary :func:`train_tokenizer` can fill: special tokens, the 256 byte
    tokens and 100 learned pieces. Checked by ``pretrain`` before the run directory is made (an
    imported tokenizer, of any size, is not trained)."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise XelmError(f"{name} {vocab_size} is too small: at least {MIN_VOCAB_SIZE} "
                        f"({len(SPECIAL_TOKENS)} special + 256 byte tokens + 100 pieces)")


def train_tokenizer(texts_by_lang: dict[str, list[str]], vocab_size: int, out_dir: str | Path,
                    temperature: float = 0.3, n_chars: int = 2_000_000, seed: int = 0,
                    character_coverage: float = 0.9995, show_progress: bool = True,
                    overwrite: bool = False) -> PreTrainedTokenizerFast:
    """Train on ~``n_chars`` of temperature-sampled text; save to ``out_dir``; return it.
    A folder holding files xelm did not write is refused unless ``overwrite``.

    Characters outside the ``character_coverage`` most frequent ones (and beyond half of the
    piece budget) are left out of the vocabulary and reach the model as UTF-8 bytes.
    """
    check_vocab_size(vocab_size, "vocab size")
    if n_chars <= 0:
        raise XelmError(f"n_chars {n_chars} must be positive: the characters of text to train on")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise XelmError(f"tokenizer output {out_dir} is a file: give a directory")
    check_output_dir(out_dir, TOKENIZER_FILES, overwrite)
    texts = [unicodedata.normalize("NFC", t) for t in sample_texts(texts_by_lang, temperature, n_chars, seed)]
    n_pieces = vocab_size - len(BYTE_TOKENS) - len(SPECIAL_TOKENS)
    texts = _restrict_alphabet(texts, max_chars=n_pieces // 2, coverage=character_coverage)
    tok = Tokenizer(models.Unigram())
    # "▁" before the text and for every space (as Llama's tokenizer does), so that the decoder's
    # one stripped leading space is always the added one: leading whitespace round-trips.
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Prepend("▁"),
                                           normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size - len(BYTE_TOKENS), special_tokens=SPECIAL_TOKENS,
        unk_token="[UNK]", shrinking_factor=0.75, max_piece_length=16, n_sub_iterations=2,
        initial_alphabet=BYTE_PIECE_CHARS,
        show_progress=show_progress)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    # Rebuild with the 256 byte pieces (lowest scores) and byte fallback switched on.
    pieces = json.loads(tok.to_str())["model"]["vocab"]
    assert [p for p, _ in pieces[:len(SPECIAL_TOKENS)]] == SPECIAL_TOKENS
    learned = _canonical_pieces(pieces[len(SPECIAL_TOKENS):])
    # Byte pieces are only for byte fallback: a score this low, and the characters of "<0x41>"
    # in the vocabulary, keep the text "<0x41>" from being read as the byte piece (= "A").
    floor = min(score for _, score in learned) - 1e4
    have = {p for p, _ in learned}
    vocab = ([(p, 0.0) for p in SPECIAL_TOKENS] + learned
             + [(b, floor) for b in BYTE_TOKENS if b not in have])
    tok.model = models.Unigram(vocab, unk_id=SPECIAL_TOKENS.index("[UNK]"), byte_fallback=True)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=8192)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def _canonical_pieces(pieces: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """The trainer's pieces, the same on every run: sorted by piece, scores rounded.

    HF's Unigram trainer is not reproducible: its piece order follows hash maps, its scores'
    last digits follow summation order, and characters the model dropped come back with scores
    min, min + 1e-4, min + 2e-4, ... in hash-set order. Those characters all get ``min`` here.
    """
    low = min(score for _, score in pieces)
    n_chars = sum(len(p) == 1 for p, _ in pieces)

    def settle(piece: str, score: float) -> tuple[str, float]:
        k = (score - low) / 1e-4
        if len(piece) == 1 and round(k) <= n_chars and abs(k - round(k)) < 1e-5:
            score = low
        return piece, round(score, 4)

    return sorted(settle(p, s) for p, s in pieces)


def _restrict_alphabet(texts: list[str], max_chars: int, coverage: float) -> list[str]:
    """Replace rare characters by spaces: HF's Unigram trainer keeps every character it sees.

    The kept alphabet is the most frequent characters covering ``coverage`` of all characters,
    at most ``max_chars`` of them (SentencePiece's ``character_coverage``).
    """
    counts = Counter(ch for t in texts for ch in t if not ch.isspace())
    total, kept, keep = sum(counts.values()), 0, set()
    for ch, n in counts.most_common(max_chars):
        if kept >= coverage * total:
            break
        keep.add(ch)
        kept += n
    drop = {ord(ch): " " for ch in counts if ch not in keep}
    return [t.translate(drop) for t in texts] if drop else texts


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise XelmError(f"no tokenizer at {path}: expected {path / 'tokenizer.json'} "
                        "(train one with `xelm tokenizer train`)")
    try:
        config = json.loads((path / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        config = {}  # AutoTokenizer says what is wrong
    from transformers import PreTrainedTokenizerFast

    try:
        if isinstance(config, dict) and config.get("tokenizer_class") in OWN_CLASSES:
            return PreTrainedTokenizerFast.from_pretrained(str(path))
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # a damaged tokenizer.json raises many kinds
        raise XelmError(f"tokenizer at {path} cannot be loaded ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}): retrain it with "
                        "`xelm tokenizer train`") from None


def byte_token_ids(tokenizer: PreTrainedTokenizerFast) -> np.ndarray:
    ids = [tokenizer.convert_tokens_to_ids(b) for b in BYTE_TOKENS]
    return np.array([i for i in ids if i is not None and i != tokenizer.unk_token_id])


def tokenizer_stats(tokenizer: PreTrainedTokenizerFast, texts: list[str], langs: list[str],
                    scripts: list[str], progress: bool = False) -> dict[str, dict]:
    """Per language: fertility (tokens per word and per character), unknown and byte rates.
    Texts are encoded a chunk at a time, under a progress bar when ``progress``."""
    texts, langs, scripts = list(texts), list(langs), list(scripts)
    byte_ids = set(byte_token_ids(tokenizer).tolist())
    unk = tokenizer.unk_token_id
    acc: dict[str, dict] = defaultdict(lambda: dict(tokens=0, words=0, chars=0, unk=0, bytes=0))
    script_of = {}
    with tqdm(total=len(texts), desc="tokenizer stats", unit="text", disable=not progress, leave=False) as bar:
        for start in range(0, len(texts), STATS_CHUNK):
            end = start + STATS_CHUNK
            enc = tokenizer(texts[start:end], add_special_tokens=False)["input_ids"]
            for ids, text, lang, script in zip(enc, texts[start:end], langs[start:end], scripts[start:end]):
                a = acc[lang]
                a["tokens"] += len(ids)
                a["words"] += len(text.split())
                a["chars"] += len(text)
                a["unk"] += sum(i == unk for i in ids)
                a["bytes"] += sum(i in byte_ids for i in ids)
                script_of[lang] = script
            bar.update(len(enc))
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
