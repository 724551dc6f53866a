"""JAX's persistent compilation cache for the command line: the second run of a command (a
``xelm route``, a server restart, a resumed demo) loads its compiled XLA programs from disk
instead of compiling them again.

The cache is trusted code: whoever can write into it can make this process run what they wrote
(JAX's documentation says so). So it lives in the user's own cache folder, created private
(0700), and a folder that is a symlink, owned by someone else, writable by others or read-only
is not used: the command then compiles as before and says why in one line. ``XELM_COMPILATION_CACHE=off``
turns it off, ``XELM_COMPILATION_CACHE=DIR`` moves it; a ``JAX_COMPILATION_CACHE_DIR`` the user
set is JAX's own setting and is left alone.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

ENV = "XELM_COMPILATION_CACHE"  # a folder, or "off"
JAX_ENV = "JAX_COMPILATION_CACHE_DIR"  # JAX's own setting: the user's, unless xelm put it there
SET_BY_XELM = "XELM_SET_JAX_COMPILATION_CACHE_DIR"  # the value xelm put there (its children see it too)
OFF = ("off", "0", "none", "false", "")
MIN_COMPILE_SECONDS = 0.1  # JAX's default (1 s) leaves out most of this encoder's programs
MAX_BYTES = 2 * 1024**3  # least recently used entries go first beyond this


def default_dir() -> Path:
    """``$XDG_CACHE_HOME/xelm/jax``, else ``~/.cache/xelm/jax``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "xelm" / "jax"


def unsafe_reason(path: Path) -> str | None:
    """Why ``path`` must not hold a trusted cache, or None: it is created private if missing."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError as e:
        return f"cannot create it ({e.strerror or e})"
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return "it is not a plain folder"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return "another user owns it"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "others can write into it"
    if not os.access(path, os.W_OK | os.X_OK):
        return "it is read-only"
    return None


def enable_compilation_cache(setting: str | None = None) -> Path | None:
    """Point JAX's persistent cache at ``setting`` (default: ``$XELM_COMPILATION_CACHE``, else
    :func:`default_dir`); the folder used, or None when off or refused (one line on stderr).
    Set through the environment before JAX is imported (the CLI imports it late), through
    ``jax.config`` after."""
    users = os.environ.get(JAX_ENV)
    if users and users != os.environ.get(SET_BY_XELM):
        return Path(users)
    if users:  # an earlier call's (this process's or a parent's): decided again below
        for name in (JAX_ENV, SET_BY_XELM):
            os.environ.pop(name, None)
    setting = os.environ.get(ENV) if setting is None else setting
    if setting is not None and setting.strip().lower() in OFF:
        return None
    try:
        path = Path(setting).expanduser() if setting else default_dir()
    except RuntimeError:  # no home folder to expand or to hold the default
        path, reason = Path(setting or "~/.cache/xelm/jax"), "no home folder"
    else:
        reason = unsafe_reason(path)
    if reason:
        print(f"xelm: note: compiling without the compilation cache: {path}: {reason} "
              f"(set {ENV}=DIR to move it, or {ENV}=off)", file=sys.stderr)
        return None
    values = {"jax_compilation_cache_dir": str(path),
              "jax_persistent_cache_min_compile_time_secs": MIN_COMPILE_SECONDS,
              "jax_compilation_cache_max_size": MAX_BYTES}
    if "jax" in sys.modules:
        import jax

        for name, value in values.items():
            jax.config.update(name, value)
    else:
        for name, value in values.items():
            os.environ[name.upper()] = str(value)
        os.environ[SET_BY_XELM] = str(path)
    return path
