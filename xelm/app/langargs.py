"""Languages as users name them: ISO 639-3, ISO 639-1 or BCP-47 codes (``--languages fr,pt-BR``)
and family or branch names (``--family Bantu``) resolved through URIEL's Glottolog tree to the
corpus languages in them. Every mapping is said, on stderr, so nothing is chosen silently."""

from __future__ import annotations

import sys

from clustering.uriel import family_members, family_node
from xelm.errors import XelmError
from xelm.languages import language_name, parse_language_list

SHOWN = 12  # languages listed by name in a note; the rest are counted


def note(line: str) -> None:
    """A remark for the person at the terminal: stderr, so ``--json`` output stays clean."""
    print(f"note: {line}", file=sys.stderr)


def warn(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr)


def listed(codes: list[str]) -> str:
    """Codes comma-separated, the first SHOWN of them, with the count when there are more."""
    return ",".join(codes[:SHOWN]) + (f",… ({len(codes)} in all)" if len(codes) > SHOWN else "")


def family_languages(names: str, available: set[str], corpus: str) -> tuple[list[str], list[str]]:
    """(corpus languages in the families ``names`` (comma-separated), notes saying what was chosen)."""
    chosen: list[str] = []
    notes = []
    for name in [n.strip() for n in names.split(",") if n.strip()]:
        node = family_node(name)
        members = sorted(family_members(node))
        usable = [lang for lang in members if lang in available]
        label = node if node.casefold() == name.casefold() else f"{node} (for {name!r})"
        if not usable:
            raise XelmError(f"no language of the family {label} has text in corpus {corpus!r} "
                            f"(URIEL lists {len(members)}, e.g. {', '.join(members[:5])}): "
                            "give --corpus with their text, or another family")
        unused = [lang for lang in members if lang not in available]
        notes.append(f"family {label}: {len(usable)} language(s) with text in corpus {corpus}: {listed(usable)}"
                     + (f"; {len(unused)} more of the family have no text there and are left out "
                        f"(e.g. {', '.join(unused[:5])})" if unused else ""))
        chosen += [lang for lang in usable if lang not in chosen]
    if not chosen:
        raise XelmError("--family is empty: give a family or branch name such as Romance, Bantu or Turkic")
    return chosen, notes


def resolve_languages(codes: str | None, families: str | None, available: set[str] | None = None,
                      corpus: str = "") -> list[str]:
    """``--languages`` codes (mapped to ISO 639-3) plus the corpus languages of ``--family``,
    each mapping said on stderr."""
    if codes is None and families is None:
        raise XelmError("say which languages: --languages iso,iso,... or --family NAME (e.g. --family Romance)")
    notes: list[str] = []
    langs = parse_language_list(codes, "--languages", notes) if codes is not None else []
    if notes:
        note("language codes read as ISO 639-3: " + ", ".join(notes))
    if families is not None:
        more, family_notes = family_languages(families, available or set(), corpus)
        for line in family_notes:
            note(line)
        langs += [lang for lang in more if lang not in langs]
    return langs


def describe(langs: list[str]) -> str:
    return ", ".join(f"{lang} ({language_name(lang)})" for lang in langs[:SHOWN]) + (
        f", … ({len(langs)} in all)" if len(langs) > SHOWN else "")
