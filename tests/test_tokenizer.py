"""The language-balanced Unigram tokenizer: round trips in many scripts, HF loading, statistics."""

from __future__ import annotations

import json
import unicodedata

import pytest
from transformers import AutoTokenizer

from xelm.data import texts_by_lang
from xelm.errors import XelmError
from xelm.tokenizer import BYTE_TOKENS, SPECIAL_TOKENS, load_tokenizer, plot_fertility, tokenizer_stats, train_tokenizer

SAMPLES = {
    "latin_diacritics": "Ça déjà vu: naïve Ångström, żółć, Việt Nam, Ōsaka, ñandú, Ærø, İstanbul, ß.",
    "cyrillic": "Все люди рождаются свободными и равными в своём достоинстве и правах.",
    "arabic": "يولد جميع الناس أحرارًا متساوين في الكرامة والحقوق.",
    "devanagari": "सभी मनुष्यों को गौरव और अधिकारों के मामले में जन्मजात स्वतन्त्रता प्राप्त है।",
    "ethiopic": "የሰው፡ልጅ፡ሁሉ፡ሲወለድ፡ነጻና፡በክብርና፡በመብትም፡እኩልነት፡ያለው፡ነው።",
    "han": "人人生而自由，在尊严和权利上一律平等。他们赋有理性和良心。",
    "unseen": "emoji 🤗🚀 runes ᚠᚢᚦ, Linear B 𐀀𐀁, math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∮ ℵ₀",
    "whitespace": " leading space,  double  spaces\tand a tab\nand lines\n\ntrailing  ",
    "byte_lookalike": "the text <0x41> is not the letter A",
}


@pytest.fixture(scope="module")
def tok(tiny_tokenizer):
    return load_tokenizer(tiny_tokenizer)


@pytest.mark.parametrize("name", SAMPLES)
def test_round_trip(tok, name):
    text = SAMPLES[name]
    ids = tok(text)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.unk_token_id not in ids


def test_unseen_characters_use_byte_fallback(tok):
    tokens = tok.tokenize("🤗")
    assert tokens[-4:] == ["<0xF0>", "<0x9F>", "<0xA4>", "<0x97>"]


def test_round_trip_every_udhr_language(tok, udhr):
    """Every held-out text of every language decodes back to itself (NFC, as the tokenizer normalises)."""
    texts = udhr["test"]["text"][:]
    decoded = tok.batch_decode(tok(texts)["input_ids"], skip_special_tokens=True)
    bad = [(lang, t[:40]) for lang, t, d in zip(udhr["test"]["lang"][:], texts, decoded)
           if d != unicodedata.normalize("NFC", t)]
    assert not bad, bad[:5]


def test_loads_through_auto_tokenizer(tiny_tokenizer):
    hf = AutoTokenizer.from_pretrained(str(tiny_tokenizer))
    assert len(hf) == 800  # the vocab size the fixture asks for
    for token in SPECIAL_TOKENS:
        assert hf.convert_tokens_to_ids(token) == SPECIAL_TOKENS.index(token)
    assert (hf.pad_token, hf.unk_token, hf.cls_token, hf.sep_token, hf.mask_token) == tuple(SPECIAL_TOKENS)
    for b in BYTE_TOKENS:
        assert hf.convert_tokens_to_ids(b) != hf.unk_token_id
    ids = hf(SAMPLES["cyrillic"])["input_ids"]
    assert ids[0] == hf.cls_token_id and ids[-1] == hf.sep_token_id
    assert hf.cls_token_id not in ids[1:-1] and hf.sep_token_id not in ids[1:-1]
    pair = hf("one", "two")["input_ids"]
    assert pair[0] == hf.cls_token_id and pair.count(hf.sep_token_id) == 2
    batch = hf(["a", SAMPLES["han"]], padding=True)
    assert batch["input_ids"][0][-1] == hf.pad_token_id
    assert hf.decode(hf(SAMPLES["arabic"])["input_ids"], skip_special_tokens=True) == SAMPLES["arabic"]


def test_saved_files(tiny_tokenizer):
    spec = json.loads((tiny_tokenizer / "tokenizer.json").read_text("utf-8"))
    assert spec["model"]["type"] == "Unigram" and spec["model"]["byte_fallback"] is True
    assert (tiny_tokenizer / "tokenizer_config.json").is_file()


def test_vocab_size_too_small(tmp_path):
    with pytest.raises(XelmError, match="vocab size 300 is too small"):
        train_tokenizer({"eng": ["hello world"]}, 300, tmp_path)


def test_train_errors(tmp_path):
    with pytest.raises(XelmError, match="temperature"):
        train_tokenizer({"eng": ["hello world"]}, 600, tmp_path, temperature=0.0)
    with pytest.raises(XelmError, match="n_chars"):
        train_tokenizer({"eng": ["hello world"]}, 600, tmp_path, n_chars=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(XelmError, match="is a file"):
        train_tokenizer({"eng": ["hello world"]}, 600, tmp_path / "file")


def test_load_errors(tmp_path):
    with pytest.raises(XelmError, match="no tokenizer at"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"broken')
    with pytest.raises(XelmError, match="cannot be loaded"):
        load_tokenizer(tmp_path)


def test_deterministic(udhr, tmp_path):
    """The same text and seed give the same tokenizer file (HF's trainer alone does not)."""
    texts = {lang: t for lang, t in texts_by_lang(udhr["train"]).items()
             if lang in ("eng", "fra", "rus", "hin", "cmn", "amh")}
    for run in ("a", "b"):
        train_tokenizer(texts, 600, tmp_path / run, n_chars=40_000, seed=3, show_progress=False)
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()


def test_stats_on_udhr_test_split(tok, udhr, tmp_path):
    test = udhr["test"]
    stats = tokenizer_stats(tok, test["text"][:], test["lang"][:], test["script"][:])
    assert set(stats) == set(test["lang"])
    worst = max(stats, key=lambda k: stats[k]["unk_rate"])
    assert stats[worst]["unk_rate"] <= 0.01, (worst, stats[worst])
    for s in stats.values():
        assert s["tokens_per_word"] >= 1 and 0 < s["tokens_per_char"] <= 4
        assert 0 <= s["byte_rate"] < 1
    # The bottleneck: a tiny vocabulary leaves Han and Ethiopic mostly to bytes, Latin not.
    by_lang = {lang: stats[lang] for lang in ("eng", "cmn", "amh")}
    assert by_lang["eng"]["byte_rate"] < by_lang["amh"]["byte_rate"]
    assert by_lang["eng"]["byte_rate"] < by_lang["cmn"]["byte_rate"]

    png = plot_fertility(stats, tmp_path / "fertility.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000


def test_minimum_vocab_size_counts_specials_bytes_and_pieces():
    """What ``pretrain`` checks before it makes a run directory is what the trainer needs."""
    from xelm.tokenizer import MIN_VOCAB_SIZE
    assert MIN_VOCAB_SIZE == len(SPECIAL_TOKENS) + len(BYTE_TOKENS) + 100 == 361


def test_train_refuses_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(XelmError, match=r"already holds files xelm did not write \(notes.txt\)"):
        train_tokenizer({"eng": ["hello world"]}, 400, tmp_path, n_chars=1000, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    train_tokenizer({"eng": ["hello world"]}, 400, tmp_path, n_chars=1000, show_progress=False, overwrite=True)
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "notes.txt").read_text() == "mine"
