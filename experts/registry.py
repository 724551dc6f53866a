"""The expert registry: an index plus one folder per expert (weights + card).

Layout under ``root`` (a local path, or any path ``etils.epath`` opens)::

    index.json            {"format": 1, "experts": {name: card summary}}
    <name>/card.json      languages, parent, tokens, losses, centroid, checksum, ...
    <name>/weights/       Orbax params + model.json (see xelm.weights)

An expert's folder is written under a temporary name and renamed into place; the index is
rewritten atomically (write then rename) under a file lock, so concurrent writers both land
and a reader never sees half an index.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager

from etils import epath
from filelock import FileLock

from xelm.errors import XelmError
from xelm.faults import ours
from xelm.files import inside, read_json, write_json
from xelm.model import Encoder
from xelm.rundir import RunDir
from xelm.weights import load_weights, save_weights

FORMAT = 1
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
RESERVED = {"index.json"}


def check_name(name: str) -> str:
    """An expert (or cluster) name: it becomes a folder name, so it can never hold a path."""
    if not isinstance(name, str) or not NAME.match(name) or name in RESERVED:
        raise XelmError(f"expert name {name!r} is not valid: use lowercase letters, digits, '-', '_' "
                        "or '.', starting with a letter or digit (at most 64 characters)")
    return name


def check_card(card, path, name: str) -> dict:
    """A card read from disk, in the folder of expert ``name``: a mapping naming that expert, with
    its languages (a list of codes), checksum and tokens trained, or one line. A card copied into
    another expert's folder would load its weights under two names."""
    fix = f"remove the expert with `xelm expert remove {name}` and train it again"
    if not isinstance(card, dict):
        raise XelmError(f"expert card {path} is damaged (expected a JSON object); {fix}")
    if card.get("name") != name:
        raise XelmError(f"expert card {path} names {card.get('name')!r}, not the folder's expert {name!r}; {fix}")
    langs = card.get("languages")
    if not isinstance(langs, list) or not langs or not all(isinstance(x, str) for x in langs):
        raise XelmError(f"expert card {path} is damaged: 'languages' is missing or not a list of codes; {fix}")
    for key, kind, required in (("checksum", str, True), ("tokens_trained", int, True), ("corpus", str, False),
                                ("parent", str, False)):
        value = card.get(key)
        if (value is None and required) or (value is not None and (not isinstance(value, kind)
                                                                     or isinstance(value, bool))):
            raise XelmError(f"expert card {path} is damaged: {key!r} is missing or not {kind.__name__}; {fix}")
    return card


