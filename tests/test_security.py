"""Reliability and security, round two (issue 16): crafted files cannot reach outside the run,
nothing of the user's is overwritten, faults end in one line.

Each test reproduces one or more of the issue's points on a copy of the tiny runs. CLI checks
that need a real process (a hang, a file-size limit, what library threads print at exit) run
``python -m xelm``; the rest call ``main(argv)`` in-process, which runs the same parser,
handler and error path."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY_CONFIG

from experts.registry import Registry
from xelm.app.cli import main
from xelm.data import corpus as corpus_mod
from xelm.data import load_corpus
from xelm.errors import XelmError
from xelm.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def xelm(*argv, timeout: float = 120, limit_bytes: int | None = None) -> tuple[int, str, str]:
    """``python -m xelm ARGV`` as a real process; ``limit_bytes``: its file-size limit (ulimit -f),
    with SIGXFSZ ignored so that a write past it fails with EFBIG like a full disk."""
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    p = subprocess.run([sys.executable, "-m", "xelm", *argv], capture_output=True, timeout=timeout, cwd=ROOT,
                       env=ENV, preexec_fn=limit if limit_bytes else None)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


def one_line_error(err: str, *words: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xelm: error: "), err[-3000:]
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def cli(capsys, *argv) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def run(tiny_expert_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_expert_run, run)
    return run


def set_index(run: Path, mutate) -> None:
    path = run / "registry" / "index.json"
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------- 1-4: names never leave their root
def test_crafted_index_key_cannot_reach_outside_the_registry(run, tmp_path, capsys):
    victim = tmp_path / "victim"
    shutil.copytree(run / "registry" / "germanic-0", victim)  # a folder that looks like an expert
    escape = os.path.relpath(victim, run / "registry")
    set_index(run, lambda d: d["experts"].__setitem__(escape, d["experts"]["germanic-0"]))
    for verb in (["expert", "remove", escape], ["expert", "show", escape], ["expert", "list"]):
        rc, _, err = cli(capsys, *verb, "--run-dir", run)
        assert rc == 2
        one_line_error(err, "not valid" if verb[1] == "remove" else "repair")
    assert (victim / "card.json").exists() and (victim / "weights").is_dir()
    rc, _, err = cli(capsys, "export-hf", "--run-dir", run, "--expert", escape, "--out", tmp_path / "hf")
    assert rc == 2 and not (tmp_path / "hf").exists()
    # --repair rebuilds the index from the registry's own folders: the crafted key is gone
    assert cli(capsys, "expert", "list", "--repair", "--run-dir", run, "--json")[0] == 0
    assert Registry(run / "registry").names() == ["germanic-0", "romance-1"]


def test_remove_deletes_only_an_experts_own_folder(run, capsys):
    # the registry given as the run directory itself: its tokenizer is not an expert
    rc, _, err = xelm("expert", "remove", "tokenizer", "--run-dir", str(run), "--registry", str(run))
    assert rc == 2 and (run / "tokenizer" / "tokenizer.json").exists()
    one_line_error(err, "not an expert")
    before = (run / "registry" / "index.json").read_bytes()
    for name in ("index.json", "..", ".index.lock", "a/b"):
        rc, _, err = cli(capsys, "expert", "remove", name, "--run-dir", run)
        assert rc == 2, name
        one_line_error(err)
    assert (run / "registry" / "index.json").read_bytes() == before


def test_parallel_training_refuses_a_cluster_name_that_is_a_path(tiny_base_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_base_run, run)
    (run / "clusters.json").write_text(json.dumps({"method": "typology", "k": 1,
                                                   "clusters": {"../../escape": ["eng"]}}))
    rc, _, err = cli(capsys, "expert", "train", "--all", "--jobs", "2", "--run-dir", run)
    assert rc == 2
    one_line_error(err, "../../escape")
    assert not (tmp_path.parent / "escape").exists() and not (run / "experts").exists()
    with pytest.raises(XelmError, match="outside"):
        RunDir(run).expert_work("../../escape")


def test_a_symlinked_expert_folder_is_never_followed(run, tmp_path, capsys):
    outside = tmp_path / "outside"
    shutil.copytree(run / "registry" / "romance-1", outside)
    (run / "registry" / "linked").symlink_to(outside, target_is_directory=True)
    assert cli(capsys, "expert", "list", "--repair", "--run-dir", run, "--json")[0] == 0
    assert "linked" not in Registry(run / "registry").names()  # not adopted
    set_index(run, lambda d: d["experts"].__setitem__("linked", d["experts"]["romance-1"]))
    rc, _, err = cli(capsys, "expert", "show", "linked", "--run-dir", run)
    assert rc == 2
    one_line_error(err, "outside")
    rc, out, _ = cli(capsys, "expert", "remove", "linked", "--run-dir", run)
    assert rc == 0 and "removed" in out
    assert not (run / "registry" / "linked").exists() and not (run / "registry" / "linked").is_symlink()
    assert (outside / "card.json").exists()  # the link went, what it pointed at stayed
    assert "linked" not in Registry(run / "registry").names()
    # A real folder whose card or weights are links to elsewhere: refused too.
    inner = run / "registry" / "inner"
    inner.mkdir()
    (inner / "card.json").symlink_to(outside / "card.json")
    (inner / "weights").symlink_to(outside / "weights", target_is_directory=True)
    set_index(run, lambda d: d["experts"].__setitem__("inner", d["experts"]["romance-1"]))
    rc, _, err = cli(capsys, "expert", "show", "inner", "--run-dir", run)
    assert rc == 2
    one_line_error(err, "outside")
    (inner / "card.json").unlink()
    (inner / "card.json").write_text(json.dumps({**json.loads((outside / "card.json").read_text()), "name": "inner"}))
    with pytest.raises(XelmError, match="outside"):
        Registry(run / "registry").load("inner")
    Registry(run / "registry").remove("inner")  # the link inside is unlinked, what it pointed at stays
    assert not inner.exists() and (outside / "weights").is_dir()


# ------------------------------------------------------------- 5-6: no network, bounded corpus files
def test_a_cards_hub_corpus_never_reaches_the_network(run, capsys):
    card_path = run / "registry" / "romance-1" / "card.json"
    card = json.loads(card_path.read_text())
    card_path.write_text(json.dumps({**card, "corpus": "hf:someone/dataset"}))
    shutil.rmtree(run / "router", ignore_errors=True)
    t0 = time.perf_counter()
    rc, _, err = cli(capsys, "route", "--run-dir", run, "--text", "All human beings are born free.",
                     "--router", "tfidf")
    assert rc == 2 and time.perf_counter() - t0 < 20
    one_line_error(err, "hf:someone/dataset", "network")


def test_a_corpus_file_that_is_a_device_or_fifo_is_refused(tmp_path):
    zero, fifo = tmp_path / "zero", tmp_path / "fifo"
    zero.mkdir()
    fifo.mkdir()
    (zero / "eng.txt").symlink_to("/dev/zero")
    os.mkfifo(fifo / "eng.txt")
    for d in (zero, fifo):
        rc, _, err = xelm("data", "stats", "--corpus", str(d), timeout=60)
        assert rc == 2
        one_line_error(err, "not a regular file")


def test_a_corpus_file_that_decodes_to_too_much_is_refused(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb"
    bomb.mkdir()
    n = corpus_mod.MAX_ROWS + 1  # one long string, referenced by every row: a few KB on disk
    text = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array(["x" * 1000]))
    pq.write_table(pa.table({"text": text}), bomb / "eng.parquet", compression="zstd")
    assert (bomb / "eng.parquet").stat().st_size < 2_000_000  # and 10 GB of text once decoded
    t0 = time.perf_counter()
    with pytest.raises(XelmError, match="rows"):
        load_corpus(bomb)
    assert time.perf_counter() - t0 < 10
    small = tmp_path / "small"
    small.mkdir()
    pq.write_table(pa.table({"text": ["y" * 100] * 2000}), small / "eng.parquet")
    monkeypatch.setattr(corpus_mod, "MAX_TEXT_BYTES", 50_000)
    with pytest.raises(XelmError, match="bytes of text"):
        load_corpus(small)


# --------------------------------------------------------------------------------- 10-11: data loss
def test_a_stale_work_folder_under_a_reused_name_is_not_resumed(run, monkeypatch, capsys):
    from experts import training

    def killed(self, card, model):  # a registration that never happened (the process died)
        raise KeyboardInterrupt
    monkeypatch.setattr(Registry, "add", killed)
    with pytest.raises(KeyboardInterrupt):
        training.add_language(run, "ita", 512, parent="base", name="kx", progress=False)
    assert list((run / "experts" / "kx" / "checkpoints").iterdir())  # left behind
    monkeypatch.undo()
    card = training.add_language(run, "por", 512, parent="base", name="kx", progress=False)
    assert set(card["tokens_by_lang"]) == {"por"} and card["languages"] == ["por"]
    assert "starting clean" in capsys.readouterr().err


def test_a_failed_first_command_does_not_poison_a_new_run(tmp_path, tiny_overrides, capsys):
    from xelm.config import load_config

    new = tmp_path / "new"
    rc, _, err = cli(capsys, "pretrain", "--config", TINY_CONFIG, "--run-dir", new, *tiny_overrides,
                     "data.languages=[zzz]")
    assert rc == 2
    one_line_error(err, "zzz")
    assert not new.exists()  # validated before the run directory was created
    RunDir(new).prepare(load_config(TINY_CONFIG, tiny_overrides))  # the corrected command's config
    assert RunDir(new).config() == load_config(TINY_CONFIG, tiny_overrides)
    for bad in ("train.lr=.nan", "model.local_window=-4", "train.steps.x=1", "data.seq_len=600"):
        fresh = tmp_path / bad.split("=")[0]
        rc, _, err = cli(capsys, "pretrain", "--config", TINY_CONFIG, "--run-dir", fresh, *tiny_overrides, bad)
        assert rc == 2, bad
        one_line_error(err)
        assert not fresh.exists(), bad  # validated before anything was created
    (tmp_path / "latin1.yaml").write_bytes("train: {steps: 5}  # caf\xe9\n".encode("latin-1"))
    rc, _, err = cli(capsys, "pretrain", "--config", tmp_path / "latin1.yaml", "--run-dir", tmp_path / "x")
    assert rc == 2
    one_line_error(err, "UTF-8")


# ------------------------------------------------------------------------- 12-13: one line, cleaned
def test_a_full_disk_during_expert_add_is_one_line_and_leaves_no_temporaries(run):
    index = (run / "registry" / "index.json").read_bytes()
    rc, _, err = xelm("expert", "add", "--run-dir", str(run), "--languages", "por", "--tokens", "512",
                      "--parent", "base", "--name", "kx", "--json", limit_bytes=200 * 1024, timeout=300)
    assert rc == 2
    one_line_error(err, "file too large")
    assert (run / "registry" / "index.json").read_bytes() == index
    left = [p for pat in ("*.orbax-checkpoint-tmp*", ".*.tmp", ".staging-*") for p in run.rglob(pat)]
    assert not left, left
    assert Registry(run / "registry").names() == ["germanic-0", "romance-1"]


def test_a_failed_command_removes_its_own_temporaries_only(tmp_path, monkeypatch):
    """Another process may be writing in the same run (training another expert): its unfinished
    checkpoint, staging folder and index temporary are not a failed command's to delete."""
    from xelm import faults

    monkeypatch.setattr(faults, "_OURS", set())
    run = tmp_path / "run"
    mine = [run / "experts" / "a" / "checkpoints" / "3.orbax-checkpoint-tmp-9", run / "registry" / ".staging-a-1",
            run / "registry" / ".index.1.tmp"]
    theirs = [run / "experts" / "b" / "checkpoints" / "7.orbax-checkpoint-tmp-123",
              run / "registry" / ".staging-b-2", run / "registry" / ".index.2.tmp",
              run / "experts" / "a" / "checkpoints" / "3"]  # a finished checkpoint
    for p in mine + theirs:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x") if p.suffix == ".tmp" else p.mkdir()
    faults.ours(run / "experts" / "a" / "checkpoints")  # a folder this process saves into
    faults.ours(mine[1])
    faults.ours(mine[2])
    assert sorted(faults.clean_temporaries()) == sorted(mine)
    assert not any(p.exists() for p in mine) and all(p.exists() for p in theirs)


