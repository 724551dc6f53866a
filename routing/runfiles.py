"""The router's files in a run directory (``DIR/router/``) and the texts they are fitted on.

Fitted routers are saved with a fingerprint of the registry (names, languages, checksums):
adding or retraining an expert makes them stale, and they are refitted on next use.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from xelm.data import load_corpus, texts_by_lang
from xelm.data.writing_systems import char_script
from xelm.errors import XelmError
from xelm.files import read_json, write_json
from xelm.rundir import RunDir

MIN_LETTERS = 50


def router_dir(run_dir: str | Path) -> Path:
    return RunDir(run_dir).router_dir


def fingerprint(cards: list[dict]) -> str:
    key = sorted((c["name"], sorted(c["languages"]), c.get("checksum")) for c in cards)
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def read_meta(path: Path) -> dict | None:
    """A fitted router's file, or None when it is missing or damaged (then it is refitted)."""
    try:
        return read_json(path)
    except XelmError:
        return None


write_meta = write_json  # atomic: a reader (or another process) never sees half a file


def cached_for(path: Path, cards: list[dict], compute: Callable[[], object], keep: int = 8):
    """``compute()``, kept in ``path`` under the fingerprint of ``cards``; the last few sets of
    experts are kept, so routing among a subset of a registry does not evict the whole one."""
    fp = fingerprint(cards)
    entries = (read_meta(path) or {}).get("by_fingerprint", {})
    if not isinstance(entries, dict):  # a damaged cache is recomputed
        entries = {}
    if fp not in entries:
        entries = {**dict(list(entries.items())[-(keep - 1):]), fp: compute()}
        write_meta(path, {"by_fingerprint": entries})
    return entries[fp]


def expert_texts(run_dir: str | Path, cards: list[dict], split: str = "train") -> dict[str, list[str]]:
    """Per language of any expert, its texts in ``split`` of the corpus it was trained on
    (the run's corpus, or an HMR expert's own)."""
    default = RunDir(run_dir).config().data.corpus
    by_corpus: dict[str, set[str]] = {}
    for c in cards:
        by_corpus.setdefault(c.get("corpus") or default, set()).update(c["languages"])
    out: dict[str, list[str]] = {}
    for spec, langs in by_corpus.items():  # a card's corpus never reaches the network (a hub spec is
        # followed only when it is the run config's own, which the user chose)
        if not isinstance(spec, str):
            raise XelmError(f"an expert card names corpus {spec!r}, which is not a corpus spec; re-create the expert")
        part = load_corpus(spec, languages=sorted(langs), hub=spec == default)[split]
        for lang, texts in texts_by_lang(part).items():
            out.setdefault(lang, []).extend(texts)
    return out


def corpus_split(run_dir: str | Path, split: str, languages: list[str] | None = None):
    """``split`` of the run's corpus (a ``datasets.Dataset``), optionally some languages only."""
    return load_corpus(RunDir(run_dir).config().data.corpus, languages=languages)[split]


@lru_cache(maxsize=65536)
def _script(ch: str) -> str | None:
    """A letter's script; one without an ISO 15924 code here (Linear B, Ogham, ...) is told apart
    by its Unicode block name, so that such a script is never taken for one the experts saw."""
    script = char_script(ch)
    if script == "Zyyy":
        return "Zyyy-" + unicodedata.name(ch, "unknown").split(" ")[0].title()
    return script


def letter_scripts(text: str) -> dict[str, int]:
    """Letters per script in ``text`` (each distinct character looked up once)."""
    out: dict[str, int] = {}
    for ch, n in Counter(text).items():
        if s := _script(ch):
            out[s] = out.get(s, 0) + n
    return out


def expert_scripts(run_dir: str | Path, cards: list[dict]) -> set[str]:
    """Scripts of the letters in the experts' training text (``DIR/router/scripts.json``); a
    script needs MIN_LETTERS letters there to count (a quoted foreign word does not)."""
    def count() -> dict[str, int]:
        scripts: dict[str, int] = {}
        for texts in expert_texts(run_dir, cards).values():
            for s, n in letter_scripts("".join(texts)).items():
                scripts[s] = scripts.get(s, 0) + n
        return scripts

    scripts = cached_for(router_dir(run_dir) / "scripts.json", cards, count)
    if not isinstance(scripts, dict) or not all(isinstance(n, int) for n in scripts.values()):
        scripts = count()  # a damaged cache entry: counted again
    return {s for s, n in scripts.items() if n >= MIN_LETTERS}
