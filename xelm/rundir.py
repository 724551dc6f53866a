"""A run directory is self-describing: the resolved config, package versions, and each stage's
outputs in its own folder. ``RunDir`` is the one owner of every path inside it; nobody else
spells ``"base" / "model"``.

    config.yaml  versions.json  tokenizer/  base/{model,summary.json,metrics.jsonl}
    clusters.json  experts/<name>/  registry/  baseline/{model,summary.json}
    controls/<parent>-<lang>/  router/  report/  demo.json
"""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
from pathlib import Path

import yaml

from xelm.config import RunConfig, from_dict, save_config, to_dict
from xelm.errors import XelmError
from xelm.files import inside, read_json, write_json
from xelm.tokenizer import load_tokenizer
from xelm.weights import load_weights

PACKAGES = ("xelm", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers",
            "tokenizers", "datasets", "lang2vec")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


class RunDir:
    """Paths and loaders of one run directory."""

    def __init__(self, root: str | Path | RunDir):
        self.root = root.root if isinstance(root, RunDir) else Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    def __str__(self) -> str:
        return str(self.root)

    # ---------------------------------------------------------------------- paths
    @property
    def config_file(self) -> Path:
        return self.root / "config.yaml"

    @property
    def versions_file(self) -> Path:
        return self.root / "versions.json"

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def base_dir(self) -> Path:
        return self.root / "base"

    @property
    def base_model(self) -> Path:
        return self.base_dir / "model"

    @property
    def base_summary_file(self) -> Path:
        return self.base_dir / "summary.json"

    @property
    def plan_file(self) -> Path:
        return self.root / "clusters.json"

    @property
    def registry_dir(self) -> Path:
        return self.root / "registry"

    @property
    def baseline_dir(self) -> Path:
        return self.root / "baseline"

    @property
    def dense_model(self) -> Path:
        return self.baseline_dir / "model"

    @property
    def dense_summary_file(self) -> Path:
        return self.baseline_dir / "summary.json"

    @property
    def router_dir(self) -> Path:
        return self.root / "router"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def report_for(self, split: str) -> Path:
        """The evaluation of a split: ``report/`` for test (what the README quotes),
        ``report-validation/`` for the split that chooses configurations."""
        return self.report_dir if split == "test" else self.root / f"report-{split}"

    @property
    def demo_summary_file(self) -> Path:
        return self.root / "demo.json"

    def expert_work(self, name: str) -> Path:
        """Where an expert trains before it is registered (checkpoints, log)."""
        return inside(self.root, "experts", name)

    def control(self, parent: str, language: str) -> Path:
        """A new language's yardstick model (``parent`` branched or continued on it)."""
        return inside(self.root, "controls", f"{parent}-{language}")

    def control_model(self, parent: str, language: str) -> Path:
        return self.control(parent, language) / "model"

    def control_summary_file(self, parent: str, language: str) -> Path:
        return self.control(parent, language) / "summary.json"

    # -------------------------------------------------------------------- loaders
    def is_run(self) -> bool:
        return self.config_file.is_file()

    def prepare(self, cfg: RunConfig) -> RunDir:
        """Create the run or check that it was made with the same config (resuming is safe)."""
        if self.config_file.exists():
            old = self.config()
            if to_dict(old) != to_dict(cfg):
                diff = _first_difference(to_dict(old), to_dict(cfg))
                raise XelmError(f"run directory {self.root} was made with a different config ({diff}); "
                                "use a new --run-dir, or the same config to resume")
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.config_file)
            write_json(self.versions_file, versions())
        return self

    def adopt_base(self, source: str | Path | RunDir, cfg: RunConfig) -> RunDir:
        """Start this (new) run from ``source``'s finished tokenizer and base encoder: an ablation
        of the expert stages (clusters, k, budgets) without pre-training again. The configs must
        agree on everything but ``experts``, so the base is exactly what this config would train."""
        source = RunDir(source)
        if self.root.exists() and any(self.root.iterdir()):
            raise XelmError(f"--base-from needs a new run directory, and {self.root} is not empty; "
                            "give a new --run-dir")
        if not source.has_base() or not source.base_summary().get("complete"):
            raise XelmError(f"{source.root} has no finished base encoder to start from: run `xelm pretrain "
                            f"--run-dir {source.root}` to the end first")
        mine, theirs = to_dict(cfg), to_dict(source.config())
        mine.pop("experts"), theirs.pop("experts")
        if mine != theirs:
            raise XelmError(f"--base-from {source.root}: its base was trained under another config "
                            f"({_first_difference(theirs, mine)}); only the experts section may differ")
        # The config is written last: a copy cut short leaves no run that would pre-train anew.
        shutil.copytree(source.tokenizer_dir, self.tokenizer_dir)
        shutil.copytree(source.base_dir, self.base_dir, ignore=shutil.ignore_patterns("checkpoints"))
        return self.prepare(cfg)

    def config(self) -> RunConfig:
        if not self.config_file.is_file():
            raise XelmError(f"{self.root} is not an xelm run directory (no config.yaml); "
                            "create one with `xelm pretrain --run-dir` or `xelm demo --run-dir`")
        try:
            data = yaml.safe_load(self.config_file.read_bytes().decode("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
            raise XelmError(f"{self.config_file} is damaged ({type(e).__name__}); restore it or start "
                            "a new run directory") from None
        return from_dict(data)

    def tokenizer(self):
        if not (self.tokenizer_dir / "tokenizer.json").is_file():
            raise XelmError(f"no tokenizer in {self.root}: run `xelm pretrain --run-dir {self.root}` first")
        return load_tokenizer(self.tokenizer_dir)

    def base_summary(self) -> dict:
        return read_json(self.base_summary_file, "base summary",
                         f"re-run `xelm pretrain --run-dir {self.root}`")

    def has_base(self) -> bool:
        return (self.base_model / "model.json").is_file()

    def base(self):
        if not self.has_base():
            raise XelmError(f"no finished base encoder in {self.root}: run `xelm pretrain --run-dir "
                            f"{self.root}` to the end first")
        return load_weights(self.base_model, name="the base encoder")

    def has_dense(self) -> bool:
        return (self.dense_model / "model.json").is_file() and self.dense_summary_file.is_file()

    def dense_summary(self) -> dict:
        return read_json(self.dense_summary_file, "dense baseline summary",
                         f"delete {self.baseline_dir} and re-run `xelm baseline --run-dir {self.root}`")

    def dense(self):
        if not (self.dense_model / "model.json").is_file():
            raise XelmError(f"no dense baseline in {self.root}: run `xelm baseline --run-dir {self.root}` first")
        return load_weights(self.dense_model, name="the dense baseline")

    def plan(self) -> dict:
        if not self.plan_file.is_file():
            raise XelmError(f"no cluster plan at {self.plan_file}: run `xelm cluster --run-dir {self.root} ...` first")
        plan = read_json(self.plan_file, "cluster plan", f"re-create it with `xelm cluster --run-dir {self.root}`")
        clusters = plan.get("clusters")
        if not isinstance(clusters, dict) or not all(
                isinstance(m, list) and all(isinstance(x, str) for x in m) for m in clusters.values()):
            raise XelmError(f"cluster plan {self.plan_file} is damaged: 'clusters' must map names to lists "
                            f"of language codes; re-create it with `xelm cluster --run-dir {self.root}`")
        return plan


def load_run_config(run_dir: str | Path | RunDir) -> RunConfig:
    return RunDir(run_dir).config()


def prepare(run_dir: str | Path | RunDir, cfg: RunConfig) -> Path:
    return RunDir(run_dir).prepare(cfg).root


def _first_difference(a, b, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}".strip("."))
    return f"{path}: {a!r} there, {b!r} now"
