"""Branch-train: copy a parent (the base or an expert), train it on some languages only for an
explicit token budget, register it. Also the equal-compute dense baseline and HMR additions."""

from __future__ import annotations

import dataclasses
import math
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from clustering.build import main_scripts
from clustering.naming import slug
from experts.plan_integrity import check_dense_matches, check_experts_match_plan, plan_fingerprint
from experts.registry import check_name, run_registry
from experts.typology import nearest_expert, typology_centroid
from xelm.batches import VALIDATION_SEED, TokenizedCorpus, make_batch
from xelm.config import MAX_STEPS, RunConfig, Stage, to_dict
from xelm.curriculum import stage_index, stage_probabilities
from xelm.data import columns, load_corpus, texts_by_lang
from xelm.data.writing_systems import dominant_script
from xelm.errors import XelmError
from xelm.files import claim_work_folder, read_json, write_json
from xelm.languages import parse_language_list
from xelm.model import Encoder
from xelm.rundir import RunDir
from xelm.train import evaluate_loss, train
from xelm.weights import checksum, save_weights

EVAL_BATCHES = 4
BatchSource = Callable[[int], tuple]  # step -> (batch, tokens by language), as ``train(batch_source=)`` takes


def check_tokens(tokens: int | None, default: int | None = None) -> int:
    """A token budget: ``tokens`` if given (a positive whole number), else ``default``."""
    if tokens is None and default is not None:
        return default
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise XelmError(f"--tokens {tokens!r} is out of range: give a positive token budget (tokens to train on)")
    return tokens


