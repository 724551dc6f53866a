"""The command line as a newcomer meets it (issue 18): many texts in and out, one flag per
concept, languages and families as users name them, notes instead of silent choices, a fast
``--help``, and README commands the parser accepts as written."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from clustering.uriel import family_members, family_node
from xelm.app.cli import dispatch, main, parse_args
from xelm.app.textio import read_inputs
from xelm.errors import XelmError
from xelm.languages import parse_language_list, to_iso3

ROOT = Path(__file__).resolve().parents[1]


def xelm(*argv: str, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "xelm", *argv], input=stdin, capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def cli(argv: list[str]) -> int:
    return dispatch(parse_args(argv))


# --------------------------------------------------------------------------- start-up
def test_help_is_fast_and_imports_no_heavy_library():
    """`xelm --help` and `xelm VERB --help` never import JAX, transformers or matplotlib; the
    library's packages import scikit-learn and transformers only where a command uses them."""
    probe = ("import sys; heavy = lambda *names: sorted(m for m in names if m in sys.modules); "
             "import xelm.app.cli; print(heavy('jax', 'transformers', 'matplotlib', 'torch', 'flax', 'datasets')); "
             "import experts.registry, experts.training, routing, clustering; "
             "print(heavy('sklearn', 'transformers', 'matplotlib', 'torch'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.splitlines() == ["[]", "[]"], out.stdout  # e.g. `xelm expert list` starts without them
    for argv in (["--help"], ["route", "--help"], ["expert", "add", "--help"], ["--version"]):
        start = time.perf_counter()
        done = xelm(*argv)
        elapsed = time.perf_counter() - start
        assert done.returncode == 0, done.stderr
        assert elapsed < 3.0, (argv, elapsed)  # about 0.3 s on 2 cores; generous for a loaded CI machine
    assert "score" in xelm("--help").stdout and "--experts" in xelm("route", "--help").stdout


@pytest.mark.parametrize("given, expected", [
    (None, "--xla_gpu_enable_triton_gemm=false"),
    ("--xla_force_host_platform_device_count=2", "--xla_force_host_platform_device_count=2 --xla_gpu_enable_triton_gemm=false"),
    ("--xla_gpu_enable_triton_gemm=true", "--xla_gpu_enable_triton_gemm=true"),  # the user's choice wins
])
def test_import_prefers_cublas_gemms_unless_the_user_chose(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | ({"XLA_FLAGS": given} if given else {})
    out = subprocess.run([sys.executable, "-c", "import os, xelm; print(os.environ['XLA_FLAGS'])"],
                         capture_output=True, text=True, cwd=ROOT, env=env, check=True)
    assert out.stdout.strip() == expected


# --------------------------------------------------------------------------- texts in
def test_texts_from_flags_files_and_stdin(tmp_path):
    class Stdin:
        def __init__(self, text): self.text = text
        def isatty(self): return False
        def read(self): return self.text

    plain = tmp_path / "texts.txt"
    plain.write_text("first line\n\nthird line\n")
    got = read_inputs(["a", "b"], str(plain))
    assert got.texts == ["a", "b", "first line", "third line"] and got.lines == [None, None, 1, 3]
    records = tmp_path / "texts.jsonl"
    records.write_text('{"text": "Bonjour", "lang": "fr"}\n{"text": "Hallo", "lang": "deu"}\n{"text": "Hi"}\n')
    got = read_inputs(None, str(records), lang="en")
    assert got.langs == ["fra", "deu", "eng"]
    got = read_inputs(["-"], None, stdin=Stdin('{"text": "x", "lang": "pt-BR"}\n'))  # JSONL sniffed on stdin
    assert got.texts == ["x"] and got.langs == ["por"]
    for bad, word in (('{"txt": "x"}\n', '"text"'), ("{oops\n", "JSON")):
        records.write_text(bad)
        with pytest.raises(XelmError, match=word):
            read_inputs(None, str(records))
    with pytest.raises(XelmError, match="no texts"):
        read_inputs(None, None)
    with pytest.raises(XelmError, match="once"):
        read_inputs(["-"], "-", stdin=Stdin("x"))
    # line numbers are the file's: U+2028, NEL and a form feed are text, not line ends; a BOM is no text
    plain.write_bytes("\ufeffone\u2028two\x0cthree\r\nfour\x85five\n".encode())
    got = read_inputs(None, str(plain))
    assert got.texts == ["one\u2028two\x0cthree", "four\x85five"] and got.lines == [1, 2]
    got = read_inputs(None, "-", stdin=Stdin('\ufeff{"text": "x\u2028y"}\n'))
    assert got.texts == ["x\u2028y"]
    fifo = tmp_path / "pipe"  # --file <(cmd) names a pipe
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("from a pipe\n"))
    writer.start()
    assert read_inputs(None, str(fifo)).texts == ["from a pipe"]
    writer.join()


def test_language_codes_as_users_write_them():
    notes: list[str] = []
    assert parse_language_list("fr,es,pt-BR,deu", notes=notes) == ["fra", "spa", "por", "deu"]
    assert notes == ["fr -> fra (French)", "es -> spa (Spanish)", "pt-BR -> por (Portuguese)"]
    assert to_iso3("zh-Hant") == "zho" and to_iso3("en-Latn-US") == "eng"
    with pytest.raises(XelmError, match="malformed"):
        to_iso3("ENG")


def test_family_names_resolve_to_glottolog_nodes():
    assert family_node("Bantu") == "Narrow Bantu" and family_node("romance") == "Romance"
    assert {"fra", "spa", "ita"} <= family_members("Romance") and "eng" not in family_members("Romance")
    assert {"swh", "zul"} <= family_members(family_node("Bantu"))
    with pytest.raises(XelmError, match="nearest: Romance"):
        family_node("Romanse")


# --------------------------------------------------------------------------- results out
def test_many_texts_one_result_each_in_order(tiny_expert_run, tmp_path, capsys):
    run = str(tiny_expert_run)
    texts = ["Tous les êtres humains naissent libres", "All human beings are born free", "Alle Menschen"]
    assert cli(["route", "--run-dir", run, *sum((["--text", t] for t in texts), []), "--jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == texts and all(r["router"] == "tfidf" for r in rows)

    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t, "lang": lang}) + "\n"
                              for t, lang in zip(texts, ["fr", "eng", "deu"])))
    out = tmp_path / "scores.jsonl"
    assert cli(["score", "--run-dir", run, "--file", str(source), "--experts", "1", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2, 3] and [r["language"] for r in rows] == ["fra", "eng", "deu"]
    assert all(r["loss"] > 0 and r["masked_tokens"] >= 1 and len(r["experts"]) == 1 for r in rows)

    vectors = tmp_path / "v.npy"
    assert cli(["embed", "--run-dir", run, "--file", str(source), "--out", str(vectors)]) == 0
    v = np.load(vectors)
    assert v.shape[0] == 3 and v.dtype == np.float32 and np.isfinite(v).all()
    capsys.readouterr()

    assert cli(["route", "--run-dir", run, "--text", texts[0]]) == 0
    assert "router: tfidf" in capsys.readouterr().out  # the table names its router

    assert cli(["fill-mask", "--run-dir", run, "--text", "All human beings are <mask>", "--text",
                "Tous les <mask>", "--top-k", "3", "--experts", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and all(len(r["fillers"]) == 3 and len(r["experts"]) == 1 for r in rows)


@pytest.mark.parametrize("argv, words", [
    (["route", "--text", "x", "--top-k", "1"], ["--experts 1"]),  # --top-k is tokens, fill-mask only
    (["embed", "--text", "x", "--experts", "9"], ["--experts 9", "1 to 2"]),
    (["route", "--text", "x", "--router", "language"], ["--lang"]),
])
def test_one_flag_per_concept(argv, words, tiny_expert_run):
    with pytest.raises(XelmError) as e:
        cli([argv[0], "--run-dir", str(tiny_expert_run), *argv[1:]])
    assert all(w in str(e.value) for w in words), str(e.value)


def test_overrides_anywhere_on_the_line():
    args = parse_args(["import-hf", "models/x", "--run-dir", "runs/x", "experts.k=3", "data.seq_len=256"])
    assert args.overrides == ["experts.k=3", "data.seq_len=256"] and args.path == "models/x"
    args = parse_args(["pretrain", "train.steps=5", "--run-dir", "r", "train.lr=0.1"])
    assert args.overrides == ["train.steps=5", "train.lr=0.1"]
    with pytest.raises(SystemExit):
        parse_args(["route", "--run-dir", "r", "stray"])


# --------------------------------------------------------------------------- experts, through the real CLI
def test_family_expert_says_what_it_chose(tiny_expert_run, tmp_path, capsys):
    """`expert add --family` lists the languages it took and left; a rounded budget, a corpus
    read many times, missing validation text, a language already in an expert and the parent
    chosen are all said; the list stays aligned with a long name."""
    run = tmp_path / "run"
    shutil.copytree(tiny_expert_run, run)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "ita.txt").write_text("Tutti liberi.\n")
    (corpus / "ron.txt").write_text("Toate libere.\n")
    (corpus / "eng.txt").write_text("All human beings are born free and equal in dignity and rights.\n")
    name = "mixed-malayo-polynesian-1base"
    done = xelm("expert", "add", "--run-dir", str(run), "--family", "Romance", "--corpus", str(corpus),
                "--tokens", "500", "--name", name, "--json")
    assert done.returncode == 0, done.stderr
    card = json.loads(done.stdout)
    assert card["languages"] == ["ita", "ron"] and card["tokens_trained"] == 512
    err = done.stderr
    assert "family Romance: 2 language(s)" in err and "more of the family have no text there" in err
    assert "--tokens 500 trained as 512" in err
    assert "no validation text" in err and "seen about" in err
    assert "ita was already in expert(s) romance-1" in err
    # The command line keeps its compiled programs (here: the session's cache, tests/conftest.py).
    assert any(Path(os.environ["XELM_COMPILATION_CACHE"]).glob("*-cache"))

    capsys.readouterr()
    assert main(["expert", "add", "--run-dir", str(run), "--family", "Romanse", "--tokens", "512"]) == 2
    assert "nearest: Romance" in capsys.readouterr().err

    assert main(["expert", "list", "--run-dir", str(run)]) == 0
    listing = capsys.readouterr().out.splitlines()
    col = listing[0].index("parent")  # every row's parent starts under the header, after a gap
    assert all(row[col - 2:col] == "  " and row[col] != " " for row in listing), listing
    assert any(row.startswith(name + "  ") for row in listing), listing


# --------------------------------------------------------------------------- README
def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    commands = []
    for line in lines:
        for part in line.split(";"):
            part = part.strip()
            if part.startswith("xelm ") or ".venv/bin/xelm " in part:
                commands.append(part[part.index("xelm "):])
    return commands


def test_readme_commands_parse_as_written():
    """Every `xelm ...` line of the README is accepted by the parser as written (no placeholders
    such as `[--json]`), and the README points at nothing outside the repository."""
    readme = (ROOT / "README.md").read_text()
    assert "../shared" not in readme
    commands = _readme_commands()
    assert len(commands) > 20
    for command in commands:
        words = shlex.split(command)[1:]
        ends = [i for i, w in enumerate(words) if w in ("|", ">", ">>", "&&")]
        argv = words[:ends[0]] if ends else words  # the shell's part is not ours
        try:
            parse_args(argv)
        except SystemExit as e:
            if e.code:
                pytest.fail(f"README command does not parse: {command}")


# --------------------------------------------------------------------------- family experts, progress, plots
def test_family_expert_is_trained_outside_the_plan(tiny_expert_run, tmp_path, capsys):
    """`expert train --family` trains the base on the family's corpus languages and registers a
    'family' expert that the plan's integrity checks (and so the equal-compute evaluation) ignore."""
    from experts.plan_integrity import check_experts_match_plan
    from experts.registry import run_registry
    from xelm.rundir import RunDir

    run = tmp_path / "run"
    shutil.copytree(tiny_expert_run, run)
    capsys.readouterr()
    assert main(["expert", "train", "--run-dir", str(run), "--family", "Germanic", "--tokens", "512", "--json"]) == 0
    out, err = capsys.readouterr()
    (card,) = json.loads(out)
    assert card["name"] == "family-germanic" and card["kind"] == "family" and card["parent"] == "base"
    assert {"eng", "deu", "nld"} <= set(card["languages"]) <= family_members("Germanic")
    assert "fra" not in card["languages"] and card["tokens_trained"] == 512
    assert "family Germanic:" in err and "kind 'family'" in err
    covered = [line for line in err.splitlines() if "already in expert(s)" in line]
    assert len(covered) == 1 and "of its languages (" in covered[0] and "eng" in covered[0], err
    cards = run_registry(run).cards()
    check_experts_match_plan(RunDir(run), RunDir(run).plan(), cards)  # the plan's experts are unchanged
    assert sorted(c["name"] for c in cards if c.get("kind") == "cluster") == sorted(RunDir(run).plan()["clusters"])

    assert cli(["expert", "train", "--run-dir", str(run), "--family", "germanic", "--tokens", "512",
                "--json"]) == 0  # the same family again: the registered expert, not a second one
    assert [c["name"] for c in run_registry(run).cards()].count("family-germanic") == 1
    plan_cluster = next(iter(RunDir(run).plan()["clusters"]))
    for argv, words in (
            (["--family", "Germanik"], ["nearest: Germanic"]),
            (["--family", "Germanic", "--all"], ["exactly one of"]),
            (["--cluster", plan_cluster, "--name", "x"], ["--name goes with --family"]),
            (["--family", "Germanic", "--name", plan_cluster], ["is a cluster of", "another --name"]),
            (["--family", "Romance", "--name", "family-germanic"], ["already exists"])):
        with pytest.raises(XelmError) as e:
            cli(["expert", "train", "--run-dir", str(run), "--tokens", "512", *argv])
        assert all(w in str(e.value) for w in words), (argv, str(e.value))


def xelm_on_terminal(*argv: str, timeout: float = 300) -> tuple[int, str, str]:
    """Run ``xelm`` with stderr on a pseudo-terminal (as a person sees it); (exit, stdout, stderr)."""
    import fcntl
    import os
    import pty
    import struct
    import tempfile
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # tqdm draws nothing at width 0
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([sys.executable, "-m", "xelm", *argv], stdout=out, stderr=slave, cwd=ROOT)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the terminal closed: the process ended
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(timeout)
        os.close(master)
        out.seek(0)
        return proc.returncode, out.read(), b"".join(chunks).decode(errors="replace")


def test_long_steps_show_progress_only_on_a_terminal(tiny_tokenizer, tiny_base_run, tmp_path, capsys):
    """`tokenizer stats` and `cluster` (the model method's embedding, then the plan's steps) show
    a bar where a person watches, and none under --json or when stderr is not a terminal."""
    tok = tmp_path / "tok"
    shutil.copytree(tiny_tokenizer, tok)  # stats writes its plot beside the tokenizer
    rc, out, err = xelm_on_terminal("tokenizer", "stats", str(tok), "--split", "validation")
    assert rc == 0 and "tokenizer stats" in err and "text" in err.split("tokenizer stats", 1)[1], err
    assert "tokens/word" in out
    capsys.readouterr()
    assert main(["tokenizer", "stats", str(tok), "--split", "validation"]) == 0  # stderr not a terminal
    assert "tokenizer stats" not in capsys.readouterr().err

    plan = tmp_path / "model-plan.json"
    rc, out, err = xelm_on_terminal("cluster", "--run-dir", str(tiny_base_run), "--method", "model", "--k", "2",
                                    "--languages", "eng,deu,fra,spa,rus,pol", "--out", str(plan))
    assert rc == 0 and "embedding held-out text with the base encoder" in err, err
    assert "model plan of 6 languages: step 0/2" in err and "plots and plan file: step 1/2" in err, err
    assert json.loads(plan.read_text())["method"] == "model"
    rc, out, err = xelm_on_terminal("cluster", "--run-dir", str(tiny_base_run), "--method", "model", "--k", "2",
                                    "--languages", "eng,deu,fra,spa,rus,pol", "--out", str(plan), "--json")
    assert rc == 0 and "embedding" not in err and json.loads(out)["method"] == "model"  # --json: no bar


def test_a_loss_curve_of_too_few_logged_steps_is_said_not_drawn(tiny_tokenizer, tiny_overrides, tmp_path, capsys):
    """Two steps log too few points for a curve: no empty picture, and the summary says why."""
    from xelm.train import MIN_PLOTTED_LOGS

    run = tmp_path / "run"
    shutil.copytree(tiny_tokenizer, run / "tokenizer")
    assert cli(["pretrain", "--config", str(ROOT / "configs" / "udhr-tiny.yaml"), "--run-dir", str(run),
                *tiny_overrides, "train.steps=2", "train.warmup_steps=0", "train.log_every=1"]) == 0
    out = capsys.readouterr().out
    assert f"plot none (a curve needs {MIN_PLOTTED_LOGS} logged steps" in out, out
    assert not (run / "base" / "loss.png").exists()
    assert json.loads((run / "base" / "summary.json").read_text())["plot"] is None
