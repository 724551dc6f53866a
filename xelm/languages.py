"""ISO 639-3 language codes: validation and names (through pycountry's ISO 639-3 table)."""

from __future__ import annotations

import re
from functools import cache

import pycountry

from xelm.errors import XelmError

_ISO3 = re.compile(r"^[a-z]{3}$")
# ISO 639-3 special codes: in the table, but they name no language.
_SPECIAL = {"mis": "uncoded", "mul": "multiple languages", "und": "undetermined", "zxx": "no linguistic content"}


@cache
def _by_alpha3() -> dict[str, str]:
    return {lang.alpha_3: lang.name for lang in pycountry.languages}


@cache
def _alpha2_to_3() -> dict[str, str]:
    return {lang.alpha_2: lang.alpha_3 for lang in pycountry.languages if hasattr(lang, "alpha_2")}


def language_name(code: str) -> str:
    return _by_alpha3().get(code, code)


def check_language(code: str, where: str = "") -> str:
    """Return ``code`` if it is a known ISO 639-3 code, else raise naming it (and ``where``)."""
    at = f" in {where}" if where else ""
    if not isinstance(code, str) or not _ISO3.match(code):
        raise XelmError(f"malformed language code {code!r}{at}: expected an ISO 639-3 code "
                        "such as 'eng' or 'swh' (three lowercase letters), an ISO 639-1 code such as 'fr', "
                        "or a BCP-47 tag such as 'pt-BR'")
    if code in _SPECIAL:
        raise XelmError(f"language code {code!r}{at} is the special code for {_SPECIAL[code]!r}, "
                        "not a language: give the text's ISO 639-3 language code")
    if code not in _by_alpha3():
        raise XelmError(f"unknown language code {code!r}{at}: not an ISO 639-3 code")
    return code


_BCP47 = re.compile(r"^([A-Za-z]{2,3})(?:[-_][A-Za-z0-9]{1,8})*$")


def to_iso3(code: str, where: str = "") -> str:
    """Accept an ISO 639-3 code, an ISO 639-1 two-letter code or a BCP-47 tag (``pt-BR``,
    ``zh-Hant``: its language subtag) and return ISO 639-3."""
    if isinstance(code, str) and (m := _BCP47.match(code.strip())):
        primary = m.group(1).lower()
        if len(primary) == 2 and primary in _alpha2_to_3():
            return _alpha2_to_3()[primary]
        if len(primary) == 3 and len(code) > 3:  # 'por-BR'; a bare 'ENG' stays malformed
            return check_language(primary, where)
    return check_language(code, where)


def parse_language_list(text: str, where: str = "--languages", notes: list[str] | None = None) -> list[str]:
    """'eng,fr, pt-BR' -> ['eng', 'fra', 'por'], each checked; empty or repeated codes are errors.
    ISO 639-1 codes and BCP-47 tags are mapped to ISO 639-3, and the mapping is appended to
    ``notes`` (for the command line to say)."""
    codes = [c.strip() for c in text.split(",") if c.strip()]
    if not codes:
        raise XelmError(f"{where} is empty: give comma-separated ISO 639-3 codes, e.g. eng,fra")
    out: list[str] = []
    for c in codes:
        iso = to_iso3(c, where)
        if iso != c and notes is not None:
            notes.append(f"{c} -> {iso} ({language_name(iso)})")
        if iso in out:
            raise XelmError(f"language {iso!r} appears twice in {where}")
        out.append(iso)
    return out
