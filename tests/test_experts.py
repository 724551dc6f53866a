"""Experts: branch-train, the registry (atomic, concurrent, checksummed), baseline, HMR."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clustering.build import main_scripts
from experts.registry import Registry
from experts.training import add_language, expert_scripts, train_baseline, train_control
from experts.typology import nearest_expert
from xelm.app.cli import main
from xelm.errors import XelmError


def tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def run(tiny_expert_run, tmp_path) -> Path:
    """A private copy of the tiny expert run, free to change."""
    shutil.copytree(tiny_expert_run, tmp_path / "run")
    return tmp_path / "run"


def test_each_cluster_gets_an_expert_trained_on_its_languages_only(tiny_expert_run, capsys):
    plan = json.loads((tiny_expert_run / "clusters.json").read_text())
    reg = Registry(tiny_expert_run / "registry")
    assert reg.names() == sorted(plan["clusters"])
    for card in reg.cards():
        assert card["languages"] == sorted(plan["clusters"][card["name"]])
        assert set(card["tokens_by_lang"]) <= set(card["languages"])
        assert card["parent"] == "base" and card["cluster_method"] == "typology"
        assert card["tokens_trained"] == math.ceil(1024 / 512) * 512
        assert math.isfinite(card["validation_loss"]) and len(card["typology_centroid"]) > 100
        assert len(card["checksum"]) == 64
    assert main(["expert", "list", "--run-dir", str(tiny_expert_run), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in listed] == reg.names() and "languages" in listed[0]


def test_loaded_expert_differs_from_base_and_matches_checksum(tiny_expert_run):
    from xelm.weights import checksum, load_weights
    reg = Registry(tiny_expert_run / "registry")
    name = reg.names()[0]
    model = reg.load(name)
    assert checksum(model) == reg.card(name)["checksum"]
    assert checksum(load_weights(tiny_expert_run / "base" / "model")) != reg.card(name)["checksum"]
    # Models of one config share one abstract state (traced once), never their weights: each
    # loaded model keeps its own, however many are loaded after it.
    models = {n: reg.load(n) for n in reg.names()}
    assert len(models) == 2 and all(checksum(m) == reg.card(n)["checksum"] for n, m in models.items())


def test_baseline_trains_on_all_languages_for_the_sum_of_expert_tokens(run):
    summary = train_baseline(run, progress=False)
    cards = Registry(run / "registry").cards()
    assert summary["tokens_trained"] == sum(c["tokens_trained"] for c in cards)
    assert sorted(summary["languages"]) == sorted(lang for c in cards for lang in c["languages"])
    assert (run / "baseline" / "model" / "model.json").exists()
    assert train_baseline(run, progress=False)["skipped"]
    # The yardsticks for a new language at the HMR budget: base branched, dense continued.
    for parent in ("base", "dense"):
        control = train_control(run, "por", parent, 512, progress=False)
        assert control["tokens_trained"] == 512 and control["languages"] == ["por"]
        assert (run / "controls" / f"{parent}-por" / "model" / "model.json").exists()
    assert "por" not in {lang for c in Registry(run / "registry").cards() for lang in c["languages"]}


def test_hmr_adds_a_language_without_touching_other_experts(run, capsys):
    before = tree_hashes(run / "registry")
    others = {n for n in Registry(run / "registry").names()}
    assert main(["expert", "add", "--run-dir", str(run), "--languages", "por", "--tokens", "512", "--json"]) == 0
    card = json.loads(capsys.readouterr().out)
    assert card["parent"] in others and card["parent_distance"] > 0
    assert card["languages"] == ["por"] and card["kind"] == "hmr"
    after = tree_hashes(run / "registry")
    for name in others:  # every file of every other expert is byte-identical
        assert {k: v for k, v in after.items() if k.startswith(name + "/")} == \
               {k: v for k, v in before.items() if k.startswith(name + "/")}
    assert Registry(run / "registry").names() == sorted(others | {"hmr-por"})


def test_hmr_parent_shares_the_new_languages_script_when_an_expert_does():
    cards = [{"name": "latin-slavic", "languages": ["pol", "ces", "slk"]},
             {"name": "cyrillic-turkic", "languages": ["kaz", "kir", "tat"]}]
    scripts = {"pol": "Latn", "ces": "Latn", "slk": "Latn", "kaz": "Cyrl", "kir": "Cyrl", "tat": "Cyrl",
               "ukr": "Cyrl", "kor": "Kore"}
    assert nearest_expert(["ukr"], cards)[0] == "latin-slavic"  # typology alone: Slavic, Latin script
    assert nearest_expert(["ukr"], cards, scripts=scripts)[0] == "cyrillic-turkic"
    # No expert writes Hangul: the typologically nearest of all, as without scripts.
    assert nearest_expert(["kor"], cards, scripts=scripts) == nearest_expert(["kor"], cards)


def test_hmr_on_a_users_own_corpus_of_a_language_udhr_lacks(run, udhr):
    # Bavarian (bar) is not in UDHR: a user brings its text (here German text stands in for it).
    corpus = run.parent / "bar_corpus"
    corpus.mkdir()
    deu = [t for t, lang in zip(udhr["train"]["text"][:], udhr["train"]["lang"][:]) if lang == "deu"]
    (corpus / "bar.txt").write_text("\n".join(t.replace("\n", " ") for t in deu * 2))
    assert "bar" not in set(udhr["train"]["lang"][:])
    card = add_language(run, "bar", 512, corpus=str(corpus), progress=False)
    assert card["languages"] == ["bar"] and card["corpus"] == str(corpus) and card["scripts"] == {"bar": "Latn"}
    reg = Registry(run / "registry")
    assert card["parent"] in reg.names()
    # The run's corpus has no Bavarian, so its script comes from the card: the next Latin-script
    # newcomer may branch from this expert.
    assert "bar" not in main_scripts("udhr", ["bar"])
    assert expert_scripts(reg.cards(), "udhr")["bar"] == "Latn"


@pytest.mark.parametrize("args, message", [
    (["--languages", "xqz"], "unknown language code 'xqz'"),
    (["--languages", "English"], "malformed language code"),
    (["--languages", "pdc"], "pdc"),  # a real code with no text in the corpus
    (["--languages", "por", "--parent", "nobody"], "no expert named 'nobody'"),
    (["--languages", "por", "--tokens", "0"], "--tokens 0 is out of range"),
])
def test_bad_additions_are_clear_errors_and_write_nothing(run, capsys, args, message):
    before = tree_hashes(run)
    argv = ["expert", "add", "--run-dir", str(run), "--tokens", "512", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("xelm: error:") and message in err and "Traceback" not in err
    assert tree_hashes(run) == before


def test_duplicate_name_and_missing_base_are_refused(run, tmp_path, capsys):
    name = Registry(run / "registry").names()[0]
    assert main(["expert", "add", "--run-dir", str(run), "--languages", "por", "--tokens", "512",
                 "--name", name]) == 2
    assert "already exists" in capsys.readouterr().err
    bare = tmp_path / "bare"
    shutil.copytree(run, bare)
    shutil.rmtree(bare / "base" / "model")
    assert main(["expert", "add", "--run-dir", str(bare), "--languages", "por", "--tokens", "512",
                 "--parent", "base"]) == 2
    assert "no finished base encoder" in capsys.readouterr().err


def test_damaged_weights_index_and_newer_format_are_reported(run, capsys):
    reg = Registry(run / "registry")
    name = reg.names()[0]
    data_files = [p for p in (run / "registry" / name / "weights" / "params").rglob("*")
                  if p.is_file() and p.stat().st_size > 1000]
    for f in data_files:  # flip bytes in the middle of every tensor file
        raw = bytearray(f.read_bytes())
        raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)
        f.write_bytes(bytes(raw))
    with pytest.raises(XelmError, match=name):
        reg.load(name)
    shutil.rmtree(run / "registry" / name / "weights")
    with pytest.raises(XelmError, match=name):
        reg.load(name)
    index = run / "registry" / "index.json"
    good = index.read_text()
    index.write_text(good[: len(good) // 2])
    shutil.copytree(run / "registry" / name, run / "registry" / "copy-0")  # its card names the original
    assert main(["expert", "list", "--run-dir", str(run)]) == 2
    assert "damaged" in capsys.readouterr().err
    assert main(["expert", "list", "--run-dir", str(run), "--repair", "--json"]) == 0
    assert [c["name"] for c in json.loads(capsys.readouterr().out)] == sorted(json.loads(good)["experts"])  # no copy
    assert Registry(run / "registry").names() == sorted(json.loads(good)["experts"])
    index.write_text(json.dumps({**json.loads(good), "format": 99}))
    with pytest.raises(XelmError, match="newer xelm"):
        reg.names()


def test_remove_deletes_an_expert(run):
    reg = Registry(run / "registry")
    name = reg.names()[0]
    assert main(["expert", "remove", name, "--run-dir", str(run)]) == 0
    assert name not in reg.names() and not (run / "registry" / name).exists()
    assert not list((run / "registry").glob(".removing-*"))
    with pytest.raises(XelmError, match="no expert named"):
        reg.card(name)


def test_a_folder_that_is_not_an_experts_is_named_and_never_deleted(tmp_path):
    from flax import nnx

    from xelm.config import ModelConfig
    from xelm.model import Encoder

    reg = Registry(tmp_path / "registry")
    (tmp_path / "registry" / "mine" / "weights").mkdir(parents=True)  # the user's, or a half-deleted expert's
    model = Encoder(ModelConfig(vocab_size=64, hidden=16, layers=1, heads=2, ffn=32), rngs=nnx.Rngs(0))
    card = {"name": "mine", "languages": ["eng"], "parent": "base", "tokens_trained": 0}
    with pytest.raises(XelmError, match="not an expert's folder") as e:
        reg.add(card, model)
    assert "expert remove" not in str(e.value)  # which would refuse it: the advice leads somewhere
    with pytest.raises(XelmError, match="not an expert's folder"):
        reg.remove("mine")
    assert (tmp_path / "registry" / "mine" / "weights").is_dir() and reg.names() == []
    reg.add({**card, "name": "yours"}, model)
    reg.remove("yours")
    assert sorted(p.name for p in (tmp_path / "registry").iterdir() if "index" not in p.name) == ["mine"]


WRITER = """
import sys
from flax import nnx
from experts.registry import Registry
from xelm.config import ModelConfig
from xelm.model import Encoder
root, prefix = sys.argv[1], sys.argv[2]
model = Encoder(ModelConfig(vocab_size=64, hidden=16, layers=1, heads=2, ffn=32), rngs=nnx.Rngs(0))
for i in range(4):
    Registry(root).add({"name": f"{prefix}-{i}", "languages": ["eng"], "parent": "base", "tokens_trained": 0}, model)
