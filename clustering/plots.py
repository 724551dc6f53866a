"""Plots of a cluster plan: dendrogram, distance heatmap, languages on a lon/lat map.

Drawn on ``matplotlib.figure.Figure`` (the Agg canvas), never pyplot: no display, no global
state. The map uses URIEL's coordinates on plain longitude/latitude axes (no map download).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from scipy.cluster.hierarchy import dendrogram, leaves_list

from clustering import uriel
from clustering.methods import average_linkage


def _colours(k: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if k <= 10 else "tab20" if k <= 20 else "hsv"]
    return [cmap(i if k <= 20 else i / k) for i in range(k)]


def plot_dendrogram(languages, distances, labels, names, path: Path) -> Path:
    n = len(languages)
    fig = Figure(figsize=(max(8.0, 0.09 * n), 5.0))
    ax = fig.add_subplot()
    if n > 1:
        colours = _colours(len(names))
        dendrogram(average_linkage(distances), labels=list(languages), ax=ax, color_threshold=0,
                   above_threshold_color="0.4", leaf_font_size=6 if n > 60 else 9)
        cluster_of = dict(zip(languages, labels))
        for tick in ax.get_xticklabels():
            tick.set_color(colours[cluster_of[tick.get_text()]])
    ax.set_ylabel("distance (average linkage)")
    ax.set_title(f"{n} languages; leaf colour = cluster")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_heatmap(languages, distances, labels, names, path: Path) -> Path:
    n = len(languages)
    leaf_rank = np.argsort(leaves_list(average_linkage(distances))) if n > 1 else np.zeros(n, int)
    order = np.lexsort((leaf_rank, labels))  # by cluster, then as the dendrogram orders them
    fig = Figure(figsize=(min(4.5 + 0.04 * n, 20), min(3.5 + 0.04 * n, 19)))
    ax = fig.add_subplot()
    image = ax.imshow(distances[np.ix_(order, order)], cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="distance")
    bounds = np.flatnonzero(np.diff(labels[order])) + 0.5
    for b in bounds:
        ax.axhline(b, color="white", lw=0.8)
        ax.axvline(b, color="white", lw=0.8)
    if n <= 80:
        ax.set_xticks(range(n), [languages[i] for i in order], rotation=90, fontsize=7)
        ax.set_yticks(range(n), [languages[i] for i in order], fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_title(f"distances of {n} languages, grouped into {len(names)} clusters")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def plot_map(languages, labels, names, path: Path, proxy: dict[str, str] | None = None) -> Path:
    """Each language at its (or its URIEL stand-in's) coordinates, coloured by cluster."""
    proxy = proxy or {}
    placed = [(i, proxy.get(lang, lang)) for i, lang in enumerate(languages) if uriel.has_uriel(proxy.get(lang, lang))]
    fig = Figure(figsize=(12, 6.5))
    ax = fig.add_subplot()
    colours = _colours(len(names))
    if placed:
        rows = np.array([i for i, _ in placed])
        lat_lon = uriel.lat_lon([code for _, code in placed])
        for c, name in enumerate(names):
            mine = labels[rows] == c
            ax.scatter(lat_lon[mine, 1], lat_lon[mine, 0], s=18, color=colours[c], label=name,
                       edgecolors="black", linewidths=0.3)
        if len(placed) <= 60:
            for (i, _), (lat, lon) in zip(placed, lat_lon):
                ax.annotate(languages[i], (lon, lat), fontsize=7, xytext=(2, 2), textcoords="offset points")
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_aspect("equal")
    ax.grid(True, lw=0.3)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    unplaced = len(languages) - len(placed)
    ax.set_title(f"URIEL coordinates of {len(placed)} languages" + (f" ({unplaced} without)" if unplaced else ""))
    ax.legend(fontsize=7, loc="lower left", ncol=max(1, len(names) // 12))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def write_plots(result, folder: Path, stem: str) -> dict[str, Path]:
    folder = Path(folder)
    args = (result.languages, result.distances, result.labels, result.names)
    return {"dendrogram": plot_dendrogram(*args, folder / f"{stem}_dendrogram.png"),
            "heatmap": plot_heatmap(*args, folder / f"{stem}_heatmap.png"),
            "map": plot_map(result.languages, result.labels, result.names, folder / f"{stem}_map.png", result.proxy)}
