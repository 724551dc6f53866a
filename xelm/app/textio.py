"""Many texts in, one result per text out: ``--text`` (repeatable), ``--file PATH`` and ``-`` for
stdin; JSON, JSON Lines or a file (``--out``) for the results.

A file holds one text per line, or JSON Lines with ``text`` and an optional ``lang`` (chosen
when it ends in ``.jsonl`` or its first non-blank line is a JSON object). Blank lines are
skipped; each result names the line it came from, so results and input lines stay paired.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from xelm.errors import XelmError
from xelm.files import write_text
from xelm.languages import to_iso3


@dataclass(frozen=True)
class Inputs:
    texts: list[str]
    langs: list[str | None]  # per text: from a JSONL ``lang``, else --lang
    lines: list[int | None]  # per text: its line in --file / stdin (1-based), None for --text

    def source(self, i: int) -> dict:
        return {} if self.lines[i] is None else {"line": self.lines[i]}


def _read(path: str, stdin) -> tuple[str, str]:
    """(text, name for messages) of ``path``, or of stdin for ``-``."""
    if path == "-":
        if stdin.isatty():
            raise XelmError("reading texts from stdin, but stdin is a terminal: pipe text in "
                            "(`cat texts.txt | xelm ... --file -`) or give --text / --file PATH")
        return stdin.read().removeprefix("\ufeff"), "stdin"  # a byte-order mark is not text
    p = Path(path).expanduser()
    if not p.exists() or p.is_dir():  # a pipe is fine: --file <(cmd)
        raise XelmError(f"--file {path}: no such file (give a text file with one text per line, or JSONL)")
    try:
        return p.read_text(encoding="utf-8-sig"), str(p)
    except UnicodeDecodeError as e:
        raise XelmError(f"--file {path} is not UTF-8 text (byte {e.start}): convert it to UTF-8") from None


def _is_jsonl(name: str, lines: list[str]) -> bool:
    if name.endswith((".jsonl", ".ndjson")):
        return True
    first = next((ln for ln in lines if ln.strip()), "")
    return first.lstrip().startswith("{")


def parse_lines(raw: str, name: str, default_lang: str | None) -> Inputs:
    """The texts of one file (or stdin): plain lines, or JSONL records ``{"text", "lang"?}``. Lines
    end at newlines only (``splitlines`` also ends them at U+2028, NEL and form feeds, which are
    text: the answers would no longer pair with the input's lines)."""
    lines = [line.removesuffix("\r") for line in raw.split("\n")]
    jsonl = _is_jsonl(name, lines)
    texts, langs, numbers = [], [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        lang = default_lang
        if jsonl:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise XelmError(f"{name} line {n} is not valid JSON ({e.msg}): give one JSON object per line "
                                'such as {"text": "...", "lang": "fra"}, or plain text lines') from None
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise XelmError(f'{name} line {n} has no "text" string: give {{"text": "...", "lang": "fra"}}')
            text = rec["text"]
            if rec.get("lang") is not None:
                lang = to_iso3(rec["lang"], f"{name} line {n}")
        else:
            text = line
        texts.append(text)
        langs.append(lang)
        numbers.append(n)
    return Inputs(texts, langs, numbers)


def read_inputs(texts: list[str] | None, file: str | None, lang: str | None = None, stdin=None) -> Inputs:
    """The texts of ``--text`` (each ``-`` reads stdin) and then of ``--file``, in order."""
    stdin = stdin or sys.stdin
    default = to_iso3(lang, "--lang") if lang is not None else None
    out = Inputs([], [], [])
    parts = [("text", t) for t in texts or []] + ([("file", file)] if file is not None else [])
    if sum(1 for kind, v in parts if v == "-") > 1:
        raise XelmError("stdin ('-') can be read once: give it to --text or to --file, not both")
    for kind, value in parts:
        if kind == "text" and value != "-":
            more = Inputs([value], [default], [None])
        else:
            more = parse_lines(*_read(value, stdin), default)
        out = Inputs(out.texts + more.texts, out.langs + more.langs, out.lines + more.lines)
    if not out.texts:
        raise XelmError("no texts: give --text TEXT (repeatable), --file PATH (one text per line, or JSONL), "
                        "or '-' to read stdin")
    return out


def lang_argument(inputs: Inputs, router: str | None) -> str | list[str] | None:
    """What ``routing.XELM`` takes as ``lang``: one code, one per text, or None. A text without a
    language is an error only where the language router needs it."""
    known = [lang for lang in inputs.langs if lang is not None]
    if not known:
        return None
    if len(known) == len(inputs.langs):
        return known[0] if len(set(known)) == 1 else list(inputs.langs)
    if router in (None, "language"):
        i = inputs.langs.index(None)
        where = f"line {inputs.lines[i]}" if inputs.lines[i] is not None else f"text {i + 1}"
        raise XelmError(f"{where} has no language while others do: give each JSONL record a \"lang\", "
                        "give --lang for the rest, or choose another --router (tfidf, langid, posterior)")
    return None


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_rows(rows: list[dict], out: Path) -> Path:
    """JSON Lines to ``out``, written atomically."""
    return write_text(out, jsonl(rows))


def emit_rows(rows: list[dict], args) -> bool:
    """Write ``rows`` where the flags say (``--out FILE.jsonl``, ``--jsonl``); True when done, so
    that the caller prints its table only otherwise."""
    out = getattr(args, "out", None)
    if out is not None:
        if out.suffix not in (".jsonl", ".ndjson"):
            raise XelmError(f"--out {out}: give a .jsonl file (one result per text)"
                            + (" or a .npy file (the vectors)" if args.command == "embed" else ""))
        write_rows(rows, out)
        summary = {"out": str(out), "texts": len(rows)}
        print(json.dumps(summary) if args.json or args.jsonl else f"{len(rows)} result(s) written to {out}")
        return True
    if args.jsonl:
        sys.stdout.write(jsonl(rows))
        return True
    return False