def budget_config(cfg: RunConfig, languages: list[str], tokens: int) -> RunConfig:
    """The run config for training on ``languages`` for ``tokens`` tokens (rounded up to steps).
    Warmup and decay are fractions of the model's own steps: every model compared (an expert,
    the dense baseline with the sum of their steps) has the same schedule shape."""
    tokens = check_tokens(tokens)
    ec, per_step = cfg.experts, cfg.data.batch_size * cfg.data.seq_len
    steps = math.ceil(tokens / per_step)
    if steps > MAX_STEPS:
        raise XelmError(f"--tokens {tokens:,} is {steps:,} steps of {per_step:,} tokens, over {MAX_STEPS:,}: "
                        "give a budget that ends")
    stages = (Stage("expert", 1.0 - ec.decay_fraction, tuple(languages), ec.mask_ratio, ec.temperature),
              Stage("expert-decay", 1.0, tuple(languages), ec.mask_ratio, ec.temperature))
    tc = dataclasses.replace(cfg.train, steps=steps, lr=ec.lr, warmup_steps=round(ec.warmup_fraction * steps),
                             log_every=max(1, min(cfg.train.log_every, steps // 4)),
                             checkpoint_every=max(1, steps // 2))
    return dataclasses.replace(cfg, curriculum=stages, train=tc)


def budget_batches(bcfg: RunConfig, corpus: TokenizedCorpus, mask_id: int) -> BatchSource:
    """The batch of each step of a :func:`budget_config` run (what ``train`` would draw): the
    experts train on these, and the dense baseline replays them."""
    stages, tc = bcfg.curriculum, bcfg.train
    probs = [stage_probabilities(stage, corpus.sizes()) for stage in stages]

    def source(step: int):
        si = stage_index(step, stages, tc.steps)
        return make_batch(corpus, probs[si], batch_size=bcfg.data.batch_size, seq_len=bcfg.data.seq_len,
                          mask_ratio=stages[si].mask_ratio, mask_id=mask_id, vocab_size=bcfg.model.vocab_size,
                          seed=tc.seed, step=step)
    return source


def interleaved(sources: list[tuple[BatchSource, int]]) -> tuple[BatchSource, int]:
    """One source that plays each (source, steps) to its end, round robin (expert 0's step 0,
    expert 1's step 0, ...): the union of the experts' batches, so every language gets exactly
    the tokens it got from its expert."""
    order = [(e, s) for s in range(max(n for _, n in sources)) for e, (_, n) in enumerate(sources) if s < n]

    def source(step: int):
        e, s = order[step]
        return sources[e][0](s)
    return source, len(order)


def validation_loss(model: Encoder, tokenizer, split, cfg: RunConfig, languages: list[str]) -> float | None:
    """Masked-LM loss on fixed validation batches of ``languages`` (same for every model)."""
    wanted = set(languages)
    langs, texts = columns(split, "lang", "text")
    rows = [i for i, lang in enumerate(langs) if lang in wanted]
    if not rows:
        return None
    corpus = TokenizedCorpus.from_texts(tokenizer, [langs[i] for i in rows], [texts[i] for i in rows])
    probs = {lang: 1 / len(corpus.docs) for lang in corpus.docs}
    batches = [make_batch(corpus, probs, batch_size=cfg.data.batch_size, seq_len=cfg.data.seq_len,
                          mask_ratio=cfg.experts.mask_ratio, mask_id=tokenizer.mask_token_id,
                          vocab_size=cfg.model.vocab_size, seed=VALIDATION_SEED, step=i)[0]
               for i in range(EVAL_BATCHES)]
    return evaluate_loss(model, batches)


def _budget_data(run: RunDir, languages: list[str], tokens: int, corpus_spec: str | None = None):
    """(corpus, tokenized training split, budget config, batch source) for training on ``languages``."""
    cfg, tok = run.config(), run.tokenizer()
    corpus = load_corpus(corpus_spec or cfg.data.corpus, languages=languages)
    split = corpus["train"]
    langs, texts = columns(split, "lang", "text")
    present = set(langs)
    empty = [lang for lang in languages if lang not in present]
    if empty:
        raise XelmError(f"language(s) {', '.join(empty)} have no training text in corpus "
                        f"{corpus_spec or cfg.data.corpus}")
    bcfg = budget_config(cfg, languages, tokens)
    tokenized = TokenizedCorpus.from_texts(tok, langs, texts)
    return corpus, tokenized, bcfg, budget_batches(bcfg, tokenized, tok.mask_token_id)


def _train_copy(run_dir: Path, parent: Encoder, languages: list[str], tokens: int, work: Path,
                corpus_spec: str | None, progress: bool, desc: str, replay: list[dict] | None = None):
    """Train a copy of ``parent`` on ``languages``; returns (result, cfg, validation loss).
    ``replay``: cluster cards whose batches to replay, interleaved, instead of drawing new ones."""
    run = RunDir(run_dir)
    tok = run.tokenizer()
    corpus, tokenized, bcfg, source = _budget_data(run, languages, tokens, corpus_spec)
    split = corpus["train"]
    if replay is not None:
        source, steps = interleaved([_expert_source(run, card) for card in replay])
        bcfg = budget_config(run.config(), languages, steps * bcfg.data.batch_size * bcfg.data.seq_len)
    _claim_work(work, parent, bcfg, languages, corpus_spec)
    result = train(bcfg, tokenized, work, mask_id=tok.mask_token_id, model=parent, progress=progress, desc=desc,
                   batch_source=source)
    val = validation_loss(result.model, tok, corpus["validation"], bcfg, languages)
    return result, bcfg, val, texts_by_lang(split)


def _claim_work(work: Path, parent: Encoder, bcfg: RunConfig, languages: list[str], corpus_spec: str | None) -> None:
    """Checkpoints in ``work`` are resumed only if they were written for this very training
    (parent weights, languages, corpus, config): a folder left under a reused name by another
    training starts clean, and says so."""
    job = {"parent_checksum": checksum(parent), "languages": sorted(languages),
           "corpus": corpus_spec or bcfg.data.corpus, "config": to_dict(bcfg)}
    why = claim_work_folder(work, job)
    if why:
        print(f"xelm: note: {work} held checkpoints of another training ({why}); starting clean",
              file=sys.stderr)


def _expert_source(run: RunDir, card: dict) -> tuple[BatchSource, int]:
    """The batches a registered cluster expert trained on, rebuilt from its card."""
    _, _, bcfg, source = _budget_data(run, card["languages"], card["tokens_trained"])
    recorded = card.get("config") or {}
    if any(recorded.get(k) not in (None, getattr(bcfg.train, k)) for k in ("steps", "seed", "warmup_steps")):
        raise XelmError(f"expert {card['name']} was trained under another schedule than this run's config gives "
                        f"(steps, seed, warmup): its batches cannot be replayed; retrain it or restore the config")
    return source, bcfg.train.steps


def train_expert(run_dir: str | Path, cluster: str, tokens: int | None = None, registry: str | None = None,
                 progress: bool = True) -> dict:
    """Branch the base and train it on one cluster of ``DIR/clusters.json``; register it."""
    run = RunDir(run_dir)
    tokens = check_tokens(tokens, run.config().experts.tokens)
    plan = run.plan()
    if cluster not in plan["clusters"]:
        raise XelmError(f"no cluster named {cluster!r} in {run.plan_file} "
                        f"(clusters: {', '.join(plan['clusters'])})")
    reg = run_registry(run, registry)
    check_experts_match_plan(run, plan, reg.cards())
    name = check_name(cluster)
    if name in reg.names():
        return {**reg.card(name), "skipped": True}
    languages = sorted(plan["clusters"][cluster])
    work = run.expert_work(name)
    result, bcfg, val, texts = _train_copy(run.root, run.base(), languages, tokens, work, None,
                                           progress, f"expert {name}")
    card = {"name": name, "kind": "cluster", "languages": languages, "parent": "base",
            "tokens_trained": result.tokens, "tokens_by_lang": result.tokens_by_lang,
            "train_loss": result.loss, "validation_loss": val, "cluster_method": plan["method"],
            "plan_fingerprint": plan_fingerprint(plan),
            "typology_centroid": typology_centroid(languages, texts),
            "config": dataclasses.asdict(bcfg.train) | {"languages": languages}}
    card = reg.add(card, result.model)
    shutil.rmtree(work / "checkpoints", ignore_errors=True)  # registered: the weights live there now
    return card


def train_all(run_dir: str | Path, tokens: int | None = None, registry: str | None = None,
              progress: bool = True) -> list[dict]:
    """Every cluster of the plan, one after another (each skipped once registered)."""
    check_tokens(tokens, 1)
    run = RunDir(run_dir)
    check_experts_match_plan(run, run.plan(), run_registry(run, registry).cards())
    return [train_expert(run_dir, name, tokens, registry, progress) for name in RunDir(run_dir).plan()["clusters"]]


def train_baseline(run_dir: str | Path, registry: str | None = None, progress: bool = True) -> dict:
    """The dense model at equal compute: the base continued on exactly the batches the cluster
    experts trained on (their union, interleaved), so every language gets the same tokens on
    both sides. Saved under ``DIR/baseline`` with its token accounting."""
    run = RunDir(run_dir)
    out = run.baseline_dir
    plan = run.plan()
    reg = run_registry(run, registry)
    check_experts_match_plan(run, plan, reg.cards())
    cards = [c for c in reg.cards() if c.get("kind") == "cluster"]
    if run.has_dense():
        check_dense_matches(run, plan, cards, run.dense_summary())
        return {**run.dense_summary(), "skipped": True}
    missing = sorted(set(plan["clusters"]) - {c["name"] for c in cards})
    if missing:
        raise XelmError(f"the baseline needs every cluster expert first; missing: {', '.join(missing)} "
                        f"(`xelm expert train --run-dir {run_dir} --all`)")
    tokens = sum(c["tokens_trained"] for c in cards)
    languages = sorted({lang for c in cards for lang in c["languages"]})
    result, bcfg, val, _ = _train_copy(run.root, run.base(), languages, tokens, out, None,
                                       progress, "dense baseline", replay=cards)
    save_weights(result.model, run.dense_model)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    summary = {"kind": "dense", "languages": languages, "tokens_trained": result.tokens,
               "tokens_by_lang": result.tokens_by_lang, "batches": "replayed from the cluster experts",
               "expert_tokens": {c["name"]: c["tokens_trained"] for c in cards},
               "plan_fingerprint": plan_fingerprint(plan), "config": dataclasses.asdict(bcfg.train),
               "train_loss": result.loss, "validation_loss": val}
    write_json(run.dense_summary_file, summary)
    return summary


def train_control(run_dir: str | Path, language: str, parent: str, tokens: int, progress: bool = True) -> dict:
    """A comparison model for a new language at the HMR expert's budget: the base branched on it
    (``parent='base'``) or the dense baseline continued on it (``parent='dense'``). Saved under
    ``DIR/controls/<parent>-<language>``, not registered: it is a yardstick, not an expert."""
    run = RunDir(run_dir)
    out = run.control(parent, language)
    done, weights = run.control_summary_file(parent, language), run.control_model(parent, language)
    if done.exists() and (weights / "model.json").exists():
        return {**read_json(done, "control summary", f"delete {out} and re-run"), "skipped": True}
    model = {"base": run.base, "dense": run.dense}[parent]()
    result, _, val, _ = _train_copy(run.root, model, [language], tokens, out, None, progress,
                                    f"{parent}+{language}")
    save_weights(result.model, weights)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    summary = {"name": out.name, "parent": parent, "languages": [language], "tokens_trained": result.tokens,
               "train_loss": result.loss, "validation_loss": val}
    write_json(done, summary)
    return summary


def add_language(run_dir: str | Path, languages: str | list[str], tokens: int, parent: str = "auto",
                 name: str | None = None, corpus: str | None = None, registry: str | None = None,
                 progress: bool = True, among: list[str] | None = None) -> dict:
    """HMR: a new expert for ``languages``, branched from the typologically nearest expert among
    those that share the new languages' main script (``auto``; nearest of ``among`` when given),
    the base, or a named expert. No other expert's files change."""
    run = RunDir(run_dir)
    tokens = check_tokens(tokens)
    langs = parse_language_list(languages) if isinstance(languages, str) else list(languages)
    reg = run_registry(run, registry)
    name = check_name(name or "hmr-" + "-".join(langs))
    if name in reg.names():
        raise XelmError(f"an expert named {name!r} already exists in {reg.root}: choose another --name")
    cfg = run.config()
    texts = texts_by_lang(load_corpus(corpus or cfg.data.corpus, languages=langs)["train"])
    distance, new_scripts = None, {lang: dominant_script(texts.get(lang, [])) for lang in langs}
    if parent == "auto":
        cards = [c for c in reg.cards() if among is None or c["name"] in among]
        scripts = expert_scripts(cards, cfg.data.corpus) | new_scripts
        parent, distance = nearest_expert(langs, cards, texts, scripts)
    parent_model = run.base() if parent == "base" else reg.load(parent)
    work = run.expert_work(name)
    result, bcfg, val, texts = _train_copy(run.root, parent_model, langs, tokens, work, corpus,
                                           progress, f"expert {name}")
    card = {"name": name, "kind": "hmr", "languages": langs, "parent": parent,
            "parent_distance": distance, "tokens_trained": result.tokens,
            "tokens_by_lang": result.tokens_by_lang, "train_loss": result.loss, "validation_loss": val,
            "cluster_method": "hmr", "corpus": corpus or cfg.data.corpus, "scripts": new_scripts,
            "typology_centroid": typology_centroid(langs, texts),
            "config": dataclasses.asdict(bcfg.train) | {"languages": langs}}
    card = reg.add(card, result.model)
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    return card


def expert_scripts(cards: list[dict], corpus: str) -> dict[str, str]:
    """Each expert language's main script: from the run's corpus, or from the card itself for an
    expert trained on another corpus (an HMR card records its languages' scripts), so a later
    newcomer in that script can branch from it."""
    scripts = main_scripts(corpus, sorted({lang for c in cards for lang in c["languages"]}))
    for card in cards:
        own = card.get("scripts")
        if isinstance(own, dict):  # cards are files: anything else is ignored, as a card without it
            scripts |= {lang: script for lang, script in own.items() if isinstance(script, str)}
    return scripts


def train_family_expert(run_dir: str | Path, languages: list[str], tokens: int | None = None,
                        name: str | None = None, family: str | None = None, registry: str | None = None,
                        progress: bool = True) -> dict:
    """An expert for a language family named by the user: the base branched and trained on the
    family's corpus languages, as a cluster expert is, but outside the plan (kind ``family``): the
    plan stays fixed and the equal-compute comparison (cluster experts vs dense) is unchanged.
    Re-running with the same name and languages returns the registered card (``skipped``)."""
    run = RunDir(run_dir)
    cfg = run.config()
    tokens = check_tokens(tokens, cfg.experts.tokens)
    langs = sorted(languages)
    reg = run_registry(run, registry)
    name = check_name(name or "family-" + (slug(family) if family else "-".join(langs)))
    if run.plan_file.is_file() and name in run.plan()["clusters"]:
        raise XelmError(f"{name!r} is a cluster of {run.plan_file}, whose expert `xelm expert train --cluster "
                        f"{name}` trains: give the family expert another --name")
    if name in reg.names():
        card = reg.card(name)
        if card.get("kind") == "family" and sorted(card["languages"]) == langs:
            return {**card, "skipped": True}
        raise XelmError(f"an expert named {name!r} already exists in {reg.root} (kind {card.get('kind')}, "
                        f"languages {','.join(card['languages'])}): choose another --name")
    work = run.expert_work(name)
    result, bcfg, val, texts = _train_copy(run.root, run.base(), langs, tokens, work, None,
                                           progress, f"expert {name}")
    card = {"name": name, "kind": "family", "family": family, "languages": langs, "parent": "base",
            "tokens_trained": result.tokens, "tokens_by_lang": result.tokens_by_lang,
            "train_loss": result.loss, "validation_loss": val, "cluster_method": "family",
            "corpus": cfg.data.corpus, "typology_centroid": typology_centroid(langs, texts),
            "config": dataclasses.asdict(bcfg.train) | {"languages": langs}}
    card = reg.add(card, result.model)
    shutil.rmtree(work / "checkpoints", ignore_errors=True)  # registered: the weights live there now
    return card