class Registry:
    def __init__(self, root: str | os.PathLike):
        self.root = epath.Path(root)
        self.index_path = self.root / "index.json"

    # ------------------------------------------------------------------------ reading
    def index(self) -> dict:
        if not self.index_path.exists():
            return {"format": FORMAT, "experts": {}}
        fix = "rebuild it with `xelm expert list --repair`"
        data = read_json(self.index_path, "registry index", fix)
        fmt = data.get("format", 0)
        if not isinstance(data.get("experts"), dict) or not isinstance(fmt, int) or isinstance(fmt, bool):
            raise XelmError(f"registry index {self.index_path} is damaged (needs an integer 'format' and an "
                            f"'experts' mapping); {fix}")
        for name in data["experts"]:
            if not isinstance(name, str) or not NAME.match(name) or name in RESERVED:
                raise XelmError(f"registry index {self.index_path} is damaged: {name!r} is not an expert name "
                                f"(names never hold paths); {fix}")
        if fmt > FORMAT:
            raise XelmError(f"registry {self.root} was written by a newer xelm (format {data['format']}, "
                            f"this one reads {FORMAT}): upgrade xelm")
        return data

    def names(self) -> list[str]:
        return sorted(self.index()["experts"])

    def cards(self) -> list[dict]:
        return [self.card(name) for name in self.names()]

    def card(self, name: str) -> dict:
        if name not in self.index()["experts"]:
            known = ", ".join(self.names()) or "none"
            raise XelmError(f"no expert named {name!r} in registry {self.root} (experts: {known})")
        path = self.part(name, "card.json")
        fix = f"remove it with `xelm expert remove {name}` and train it again"
        return check_card(read_json(path, f"expert {name!r}: its card", fix), path, name)

    def folder(self, name: str) -> epath.Path:
        """The expert's folder: a valid name, inside the registry once symlinks are resolved."""
        check_name(name)
        if _is_local(self.root):
            return epath.Path(inside(self.root, name))
        return self.root / name

    def part(self, name: str, part: str) -> epath.Path:
        """A file or folder of the expert's folder, refused if a symlink leads it outside."""
        folder = self.folder(name)
        return epath.Path(inside(folder, part)) if _is_local(self.root) else folder / part

    def load(self, name: str) -> Encoder:
        """The expert's encoder, checksum verified; damage is reported with its name."""
        card = self.card(name)
        return load_weights(str(self.part(name, "weights")), name=f"expert {name!r}", expected=card["checksum"])

    # ------------------------------------------------------------------------ writing
    @contextmanager
    def _locked(self):
        self.root.mkdir(parents=True, exist_ok=True)
        if _is_local(self.root):
            with FileLock(str(self.root / ".index.lock"), timeout=120):
                yield
        else:  # object stores have no file locks: one writer per expert name is the rule
            yield

    def _write_index(self, data: dict) -> None:
        if _is_local(self.root):
            write_json(self.index_path, data)  # atomic; a failed write leaves no temporary
            return
        tmp = ours(self.root / f".index.{uuid.uuid4().hex}.tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        tmp.replace(self.index_path)  # atomic on POSIX: readers see the old or the new index

    def add(self, card: dict, model: Encoder) -> dict:
        """Register ``model`` under ``card['name']``; the name must be new."""
        name = check_name(card["name"])
        if name in self.index()["experts"]:
            raise XelmError(f"an expert named {name!r} already exists in {self.root}: choose another "
                            f"--name or `xelm expert remove {name}` first")
        staging = ours(self.root / f".staging-{name}-{uuid.uuid4().hex[:8]}")
        staging.mkdir(parents=True)
        try:
            digest = save_weights(model, str(staging / "weights"))
            card = check_card({**card, "checksum": digest, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "format": FORMAT}, staging / "card.json", name)  # readable once written
            write_json(staging / "card.json", card)
            with self._locked():
                data = self.index()
                if name in data["experts"]:
                    raise XelmError(f"an expert named {name!r} was registered meanwhile in {self.root}")
                if (self.root / name).exists():
                    raise XelmError(_orphan_message(self.root / name))
                staging.rename(self.root / name)
                data["experts"][name] = _summary(card)
                self._write_index(data)
        finally:
            if staging.exists():
                _rmtree(staging)
        return card

    def remove(self, name: str) -> None:
        """Drop ``name`` from the index, then delete its folder (also an orphaned one). Only an
        expert's own folder (a real directory holding a card) is deleted; a symlink in its place
        is unlinked, never followed. The folder leaves its name (a rename) under the lock, so
        the name is free at once even if deleting the files is cut short."""
        folder = self.root / check_name(name)
        link = _is_local(self.root) and os.path.islink(str(folder))
        is_expert = link or (folder.is_dir() and (folder / "card.json").exists())
        with self._locked():
            data = self.index()
            if name not in data["experts"]:
                if not folder.exists() and not link:
                    raise XelmError(f"no expert named {name!r} in registry {self.root}")
                if not is_expert:
                    raise XelmError(f"{folder} is not an expert's folder (no card.json) and the index does not "
                                    "name it: not removing it")
            if data["experts"].pop(name, None) is not None:
                self._write_index(data)
            if link:
                os.unlink(str(folder))
            elif is_expert:
                trash = ours(self.root / f".removing-{name}-{uuid.uuid4().hex[:8]}")
                folder.rename(trash)
        if is_expert and not link:
            _rmtree(trash)

    def repair(self) -> list[str]:
        """Rebuild the index from the expert folders whose card is readable; returns the names."""
        with self._locked():
            experts = {}
            for folder in sorted(self.root.iterdir()) if self.root.exists() else []:
                card_path = folder / "card.json"
                if (not NAME.match(folder.name) or folder.name in RESERVED or not card_path.exists()
                        or (_is_local(folder) and os.path.islink(str(folder)))):
                    continue  # a symlink may lead anywhere: only real folders are adopted
                try:
                    experts[folder.name] = _summary(check_card(read_json(card_path, "card"), card_path, folder.name))
                except XelmError:
                    continue
            self._write_index({"format": FORMAT, "experts": experts})
        return sorted(experts)


def _orphan_message(folder: epath.Path) -> str:
    """What to do about a folder under an expert's name that the index does not list."""
    if (folder / "card.json").exists():
        return (f"a folder for expert {folder.name!r} exists in {folder.parent} but the index lacks it (an "
                "interrupted registration): `xelm expert list --repair` adopts it, "
                f"`xelm expert remove {folder.name}` deletes it")
    return (f"{folder} exists and is not an expert's folder (no card.json), so xelm will not delete it: "
            "move it away or choose another --name")


def _summary(card: dict) -> dict:
    keys = ("languages", "parent", "tokens_trained", "validation_loss", "cluster_method", "created")
    return {k: card.get(k) for k in keys}


def _is_local(path: epath.Path) -> bool:
    return "://" not in str(path)


def _rmtree(path: epath.Path) -> None:
    if _is_local(path):
        shutil.rmtree(str(path), ignore_errors=True)
    else:
        path.rmtree()


def run_registry(run_dir, registry: str | os.PathLike | None = None) -> Registry:
    """The registry given, or the run's own (``DIR/registry``; ``DIR`` must be a run)."""
    run = RunDir(run_dir)
    if registry is None:
        run.config()  # a clear error when DIR is not a run directory
    return Registry(registry or run.registry_dir)
