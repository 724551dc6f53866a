"""The embedded UDHR corpus, local directory corpora, their errors, and temperature sampling."""

from __future__ import annotations

import json
import math
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from xelm.data import SPLITS, corpus_stats, language_probabilities, load_corpus, sample_texts
from xelm.data import corpus as corpus_mod
from xelm.data.corpus import COLUMNS
from xelm.errors import XelmError
from xelm.languages import check_language

TRAIN_UNITS = {"preamble", *map(str, range(1, 25))}
SPLIT_UNITS = {"train": TRAIN_UNITS, "validation": {"25", "26", "27"}, "test": {"28", "29", "30"}}


# ------------------------------------------------------------------------- the UDHR corpus
def test_udhr_has_at_least_400_languages(udhr):
    langs = {lang for split in udhr.values() for lang in split["lang"]}
    assert len(langs) >= 400
    for lang in langs:
        assert check_language(lang) == lang
    assert {"eng", "fra", "rus", "arb", "hin", "amh", "cmn", "swh", "yor"} <= langs


def test_udhr_columns_and_splits(udhr):
    assert tuple(udhr) == SPLITS
    for split in udhr.values():
        assert tuple(split.column_names) == COLUMNS
        assert len(split) > 1000
        assert all(t.strip() for t in split["text"][:])


def test_udhr_splits_are_parallel(udhr):
    """The same articles in every language: train = preamble + 1..24, validation 25..27, test 28..30."""
    units_by_tag: dict[str, dict[str, set]] = {}
    for name, split in udhr.items():
        units = set(split["unit"])
        assert units == SPLIT_UNITS[name], name
        for tag, unit in zip(split["tag"], split["unit"]):
            units_by_tag.setdefault(tag, {s: set() for s in SPLITS})[name].add(unit)
    complete = [tag for tag, by in units_by_tag.items() if all(by[s] == SPLIT_UNITS[s] for s in SPLITS)]
    # A few source declarations lack units (mostly the preamble); nearly all are complete.
    assert len(complete) >= 0.94 * len(units_by_tag)
    # Every language with held-out text has training text too.
    train_langs = set(udhr["train"]["lang"][:])
    assert set(udhr["validation"]["lang"]) <= train_langs
    assert set(udhr["test"]["lang"]) <= train_langs
    assert len(set(udhr["test"]["lang"])) >= 400


def test_udhr_tags_identify_one_declaration(udhr):
    seen: Counter = Counter()
    meta: dict[str, set] = {}
    for split in udhr.values():
        for row in zip(split["tag"], split["unit"], split["lang"], split["name"], split["script"]):
            seen[row[:2]] += 1
            meta.setdefault(row[0], set()).add(row[2:])
    assert max(seen.values()) == 1, [k for k, n in seen.items() if n > 1][:5]
    assert all(len(m) == 1 for m in meta.values())  # one lang, name and script per tag
    assert len(meta) > 500


@pytest.mark.parametrize("lang,script", [("eng", "Latn"), ("rus", "Cyrl"), ("arb", "Arab"),
                                         ("hin", "Deva"), ("amh", "Ethi"), ("cmn", "Hani"),
                                         ("kor", "Hang"), ("jpn", "Jpan"), ("ell", "Grek")])
def test_udhr_scripts(udhr, lang, script):
    split = udhr["train"]
    scripts = {s for la, s in zip(split["lang"], split["script"]) if la == lang}
    assert script in scripts


def test_corpus_stats_udhr(udhr):
    stats = corpus_stats(udhr)
    assert len(stats["languages"]) >= 400
    assert stats["declarations"] > 500
    assert stats["scripts"]["Latn"] > 300 and len(stats["scripts"]) > 20
    for name in SPLITS:
        s = stats["splits"][name]
        assert s["rows"] == len(udhr[name])
        assert s["characters"] > s["words"] > s["rows"] > 0
    assert stats["splits"]["train"]["characters"] > 3 * stats["splits"]["test"]["characters"]


