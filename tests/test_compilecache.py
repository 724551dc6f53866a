"""The command line's persistent compilation cache: a second process loads what the first
compiled; a folder others could write into (trusted code) is refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from xelm.compilecache import ENV, enable_compilation_cache

PROBE = """
import json, sys
if sys.argv[2] == "after jax":
    import jax
from xelm.compilecache import enable_compilation_cache
used = enable_compilation_cache(sys.argv[1])
import jax, jax.numpy as jnp
hits = []
jax.monitoring.register_event_listener(lambda event, **kw: hits.append(event))
@jax.jit
def f(x):  # compiles well over the cache's 0.1 s threshold (40 steps sat right at it and flaked)
    for _ in range(400):
        x = jnp.tanh(x @ x.T) + jnp.sin(x)
    return x
f(jnp.ones((32, 32))).block_until_ready()
print(json.dumps({"used": str(used), "hits": hits.count("/jax/compilation_cache/cache_hits")}))
"""


def _probe(folder, when: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (ENV, "JAX_COMPILATION_CACHE_DIR")}
    out = subprocess.run([sys.executable, "-c", PROBE, str(folder), when], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("when", ["before jax", "after jax"])  # the environment, or jax.config
def test_a_second_process_loads_the_first_ones_compiled_program(tmp_path, when):
    folder = tmp_path / "cache" / "jax"
    first = _probe(folder, when)
    assert first == {"used": str(folder), "hits": 0}
    assert folder.stat().st_mode & 0o777 == 0o700 and any(p.name.endswith("-cache") for p in folder.iterdir())
    assert _probe(folder, when)["hits"] >= 1


@pytest.mark.parametrize("make", ["open to others", "a symlink", "read-only"])
def test_a_folder_others_could_write_is_refused_in_one_line(tmp_path, capsys, monkeypatch, make):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)  # a user's own would win
    real = tmp_path / "real"
    real.mkdir()
    folder = real
    if make == "open to others":
        real.chmod(0o777)
    elif make == "read-only":  # as the kernel answers a user (root may write anyway)
        monkeypatch.setattr(os, "access", lambda path, mode: False)
    else:
        folder = tmp_path / "link"
        folder.symlink_to(real)
    assert enable_compilation_cache(str(folder)) is None
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(folder) in err and "without the compilation cache" in err
    assert not any(real.iterdir())


def test_off_and_the_users_own_jax_setting_are_respected(tmp_path, monkeypatch):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    assert enable_compilation_cache("off") is None
    monkeypatch.setenv(ENV, "off")
    assert enable_compilation_cache() is None
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "theirs"))
    assert enable_compilation_cache(str(tmp_path / "ours")) == tmp_path / "theirs"
    assert not (tmp_path / "ours").exists()


def test_no_home_folder_is_a_note_not_a_crash(monkeypatch, capsys):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.setattr("pathlib.Path.home", lambda: (_ for _ in ()).throw(RuntimeError("no home")))
    assert enable_compilation_cache() is None
    assert "no home folder" in capsys.readouterr().err


AGAIN = """
import json, os, sys
from xelm.compilecache import enable_compilation_cache
a, b = sys.argv[1:]
used = [str(enable_compilation_cache(a)), str(enable_compilation_cache(b)), os.environ["JAX_COMPILATION_CACHE_DIR"]]
used.append(str(enable_compilation_cache("off")))
print(json.dumps(used + [os.environ.get("JAX_COMPILATION_CACHE_DIR")]))
"""


def test_a_folder_xelm_chose_before_is_not_taken_for_the_users_own(tmp_path):
    """Before JAX is imported the cache is set through the environment, where a second call (or a
    child process) must not mistake it for a JAX_COMPILATION_CACHE_DIR the user set."""
    env = {k: v for k, v in os.environ.items() if k not in (ENV, "JAX_COMPILATION_CACHE_DIR")}
    a, b = tmp_path / "a", tmp_path / "b"
    out = subprocess.run([sys.executable, "-c", AGAIN, str(a), str(b)], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == [str(a), str(b), str(b), "None", None]
