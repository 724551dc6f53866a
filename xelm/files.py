"""Files are hostile until checked: names resolve inside their root, JSON is written atomically
and read through one loader that turns damage into one line, and output folders are checked
for content the project did not write before anything is written there."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
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
    or the new one, never half of one; a failed write (full disk) leaves no temporary behind. A
    new file is 0644, as any a user writes; a replaced one keeps its mode (a private file stays so).
    On an object store (``gs://``, ``s3://`` ... through ``etils.epath``) one write is one whole
    object already, so it is written directly."""
    if "://" in str(path):
        from etils import epath

        epath.Path(path).write_text(text)
        return path
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = 0o644
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
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