def test_language_filter(udhr):
    sub = load_corpus("udhr", languages=["eng", "fra"])
    for name in SPLITS:
        assert set(sub[name]["lang"]) == {"eng", "fra"}
        assert len(sub[name]) == sum(lang in ("eng", "fra") for lang in udhr[name]["lang"])
    assert set(load_corpus("udhr", languages="eng")["test"]["lang"]) == {"eng"}
    with pytest.raises(XelmError, match="xqz.*not in corpus 'udhr'"):
        load_corpus("udhr", languages=["eng", "xqz"])
    with pytest.raises(XelmError, match="empty"):
        load_corpus("udhr", languages=[])


# --------------------------------------------------------------------- local directory corpora
def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")


def test_directory_corpus_loads(tmp_path):
    eng = [f"The sentence number {i} of the English file." for i in range(20)]
    (tmp_path / "eng.txt").write_text("\n".join(eng[:10]) + "\n\n   \n" + "\n".join(eng[10:]) + "\n", "utf-8")
    _write_jsonl(tmp_path / "fr.jsonl",  # an ISO 639-1 name, and a split column
                 [{"text": "Tous les êtres humains naissent libres.", "split": "train"},
                  {"text": "Ils sont doués de raison.", "split": "validation"},
                  {"text": "Toute personne a droit à la vie.", "split": "test"}])
    pq.write_table(pa.table({"text": ["Alle Menschen sind frei.", "Jeder hat das Recht."]}),
                   tmp_path / "deu.parquet")
    pq.write_table(pa.table({"lang": ["rus", "rus", "ell"],  # the lang column wins over the name
                             "text": ["Все люди рождаются свободными.", "Каждый человек.", "Όλοι οι άνθρωποι."]}),
                   tmp_path / "mixed.parquet")
    (tmp_path / "README.md").write_text("not a corpus file, ignored")

    corpus = load_corpus(tmp_path)
    assert tuple(corpus) == SPLITS
    for split in corpus.values():
        assert tuple(split.column_names) == COLUMNS
    rows = [dict(r, split=name) for name, split in corpus.items() for r in split]
    assert {r["lang"] for r in rows} == {"eng", "fra", "deu", "rus", "ell"}
    eng_rows = [r for r in rows if r["lang"] == "eng"]
    assert sorted(r["text"] for r in eng_rows) == sorted(eng)  # blank lines skipped
    assert Counter(r["split"] for r in eng_rows) == {"train": 16, "validation": 2, "test": 2}
    fra = {r["split"]: r["text"] for r in rows if r["lang"] == "fra"}
    assert fra == {"train": "Tous les êtres humains naissent libres.",
                   "validation": "Ils sont doués de raison.", "test": "Toute personne a droit à la vie."}
    scripts = {r["lang"]: r["script"] for r in rows}
    assert scripts == {"eng": "Latn", "fra": "Latn", "deu": "Latn", "rus": "Cyrl", "ell": "Grek"}
    assert {r["name"] for r in rows if r["lang"] == "fra"} == {"French"}

    stats = corpus_stats(corpus)
    assert stats["languages"] == ["deu", "ell", "eng", "fra", "rus"]
    assert sum(s["rows"] for s in stats["splits"].values()) == len(rows) == 28


def test_directory_corpus_units_unique_across_files(tmp_path):
    (tmp_path / "eng.txt").write_text("one\ntwo\n", "utf-8")
    _write_jsonl(tmp_path / "eng.jsonl", [{"text": "three"}, {"text": "four"}])
    corpus = load_corpus(tmp_path)
    units = [u for split in corpus.values() for u in split["unit"]]
    assert len(units) == len(set(units)) == 4
    assert load_corpus(tmp_path, languages=["eng"])["train"].num_rows == 4


def _bad(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, "utf-8")
    return path


