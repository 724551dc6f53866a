"""`xelm data stats`, `xelm tokenizer train|stats`: JSON output, errors as one line, end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from xelm.app.cli import main

LANGS = ("eng", "fra", "rus", "hin", "amh")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, out, err):
    assert code != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xelm: error: "), err


@pytest.fixture(scope="module")
def small_corpus(udhr, tmp_path_factory):
    """A local directory corpus: UDHR paragraphs of a few languages, one <iso>.txt per language."""
    root = tmp_path_factory.mktemp("small_corpus")
    texts: dict[str, dict[str, list[str]]] = {}  # lang -> tag -> texts
    for split in udhr.values():
        for lang, tag, text in zip(split["lang"][:], split["tag"][:], split["text"][:]):
            if lang in LANGS:
                texts.setdefault(lang, {}).setdefault(tag, []).append(text)
    for lang, by_tag in texts.items():
        first = by_tag[min(by_tag)]
        (root / f"{lang}.txt").write_text("\n".join(first) + "\n", "utf-8")
    return root


def test_data_stats_json(capsys):
    code, out, err = run(capsys, "data", "stats", "--json")
    assert code == 0
    stats = json.loads(out)
    assert len(stats["languages"]) >= 400 and len(set(stats["languages"])) == len(stats["languages"])
    assert set(stats["splits"]) == {"train", "validation", "test"}
    for s in stats["splits"].values():
        assert s["rows"] > 0 and s["characters"] > s["words"] > 0
    assert stats["scripts"]["Latn"] > 0


def test_data_stats_text(capsys, small_corpus):
    code, out, _ = run(capsys, "data", "stats", "--corpus", small_corpus)
    assert code == 0
    assert "5 languages" in out and "train" in out and "test" in out
    code, out, _ = run(capsys, "data", "stats", "--corpus", small_corpus, "--json")
    assert json.loads(out)["languages"] == sorted(LANGS)


@pytest.mark.parametrize("make", ["missing", "file", "empty", "unknown_code", "not_utf8"])
def test_data_stats_bad_corpus(capsys, tmp_path, make):
    corpus = tmp_path / "corpus"
    if make == "file":
        corpus.write_text("eng text")
    elif make != "missing":
        corpus.mkdir()
        if make == "unknown_code":
            (corpus / "xqz.txt").write_text("text\n")
        if make == "not_utf8":
            (corpus / "eng.txt").write_bytes(b"\xff\xfe\xfa text\n")
    code, out, err = run(capsys, "data", "stats", "--corpus", corpus)
    assert_one_line_error(code, out, err)
    assert str(corpus) in err
    assert out == ""


def test_tokenizer_train_and_stats(capsys, small_corpus, tmp_path):
    out_dir = tmp_path / "tok"
    code, out, err = run(capsys, "tokenizer", "train", "--corpus", small_corpus, "--vocab-size", 600,
                         "--chars", 40_000, "--temperature", 0.5, "--out", out_dir, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["vocab_size"] == 600 and result["out"] == str(out_dir)
    assert (out_dir / "tokenizer.json").is_file()

    code, out, err = run(capsys, "tokenizer", "stats", out_dir, "--corpus", small_corpus, "--json")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["summary"]["languages"] == len(LANGS)
    assert stats["summary"]["max_unk_rate"] <= 0.01
    assert set(stats["per_language"]) == set(LANGS)
    assert stats["per_language"]["amh"]["script"] == "Ethi"
    png = out_dir / "fertility_by_script.png"
    assert stats["summary"]["plot"] == str(png) and png.read_bytes()[:4] == b"\x89PNG"

    code, out, err = run(capsys, "tokenizer", "stats", out_dir, "--corpus", small_corpus, "--split", "validation")
    assert code == 0, err
    assert "tok/word" in out and "5 languages" in out


def test_tokenizer_errors(capsys, small_corpus, tmp_path):
    assert_one_line_error(*run(capsys, "tokenizer", "train", "--corpus", small_corpus,
                               "--vocab-size", 100, "--out", tmp_path / "t"))
    assert_one_line_error(*run(capsys, "tokenizer", "train", "--corpus", small_corpus,
                               "--temperature", 2, "--out", tmp_path / "t"))
    assert_one_line_error(*run(capsys, "tokenizer", "stats", tmp_path / "none", "--corpus", small_corpus))
    # A corpus whose documents are all in train has no test split to measure on.
    only_train = tmp_path / "only_train"
    only_train.mkdir()
    (only_train / "eng.jsonl").write_text('{"text": "hello world", "split": "train"}\n')
    tok_dir = tmp_path / "tok"
    assert run(capsys, "tokenizer", "train", "--corpus", only_train, "--vocab-size", 400,
               "--chars", 1000, "--out", tok_dir)[0] == 0
    code, out, err = run(capsys, "tokenizer", "stats", tok_dir, "--corpus", only_train)
    assert_one_line_error(code, out, err)
    assert "no test split" in err
    # ... and one with nothing in train cannot train a tokenizer.
    (only_train / "eng.jsonl").write_text('{"text": "hello world", "split": "test"}\n')
    code, out, err = run(capsys, "tokenizer", "train", "--corpus", only_train, "--out", tmp_path / "t2")
    assert_one_line_error(code, out, err)
    assert "no train split" in err


@pytest.mark.parametrize("argv", [["--help"], ["data", "stats", "--help"], ["tokenizer", "train", "--help"],
                                  ["tokenizer", "stats", "--help"]])
def test_help(capsys, argv):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    assert "usage: xelm" in capsys.readouterr().out


def test_module_entry_point_error_has_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "xelm", "data", "stats", "--corpus", "/nonexistent"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("xelm: error: corpus '/nonexistent' not found")


def _one_language_corpus(root):
    root.mkdir()
    (root / "eng.jsonl").write_text('{"text": "hello world, all human beings are born free", "split": "train"}\n')
    return root


def test_tokenizer_train_keeps_a_users_folder_unless_overwrite(capsys, tmp_path):
    """A folder with the user's own tokenizer beside their weights is refused in one line."""
    corpus = _one_language_corpus(tmp_path / "corpus")
    out_dir = tmp_path / "model"
    out_dir.mkdir()
    mine = {"tokenizer.json": "{}", "tokenizer_config.json": "{}", "model.safetensors": "weights"}
    for name, text in mine.items():
        (out_dir / name).write_text(text)
    train = ["tokenizer", "train", "--corpus", corpus, "--vocab-size", 400, "--chars", 1000, "--out", out_dir]
    code, out, err = run(capsys, *train)
    assert_one_line_error(code, out, err)
    assert err == (f"xelm: error: {out_dir} already holds files xelm did not write (model.safetensors): "
                   "choose an empty folder, or pass --overwrite\n")
    assert {p.name: p.read_text() for p in out_dir.iterdir()} == mine
    assert run(capsys, *train, "--overwrite")[0] == 0
    assert json.loads((out_dir / "tokenizer.json").read_text())["model"]["type"] == "Unigram"
    assert (out_dir / "model.safetensors").read_text() == "weights"
    # A folder xelm wrote (tokenizer, stats plot) is its own output: re-running writes over it.
    ours = tmp_path / "tok"
    assert run(capsys, "tokenizer", "train", "--corpus", corpus, "--vocab-size", 400, "--chars", 1000,
               "--out", ours)[0] == 0
    (ours / "fertility_by_script.png").write_bytes(b"\x89PNG")
    assert run(capsys, "tokenizer", "train", "--corpus", corpus, "--vocab-size", 400, "--chars", 1000,
               "--out", ours)[0] == 0


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_tokenizer_train_seed_out_of_range(capsys, tmp_path, seed):
    corpus = _one_language_corpus(tmp_path / "corpus")
    code, out, err = run(capsys, "tokenizer", "train", "--corpus", corpus, "--seed", seed, "--out", tmp_path / "t")
    assert_one_line_error(code, out, err)
    assert err == f"xelm: error: --seed {seed} is out of range: give a seed from 0 to 4294967295\n"
    assert not (tmp_path / "t").exists()
