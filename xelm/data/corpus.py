"""Load a corpus as a ``datasets.DatasetDict`` with parallel train/validation/test splits.

A corpus spec is one of:
  ``udhr``           the embedded Universal Declaration of Human Rights (see UDHR.md);
  a directory        one file per language: ``<iso>.txt`` (one document per non-empty line),
                     ``.jsonl`` or ``.parquet`` (a ``text`` column; ``lang`` and ``split``
                     columns are optional, the language comes from the file name otherwise);
  ``hf:NAME``        a Hugging Face hub dataset whose configs are languages (online only).
"""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from functools import lru_cache
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xelm.data.writing_systems import dominant_script
from xelm.errors import XelmError, first_line
from xelm.languages import language_name, to_iso3

SPLITS = ("train", "validation", "test")
COLUMNS = ("lang", "tag", "name", "script", "unit", "heading", "text")
UDHR_PATH = Path(__file__).with_name("udhr.parquet")
# UDHR articles per split: parallel across languages (the same articles everywhere).
UDHR_VALIDATION = {"25", "26", "27"}
UDHR_TEST = {"28", "29", "30"}
# What one corpus file may cost: bytes on disk, text bytes once decoded, and rows. A file past
# these is refused with a message, not read until memory runs out (a parquet file of a few
# hundred bytes can decode to gigabytes).
MAX_FILE_BYTES = 2**30
MAX_TEXT_BYTES = 2**30
MAX_ROWS = 10_000_000
PARQUET_BATCH_ROWS = 4096
# Hub split names and the split each feeds: FLORES's held-out ``devtest`` is test, never train.
HUB_SPLITS = {"train": "train", "dev": "validation", "valid": "validation", "validation": "validation",
              "devtest": "test", "test": "test"}


def udhr_split(unit: str) -> str:
    return "validation" if unit in UDHR_VALIDATION else "test" if unit in UDHR_TEST else "train"


def load_corpus(spec: str | Path, languages: list[str] | None = None, hub: bool = True) -> datasets.DatasetDict:
    """The corpus named by ``spec``, optionally restricted to ``languages`` (ISO 639-3).
    ``hub=False`` refuses ``hf:`` specs: a spec read from a card or plan never reaches the network."""
    if not hub and str(spec).startswith("hf:"):
        raise XelmError(f"corpus {spec!r} comes from a file xelm read (a card or plan), and names a hub "
                        "dataset: xelm does not go to the network for a file's content; make the dataset a "
                        "local directory corpus, or the run's own data.corpus")
    table = _load_table(str(spec))
    if languages is not None:
        languages = [languages] if isinstance(languages, str) else list(languages)
        if not languages:
            raise XelmError(f"the language filter for corpus {spec!r} is empty: give ISO 639-3 codes")
        known = set(table.column("lang").to_pylist())
        missing = [lang for lang in languages if lang not in known]
        if missing:
            raise XelmError(f"language(s) {', '.join(missing)} not in corpus {spec!r} "
                            f"(it has {len(known)} languages; see `xelm data stats --corpus {spec}`)")
        table = table.filter(pc.is_in(table.column("lang"), pa.array(languages)))
    splits = table.column("split").to_pylist()
    table = table.drop(["split"])
    return datasets.DatasetDict({
        name: datasets.Dataset(table.filter(pa.array([s == name for s in splits])))
        for name in SPLITS
    })


def _load_table(spec: str) -> pa.Table:
    if spec == "udhr":
        return _udhr_table()
    if spec.startswith("hf:"):
        return _hub_table(spec[3:])
    path = Path(spec).expanduser()
    if not path.exists():
        raise XelmError(f"corpus {spec!r} not found: give 'udhr', an existing directory, or hf:NAME")
    if not path.is_dir():
        raise XelmError(f"corpus {spec!r} is a file: give a directory with one file per language "
                        "(<iso>.txt, .jsonl or .parquet)")
    return _directory_table(path)


@lru_cache(maxsize=1)
def _udhr_table() -> pa.Table:
    table = pq.read_table(UDHR_PATH)
    return table.append_column("split", pa.array([udhr_split(u) for u in table.column("unit").to_pylist()]))