@pytest.mark.parametrize("name,content,message", [
    ("eng.txt", "", "has no text"),
    ("eng.txt", "  \n\n \t\n", "has no text"),
    ("eng.txt", b"caf\xe9 au lait\n\xff\xfe", "is not UTF-8"),
    ("fra.jsonl", '{"text": "bon"}\n{"text": oops\n', "is not JSON lines"),
    ("fra.jsonl", '{"txt": "bon"}\n', "needs a 'text' string"),
    ("fra.jsonl", '{"text": 42}\n', "needs a 'text' string"),
    ("fra.jsonl", '["bon"]\n', "needs a 'text' string"),
    ("fra.jsonl", '{"text": "bon", "split": "dev"}\n', "split 'dev' is not one of"),
    ("xqz.txt", "some text\n", "unknown language code 'xqz'"),
    ("english.txt", "some text\n", "malformed language code 'english'"),
    ("ENG.txt", "some text\n", "malformed language code 'ENG'"),
    ("und.txt", "some text\n", "special code"),
    ("deu.parquet", b"PAR1 this is no parquet file", "cannot be read"),
])
def test_bad_corpus_file(tmp_path, name, content, message):
    path = _bad(tmp_path, name, content)
    (tmp_path / "spa.txt").write_text("texto bueno\n", "utf-8")  # a good file beside the bad one
    with pytest.raises(XelmError, match=message) as err:
        load_corpus(tmp_path)
    assert str(path) in str(err.value)


def test_bad_lang_column(tmp_path):
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"lang": ["eng", "zzz"], "text": ["a", "b"]}), path)
    with pytest.raises(XelmError, match="unknown language code 'zzz'") as err:
        load_corpus(tmp_path)
    assert str(path) in str(err.value)


def test_bad_corpus_paths(tmp_path):
    with pytest.raises(XelmError, match="not found"):
        load_corpus(tmp_path / "missing")
    (tmp_path / "eng.txt").write_text("text\n", "utf-8")
    with pytest.raises(XelmError, match="is a file"):
        load_corpus(tmp_path / "eng.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.csv").write_text("a,b\n")
    with pytest.raises(XelmError, match="has no .txt, .jsonl or .parquet files") as err:
        load_corpus(empty)
    assert str(empty) in str(err.value)
    with pytest.raises(XelmError, match="zzz not in corpus"):
        load_corpus(tmp_path, languages=["zzz"])


def _one_line(err) -> str:
    """The error's text, asserted to be one line (DESIGN: one clear line, never a traceback)."""
    text = str(err.value)
    assert "\n" not in text, text
    return text


def test_line_breaks_inside_a_document_do_not_split_it(tmp_path):
    """Only '\\n' ends a line: U+2028, NEL, form feed and the information separators are text."""
    doc = "one\u2028two\x85three\x0cfour\x1cfive"
    (tmp_path / "eng.txt").write_text(f"{doc}\r\nsecond document\n", "utf-8", newline="")
    _write_jsonl(tmp_path / "fra.jsonl", [{"text": "un\u2028deux"}, {"text": "trois"}])
    corpus = load_corpus(tmp_path)
    texts = {la: sorted(t for s in corpus.values() for la2, t in zip(s["lang"], s["text"]) if la2 == la)
             for la in ("eng", "fra")}
    assert texts == {"eng": sorted([doc, "second document"]), "fra": ["trois", "un\u2028deux"]}


def test_a_byte_order_mark_is_not_text(tmp_path):
    (tmp_path / "eng.txt").write_bytes("\ufefffirst line\nsecond line\n".encode())
    (tmp_path / "fra.jsonl").write_bytes('\ufeff{"text": "premier"}\n'.encode())
    texts = {t for split in load_corpus(tmp_path).values() for t in split["text"]}
    assert texts == {"first line", "second line", "premier"}


def test_a_jsonl_error_names_the_file_line(tmp_path):
    path = _bad(tmp_path, "fra.jsonl", '{"text": "bon"}\n\n{"text": oops}\n')
    with pytest.raises(XelmError) as err:
        load_corpus(tmp_path)
    assert _one_line(err) == f"corpus file {path} is not JSON lines (Expecting value at line 3)"


