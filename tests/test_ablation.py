"""Ablations of the expert stages start from one finished base (``RunDir.adopt_base``, ``xelm demo
--base-from``): only ``experts.*`` may differ, and nothing is written over."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import TINY_CONFIG

from xelm.config import load_config, to_dict
from xelm.errors import XelmError
from xelm.pretrain import pretrain
from xelm.rundir import RunDir


def test_a_new_run_adopts_a_finished_base_when_only_experts_differ(tiny_base_run, tiny_overrides, tmp_path):
    cfg = load_config(TINY_CONFIG, tiny_overrides + ["experts.k=3", "experts.by_script=true"])
    run = RunDir(tmp_path / "k3").adopt_base(tiny_base_run, cfg)
    assert run.config().experts.k == 3 and run.config().model == RunDir(tiny_base_run).config().model
    assert (run.base_model / "model.json").read_bytes() == (RunDir(tiny_base_run).base_model / "model.json").read_bytes()
    assert not (run.base_dir / "checkpoints").exists()
    assert pretrain(cfg, run.root, progress=False)["skipped"]  # the base is complete: nothing trains

    other = load_config(TINY_CONFIG, tiny_overrides + ["train.lr=0.5"])
    with pytest.raises(XelmError, match="train.lr"):
        RunDir(tmp_path / "lr").adopt_base(tiny_base_run, other)
    assert not (tmp_path / "lr").exists()
    with pytest.raises(XelmError, match="not empty"):
        RunDir(tmp_path / "k3").adopt_base(tiny_base_run, cfg)
    with pytest.raises(XelmError, match="no finished base"):
        RunDir(tmp_path / "x").adopt_base(tmp_path / "k3" / "tokenizer", cfg)


def test_demo_base_from_refuses_a_base_of_another_config_in_one_line(tiny_base_run, tiny_overrides, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "xelm", "demo", "--config", str(TINY_CONFIG), "--run-dir",
                           str(tmp_path / "new"), "--base-from", str(tiny_base_run), *tiny_overrides,
                           "train.lr=0.5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "train.lr" in proc.stderr and not (tmp_path / "new").exists()


def test_the_study_config_takes_the_demo_base():
    # `xelm demo --config configs/udhr-study.yaml --base-from DEMO_RUN` must be accepted: the two
    # configs differ in experts only, and the study's experts train longer than the demo's.
    configs = TINY_CONFIG.parent
    demo, study = (to_dict(load_config(configs / name)) for name in ("udhr-demo.yaml", "udhr-study.yaml"))
    demo_experts, study_experts = demo.pop("experts"), study.pop("experts")
    assert demo == study
    assert study_experts["tokens"] > demo_experts["tokens"]