def _directory_table(path: Path) -> pa.Table:
    files = sorted(f for f in path.iterdir() if f.suffix in (".txt", ".jsonl", ".parquet"))
    for f in files:
        _check_regular(f)
    if not files:
        raise XelmError(f"corpus directory {path} has no .txt, .jsonl or .parquet files")
    rows: dict[str, list] = {c: [] for c in (*COLUMNS, "split")}
    units: Counter = Counter()  # rows per language so far: units stay unique across files
    for f in files:
        records = _read_records(f)
        if not records:
            raise XelmError(f"corpus file {f} has no text")
        by_lang: dict[str, list[dict]] = {}
        for r in records:
            lang = to_iso3(r.get("lang") or f.stem, where=f"corpus file {f}")
            by_lang.setdefault(lang, []).append(r)
        for lang, recs in by_lang.items():
            script = dominant_script(r["text"] for r in recs[:200])
            for i, r in enumerate(recs):
                rows["lang"].append(lang)
                rows["tag"].append(r.get("tag") or lang)
                rows["name"].append(language_name(lang))
                rows["script"].append(script)
                rows["unit"].append(str(units[lang]))
                units[lang] += 1
                rows["heading"].append("")
                rows["text"].append(r["text"])
                rows["split"].append(_split_of(r, i, f))
    return pa.table(rows)


def _split_of(record: dict, index: int, f: Path) -> str:
    """A ``split`` column wins; otherwise every 10th document is validation, the next test."""
    split = record.get("split")
    if split is None:
        return {8: "validation", 9: "test"}.get(index % 10, "train")
    if split not in SPLITS:
        raise XelmError(f"corpus file {f}: split {split!r} is not one of {', '.join(SPLITS)}")
    return split