def test_a_lone_surrogate_escape_is_refused(tmp_path):
    """'\\ud800' is valid JSON but no character: Arrow cannot store it (it raised UnicodeEncodeError)."""
    path = _bad(tmp_path, "fra.jsonl", '{"text": "bon"}\n{"text": "hi \\ud800"}\n')
    with pytest.raises(XelmError) as err:
        load_corpus(tmp_path)
    assert _one_line(err) == (f"corpus file {path}, record 2: 'text' holds a lone surrogate escape "
                              "(such as \\ud800), which is no character: fix or drop the record")
    _bad(tmp_path, "fra.jsonl", '{"text": "bon \\ud83d\\ude00"}\n')  # a pair is one character
    assert load_corpus(tmp_path)["train"]["text"] == ["bon \U0001F600"]


@pytest.mark.parametrize("kind", ["dictionary", "string_view"])
def test_parquet_text_size_counts_every_row(tmp_path, monkeypatch, kind):
    """1000 rows of one 10 KB value take a few hundred bytes on disk as a dictionary (or views)."""
    if kind == "dictionary":
        text = pa.DictionaryArray.from_arrays(pa.array([0] * 1000, pa.int32()), pa.array(["x" * 10_000]))
    else:
        text = pa.array(["x" * 10_000] * 1000, pa.string_view())
    pq.write_table(pa.table({"text": text}), tmp_path / "eng.parquet", compression="zstd")
    assert (tmp_path / "eng.parquet").stat().st_size < 2_000
    monkeypatch.setattr(corpus_mod, "MAX_TEXT_BYTES", 9_000_000)
    with pytest.raises(XelmError) as err:
        load_corpus(tmp_path)
    assert "bytes of text" in _one_line(err) and str(tmp_path / "eng.parquet") in str(err.value)
    monkeypatch.setattr(corpus_mod, "MAX_TEXT_BYTES", 10_000_000)  # exactly the decoded size
    assert sum(split.num_rows for split in load_corpus(tmp_path).values()) == 1000


def test_parquet_column_that_is_not_text_is_refused(tmp_path):
    path = tmp_path / "eng.parquet"
    pq.write_table(pa.table({"text": [["a", "b"], ["c"]]}), path)
    with pytest.raises(XelmError) as err:
        load_corpus(tmp_path)
    assert _one_line(err) == (f"corpus file {path}: column 'text' holds list<element: string> values, "
                              "not text: store it as strings")


# ---------------------------------------------------------------- hub datasets (a local one, offline)
def _hub_dataset(root, configs: dict[str, dict[str, list]]):
    """A dataset folder that ``hf:PATH`` loads like a hub one: one config per language, its splits
    declared in the README (as on the hub), a JSON-lines file each."""
    card = ["---", "configs:"]
    for config, splits in configs.items():
        card += [f"- config_name: {config}", "  data_files:"]
        for split, records in splits.items():
            (root / config).mkdir(parents=True, exist_ok=True)
            _write_jsonl(root / config / f"{split}.jsonl", records)
            card += [f"  - split: {split}", f"    path: {config}/{split}.jsonl"]
    (root / "README.md").write_text("\n".join([*card, "---", ""]), "utf-8")
    return f"hf:{root}"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """Keep ``datasets``'s cache in the test's folder, and the hub client offline."""
    import datasets
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def test_hub_corpus_splits(hub_cache):
    """FLORES's 'devtest' is held out (test), never train; 'dev' is validation."""
    spec = _hub_dataset(hub_cache, {
        "eng_Latn": {"dev": [{"text": "eng dev"}], "devtest": [{"text": "eng devtest"}, {"text": " "}]},
        "fra": {"train": [{"text": "fra train"}], "validation": [{"text": "fra validation"}],
                "test": [{"text": "fra test"}], "valid": [{"text": "fra valid"}]},
    })
    corpus = load_corpus(spec)
    got = {name: sorted(zip(split["lang"], split["text"], split["unit"])) for name, split in corpus.items()}
    assert got == {"train": [("fra", "fra train", "train:0")],
                   "validation": [("eng", "eng dev", "dev:0"), ("fra", "fra valid", "valid:0"),
                                  ("fra", "fra validation", "validation:0")],
                   "test": [("eng", "eng devtest", "devtest:0"), ("fra", "fra test", "test:0")]}
    assert set(corpus["test"]["tag"]) == {"eng_Latn", "fra"}