"""


def test_a_card_that_could_not_be_read_back_is_not_registered(tmp_path):
    from flax import nnx

    from xelm.config import ModelConfig
    from xelm.model import Encoder

    model = Encoder(ModelConfig(vocab_size=64, hidden=16, layers=1, heads=2, ffn=32), rngs=nnx.Rngs(0))
    reg = Registry(tmp_path / "registry")
    with pytest.raises(XelmError, match="tokens_trained"):
        reg.add({"name": "x-0", "languages": ["eng"], "parent": "base"}, model)
    assert reg.names() == [] and [p.name for p in reg.root.iterdir() if p.name != ".index.lock"] == []


def test_two_processes_registering_at_once_both_land(tmp_path):
    root = tmp_path / "registry"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(root), p], stderr=subprocess.PIPE, text=True)
             for p in ("a", "b")]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()[-2000:]
    reg = Registry(root)
    assert reg.names() == sorted(f"{p}-{i}" for p in "ab" for i in range(4))
    for name in reg.names():
        reg.load(name)  # every checkpoint complete and matching its card
    assert not [p for p in root.iterdir() if p.name.startswith(".staging") or p.suffix == ".tmp"]


def test_baseline_without_validation_text_says_so(monkeypatch, capsys):
    """A corpus with no validation text in the baseline's languages: the summary has no loss
    (it was a TypeError on every run, the summary being written before the line)."""
    from types import SimpleNamespace

    from xelm.app import cmd_experts

    summary = {"tokens_trained": 1024, "expert_tokens": {"a": 1024}, "languages": ["eng"], "validation_loss": None}
    monkeypatch.setattr(cmd_experts, "train_baseline", lambda *a, **k: summary)
    assert cmd_experts.cmd_baseline(SimpleNamespace(run_dir="run", registry=None, json=False)) == 0
    assert capsys.readouterr().out.strip().endswith("on 1 languages; validation loss n/a")
