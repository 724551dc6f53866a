"""The whole pipeline on configs/udhr-tiny.yaml: demo stages, evaluation report, resume."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from types import SimpleNamespace

import pytest
from conftest import EXPERT_LANGUAGES, ROOT, TINY_CONFIG, kill_when, start_xelm

from clustering import plan
from experts.registry import Registry
from xelm.app.cli import main
from xelm.app.demo import run_demo
from xelm.app.evaluate import evaluate, evaluate_headline, headline_fingerprint, stored_headline
from xelm.config import load_config
from xelm.errors import XelmError


@pytest.fixture(scope="module")
def demo(tiny_base_run, tiny_overrides, tmp_path_factory) -> SimpleNamespace:
    """One tiny demo for this module: killed (-9) as soon as its first expert is registered, the
    registry's experts loaded, then run again to the end (``xelm demo --json`` in this process)."""
    root = tmp_path_factory.mktemp("demo")
    run, log = root / "run", root / "log"
    shutil.copytree(tiny_base_run, run)  # tokenizer and base done
    (run / "clusters.json").write_text(json.dumps(plan(EXPERT_LANGUAGES, method="typology", k=2)))
    argv = ["demo", "--config", str(TINY_CONFIG), "--run-dir", str(run), *tiny_overrides]
    registry = Registry(run / "registry")

    def first_expert_registered() -> bool:
        return (run / "registry" / "index.json").exists() and len(registry.names()) >= 1

    kill_when(start_xelm(argv, log), first_expert_registered, log)
    killed = SimpleNamespace(finished=(run / "demo.json").exists(), log=log.read_text(), cards=registry.cards())
    for card in killed.cards:
        registry.load(card["name"])  # complete, checksum verified (raises otherwise)
    killed.written = {c["name"]: (run / "registry" / c["name"] / "card.json").stat().st_mtime_ns for c in killed.cards}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([*argv, "--json"])
    return SimpleNamespace(run=run, killed=killed, code=code, summary=json.loads(out.getvalue()))


def test_killed_demo_leaves_a_consistent_registry_and_resumes(demo):
    """Kill -9 the demo while it trains experts: the registry lists only complete experts, each
    loads and matches its checksum; the re-run trains the rest and finishes the pipeline."""
    killed, registry = demo.killed, demo.run / "registry"
    assert not killed.finished and killed.cards  # killed mid-way, after its first expert
    assert "[4/7] experts" in killed.log and "step/s" not in killed.log, killed.log  # a log file: no progress bars
    assert demo.code == 0
    assert len(demo.summary["experts"]) == 2 and demo.summary["evaluation"]["improved_fraction"] is not None
    assert all((registry / n / "card.json").stat().st_mtime_ns == t for n, t in killed.written.items()), \
        "a complete expert was trained again"


