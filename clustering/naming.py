"""Readable, stable cluster names: the dominant family or genus (URIEL's Glottolog tree) plus an index."""

from __future__ import annotations

import re
from collections import Counter

from clustering import uriel
from xelm.languages import language_name

DESCEND = 0.9  # go down to a subgroup while it still holds this share of the group's members
# Well-known subgroups (about WALS's genus level) that may name a cluster; otherwise the top
# family does, so that names read "romance" rather than Glottolog's "Shifted Western Romance".
GENERA = frozenset({
    "Romance", "Germanic", "Slavic", "Celtic", "Greek", "Armenian", "Albanian", "Indo-Aryan", "Iranian",
    "Narrow Bantu", "Gur", "Gbe", "Mande", "Nilotic", "Semitic", "Berber", "Cushitic", "Chadic",
    "Sinitic", "Bodic", "Lolo-Burmese", "Kuki-Chin", "Malayo-Polynesian", "Oceanic", "Polynesian",
    "Greater Central Philippine", "Finnic", "Saami", "Kam-Tai", "Zapotecan", "Mixtecan", "Otomian",
    "Tupi-Guarani",
})
SHORT = {"Narrow Bantu": "Bantu", "Greater Central Philippine": "Philippine"}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def dominant_group(members: list[str]) -> tuple[str | None, float]:
    """The most common family, or the deepest well-known subgroup of it that keeps >= 90% of those
    members; returned with the share of ``members`` it holds.

    A Romance cluster with one Germanic language is "Romance"; a cluster that is 40% Romance and
    60% other families is "Indo-European" if that is the most common top family.
    """
    paths = [uriel.family_path(m) for m in members]
    counts = Counter(node for path in paths for node in path)
    if not counts:
        return None, 0.0
    parent = {path[j]: path[j - 1] for path in paths for j in range(1, len(path))}
    roots = [node for node in counts if node not in parent]
    node = named = max(roots, key=lambda r: (counts[r], r))
    while True:
        children = [c for c, p in parent.items() if p == node]
        best = max(children, key=lambda c: (counts[c], c), default=None)
        if best is None or counts[best] < DESCEND * counts[node]:
            return SHORT.get(named, named), counts[named] / len(members)
        node = best
        named = node if node in GENERA else named


def cluster_names(groups: list[list[str]]) -> list[str]:
    """``romance-0``, ``slavic-1``, ...: one per group, in order; unique through the index.

    A group whose dominant family holds under half of it is ``mixed-<family>-<i>``.
    """
    names = []
    for index, members in enumerate(groups):
        if len(members) == 1:
            names.append(f"{slug(language_name(members[0]))}-{index}")
            continue
        group, share = dominant_group(members)
        prefix = "" if share >= 0.5 else "mixed-"
        names.append(f"{prefix}{slug(group or 'unclassified')}-{index}")
    return names
