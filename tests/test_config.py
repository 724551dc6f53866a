"""Config validation: every mistake is one XelmError line, found before a run directory exists."""

from __future__ import annotations

from pathlib import Path

import pytest

from xelm.app.cli import main
from xelm.config import load_config
from xelm.errors import XelmError

TINY = Path(__file__).resolve().parents[1] / "configs" / "udhr-tiny.yaml"


def _yaml(tmp_path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text, "utf-8")
    return path


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seed_out_of_numpys_range_is_refused(seed):
    """numpy refuses a negative seed only when the run samples, as a traceback."""
    with pytest.raises(XelmError) as e:
        load_config(TINY, [f"train.seed={seed}"])
    assert str(e.value) == f"train.seed {seed} is out of range: give a seed from 0 to 4294967295"


def test_largest_seed_is_accepted():
    assert load_config(TINY, [f"train.seed={2**32 - 1}"]).train.seed == 2**32 - 1


def test_vocabulary_under_the_tokenizers_minimum_is_refused_before_the_run_dir(tmp_path, capsys):
    from xelm.tokenizer import MIN_VOCAB_SIZE

    """Found by the config, not by the tokenizer after config.yaml is in the run directory (a
    corrected re-run was then refused as another config)."""
    run_dir = tmp_path / "run"
    v = MIN_VOCAB_SIZE - 1
    code = main(["pretrain", "--config", str(TINY), "--run-dir", str(run_dir),
                 f"model.vocab_size={v}", f"tokenizer.vocab_size={v}"])
    assert code == 2
    assert capsys.readouterr().err == (
        "xelm: error: tokenizer.vocab_size 360 is too small: at least 361 (5 special + 256 byte tokens "
        "+ 100 pieces)\n")
    assert not run_dir.exists()
    v = MIN_VOCAB_SIZE
    assert load_config(TINY, [f"model.vocab_size={v}", f"tokenizer.vocab_size={v}"]).tokenizer.vocab_size == v


def test_non_string_keys_name_the_key(tmp_path):
    with pytest.raises(XelmError) as e:
        load_config(_yaml(tmp_path, "train: {1: 5, foo: 2}\n"))
    assert str(e.value).startswith("unknown config key 'train.1' (known here: b1, b2, ")


def test_missing_required_field_of_a_list_item_is_named(tmp_path):
    with pytest.raises(XelmError) as e:
        load_config(_yaml(tmp_path, "curriculum: [{until: 1.0}]\n"))
    assert str(e.value) == "config curriculum[0]: 'name' is missing (required here: name, until)"


def test_float_written_without_a_dot_is_a_float(tmp_path):
    """PyYAML (YAML 1.1) reads 1e-3 as a string."""
    assert load_config(_yaml(tmp_path, "train:\n  lr: 1e-3\n")).train.lr == 0.001
    cfg = load_config(TINY, ["train.lr=1e-3", "experts.lr=2E-4"])
    assert (cfg.train.lr, cfg.experts.lr) == (0.001, 0.0002)
    with pytest.raises(XelmError, match=r"^train.lr is nan: give a finite number$"):
        load_config(TINY, ["train.lr=nan"])
    with pytest.raises(XelmError, match=r"^config train.lr: expected float, got 'fast'$"):
        load_config(TINY, ["train.lr=fast"])
