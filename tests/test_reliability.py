"""The reliability battery: a user's mistakes across the whole CLI, real kills of real training
processes, several processes against one registry, determinism.

Every mistake must be one line on stderr naming the culprit, exit code 2, no traceback, and
leave the run directory byte for byte as it was (and create no new one)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_CONFIG, kill_when, start_xelm

from experts.registry import Registry
from xelm.app.cli import main

ROOT = Path(__file__).resolve().parents[1]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` and the hash of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse's usage errors
        return e.code


@pytest.fixture(scope="module")
def run(tiny_expert_run, tmp_path_factory) -> Path:
    """A copy of the tiny expert run with its routers already fitted (their files are caches
    that the first successful query writes; a mistake must not write anything)."""
    run = tmp_path_factory.mktemp("reliability") / "run"
    shutil.copytree(tiny_expert_run, run)
    for router in ("tfidf", "posterior", "langid"):
        assert main(["route", "--run-dir", str(run), "--text", "All human beings are born free.", "--router",
                     router, "--json"]) == 0
    return run


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, udhr) -> Path:
    """Bad inputs: a malformed YAML config, an empty corpus, a corpus that is not text."""
    d = tmp_path_factory.mktemp("bad_inputs")
    (d / "malformed.yaml").write_text("model: {hidden: 64\ntrain: [\n")
    (d / "empty").mkdir()
    (d / "binary").mkdir()
    (d / "binary" / "eng.txt").write_bytes(bytes(range(256)) * 8)
    (d / "not_a_run").mkdir()
    return d


MISTAKES = {  # name: (argv with RUN / TMP placeholders, a word the message must contain)
    "corpus path missing": (["data", "stats", "--corpus", "TMP/nowhere"], "nowhere"),
    "corpus empty": (["data", "stats", "--corpus", "TMP/empty"], "empty"),
    "corpus not text": (["data", "stats", "--corpus", "TMP/binary"], "UTF-8"),
    "config path missing": (["pretrain", "--run-dir", "TMP/new", "--config", "TMP/nowhere.yaml"], "nowhere.yaml"),
    "config malformed": (["pretrain", "--run-dir", "TMP/new", "--config", "TMP/malformed.yaml"], "malformed.yaml"),
    "config unknown key": (["pretrain", "--run-dir", "TMP/new", "--config", "TINY", "train.stepz=3"], "stepz"),
    "config bad value": (["pretrain", "--run-dir", "TMP/new", "--config", "TINY", "train.steps=many"], "steps"),
    "config out of range": (["pretrain", "--run-dir", "TMP/new", "--config", "TINY", "train.steps=-3"], "steps"),
    "config changed in a run": (["pretrain", "--run-dir", "RUN", "--config", "TINY", "train.lr=0.5"],
                                "different config"),
    "run dir is not a run": (["evaluate", "--run-dir", "TMP/not_a_run"], "not_a_run"),
    "language code malformed": (["cluster", "--languages", "eng,f1", "--k", "2"], "f1"),
    "language code unknown": (["cluster", "--languages", "eng,xqz", "--k", "2"], "xqz"),
    "cluster k out of range": (["cluster", "--languages", "eng,fra", "--k", "5"], "k"),
    "cluster k zero": (["cluster", "--languages", "eng,fra", "--k", "0"], "k"),
    "clustering method unknown": (["cluster", "--languages", "eng,fra", "--k", "2", "--method", "nope"], "nope"),
    "expert cluster unknown": (["expert", "train", "--run-dir", "RUN", "--cluster", "nope"], "nope"),
    "expert token budget": (["expert", "train", "--run-dir", "RUN", "--all", "--tokens", "0"], "tokens"),
    "hmr token budget": (["expert", "add", "--run-dir", "RUN", "--languages", "por", "--tokens", "-1"], "tokens"),
    "hmr language unknown": (["expert", "add", "--run-dir", "RUN", "--languages", "xqz", "--tokens", "512"], "xqz"),
    "hmr duplicate name": (["expert", "add", "--run-dir", "RUN", "--languages", "por", "--tokens", "512",
                            "--name", "EXPERT"], "already exists"),
    "expert unknown": (["expert", "show", "--run-dir", "RUN", "nope"], "nope"),
    "registry missing": (["expert", "list", "--run-dir", "TMP/not_a_run"], "not_a_run"),
    "query empty": (["route", "--run-dir", "RUN", "--text", "   "], "empty"),
    "router unknown": (["route", "--run-dir", "RUN", "--text", "Hello", "--router", "nope"], "nope"),
    "top-k zero": (["route", "--run-dir", "RUN", "--text", "Hello", "--top-k", "0"], "top-k"),
    "top-k too large": (["route", "--run-dir", "RUN", "--text", "Hello", "--top-k", "9"], "top-k"),
    "temperature zero": (["route", "--run-dir", "RUN", "--text", "Hello", "--temperature", "0"], "temperature"),
    "temperature negative": (["route", "--run-dir", "RUN", "--text", "Hello", "--temperature", "-1"], "temperature"),
    "lang malformed": (["route", "--run-dir", "RUN", "--text", "Hello", "--router", "language", "--lang", "12"], "12"),
    "prior unknown": (["route", "--run-dir", "RUN", "--text", "Hello", "--router", "posterior", "--prior", "nope"],
                      "nope"),
    "fill-mask without mask": (["fill-mask", "--run-dir", "RUN", "--text", "no mask here"], "<mask>"),
    "fill-mask top-k": (["fill-mask", "--run-dir", "RUN", "--text", "a <mask>", "--top-k", "0"], "top-k"),
    "embed empty": (["embed", "--run-dir", "RUN", "--text", ""], "empty"),
    "tokenizer vocab size": (["tokenizer", "train", "--vocab-size", "0", "--out", "TMP/new"], "vocab"),
    "tokenizer missing": (["tokenizer", "stats", "TMP/nowhere"], "nowhere"),
    "import-hf missing": (["import-hf", "TMP/nowhere", "--run-dir", "TMP/new"], "nowhere"),
    "export-hf expert unknown": (["export-hf", "--run-dir", "RUN", "--expert", "nope", "--out", "TMP/new"], "nope"),
    "demo config missing": (["demo", "--config", "TMP/nowhere.yaml", "--run-dir", "TMP/new"], "nowhere.yaml"),
    "demo more clusters than languages": (["demo", "--config", "TINY", "--run-dir", "TMP/new",
                                           "data.languages=[eng,fra,spa]", "experts.k=4"], "experts.k=4"),
}


@pytest.mark.parametrize("case", list(MISTAKES))
def test_a_mistake_is_one_line_and_changes_nothing(case, run, scratch, capsys):
    argv, culprit = MISTAKES[case]
    expert = Registry(run / "registry").names()[0]
    subs = {"RUN": str(run), "TINY": str(TINY_CONFIG), "EXPERT": expert}
    argv = [subs.get(a, a.replace("TMP/", f"{scratch}/")) for a in argv]
    before, scratch_before = snapshot(run), snapshot(scratch)
    code = run_cli(argv)
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xelm") and "error:" in lines[0], err
    assert "Traceback" not in err and culprit in lines[0], lines[0]
    assert snapshot(run) == before, "the run directory changed"
    assert snapshot(scratch) == scratch_before and not (scratch / "new").exists()


# --------------------------------------------------------------------------- real kills
def _steps(ckpt_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in ckpt_dir.glob("*") if p.name.isdigit()) if ckpt_dir.exists() else []


def test_killed_pretraining_resumes_to_the_uninterrupted_loss(tmp_path, tiny_base_run, tiny_overrides):
    """Kill -9 right after the first checkpoint; the re-run continues from it and ends with
    exactly the loss of the uninterrupted run (made by another process: determinism too)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_base_run / "tokenizer", run / "tokenizer")
    argv = ["pretrain", "--config", str(TINY_CONFIG), "--run-dir", str(run), *tiny_overrides,
            "train.checkpoint_every=5"]
    proc = start_xelm(argv, tmp_path / "log")
    kill_when(proc, lambda: _steps(run / "base" / "checkpoints"), tmp_path / "log")
    kept = _steps(run / "base" / "checkpoints")
    assert kept and kept[-1] < 30, kept
    assert main([*argv, "--json"]) == 0
    summary = json.loads((run / "base" / "summary.json").read_text())
    uninterrupted = json.loads((tiny_base_run / "base" / "summary.json").read_text())
    assert summary["resumed_from"] >= kept[-1] and summary["step"] == 30
    assert summary["loss"] == uninterrupted["loss"]
    steps = [json.loads(line)["step"] for line in (run / "base" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "the metrics log repeats steps after the resume"


READER = """
import json, pathlib, sys, time
from experts.registry import Registry
reg, seen, stop, end = Registry(sys.argv[1]), 0, pathlib.Path(sys.argv[2]), time.time() + 600
while not stop.exists() and time.time() < end:
    cards = reg.cards()  # raises on a half-written or damaged index, or a listed expert without its card
    assert len(cards) >= seen, (cards, seen)  # experts are only ever added
    seen = len(cards)
    assert all(c["checksum"] and c["languages"] for c in cards)
print(seen)
"""


def test_concurrent_expert_training_against_one_registry(tmp_path, tiny_expert_run):
    """Both clusters' experts trained by two processes at once against one registry, while a
    third process reads the index in a loop: both land, and no read sees a half-written index."""
    run = tmp_path / "run"
    shutil.copytree(tiny_expert_run, run, ignore=shutil.ignore_patterns("registry", "experts"))
    clusters = list(json.loads((run / "clusters.json").read_text())["clusters"])
    reader = subprocess.Popen([sys.executable, "-c", READER, str(run / "registry"), str(tmp_path / "stop")], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    writers = [start_xelm(["expert", "train", "--run-dir", str(run), "--cluster", c], tmp_path / f"log-{c}")
               for c in clusters]
    for c, w in zip(clusters, writers):
        assert w.wait(timeout=300) == 0, (tmp_path / f"log-{c}").read_text()[-3000:]
    (tmp_path / "stop").touch()
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err[-3000:]
    reg = Registry(run / "registry")
    assert sorted(reg.names()) == sorted(clusters)
    reference = Registry(tiny_expert_run / "registry")
    for name in clusters:  # trained concurrently, yet the same bytes as alone (determinism)
        reg.load(name)
        assert reg.card(name)["checksum"] == reference.card(name)["checksum"]


def test_a_damaged_checkpoint_is_named_and_the_one_before_still_restores(tmp_path):
    import jax.numpy as jnp
    from flax import nnx

    from xelm.checkpoint import Checkpointer
    from xelm.errors import XelmError

    class Tiny(nnx.Module):
        def __init__(self, value: float):
            self.w = nnx.Param(jnp.full((4, 4), value))

    ckpt = Checkpointer(tmp_path / "checkpoints", keep=2)
    for step in (1, 2):
        ckpt.save(step, nnx.state(Tiny(float(step))), {"step": step})
    ckpt.wait()
    for f in (tmp_path / "checkpoints" / "2").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and f.name != "_CHECKPOINT_METADATA":
            f.write_bytes(b"\0" * 7)  # truncated garbage
    with pytest.raises(XelmError, match="checkpoints/2 cannot be restored"):
        Checkpointer(tmp_path / "checkpoints").restore(nnx.state(Tiny(0.0)))
    shutil.rmtree(tmp_path / "checkpoints" / "2")  # the README's recovery step
    state, meta = Checkpointer(tmp_path / "checkpoints").restore(nnx.state(Tiny(0.0)))
    assert meta["step"] == 1 and float(state["w"][...][0, 0]) == 1.0