def test_an_atomic_write_keeps_a_private_files_mode(tmp_path):
    from xelm.files import write_json

    private = tmp_path / "private.json"
    private.write_text("{}")
    private.chmod(0o600)
    write_json(private, {"a": 1})
    assert private.stat().st_mode & 0o777 == 0o600 and json.loads(private.read_text()) == {"a": 1}
    assert write_json(tmp_path / "new.json", {}).stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.json", "private.json"]  # no temporary left


def test_a_damaged_checkpoint_is_one_line_and_nothing_prints_after_it(run):
    params = run / "registry" / "germanic-0" / "weights" / "params"
    for f in params.rglob("*"):
        if f.is_file() and f.stat().st_size > 1000:
            f.write_bytes(f.read_bytes()[:100])
    rc, _, err = xelm("embed", "--run-dir", str(run), "--text", "Hello world", "--lang", "eng",
                      "--router", "language")
    assert rc == 2
    one_line_error(err, "germanic-0")


# ----------------------------------------------------------------------------- 14: damaged files
def test_damaged_files_are_one_line_naming_the_file(run, tmp_path, capsys):
    reg = run / "registry"
    card = reg / "germanic-0" / "card.json"
    good_card, good_index = card.read_bytes(), (reg / "index.json").read_bytes()
    set_index(run, lambda d: d.__setitem__("format", "1"))
    rc, _, err = cli(capsys, "expert", "list", "--run-dir", run)
    assert rc == 2
    one_line_error(err, "index.json")
    (reg / "index.json").write_bytes(good_index)
    other_name = json.dumps({**json.loads(good_card), "name": "romance-1"})  # would load romance-1 twice
    no_checksum = json.dumps({k: v for k, v in json.loads(good_card).items() if k != "checksum"})
    for damage in (json.dumps({"name": "germanic-0"}), "[1, 2]", b"\xff\xfe{}", other_name, no_checksum):
        card.write_bytes(damage if isinstance(damage, bytes) else damage.encode())
        rc, _, err = cli(capsys, "expert", "show", "germanic-0", "--run-dir", run)
        assert rc == 2, damage
        one_line_error(err, "card.json")
    card.write_bytes(good_card)
    model_json = reg / "germanic-0" / "weights" / "model.json"
    good_model = model_json.read_bytes()
    for damage in (b"\xff" + good_model, b"[" * 100_000 + b"]" * 100_000):  # the second is too deep to parse
        model_json.write_bytes(damage)
        rc, _, err = cli(capsys, "embed", "--run-dir", run, "--text", "Hello", "--lang", "eng", "--router", "language")
        assert rc == 2
        one_line_error(err, "model.json")
    meta = json.loads(good_model)
    meta["model"]["hidden"] *= 2
    model_json.write_text(json.dumps(meta))
    rc, _, err = cli(capsys, "embed", "--run-dir", run, "--text", "Hello", "--lang", "eng", "--router", "language")
    assert rc == 2
    one_line_error(err, "germanic-0")
    model_json.write_bytes(good_model)
    tok_cfg = run / "tokenizer" / "tokenizer_config.json"
    good_tok = tok_cfg.read_bytes()
    tok_cfg.write_text(json.dumps({**json.loads(good_tok), "tokenizer_class": "NoSuchTokenizer"}))
    rc, _, err = cli(capsys, "route", "--run-dir", run, "--text", "Hello", "--router", "tfidf")
    assert rc == 0, err  # an unknown class: tokenizer.json itself is what is loaded
    tok_cfg.write_text(json.dumps({**json.loads(good_tok), "tokenizer_class": ["NoSuchTokenizer"]}))
    rc, _, err = cli(capsys, "route", "--run-dir", run, "--text", "Hello", "--router", "tfidf")
    assert rc == 2
    one_line_error(err, "tokenizer")
    tok_cfg.write_bytes(good_tok)
    plan = run / "clusters.json"
    for damage in ('{"method": "typology"', json.dumps({"method": "typology", "k": 2})):
        plan.write_text(damage)
        rc, _, err = cli(capsys, "expert", "train", "--all", "--run-dir", run)
        assert rc == 2
        one_line_error(err, "clusters.json")
    config = run / "config.yaml"
    good_config = config.read_bytes()
    config.write_text("a: " + "[" * 100_000 + "]" * 100_000)
    rc, _, err = cli(capsys, "expert", "list", "--run-dir", run)
    assert rc == 2
    one_line_error(err, "config.yaml")
    config.write_bytes(good_config)
    base_summary = run / "base" / "summary.json"
    base_summary.write_text(base_summary.read_text()[:20])
    with pytest.raises(XelmError, match="summary.json"):
        RunDir(run).base_summary()
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "eng.jsonl").write_text('{"text": "a b c"}\n{"text": "d", "lang": 5}\n')
    with pytest.raises(XelmError, match="'lang' must be a string"):
        load_corpus(tmp_path / "mixed")


