"""The train-step and scoring benchmarks the README quotes still run against the current code (one broke
silently when the trainer's compiled step moved): each script's ``main`` at a tiny shape."""

from __future__ import annotations

import runpy
import sys

import pytest
from conftest import ROOT

TINY = ["--vocab", "64", "--hidden", "16", "--layers", "2", "--heads", "2", "--ffn", "32", "--seq", "16",
        "--batch", "4", "--local-window", "8"]


@pytest.mark.parametrize("script, extra, expect", [
    ("train_profile.py", ["--steps", "2", "--top", "3"], ["GEMM floor", "forward   (all)", "backward  (all)"]),
    ("train_throughput.py", ["--steps", "1", "--rounds", "1"], ["tokens/s", "utilization of that peak"]),
    ("train_throughput.py", ["--steps", "1", "--rounds", "2", "--compare-torch"], ["HF torch", "ratio per round"]),
    ("scoring_profile.py", ["--calls", "1", "--top", "2", "--experts", "2"], ["model-tokens/s", "op class"]),
    ("gemm_shapes.py", ["--reps", "1"], ["head table gradient", "JAX/torch"]),
    ("host_memory.py", ["--warmup", "1", "--steps", "1", "--rounds", "1"], ["kept/system", "faults/step"]),
])
def test_train_benchmark_runs(script, extra, expect, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [script, *TINY, *extra])
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    runpy.run_path(str(ROOT / "benchmarks" / script), run_name="__main__")
    out = capsys.readouterr().out
    for text in expect:
        assert text in out, out


def test_packed_attention_offsets_follow_cudnns_packed_layout(monkeypatch):
    """The GPU probe's segment lengths and offsets (the part that runs anywhere): -1 past a row's
    last segment, padding in no segment, the trailing slot always -1 (an end offset there made
    cuDNN read past the batch: the last segment's gradients came back NaN)."""
    import jax.numpy as jnp
    import numpy as np
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from packed_attention import segment_offsets

    seg = np.zeros((2, 12), np.int32)
    seg[0] = [1, 1, 1, 2, 2, 3, 3, 3, 3, 4, 4, 4]
    seg[1, :7] = [1, 1, 1, 1, 2, 2, 2]  # two segments, then padding
    lens, offsets = segment_offsets(jnp.asarray(seg), 5)
    assert np.asarray(lens).tolist() == [[3, 2, 4, 3, -1], [4, 3, -1, -1, -1]]
    assert np.asarray(offsets).tolist() == [[0, 3, 5, 9, -1, -1], [0, 4, -1, -1, -1, -1]]