@pytest.mark.parametrize("records,split,message", [
    ([{"text": "a"}], "extra", "config 'eng' has split 'extra', which xelm cannot place: the known splits are "
                               "train, dev, valid, validation, devtest, test; use a dataset with those"),
    ([{"sentence": "a"}], "train", "config 'eng' split 'train' has no 'text' column (it has sentence); "
                                   "xelm reads a corpus's text from 'text'"),
    ([{"text": "a"}, {"text": None}], "test", "config 'eng' split 'test', row 2: 'text' must be a string, "
                                              "got NoneType"),
])
def test_bad_hub_corpus(hub_cache, records, split, message):
    spec = _hub_dataset(hub_cache, {"eng": {"train": [{"text": "fine"}], split: records}})
    with pytest.raises(XelmError) as err:
        load_corpus(spec)
    assert _one_line(err) == f"hub dataset {spec[3:]!r} {message}"


def test_hub_corpus_that_cannot_be_loaded(hub_cache):
    spec = _hub_dataset(hub_cache, {"eng": {"train": [{"text": "fine"}]}})
    (hub_cache / "eng" / "train.jsonl").write_text('{"text": oops\n', "utf-8")
    with pytest.raises(XelmError) as err:
        load_corpus(spec)
    assert _one_line(err).startswith(f"hub dataset {spec[3:]!r} config 'eng' cannot be loaded: ")


# ------------------------------------------------------------------------ temperature sampling
def test_language_probabilities():
    sizes = {"a": 100, "b": 300, "c": 0}
    p1 = language_probabilities(sizes, 1.0)
    assert p1 == pytest.approx({"a": 0.25, "b": 0.75, "c": 0.0})
    p0 = language_probabilities(sizes, 1e-6)
    assert p0 == pytest.approx({"a": 0.5, "b": 0.5, "c": 0.0}, abs=1e-4)
    half = language_probabilities(sizes, 0.5)
    assert half["b"] / half["a"] == pytest.approx(math.sqrt(3))
    # Lower τ is flatter; probabilities always sum to 1.
    sizes = {"x": 1, "y": 10, "z": 1000}
    maxes = [max(language_probabilities(sizes, t).values()) for t in (1.0, 0.7, 0.3, 0.01)]
    assert maxes == sorted(maxes, reverse=True)
    for t in (1.0, 0.3):
        assert sum(language_probabilities(sizes, t).values()) == pytest.approx(1.0)


@pytest.mark.parametrize("tau", [0.0, -0.5, 1.5, float("nan")])
def test_language_probabilities_bad_temperature(tau):
    with pytest.raises(XelmError, match="temperature"):
        language_probabilities({"a": 1}, tau)


def test_language_probabilities_no_text():
    with pytest.raises(XelmError, match="no language has any text"):
        language_probabilities({"a": 0}, 0.5)
    with pytest.raises(XelmError, match="no language has any text"):
        language_probabilities({}, 0.5)


def test_sample_texts_shares():
    texts = {"big": [f"{i:04d}" + "b" * 96 for i in range(90)], "small": ["s" * 100 for _ in range(10)]}
    for tau, want_small in [(1.0, 0.1), (1e-6, 0.5), (0.5, 0.25)]:
        out = sample_texts(texts, tau, n_chars=20_000, seed=0)
        chars = Counter()
        for t in out:
            chars[t[-1]] += len(t)
        share = chars["s"] / sum(chars.values())
        assert share == pytest.approx(want_small, rel=0.1), tau
        assert sum(chars.values()) == pytest.approx(20_000, rel=0.05)
    # Small languages are up-sampled (repeated), large ones down-sampled (no repeats).
    out = sample_texts(texts, 1e-6, n_chars=4_100, seed=0)
    assert sum(t.startswith("s") for t in out) == 21
    big = [t for t in out if not t.startswith("s")]
    assert len(big) == len(set(big)) == 21
    # Deterministic for a seed.
    assert sample_texts(texts, 0.3, 5_000, seed=1) == sample_texts(texts, 0.3, 5_000, seed=1)
    assert sample_texts(texts, 0.3, 5_000, seed=1) != sample_texts(texts, 0.3, 5_000, seed=2)
