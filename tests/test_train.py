"""Packing, masking, curriculum, config, and the training loop: resume (data parallelism:
test_multiprocess.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from xelm.batches import TokenizedCorpus, make_batch, mask_rows, pack
from xelm.config import Stage, TrainConfig, load_config
from xelm.curriculum import stage_index, stage_probabilities, wsd_schedule
from xelm.errors import XelmError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "udhr-tiny.yaml"


# ----------------------------------------------------------------------------- batches
def test_pack_has_no_padding_and_restarts_positions_per_segment():
    docs = [np.arange(2, 7), np.arange(10, 14), np.arange(20, 27)]
    ids, seg, pos = pack(docs, rows=2, seq_len=8)
    assert ids.tolist() == [[2, 3, 4, 5, 6, 10, 11, 12], [13, 20, 21, 22, 23, 24, 25, 26]]
    assert seg.tolist() == [[1, 1, 1, 1, 1, 2, 2, 2], [1, 2, 2, 2, 2, 2, 2, 2]]
    assert pos.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 0, 1, 2, 3, 4, 5, 6]]
    assert (seg > 0).all()


def test_mask_rows_masks_k_non_special_positions():
    rng = np.random.default_rng(0)
    ids = np.tile(np.array([2] + list(range(10, 40)) + [3], np.int32), (4, 1))
    special = np.array([0, 1, 2, 3, 4])
    inputs, pos, labels, weights = mask_rows(ids, 0.25, rng, 4, 100, special)
    assert pos.shape == (4, 8) and weights.all()
    assert not np.isin(labels, special).any()
    assert (np.take_along_axis(ids, pos, 1) == labels).all()
    assert (inputs == 4).sum() >= 0.6 * pos.size  # most of them are [MASK]
    untouched = np.ones_like(ids, bool)
    np.put_along_axis(untouched, pos, False, 1)
    assert (inputs[untouched] == ids[untouched]).all()


def test_batches_are_a_pure_function_of_seed_and_step():
    docs = {"eng": [np.arange(2, 30)] * 3, "fra": [np.arange(40, 60)] * 3}
    corpus = TokenizedCorpus(docs, [0, 1, 2, 3, 4])
    kw = dict(batch_size=4, seq_len=16, mask_ratio=0.3, mask_id=4, vocab_size=100, seed=0)
    probs = {"eng": 0.5, "fra": 0.5}
    (a, _), (b, _), (c, _) = (make_batch(corpus, probs, **kw, step=s) for s in (7, 7, 8))
    assert (a.input_ids_BxS == b.input_ids_BxS).all() and (a.mask_positions_BxK == b.mask_positions_BxK).all()
    assert not (a.input_ids_BxS == c.input_ids_BxS).all()


def test_language_probabilities_are_token_shares_not_document_shares():
    """A language of documents ten times as long gets the share it was given, not ten times it."""
    docs = {"eng": [np.arange(5, 15)] * 4, "tha": [np.arange(5, 105)] * 4}  # 10 and 100 tokens
    corpus = TokenizedCorpus(docs, [0, 1, 2, 3, 4])
    kw = dict(batch_size=8, seq_len=64, mask_ratio=0.3, mask_id=4, vocab_size=200, seed=3)
    totals = {"eng": 0, "tha": 0}
    for step in range(60):
        for lang, n in make_batch(corpus, {"eng": 0.5, "tha": 0.5}, **kw, step=step)[1].items():
            totals[lang] += n
    assert 0.45 < totals["eng"] / sum(totals.values()) < 0.55


# -------------------------------------------------------------------------- curriculum
STAGES = (Stage("pre", 0.5, ("eng", "fra"), 0.3, 0.7), Stage("mid", 0.8, "all", 0.15, 0.5),
          Stage("decay", 1.0, "all", 0.05, 0.3))


def test_stages_switch_at_their_fractions_and_languages_grow():
    assert [stage_index(s, STAGES, 100) for s in (0, 49, 50, 79, 80, 99)] == [0, 0, 1, 1, 2, 2]
    sizes = {"eng": 1000, "fra": 500, "swh": 10}
    assert set(stage_probabilities(STAGES[0], sizes)) == {"eng", "fra"}
    p_mid, p_decay = stage_probabilities(STAGES[1], sizes), stage_probabilities(STAGES[2], sizes)
    assert set(p_decay) == {"eng", "fra", "swh"}
    # A lower temperature moves towards uniform: the small language gains share.
    assert p_decay["swh"] > p_mid["swh"] > 10 / 1510


def test_wsd_schedule_warms_up_holds_and_decays_in_the_last_stage():
    sched = wsd_schedule(TrainConfig(steps=100, lr=1.0, warmup_steps=10), STAGES)
    assert float(sched(0)) == 0.0 and float(sched(5)) == pytest.approx(0.5)
    assert float(sched(10)) == float(sched(79)) == pytest.approx(1.0)
    assert float(sched(90)) == pytest.approx(0.5) and float(sched(100)) == pytest.approx(0.0)


def test_unknown_stage_language_is_a_clear_error():
    with pytest.raises(XelmError, match="xyz"):
        stage_probabilities(Stage("s", 1.0, ("eng", "xyz")), {"eng": 10})


# ------------------------------------------------------------------------------ config
def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(XelmError, match="'train.stepz'"):
        load_config(TINY, ["train.stepz=3"])
    with pytest.raises(XelmError, match="model.layers"):
        load_config(TINY, ["model.layers=many"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(XelmError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(XelmError, match="until"):
        load_config(TINY, ["curriculum=[{name: a, until: 0.5}]"])
    assert load_config(TINY, ["train.steps=7"]).train.steps == 7


# ---------------------------------------------------------------------- training runs
# The first curriculum stage's ten languages: what the tests of the loop need, without tokenizing
# the whole corpus again for every few-step run.
FEW_LANGUAGES = "data.languages=[eng,fra,spa,deu,rus,cmn,arb,hin,swh,jpn]"


def _run_dir(tmp_path: Path, name: str, tokenizer: Path) -> Path:
    run = tmp_path / name
    shutil.copytree(tokenizer, run / "tokenizer")
    return run


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "base" / "metrics.jsonl").read_text().splitlines()]


def test_resume_is_exact_and_loss_falls(tmp_path, tiny_tokenizer, tiny_overrides, tiny_base_run):
    from xelm.pretrain import pretrain
    cfg = load_config(TINY, tiny_overrides)
    full = tiny_base_run  # the same config trained 30 steps without interruption
    done = json.loads((full / "base" / "summary.json").read_text())
    assert done["complete"] and done["step"] == 30
    split = _run_dir(tmp_path, "split", tiny_tokenizer)
    first = pretrain(cfg, split, max_steps=15, progress=False)
    assert first["step"] == 15 and not first["complete"]
    second = pretrain(cfg, split, progress=False)
    assert second["resumed_from"] == 15
    assert second["loss"] == pytest.approx(done["loss"], abs=1e-5)
    assert _losses(split) == pytest.approx(_losses(full), abs=1e-5)
    rows = [json.loads(r) for r in (full / "base" / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "loss", "tokens", "lr", "mask_ratio", "temperature"} <= set(rows[0])
    assert [r["stage"] for r in rows][0] == "pretrain" and rows[-1]["stage"] == "decay"
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert (full / "base" / "loss.png").stat().st_size > 1000
    assert (full / "config.yaml").exists() and (full / "versions.json").exists()


def test_changed_config_in_existing_run_dir_is_refused(tmp_path, tiny_tokenizer, tiny_overrides):
    from xelm.app.cli import main
    run = _run_dir(tmp_path, "run", tiny_tokenizer)
    args = ["pretrain", "--config", str(TINY), "--run-dir", str(run), "--max-steps", "1", "--json"]
    assert main([*args, *tiny_overrides]) == 0
    assert main([*args, "train.steps=99", *tiny_overrides]) == 2
    assert main(["pretrain", "--config", str(tmp_path / "none.yaml"), "--run-dir", str(run)]) == 2


def test_logged_loss_is_the_window_mean_and_survives_resume_mid_window(tmp_path, tiny_tokenizer, tiny_overrides):
    from xelm.pretrain import pretrain
    every_step = _run_dir(tmp_path, "every", tiny_tokenizer)
    pretrain(load_config(TINY, [*tiny_overrides, FEW_LANGUAGES, "train.steps=8", "train.log_every=1"]), every_step,
             progress=False)
    per_step = _losses(every_step)
    split = _run_dir(tmp_path, "split", tiny_tokenizer)
    cfg = load_config(TINY, [*tiny_overrides, FEW_LANGUAGES, "train.steps=8", "train.log_every=4",
                             "train.checkpoint_every=3"])
    pretrain(cfg, split, max_steps=3, progress=False)  # stops (and checkpoints) inside the first window
    summary = pretrain(cfg, split, progress=False)
    rows = [json.loads(r) for r in (split / "base" / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r["loss"] for r in rows}
    assert by_step[4] == pytest.approx(np.mean(per_step[:4]), abs=1e-5)
    assert by_step[8] == pytest.approx(np.mean(per_step[4:]), abs=1e-5)
    assert summary["loss"] == pytest.approx(by_step[8])


def test_diverging_loss_stops_with_one_clear_line(tmp_path, tiny_tokenizer, tiny_overrides):
    from xelm.pretrain import pretrain
    cfg = load_config(TINY, [*tiny_overrides, FEW_LANGUAGES, "train.lr=1.0e+30", "train.warmup_steps=0"])
    with pytest.raises(XelmError, match=r"diverged: the loss is nan at step \d+; lower train.lr"):
        pretrain(cfg, _run_dir(tmp_path, "run", tiny_tokenizer), max_steps=5, progress=False)


def test_a_loss_curve_of_too_few_points_is_not_drawn(tmp_path):
    from xelm.train import MIN_PLOTTED_LOGS, plot_loss

    log = tmp_path / "metrics.jsonl"
    rows = [{"step": i + 1, "loss": 5.0 - i / 10, "stage": "expert"} for i in range(MIN_PLOTTED_LOGS)]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows[:1]))
    assert plot_loss(log, tmp_path / "one.png") is None and not (tmp_path / "one.png").exists()
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plot_loss(log, tmp_path / "five.png").stat().st_size > 1000


def test_a_damaged_metrics_log_is_read_around_not_a_traceback(tmp_path):
    from xelm.train import _truncate_metrics, plot_loss

    log = tmp_path / "metrics.jsonl"
    rows = [{"step": i + 1, "loss": 5.0 - i / 10, "stage": "expert"} for i in range(6)]
    lines = [json.dumps(r) for r in rows]
    lines[1:1] = ['{"loss": 3}', "[1, 2]", '{"step": "x"}', '{"step": 2, "lo']  # no step, not a dict, cut short
    log.write_bytes(("\n".join(lines) + "\n").encode() + b"\xff\xfe\n")
    assert plot_loss(log, tmp_path / "loss.png").stat().st_size > 1000
    assert _truncate_metrics(log, 4) == rows[:4]
    assert [json.loads(line) for line in log.read_text().splitlines()] == rows[:4]


def test_trainings_of_one_schedule_share_one_compiled_step():
    """The k experts (or the HMR models) of a run differ in weights and languages, not in shape or
    schedule: the second training must reuse the first one's compiled step, not compile again."""
    from flax import nnx

    from xelm.config import ModelConfig
    from xelm.model import Encoder
    from xelm.train import Trainer, _train_step, data_mesh, make_optimizer

    mc = ModelConfig(vocab_size=64, hidden=16, layers=1, heads=2, ffn=32, local_window=8, global_every=1)
    docs = {"eng": [np.arange(5, 40)] * 4, "fra": [np.arange(20, 60)] * 4}
    corpus = TokenizedCorpus(docs, [0, 1, 2, 3, 4])
    batch, _ = make_batch(corpus, {"eng": 0.5, "fra": 0.5}, batch_size=2, seq_len=16, mask_ratio=0.3,
                          mask_id=4, vocab_size=64, seed=0, step=0)
    compiled = []
    for seed, langs in ((0, ("eng",)), (1, ("fra",))):  # another expert: other weights, other languages
        tc = TrainConfig(steps=8, lr=1e-3, warmup_steps=1, seed=seed, log_every=seed + 1)
        stages = (Stage("expert", 0.8, langs), Stage("decay", 1.0, langs))
        model = Encoder(mc, rngs=nnx.Rngs(seed))
        Trainer.create(model, make_optimizer(model, tc, stages), data_mesh()).step(batch)
        compiled.append(_train_step._cache_size())
    assert compiled[1] == compiled[0]
    tc = TrainConfig(steps=16, lr=1e-3, warmup_steps=1)  # another schedule is another optimizer
    model = Encoder(mc, rngs=nnx.Rngs(0))
    assert make_optimizer(model, tc, STAGES).tx is not make_optimizer(model, tc, STAGES[:2]).tx