def test_damaged_router_caches_are_refitted(run, capsys):
    args = ["route", "--run-dir", run, "--text", "All human beings are born free.", "--router", "tfidf", "--json"]
    rc, out, _ = cli(capsys, *args)
    assert rc == 0
    (run / "router" / "scripts.json").write_text("[1, 2, 3]")
    npz = next((run / "router" / "tfidf").glob("*.npz"))
    npz.write_bytes(npz.read_bytes()[:50])
    rc, again, err = cli(capsys, *args)
    assert rc == 0, err
    assert json.loads(again) == json.loads(out)


# ------------------------------------------------------------- 15: values that made garbage
def test_values_that_produced_garbage_are_refused(run, capsys):
    text = ["--run-dir", run, "--text", "All human beings are born free."]
    for argv in (["route", *text, "--temperature", "1e-320"], ["route", *text, "--temperature", "nan"],
                 ["route", *text, "--router", "posterior", "--temperature", "nan"],
                 ["fill-mask", "--run-dir", run, "--text", "All human beings are <mask>.", "--temperature", "1e-320"],
                 ["expert", "add", "--languages", "por", "--parent", "base", "--tokens", str(10**12), "--run-dir", run],
                 ["route", "--run-dir", run, "--text", "caf\udcff"],
                 ["embed", "--run-dir", run, "--text", "caf\udcff"],
                 ["fill-mask", "--run-dir", run, "--text", "caf\udcff <mask>"]):
        rc, _, err = cli(capsys, *argv)
        assert rc == 2, argv
        one_line_error(err, "--tokens" if "--tokens" in argv else "")
    rc, _, err = xelm("route", "--run-dir", str(run), "--text", os.fsdecode(b"caf\xff"), "--router", "posterior")
    assert rc == 2
    one_line_error(err, "UTF-8")


def test_a_script_no_expert_saw_gets_the_fallback_note(run, capsys):
    for text in ("𐀀𐀁𐀂 𐀃𐀄𐀅 𐀆𐀇𐀈", "ᚁᚂᚃ ᚄᚅᚆ ᚇᚈᚉ"):  # Linear B, Ogham
        rc, out, err = cli(capsys, "route", "--run-dir", run, "--text", text, "--router", "tfidf", "--json")
        assert rc == 0, err
        assert "no expert was trained on" in json.loads(out).get("fallback", ""), out
