"""Faults of the machine, not of the user: a full, over-quota or read-only device becomes one
line naming the file and its mount point, the temporary files a failed write of this process left
are removed, and library threads do not print after that line."""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path

TEMPORARY_PATTERNS = ("*.orbax-checkpoint-tmp*", ".*.tmp", ".staging-*")
DEVICE_ERRORS = {errno.ENOSPC: "no space left on the device",
                 errno.EDQUOT: "disk quota exceeded",
                 errno.EROFS: "the filesystem is read-only",
                 errno.EFBIG: "file too large for the filesystem or the process's file size limit"}
STARTED = time.time()


def device_error(e: BaseException) -> OSError | None:
    """The OSError of a full, over-quota or read-only device behind ``e`` (libraries such as
    Orbax wrap it in their own exceptions), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DEVICE_ERRORS:
            return e
        if any(s in str(e) for s in ("No space left on device", "File too large", "Read-only file system",
                                     "Disk quota exceeded")):
            code = (errno.ENOSPC if "space" in str(e) else errno.EFBIG if "too large" in str(e)
                    else errno.EROFS if "Read-only" in str(e) else errno.EDQUOT)
            quoted = re.findall(r'"(/[^"]+)"', str(e))  # Orbax/TensorStore name the file in quotes
            return OSError(code, os.strerror(code), getattr(e, "filename", None) or (quoted[-1] if quoted else None))
        e = e.__cause__ or e.__context__
    return None


def describe_os_error(e: OSError) -> str:
    """One line for an OSError: what went wrong, with the device's mount point when it is full."""
    what = DEVICE_ERRORS.get(e.errno, e.strerror or str(e))
    if e.filename:
        where = Path(str(e.filename))
        mount = _mount_point(where)
        return f"{what}: {where}" + (f" (on the filesystem mounted at {mount})" if e.errno in DEVICE_ERRORS
                                     and mount else "")
    return what


def _mount_point(path: Path) -> Path | None:
    try:
        p = path.resolve()
        while not p.exists():
            p = p.parent
        while not os.path.ismount(p):
            p = p.parent
        return p
    except OSError:
        return None


_OURS: set[Path] = set()  # temporaries and checkpoint folders this process writes


def ours(path: str | Path) -> str | Path:
    """Mark ``path`` as this process's: a temporary file or folder, or a folder Orbax saves
    into (its unfinished ``*.orbax-checkpoint-tmp*`` children are then ours too). Returns it."""
    if "://" not in str(path):
        _OURS.add(Path(path).absolute())
    return path


def clean_temporaries(since: float = STARTED) -> list[Path]:
    """Delete what a failed write of this process left: its own temporaries (see :func:`ours`),
    and Orbax's unfinished checkpoints made since ``since`` in the folders it saved into. Another
    process's temporaries are never touched, even in the same run: it may still be writing them.
    Returns what was removed."""
    removed = []
    for mark in sorted(_OURS):
        if _temporary(mark):
            found = [mark]
        elif mark.is_dir() and not mark.is_symlink():
            found = sorted(mark.glob(TEMPORARY_PATTERNS[0]))
        else:
            continue
        for p in found:
            try:
                if p.is_symlink() or p.lstat().st_mtime < since - 1:
                    continue
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def _temporary(path: Path) -> bool:
    return any(fnmatch.fnmatch(path.name, pattern) for pattern in TEMPORARY_PATTERNS)


def quiet_library_threads() -> None:
    """A failing write in a library's worker threads (Orbax) is reported once, by us, in one
    line: their tracebacks and error logs are for ``--debug``."""
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    threading.excepthook = lambda hook_args: None
    sys.stderr = MainThreadOnly(sys.stderr)  # native threads (TensorStore's callbacks) print there


class MainThreadOnly:
    """A stream that passes on what the main thread writes and drops what other threads write."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        if threading.current_thread() is threading.main_thread():
            return self._stream.write(text)
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
