"""Data parallelism on JAX's own runtime: two processes on this machine joined by
``jax.distributed.initialize`` (loopback coordinator, one CPU device each), and one process over
two local devices, pre-train with the same losses as one device on the same global batch; the
pair's checkpoint resumes in the two-device process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "udhr-tiny.yaml"

LANGUAGES = ["eng", "fra", "deu", "rus", "cmn", "arb", "hin", "swh", "jpn", "spa"]
WORKER = """
import json, sys
import jax
n, i, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if n > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=n, process_id=i)
from xelm.batches import TokenizedCorpus
from xelm.config import load_config
from xelm.data import load_corpus
from xelm.tokenizer import load_tokenizer
from xelm.train import train
cfg = load_config(sys.argv[4], sys.argv[7:])
tok = load_tokenizer(sys.argv[5])
split = load_corpus("udhr", languages=LANGUAGES)["train"]
corpus = TokenizedCorpus.from_texts(tok, split["lang"][:], split["text"][:])
out = {"processes": jax.process_count(), "devices": jax.device_count()}
for spec in sys.argv[6].split(","):  # run_dir:max_steps
    run_dir, steps = spec.rsplit(":", 1)
    r = train(cfg, corpus, run_dir, mask_id=tok.mask_token_id, max_steps=int(steps), progress=False)
    rows = [json.loads(x) for x in open(f"{run_dir}/metrics.jsonl")] if jax.process_index() == 0 else []
    out[run_dir] = {"losses": [x["loss"] for x in rows], "resumed_from": r.resumed_from, "step": r.step}
print(json.dumps(out))
""".replace("LANGUAGES", repr(LANGUAGES))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp_path: Path) -> Path:
    """The tiny config with two curriculum stages of one mask ratio: a stage change within the
    run (the resumed step is in the second) and one compiled step per process, not three."""
    cfg = yaml.safe_load(TINY.read_text())
    cfg["curriculum"] = [{"name": "first", "until": 0.5, "languages": LANGUAGES[:5], "mask_ratio": 0.3,
                          "temperature": 0.7},
                         {"name": "second", "until": 1.0, "languages": LANGUAGES, "mask_ratio": 0.3,
                          "temperature": 0.5}]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _workers(n: int, runs: str, config: Path, tokenizer: Path, overrides: list[str], devices: int = 1) -> list[dict]:
    """``n`` processes of ``devices`` CPU devices each, training the ``run_dir:max_steps`` list ``runs``."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": flags}
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(n), str(i), port, str(config), str(tokenizer), runs,
                               *overrides], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(n)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    return outs


def test_two_processes_train_like_one_and_their_checkpoint_resumes_in_one(tmp_path, tiny_tokenizer, tiny_overrides):
    overrides = [*tiny_overrides, "train.steps=4", "train.log_every=1", "train.checkpoint_every=3",
                 "train.warmup_steps=1"]
    # The reference: one device (this process), 4 steps.
    from xelm.batches import TokenizedCorpus
    from xelm.config import load_config
    from xelm.data import load_corpus
    from xelm.tokenizer import load_tokenizer
    from xelm.train import train

    tok = load_tokenizer(tiny_tokenizer)
    split = load_corpus("udhr", languages=LANGUAGES)["train"]
    ref_dir, config = tmp_path / "reference", _config(tmp_path)
    train(load_config(config, overrides), TokenizedCorpus.from_texts(tok, split["lang"][:], split["text"][:]), ref_dir,
          mask_id=tok.mask_token_id, max_steps=4, progress=False)
    logged = [json.loads(x) for x in (ref_dir / "metrics.jsonl").read_text().splitlines()]
    reference = [x["loss"] for x in logged]
    assert [x["stage"] for x in logged] == ["first", "first", "second", "second"]

    pair = _workers(2, f"{tmp_path / 'pair'}:3", config, tiny_tokenizer, overrides)
    assert [o["processes"] for o in pair] == [2, 2] and pair[0]["devices"] == 2
    assert pair[0][str(tmp_path / "pair")]["losses"] == pytest.approx(reference[:3], rel=1e-4)
    # One process over two local devices: the same 4 steps from scratch, then the pair's run
    # resumed from its step-3 checkpoint.
    (one,) = _workers(1, f"{tmp_path / 'one'}:4,{tmp_path / 'pair'}:4", config, tiny_tokenizer, overrides,
                      devices=2)
    assert one["processes"] == 1 and one["devices"] == 2
    assert one[str(tmp_path / "one")]["losses"] == pytest.approx(reference, rel=1e-4)
    resumed = one[str(tmp_path / "pair")]
    assert resumed["resumed_from"] == 3 and resumed["step"] == 4
    assert resumed["losses"] == pytest.approx(reference, rel=1e-4)