def test_demo_runs_every_stage_and_writes_the_report(demo, tiny_overrides, monkeypatch, capsys):
    run, summary = demo.run, demo.summary  # tokenizer, base and plan were done: the demo resumed
    assert summary["base"]["skipped"] and summary["dense"]["tokens_trained"] == 2 * 1024
    assert [h["name"] for h in summary["hmr"]] == ["hmr-por"]
    stages, parts = summary["seconds_by_stage"], summary["evaluation_seconds_by_part"]
    assert list(stages) == ["corpus", "tokenizer and base", "cluster plan", "experts", "dense baseline",
                            "HMR and yardsticks", "evaluation"]
    assert {"loading", "scoring every token", "routers", "new languages (HMR yardsticks)", "transfer"} <= set(parts)
    assert 0 < sum(parts.values()) <= stages["evaluation"] + 0.1 * len(parts)  # parts of the stage, rounded
    report = run / "report"
    for name in ("report.md", "metrics.json", "loss_by_language.png", "improvement_vs_distance.png",
                 "routing_confusion.png", "transfer_by_family.png"):
        assert (report / name).stat().st_size > 100, name
    m = json.loads((report / "metrics.json").read_text())
    s = m["summary"]
    assert 0.0 <= s["improved_fraction"] <= 1.0 and s["languages"] == 6
    assert set(m["languages"]["eng"]) >= {"base", "dense", "own_expert", "xelm:tfidf@1", "xelm:posterior@2"}
    assert m["compute"]["equal"] and m["compute"]["dense_tokens"] == m["compute"]["experts_total"]
    assert s["equal_compute"] and m["compute"]["tokens_by_lang"]["dense"] == m["compute"]["tokens_by_lang"]["experts"]
    assert s["significant_wins"] + s["significant_losses"] <= s["languages"] and s["scored_tokens_median"] >= 200
    lo, hi = s["mean_delta_ci"]
    assert lo <= s["mean_delta_loss"] <= hi and s["second_line"]["languages"] == 6
    assert all(r["delta_ci"][0] <= r["delta"] <= r["delta_ci"][1] for r in m["languages"].values() if "delta" in r)
    for lang, row in m["languages"].items():  # routing by the language = that language's own expert
        if row["cluster"]:
            assert abs(row["xelm:language@1"] - row["own_expert"]) < 1e-6, lang
    por = m["new_languages"]["por"]
    assert set(por) >= {"hmr", "base_continued", "dense_continued", "hmr_vs_base_continued", "forgetting"}
    d = por["hmr_vs_dense_continued"]
    assert d["ci"][0] <= d["delta"] <= d["ci"][1] and abs(d["delta"] - (por["hmr"] - por["dense_continued"])) < 1e-6
    assert por["forgetting"]["passages"] == 6  # one passage of each of the 6 seen languages
    assert not m["new_languages"]["por"]["parent"].startswith("hmr-")
    assert set(m["routing"]) == {"tfidf", "posterior", "langid"}
    assert 0 <= m["transfer"]["mean_retrieval"]["xelm"] <= 1
    text = (report / "report.md").read_text()
    assert f"[{lo:+.3f}, {hi:+.3f}]" in text.split("## What")[0]  # the headline gives the interval
    for section in ("## Headline", "## What the numbers say", "## Every ensemble against the dense model",
                    "## By resource level", "## By cluster", "## New languages", "## Routing", "## Zero-shot",
                    "dense forgetting"):
        assert section in text
    again = run_demo(TINY_CONFIG, run, tiny_overrides, progress=False)  # everything complete: skipped
    assert again["dense"] == summary["dense"]

    # The split that chooses configurations has its own report; the test report stays as it was.
    test_bytes = (report / "metrics.json").read_bytes()
    capsys.readouterr()
    assert main(["evaluate", "--run-dir", str(run), "--split", "validation"]) == 0  # the command line
    out = capsys.readouterr().out
    assert "report-validation" in out and "scoring every token" in out and "transfer" in out  # time by part
    v = json.loads((run / "report-validation" / "metrics.json").read_text())
    assert set(v["seconds_by_part"]) >= {"loading", "scoring every token", "routers", "intervals"}
    assert v["split"] == "validation" and (run / "report-validation" / "report.md").is_file()
    assert "validation split" in (run / "report-validation" / "report.md").read_text()
    assert v["summary"]["languages"] == 6 and v["languages"]["eng"]["dense"] != m["languages"]["eng"]["dense"]
    assert "skipped" in v["transfer"] and (report / "metrics.json").read_bytes() == test_bytes

    # Validation summarizes every ensemble with intervals and ranks them by the rule that chooses
    # the config's ensemble; that ensemble is the headline, with top-1 routing as the second line
    # when the soft mixture leads.
    by = v["summary"]["by_ensemble"]
    assert {"xelm:tfidf@1", "xelm:tfidf@2", "xelm:tfidf@all", "xelm:posterior@2"} <= set(by)
    assert by["xelm:tfidf@1"] == {k: v["summary"][k] for k in by["xelm:tfidf@1"]}
    ranking = v["summary"]["ensemble_ranking"]
    def rank(name):
        return -by[name]["improved_fraction"], by[name]["significant_losses"]
    assert sorted(ranking) == sorted(by) and all(rank(a) <= rank(b) for a, b in zip(ranking, ranking[1:]))
    imp = {name: s["improved_fraction"] for name, s in by.items()}
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("ensemble: tfidf@1", "ensemble: tfidf@all"))
    soft = evaluate(run, progress=False, split="validation")
    assert soft["headline"]["ensemble"] == "xelm:tfidf@all" and soft["headline"]["second_line"] == "xelm:tfidf@1"
    assert soft["summary"]["improved_fraction"] == imp["xelm:tfidf@all"]
    assert soft["summary"]["second_line"]["significant_wins"] == v["summary"]["significant_wins"]
    assert soft["summary"]["by_ensemble"] == by  # the headline's choice changes no ensemble's figures
    assert "chosen on the validation split" in (run / "report-validation" / "report.md").read_text()
    # The temperature sweep scores the soft mixture as the evaluation does: at its T = 0.1, the same figures.
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from temperature_sweep import sweep
    swept = sweep(run, "validation", (0.1, 1e6), progress=False)
    for key in ("languages", "improved_fraction", "significant_wins", "significant_losses"):
        assert swept[0.1][key] == soft["summary"][key], key
    assert abs(swept[0.1]["mean_delta_loss"] - soft["summary"]["mean_delta_loss"]) < 1e-5
    assert swept[1e6]["mean_delta_loss"] != swept[0.1]["mean_delta_loss"]  # a near-uniform mixture differs
    config.write_text(config.read_text().replace("ensemble: tfidf@all", "ensemble: tfidf@1"))
    with pytest.raises(XelmError, match="experts.ensemble 'magic' is not one of"):
        load_config(TINY_CONFIG, ["experts.ensemble=magic"])

    # The ablation's cheap evaluation (each text through the dense model and its routed expert
    # only) gives the full evaluation's headline, language by language.
    h = evaluate_headline(run, split="validation", progress=False)
    for key in ("languages", "improved_fraction", "significant_wins", "significant_losses"):
        assert h["summary"][key] == v["summary"][key], key
    for lang, row in h["languages"].items():
        assert abs(row["delta"] - v["languages"][lang]["delta"]) < 1e-5, lang
    assert (run / "report-validation" / "headline.json").is_file()
    # The ablation reuses a stored headline only if it was made under this protocol from these
    # experts and this dense baseline.
    assert stored_headline(run, "validation") == json.loads(json.dumps(h))
    stale = json.loads((run / "report-validation" / "headline.json").read_text())
    stale["fingerprint"]["protocol"] -= 1
    (run / "report-validation" / "headline.json").write_text(json.dumps(stale))
    assert stored_headline(run, "validation") is None
    stale["fingerprint"] = headline_fingerprint(run) | {"dense": "retrained"}
    (run / "report-validation" / "headline.json").write_text(json.dumps(stale))
    assert stored_headline(run, "validation") is None
