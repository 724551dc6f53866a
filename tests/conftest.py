"""Shared fixtures: the embedded corpus and one tiny tokenizer, base and expert run, each built
once per test session, however many pytest-xdist workers run it."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

# One compilation cache for this test session, its workers and every `xelm` process they start:
# a program one test compiled loads from disk wherever it is compiled again (a new trainer, a
# subprocess). Never the user's own cache, so a run of the suite neither reads nor fills it.
if "PYTEST_XDIST_WORKER" not in os.environ:  # the session's first process; workers inherit it
    os.environ["XELM_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="xelm-test-jax-cache-")
    atexit.register(shutil.rmtree, os.environ["XELM_COMPILATION_CACHE"], ignore_errors=True)
    # The tests' programs are tiny: compiling them costs far more than running them, and LLVM at
    # -O0 compiles XLA's kernels much sooner. XLA's own optimizations (fusion, layout,
    # simplification) are unchanged; floats may differ from a default build's in the last bits,
    # and no test depends on those bits. Subprocesses inherit it (README, "Layout": the figures).
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()

from xelm.compilecache import enable_compilation_cache  # noqa: E402
from xelm.data import load_corpus  # noqa: E402

enable_compilation_cache()


# The order in which pytest-xdist hands modules to workers (`--dist=loadfile --no-loadscope-reorder`
# in pyproject.toml): the longest first, so that no worker is left with one long module at the end;
# the first needs the shared tiny runs and builds them, while the next ones need none and keep the
# other worker busy meanwhile. Modules not named follow in name order.
LONGEST_FIRST = ["test_reliability", "test_model", "test_clustering", "test_serve", "test_hf", "test_cli_usability",
                 "test_pipeline", "test_train", "test_multiprocess", "test_benchmarks", "test_security",
                 "test_routing", "test_experts", "test_properties", "test_evaluation"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: each module keeps its order


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """``build(path)`` once per test session: the first worker to ask builds it under a file
    lock, the others wait and reuse it (a failed build is retried from scratch by the next)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's folder, above each worker's own
    path, done = base / name, base / f"{name}.done"
    with FileLock(f"{path}.lock"):
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            build(path)
            done.touch()
    return path


@pytest.fixture(scope="session")
def udhr():
    """The embedded UDHR corpus: a DatasetDict with train/validation/test splits."""
    return load_corpus("udhr")


@pytest.fixture(scope="session")
def tiny_tokenizer(udhr, tmp_path_factory) -> Path:
    """Directory of a Unigram tokenizer (vocab 800, byte fallback) trained on ~150k characters
    of temperature-sampled UDHR train text; load it with ``xelm.tokenizer.load_tokenizer`` or
    ``AutoTokenizer.from_pretrained``. Do not write into it (other tests share it)."""
    from xelm.data import texts_by_lang
    from xelm.tokenizer import train_tokenizer

    def build(out: Path) -> None:
        train_tokenizer(texts_by_lang(udhr["train"]), 800, out, temperature=0.3, n_chars=150_000, seed=0, show_progress=False)

    return built_once(tmp_path_factory, "tiny_tokenizer", build)


ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "udhr-tiny.yaml"
EXPERT_LANGUAGES = ["eng", "deu", "nld", "fra", "spa", "ita"]


@pytest.fixture(scope="session")
def tiny_overrides(tiny_tokenizer) -> list[str]:
    """Config overrides that fit configs/udhr-tiny.yaml to the tiny tokenizer and keep expert
    budgets to a couple of steps."""
    from xelm.tokenizer import load_tokenizer

    v = len(load_tokenizer(tiny_tokenizer))
    return [f"model.vocab_size={v}", f"tokenizer.vocab_size={v}", "experts.tokens=1024",
            "experts.hmr_tokens=512", "experts.k=2"]


@pytest.fixture(scope="session")
def tiny_base_run(tiny_tokenizer, tiny_overrides, tmp_path_factory) -> Path:
    """A run directory with the tiny base encoder pre-trained to the end (30 steps) and the
    language identifier fitted (``DIR/router/langid``).
    Read-only for tests: copy it (``shutil.copytree``) before writing into it."""
    from routing.langid import load_or_fit
    from xelm.config import load_config
    from xelm.pretrain import pretrain

    def build(run: Path) -> None:
        shutil.copytree(tiny_tokenizer, run / "tokenizer")
        pretrain(load_config(TINY_CONFIG, tiny_overrides), run, progress=False)
        load_or_fit(run)  # the language identifier, fitted once here rather than in every copy that routes

    return built_once(tmp_path_factory, "tiny_base_run", build)


@pytest.fixture(scope="session")
def tiny_expert_run(tiny_base_run, tmp_path_factory) -> Path:
    """The tiny base plus a typology plan of six languages (k=2) and both experts registered.
    Read-only for tests: copy it before writing into it."""
    from clustering import plan
    from experts.training import train_all

    def build(run: Path) -> None:
        shutil.copytree(tiny_base_run, run)
        (run / "clusters.json").write_text(json.dumps(plan(EXPERT_LANGUAGES, method="typology", k=2)))
        train_all(run, progress=False)

    return built_once(tmp_path_factory, "tiny_expert_run", build)


def start_xelm(argv: list[str], log: Path) -> subprocess.Popen:
    """``python -m xelm ARGV`` as a real process of its own session, its output into ``log``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "xelm", *argv], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=env, cwd=ROOT, start_new_session=True)


def kill_when(proc: subprocess.Popen, ready, log: Path, timeout: float = 300) -> None:
    """SIGKILL the process (no clean-up of any kind) as soon as ``ready()``."""
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, f"the process ended before it could be killed:\n{log.read_text()[-3000:]}"
        assert time.time() - t0 < timeout, "timed out waiting to kill"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
