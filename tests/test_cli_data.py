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