def _check_regular(f: Path) -> None:
    """Only a regular file of bounded size is read: a device (``/dev/zero``), a FIFO or a socket
    behind a corpus name would never end."""
    try:
        st = os.stat(f)
    except OSError as e:
        raise XelmError(f"corpus file {f} cannot be read: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise XelmError(f"corpus file {f} is not a regular file (a device, FIFO or socket); give plain files")
    if st.st_size > MAX_FILE_BYTES:
        raise XelmError(f"corpus file {f} is {st.st_size:,} bytes, over the limit of {MAX_FILE_BYTES:,}: "
                        "split it into several files or shard the corpus")


def _too_big(f: Path, what: str) -> XelmError:
    return XelmError(f"corpus file {f} holds more than {what}, the most one file may hold "
                     "(a compressed file can decode to far more than its size): split it")


def _read_parquet(f: Path) -> list[dict]:
    """Rows of a parquet file, read in batches so that its decoded size is bounded as it grows."""
    pf = pq.ParquetFile(f)
    if pf.metadata.num_rows > MAX_ROWS:
        raise _too_big(f, f"{MAX_ROWS:,} rows")
    columns = [c for c in ("text", "lang", "tag", "split") if c in pf.schema_arrow.names]
    records, size = [], 0
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
        for name in columns:
            size += _decoded_bytes(batch.column(name), f"corpus file {f}: column {name!r}")
        if size > MAX_TEXT_BYTES:
            raise _too_big(f, f"{MAX_TEXT_BYTES:,} bytes of text")
        records.extend(batch.to_pylist())
    return records


def _decoded_bytes(col: pa.Array, what: str) -> int:
    """Bytes a column decodes to. A dictionary column counts its value once per row that refers to
    it (1 KB on disk can repeat a 10 KB value a thousand times); other types (``string_view``,
    numbers) are counted as the strings they cast to."""
    values = col.dictionary if pa.types.is_dictionary(col.type) else col
    try:
        lengths = pc.binary_length(values.cast(pa.large_string()))
    except pa.ArrowException:
        raise XelmError(f"{what} holds {values.type} values, not text: store it as strings") from None
    if values is not col:
        lengths = lengths.take(col.indices)
    return pc.sum(lengths).as_py() or 0


def _lines(f: Path) -> list[str]:
    """A file's lines, split on newlines only: ``splitlines`` also splits on U+2028, NEL and form
    feeds, which are text inside a document. A leading byte-order mark is not text either."""
    return f.read_text("utf-8-sig").split("\n")


def _read_jsonl(f: Path) -> list:
    """A JSON-lines file's records; an error names the file's line (``json`` counts within one)."""
    records = []
    for number, line in enumerate(_lines(f), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise XelmError(f"corpus file {f} is not JSON lines ({e.msg} at line {number})") from None
    return records


def _read_records(f: Path) -> list[dict]:
    try:
        if f.suffix == ".txt":
            return [{"text": line.strip()} for line in _lines(f) if line.strip()]
        records = _read_jsonl(f) if f.suffix == ".jsonl" else _read_parquet(f)
    except UnicodeDecodeError:
        raise XelmError(f"corpus file {f} is not UTF-8 text") from None
    except RecursionError:
        raise XelmError(f"corpus file {f} is not JSON lines (nested too deeply)") from None
    except (OSError, pa.ArrowException) as e:
        raise XelmError(f"corpus file {f} cannot be read: {first_line(e)}") from None
    if len(records) > MAX_ROWS:
        raise _too_big(f, f"{MAX_ROWS:,} rows")
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("text"), str):
            raise XelmError(f"corpus file {f}, record {i + 1}: needs a 'text' string field")
        for key in ("lang", "tag", "split"):
            if r.get(key) is not None and not isinstance(r[key], str):
                raise XelmError(f"corpus file {f}, record {i + 1}: {key!r} must be a string, "
                                f"got {type(r[key]).__name__}")
        for key in ("text", "lang", "tag", "split"):
            if r.get(key) is not None and not r[key].isascii() and not _is_utf8(r[key]):
                raise XelmError(f"corpus file {f}, record {i + 1}: {key!r} holds a lone surrogate escape "
                                "(such as \\ud800), which is no character: fix or drop the record")
    return [r for r in records if r["text"].strip()]


def _is_utf8(text: str) -> bool:
    """Whether a string encodes to UTF-8: JSON's ``\\ud800`` escape decodes to a lone surrogate,
    which Arrow cannot store."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _hub_table(name: str) -> pa.Table:
    """A hub dataset whose config names are language codes (e.g. 'eng', 'fr'); needs network."""
    try:
        configs = datasets.get_dataset_config_names(name)
    except Exception as e:  # the hub client raises many kinds; the message is what matters
        raise XelmError(f"hub dataset {name!r} cannot be listed: {first_line(e)}") from None
    rows: dict[str, list] = {c: [] for c in (*COLUMNS, "split")}
    for config in configs:
        where = f"hub dataset {name!r} config {config!r}"
        lang = to_iso3(config.split(".")[-1].split("_")[0], where=where)
        try:
            ds = datasets.load_dataset(name, config)
        except Exception as e:  # as above
            cause = f" ({first_line(e.__cause__)})" if e.__cause__ else ""
            raise XelmError(f"{where} cannot be loaded: {first_line(e)}{cause}") from None
        for split, part in ds.items():
            if split not in HUB_SPLITS:
                raise XelmError(f"{where} has split {split!r}, which xelm cannot place: the known splits "
                                f"are {', '.join(HUB_SPLITS)}; use a dataset with those")
            texts = _hub_texts(part, f"{where} split {split!r}")
            script = dominant_script(texts[:200])
            for i, t in enumerate(texts):
                rows["lang"].append(lang)
                rows["tag"].append(config)
                rows["name"].append(language_name(lang))
                rows["script"].append(script)
                rows["unit"].append(f"{split}:{i}")  # parallel across configs, unique across splits
                rows["heading"].append("")
                rows["text"].append(t)
                rows["split"].append(HUB_SPLITS[split])
    return pa.table(rows)


def _hub_texts(part: datasets.Dataset, where: str) -> list[str]:
    """The non-blank texts of a hub split; a missing column or a null text is refused, not guessed."""
    if "text" not in part.column_names:
        raise XelmError(f"{where} has no 'text' column (it has {', '.join(part.column_names)}); "
                        "xelm reads a corpus's text from 'text'")
    texts = part["text"][:]
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise XelmError(f"{where}, row {i + 1}: 'text' must be a string, got {type(t).__name__}")
    return [t for t in texts if t.strip()]


def columns(split, *names: str) -> tuple[list, ...]:
    """The named columns of a split as lists, each read from Arrow at once: iterating a
    ``datasets`` column instead decodes and formats it row by row, many times slower."""
    return tuple(split[name][:] for name in names)


def languages_with_text(split) -> set[str]:
    """The languages with at least one non-blank text in a split."""
    return {lang for lang, text in zip(*columns(split, "lang", "text")) if text.strip()}


def texts_by_lang(split) -> dict[str, list[str]]:
    """A split's texts grouped by language (ISO 639-3), in corpus order."""
    out: dict[str, list[str]] = {}
    for lang, text in zip(*columns(split, "lang", "text")):
        out.setdefault(lang, []).append(text)
    return out


def corpus_stats(corpus: datasets.DatasetDict) -> dict:
    """Languages, rows, characters and words per split, and scripts (declarations per script)."""
    tags, langs = {}, set()
    for split in corpus.values():
        tag, script, lang = columns(split, "tag", "script", "lang")
        tags.update(zip(tag, script))
        langs.update(lang)
    out = {
        "languages": sorted(langs),
        "declarations": len(tags),
        "scripts": dict(Counter(tags.values()).most_common()),
        "splits": {},
    }
    for name, split in corpus.items():
        texts, lang = columns(split, "text", "lang")
        out["splits"][name] = {
            "rows": len(split),
            "languages": len(set(lang)),
            "characters": sum(map(len, texts)),
            "words": sum(len(t.split()) for t in texts),
        }
    return out
