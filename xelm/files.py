"""Files are hostile until checked: names resolve inside their root, JSON is written atomically
and read through one loader that turns damage into one line, and output folders are checked
for content the project did not write before anything is written there."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import tempfile
import time
from pathlib import Path

from xelm.errors import XelmError


def inside(root: str | Path, *names: str) -> Path:
    """``root/names...``, refused unless it stays inside ``root`` once every symlink and ``..``
    is resolved: a name read from a file or a flag never reaches outside its root."""
    root = Path(root)
    for name in names:
        if not isinstance(name, str) or not name or name in (".", "..") or "\x00" in name:
            raise XelmError(f"{name!r} is not a valid name inside {root}")
    path = root.joinpath(*names)
    real_root = root.resolve()
    real = path.resolve()
    if real != real_root and real_root not in real.parents:
        raise XelmError(f"{'/'.join(names)!r} leads outside {root} (to {real}); refusing to use it")
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers see the old file
    or the new one, never half of one; a failed write (full disk) leaves no temporary behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


MAX_JSON_BYTES = 256 * 2**20  # an index, card or router file is far smaller; more is not ours


def read_json(path, what: str = "file", fix: str = "delete it and re-run the step that writes it",
              expect: type = dict):
    """The JSON document at ``path`` (a local path or an ``etils.epath`` one); a missing,
    unreadable, oversized, non-UTF-8 or damaged file, or one whose top level is not ``expect``,
    is one XelmError naming the file and the fix."""
    local = "://" not in str(path)
    path = Path(path) if local else path
    try:
        if local and path.exists() and not path.is_dir():
            if not stat.S_ISREG(path.stat().st_mode):
                raise XelmError(f"{what} {path} is not a regular file; {fix}")
            if path.stat().st_size > MAX_JSON_BYTES:
                raise XelmError(f"{what} {path} is larger than {MAX_JSON_BYTES >> 20} MiB; {fix}")
        data = parse_json(path.read_bytes(), path, what, fix)
    except FileNotFoundError:
        raise XelmError(f"{what} {path} is missing; {fix}") from None
    except IsADirectoryError:
        raise XelmError(f"{what} {path} is a directory, not a file; {fix}") from None
    if not isinstance(data, expect):
        raise XelmError(f"{what} {path} is damaged (expected a JSON {expect.__name__}); {fix}")
    return data


def parse_json(raw: bytes, path, what: str = "file", fix: str = "delete it and re-run the step that writes it"):
    """``raw`` decoded as UTF-8 JSON; damage is one XelmError naming ``path`` and the fix."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise XelmError(f"{what} {path} is damaged ({type(e).__name__}); {fix}") from None


def field(data: dict, key: str, kind: type | tuple, path: str | Path, what: str = "file"):
    """``data[key]`` checked to be of ``kind``: damage in a file we read is one line."""
    value = data.get(key)
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
        raise XelmError(f"{what} {path} is damaged: {key!r} is missing or not "
                        f"{getattr(kind, '__name__', kind)}; re-create it")
    return value


def check_output_dir(path: str | Path, ours: set[str], overwrite: bool = False, flag: str = "--overwrite") -> Path:
    """An output folder we may write: absent, empty, or holding only files named in ``ours``
    (an earlier output of the same kind). Anything else is the user's: refused unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise XelmError(f"{path} exists and is not a directory: choose another output folder")
    if path.is_dir() and not overwrite:
        foreign = sorted(p.name for p in path.iterdir() if p.name not in ours)
        if foreign:
            raise XelmError(f"{path} already holds files xelm did not write ({', '.join(foreign[:5])}"
                            f"{', ...' if len(foreign) > 5 else ''}): choose an empty folder, or pass {flag}")
    return path


# --------------------------------------------------------------------- faults of the machine
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


def clean_temporaries(*roots, since: float = STARTED) -> list[Path]:
    """Delete temporary files and folders (atomic-write temporaries, Orbax's unfinished
    checkpoints, registry staging folders) under ``roots`` made since ``since`` (this process's
    start): what a failed write left behind. Returns what was removed."""
    removed = []
    for root in roots:
        if root is None or "://" in str(root) or not Path(root).is_dir():
            continue
        for pattern in TEMPORARY_PATTERNS:
            for p in sorted(Path(root).rglob(pattern)):
                try:
                    if p.is_symlink() or p.lstat().st_mtime < since - 1:
                        continue
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
                    removed.append(p)
                except OSError:
                    pass
    return removed


# ------------------------------------------------------------------------------- work folders
def claim_work_folder(work: str | Path, job: dict,
                      resumable: tuple[str, ...] = ("checkpoints", "metrics.jsonl")) -> str | None:
    """Make ``work`` a folder for ``job`` (a JSON-able description of what trains there): its
    checkpoints are resumed only when they were written for the same job. A folder left by
    another job under a reused name (another language, parent or config) has its ``resumable``
    parts deleted; returns why, or None when nothing was discarded."""
    work = Path(work)
    record = work / "job.json"
    leftovers = [work / name for name in resumable if (work / name).exists()]
    why = None
    if leftovers:
        try:
            old = read_json(record, "work folder record")
        except XelmError:
            old = None
        if old != json.loads(json.dumps(job)):
            why = "no record of what they were training" if old is None else _job_difference(old, job)
            for p in leftovers:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    write_json(record, job)
    return why


def _job_difference(old: dict, new: dict) -> str:
    new = json.loads(json.dumps(new))
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            a, b = json.dumps(old.get(key)), json.dumps(new.get(key))
            return f"{key} was {a[:60]}, now {b[:60]}"
    return "a different job"
