"""Run configuration: frozen dataclasses, loaded from YAML, overridden by ``key=value``.

Unknown keys are errors naming the key; the resolved config is saved in the run directory.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from xelm.errors import XelmError
from xelm.files import write_text

ARCHS = ("modernbert", "bert")
MAX_STEPS = 10_000_000  # more is a typo (a token budget of 1e12), not a run anyone waits for
SEED_LIMIT = 2**32  # numpy's and JAX's generators take seeds in [0, 2**32)


def check_seed(seed: int, name: str) -> int:
    """``seed`` in [0, 2**32): another one fails deep inside numpy or JAX, mid-run."""
    if not 0 <= seed < SEED_LIMIT:
        raise XelmError(f"{name} {seed} is out of range: give a seed from 0 to {SEED_LIMIT - 1}")
    return seed


def _check_finite(obj, section: str) -> None:
    """Every float field of a config section is a finite number: NaN or infinity in a config
    trains garbage that looks like success."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise XelmError(f"{section}.{f.name} is {v}: give a finite number")


@dataclass(frozen=True)
class ModelConfig:
    """One encoder with options: ``modernbert`` (RoPE, pre-norm, GeGLU, local/global attention,
    no biases) or ``bert`` (learned positions, post-norm, GELU, biases; BERT / XLM-R)."""

    arch: str = "modernbert"
    vocab_size: int = 16384
    hidden: int = 256
    layers: int = 4
    heads: int = 4
    ffn: int = 512
    max_len: int = 512
    local_window: int = 128  # total width of a local layer's window; 0: every layer global
    global_every: int = 3  # layer i is global when i % global_every == 0
    rope_theta: float = 160_000.0
    rope_theta_local: float = 10_000.0
    norm_eps: float = 1e-5
    bias: bool = False  # biases of linear layers and norms
    decoder_bias: bool = True
    head_bias: bool = False  # the MLM head's dense layer
    activation: str = "gelu"  # gelu (exact) | gelu_tanh
    type_vocab_size: int = 0  # BERT token-type embeddings (0: none)
    position_offset: int = 0  # XLM-R numbers positions from padding_idx + 1 = 2
    pad_token_id: int = 0
    init_std: float = 0.02
    dtype: str = "auto"  # compute dtype: auto = bfloat16 on accelerators, float32 on CPU

    def __post_init__(self):
        _check_finite(self, "model")
        if self.arch not in ARCHS:
            raise XelmError(f"model.arch {self.arch!r} is not one of {', '.join(ARCHS)}")
        for name in ("vocab_size", "hidden", "layers", "heads", "ffn", "max_len", "global_every"):
            if getattr(self, name) < 1:
                raise XelmError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.heads or (self.hidden // self.heads) % 2:
            raise XelmError(f"model.hidden {self.hidden} must split into {self.heads} heads of even size")
        if self.activation not in ("gelu", "gelu_tanh"):
            raise XelmError(f"model.activation {self.activation!r} is not gelu or gelu_tanh")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise XelmError(f"model.dtype {self.dtype!r} is not auto, float32 or bfloat16")
        if self.local_window < 0 or self.local_window % 2:
            raise XelmError(f"model.local_window must be 0 (every layer global) or a positive even width, "
                            f"got {self.local_window}")
        for name in ("type_vocab_size", "position_offset", "pad_token_id"):
            if getattr(self, name) < 0:
                raise XelmError(f"model.{name} must be >= 0, got {getattr(self, name)}")
        if not (self.rope_theta > 0 and self.rope_theta_local > 0 and self.norm_eps > 0 and self.init_std > 0):
            raise XelmError("model.rope_theta, rope_theta_local, norm_eps and init_std must be positive")

    @property
    def pre_norm(self) -> bool:
        return self.arch == "modernbert"

    @property
    def rope(self) -> bool:
        return self.arch == "modernbert"

    @property
    def gated_mlp(self) -> bool:
        return self.arch == "modernbert"

    def is_global(self, layer: int) -> bool:
        return self.arch == "bert" or self.local_window == 0 or layer % self.global_every == 0


@dataclass(frozen=True)
class TokenizerConfig:
    vocab_size: int = 16384
    temperature: float = 0.3
    chars: int = 2_000_000

    def __post_init__(self):
        _check_finite(self, "tokenizer")
        if self.vocab_size < 1 or self.chars < 1 or not 0 < self.temperature <= 1:
            raise XelmError(f"tokenizer: vocab_size and chars must be >= 1 and temperature in (0, 1] (got "
                            f"{self.vocab_size}, {self.chars}, {self.temperature})")


@dataclass(frozen=True)
class DataConfig:
    corpus: str = "udhr"
    languages: tuple[str, ...] | None = None  # None: every language of the corpus
    exclude_languages: tuple[str, ...] = ()  # held out of pre-training (e.g. for HMR)
    seq_len: int = 128
    batch_size: int = 32

    def __post_init__(self):
        if self.seq_len < 8 or self.batch_size < 1:
            raise XelmError(f"data.seq_len must be >= 8 and data.batch_size >= 1, got "
                            f"{self.seq_len} and {self.batch_size}")


@dataclass(frozen=True)
class Stage:
    """One curriculum stage (mmBERT): runs until fraction ``until`` of all steps."""

    name: str
    until: float
    languages: tuple[str, ...] | str = "all"
    mask_ratio: float = 0.15
    temperature: float = 0.5

    def __post_init__(self):
        _check_finite(self, f"curriculum stage {self.name!r}")
        if not 0 < self.until <= 1:
            raise XelmError(f"curriculum stage {self.name!r}: until={self.until} must be in (0, 1]")
        if not 0 < self.mask_ratio < 1:
            raise XelmError(f"curriculum stage {self.name!r}: mask_ratio={self.mask_ratio} must be in (0, 1)")
        if not 0 < self.temperature <= 1:
            raise XelmError(f"curriculum stage {self.name!r}: temperature={self.temperature} must be in (0, 1]")
        if isinstance(self.languages, str) and self.languages != "all":
            raise XelmError(f"curriculum stage {self.name!r}: languages must be 'all' or a list of codes")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    lr: float = 1e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    b1: float = 0.9
    b2: float = 0.98
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2

    def __post_init__(self):
        _check_finite(self, "train")
        check_seed(self.seed, "train.seed")
        if self.steps < 1 or self.warmup_steps < 0 or self.lr <= 0:
            raise XelmError(f"train: steps must be >= 1, warmup_steps >= 0 and lr > 0 "
                            f"(got {self.steps}, {self.warmup_steps}, {self.lr})")
        if self.log_every < 1 or self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise XelmError("train: log_every, checkpoint_every and keep_checkpoints must be >= 1")
        if self.steps > MAX_STEPS:
            raise XelmError(f"train.steps {self.steps:,} is over {MAX_STEPS:,}: that is not a run that ends; "
                            "give fewer steps")
        if not (0 <= self.min_lr_ratio <= 1 and 0 <= self.b1 < 1 and 0 <= self.b2 < 1 and self.weight_decay >= 0
                and self.clip_norm > 0):
            raise XelmError("train: min_lr_ratio must be in [0, 1], b1 and b2 in [0, 1), weight_decay >= 0 and "
                            "clip_norm > 0")


ENSEMBLES = ("tfidf@1", "tfidf@2", "tfidf@all", "language@1", "language@2", "posterior@1", "posterior@2")


@dataclass(frozen=True)
class ExpertConfig:
    """How experts are made: the cluster plan, each expert's token budget and its training."""

    method: str = "typology"  # typology | tfidf | model
    k: int = 4
    balanced: bool = True
    features: str | None = None  # typology feature sets and weights, e.g. "syntax_knn:0.5,fam:0.5"
    by_script: bool = False  # never put languages of different main scripts in one cluster
    tokens: int = 200_000  # tokens each expert trains on (the dense baseline gets the sum)
    hmr_tokens: int = 50_000  # tokens for each held-out language added later by HMR
    lr: float = 1e-3
    # Schedule shape as fractions of each model's own steps, so an expert and the dense baseline
    # (many more steps) warm up and decay over the same share of their training.
    warmup_fraction: float = 0.1
    decay_fraction: float = 0.2
    mask_ratio: float = 0.15
    temperature: float = 0.5
    # The evaluation's headline ensemble, router@experts kept: chosen on the validation split
    # (`xelm evaluate --split validation` scores every one of ENSEMBLES), never on test.
    ensemble: str = "tfidf@1"

    def __post_init__(self):
        _check_finite(self, "experts")
        if self.ensemble not in ENSEMBLES:
            raise XelmError(f"experts.ensemble {self.ensemble!r} is not one of {', '.join(ENSEMBLES)}")
        if not (0 <= self.warmup_fraction < 1 and 0 < self.decay_fraction < 1
                and self.warmup_fraction + self.decay_fraction <= 1):
            raise XelmError(f"experts: warmup_fraction and decay_fraction must be in [0, 1) and (0, 1) and sum "
                            f"to at most 1 (got {self.warmup_fraction}, {self.decay_fraction})")
        if self.method not in ("typology", "tfidf", "model"):
            raise XelmError(f"experts.method {self.method!r} is not typology, tfidf or model")
        if self.k < 1 or self.tokens < 1 or self.hmr_tokens < 1 or self.lr <= 0:
            raise XelmError(f"experts: k, tokens, hmr_tokens and lr must be positive "
                            f"(got {self.k}, {self.tokens}, {self.hmr_tokens}, {self.lr})")
        if not 0 < self.mask_ratio < 1 or not 0 < self.temperature <= 1:
            raise XelmError("experts: mask_ratio must be in (0, 1) and temperature in (0, 1]")


def _default_curriculum() -> tuple[Stage, ...]:
    return (Stage("pretrain", 0.6, "all", 0.30, 0.7), Stage("mid", 0.85, "all", 0.15, 0.5),
            Stage("decay", 1.0, "all", 0.05, 0.3))


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    curriculum: tuple[Stage, ...] = field(default_factory=_default_curriculum)
    train: TrainConfig = field(default_factory=TrainConfig)
    experts: ExpertConfig = field(default_factory=ExpertConfig)

    def __post_init__(self):
        ends = [s.until for s in self.curriculum]
        if not ends or ends != sorted(ends) or ends[-1] != 1.0:
            raise XelmError(f"curriculum: stage 'until' values must increase and end at 1.0, got {ends}")
        if self.data.seq_len > self.model.max_len:
            raise XelmError(f"data.seq_len ({self.data.seq_len}) is longer than model.max_len "
                            f"({self.model.max_len}): lower data.seq_len or raise model.max_len")
        if self.model.vocab_size != self.tokenizer.vocab_size:
            raise XelmError(f"model.vocab_size ({self.model.vocab_size}) must equal "
                            f"tokenizer.vocab_size ({self.tokenizer.vocab_size})")


# ------------------------------------------------------------------------- (de)serialising
def _build(tp, value, path: str):
    """Turn plain YAML data into ``tp`` (a dataclass, tuple, optional or scalar type)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise XelmError(f"config {path or 'root'}: expected a mapping, got {value!r}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(str(k) for k in value if k not in names)  # str: YAML keys may be numbers
        if unknown:
            key = f"{path}.{unknown[0]}" if path else unknown[0]
            raise XelmError(f"unknown config key {key!r} (known here: {', '.join(sorted(names))})")
        required = [f.name for f in dataclasses.fields(tp)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in value]
        if missing:
            raise XelmError(f"config {path or 'root'}: {missing[0]!r} is missing "
                            f"(required here: {', '.join(required)})")
        return tp(**{k: _build(hints[k], v, f"{path}.{k}".strip(".")) for k, v in value.items()})
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _build(a, value, path)
            except XelmError as e:
                errors.append(str(e))
        raise XelmError(errors[-1] if errors else f"config {path}: bad value {value!r}")
    if origin is tuple:
        item = typing.get_args(tp)[0]
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise XelmError(f"config {path}: expected a list, got {value!r}")
        return tuple(_build(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)  # nan and inf go on to the section's finiteness check
        except ValueError:
            pass
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise XelmError(f"config {path}: expected {tp.__name__}, got {value!r}")
    return value


def to_dict(cfg) -> dict:
    def plain(x):
        if isinstance(x, tuple):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x
    return plain(dataclasses.asdict(cfg))


def from_dict(data: dict, cls=RunConfig):
    return _build(cls, data or {}, "")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``train.steps=50`` style overrides on plain config data (values parsed as YAML)."""
    data = dict(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise XelmError(f"override {item!r} is not key=value (e.g. train.steps=50)")
        node = data
        *parents, leaf = key.split(".")
        for i, p in enumerate(parents):
            if node.get(p) is not None and not isinstance(node[p], dict):
                raise XelmError(f"override {item!r}: {'.'.join(parents[:i + 1])} is a value, not a section "
                                f"(e.g. train.steps=50)")
            node[p] = dict(node.get(p) or {})
            node = node[p]
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise XelmError(f"override {item!r}: the value is not valid YAML") from None
    return data


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    data = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise XelmError(f"config file {path} not found")
        try:
            data = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
        except UnicodeDecodeError:
            raise XelmError(f"config file {path} is not UTF-8 text; save it as UTF-8") from None
        except OSError as e:
            raise XelmError(f"config file {path} cannot be read: {e.strerror}") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise XelmError(f"config file {path} is not valid YAML{where}: "
                            f"{getattr(e, 'problem', None) or type(e).__name__}; fix the file") from None
        if not isinstance(data, dict):
            raise XelmError(f"config file {path} must hold a mapping at the top")
    return from_dict(apply_overrides(data, list(overrides)))


def save_config(cfg: RunConfig, path: str | Path) -> None:
    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
