"""URIEL vectors read straight from the data files lang2vec ships.

lang2vec 1.1.2's module imports ``pkg_resources``, which setuptools >= 81 no longer has.
We locate the installed ``lang2vec`` package with its distribution metadata (which runs
none of its code) and read its ``.npz`` files with numpy, so a fresh install with any
setuptools works. Feature sets as lang2vec defines them:

- ``syntax_knn`` / ``phonology_knn`` / ``inventory_knn``: ``feature_predictions.npz``,
  features prefixed ``S_`` / ``P_`` / ``INV_`` (kNN-imputed, so no gaps);
- ``fam``: ``family_features.npz``, one binary feature per family-tree node (Glottolog),
  stored root to leaf, so a child's column comes after its parent's;
- ``geo``: ``geocoord_features.npz``, each language's great-circle distance (as a fraction of
  half the circumference) to 299 fixed points ``GC_lat_lon``, from which we recover lat/lon.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.util
from functools import cache
from pathlib import Path

import numpy as np

from xelm.errors import XelmError

KNN_SETS = {"syntax_knn": "S_", "phonology_knn": "P_", "inventory_knn": "INV_"}


def data_dir() -> Path:
    """The ``data`` folder of the installed lang2vec, found from its distribution's files
    without importing it (and without being fooled by the ``lang2vec.py`` script that pip puts
    in ``bin/``, which shadows the package when ``xelm`` runs as a console script)."""
    try:
        folder = Path(importlib.metadata.distribution("lang2vec").locate_file("lang2vec/data"))
    except importlib.metadata.PackageNotFoundError:
        raise XelmError("lang2vec is not installed: `pip install lang2vec` (its data files hold URIEL)") from None
    if not (folder / "feature_predictions.npz").is_file():
        raise XelmError(f"lang2vec's URIEL data files are missing from {folder}: reinstall lang2vec")
    return folder


def _load(name: str) -> dict[str, np.ndarray]:
    with np.load(data_dir() / name) as f:  # NpzFile re-reads a member on every access: copy once
        return {key: f[key] for key in f.files}


@cache
def _knn() -> dict:
    db = _load("feature_predictions.npz")
    data = db["data"][:, :, 0]
    sets = {name: data[:, [j for j, f in enumerate(db["feats"]) if f.startswith(prefix)]]
            for name, prefix in KNN_SETS.items()}
    return {"index": {lang: i for i, lang in enumerate(db["langs"].tolist())}, **sets}


@cache
def _families() -> dict:
    db = _load("family_features.npz")
    member = db["data"][:, :, 0] == 1
    return {"index": {lang: i for i, lang in enumerate(db["langs"].tolist())},
            "member": member, "nodes": [f.removeprefix("F_") for f in db["feats"].tolist()]}


@cache
def _coordinates() -> dict:
    """Solve cos(pi * d_i) = x . p_i for each language's unit vector x (exact up to rounding)."""
    db = _load("geocoord_features.npz")
    lat_lon = np.radians([[float(v) for v in f[3:].split("_")] for f in db["feats"].tolist()])
    lat, lon = lat_lon.T
    points_Px3 = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], 1)
    dist_NxP = db["data"][:, :, 0].astype(np.float64)
    x_Nx3 = np.linalg.lstsq(points_Px3, np.cos(np.pi * dist_NxP.T), rcond=None)[0].T
    x_Nx3 /= np.linalg.norm(x_Nx3, axis=1, keepdims=True)
    lat_lon_deg = np.degrees(np.stack([np.arcsin(np.clip(x_Nx3[:, 2], -1, 1)),
                                       np.arctan2(x_Nx3[:, 1], x_Nx3[:, 0])], 1))
    return {"index": {lang: i for i, lang in enumerate(db["langs"].tolist())},
            "unit": x_Nx3, "lat_lon": lat_lon_deg}


def uriel_languages() -> frozenset[str]:
    """Every ISO 639-3 code URIEL has (the same 7,970 in each feature file)."""
    return frozenset(_knn()["index"])


def has_uriel(iso: str) -> bool:
    return iso in _knn()["index"]


def _rows(table: dict, languages: list[str]) -> list[int]:
    missing = [lang for lang in languages if lang not in table["index"]]
    if missing:
        raise XelmError(f"URIEL has no vectors for {', '.join(missing)}")
    return [table["index"][lang] for lang in languages]


def knn_vectors(languages: list[str], feature_set: str) -> np.ndarray:
    """[n, features] float32 of ``syntax_knn``, ``phonology_knn`` or ``inventory_knn``."""
    table = _knn()
    return table[feature_set][_rows(table, languages)]


def family_vectors(languages: list[str]) -> np.ndarray:
    """[n, nodes] bool: membership of each family-tree node (all False for isolates)."""
    table = _families()
    return table["member"][_rows(table, languages)]


def family_path(iso: str) -> list[str]:
    """Family-tree nodes from root to leaf, e.g. fra -> Indo-European, Italic, ..., Romance, ..."""
    table = _families()
    if iso not in table["index"]:
        return []
    return [table["nodes"][j] for j in np.flatnonzero(table["member"][table["index"][iso]])]


def unit_positions(languages: list[str]) -> np.ndarray:
    """[n, 3] points on the unit sphere."""
    table = _coordinates()
    return table["unit"][_rows(table, languages)]


def lat_lon(languages: list[str]) -> np.ndarray:
    """[n, 2] latitude, longitude in degrees."""
    table = _coordinates()
    return table["lat_lon"][_rows(table, languages)]


def family_members(node: str) -> frozenset[str]:
    """Every ISO 639-3 code under the family-tree node ``node`` (an exact node name)."""
    table = _families()
    col = table["nodes"].index(node)
    langs = list(table["index"])
    return frozenset(langs[i] for i in np.flatnonzero(table["member"][:, col]))


def family_node(name: str) -> str:
    """The family-tree node a user means by ``name``: a node of that name (any case), else the
    broadest node with ``name`` among its words ('Bantu' -> 'Narrow Bantu', Glottolog's name for
    the Bantu languages). An unknown name is an error listing the nearest node names."""
    nodes = _families()["nodes"]
    wanted = " ".join(name.replace("_", " ").split()).casefold()
    exact = [n for n in nodes if n.casefold() == wanted]
    if exact:
        return exact[0]
    words = set(wanted.split())
    containing = [n for n in nodes if words and words <= set(n.casefold().replace("-", " ").split())
                  | set(n.casefold().split())]
    if containing:
        return max(containing, key=lambda n: (len(family_members(n)), -len(n)))
    near = difflib.get_close_matches(name, nodes, n=5, cutoff=0.6)
    hint = f"nearest: {', '.join(near)}" if near else "e.g. Romance, Slavic, Bantu, Turkic, Indo-Aryan"
    raise XelmError(f"unknown language family {name!r}: not a URIEL/Glottolog family or branch name; {hint}")
