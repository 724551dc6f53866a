"""ISO 15924 script of a text, derived from its letters' Unicode names."""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable

# Unicode character-name prefixes -> ISO 15924 script codes (longest prefix wins).
SCRIPT_PREFIXES = {
    "LATIN": "Latn", "CYRILLIC": "Cyrl", "GREEK": "Grek", "ARABIC": "Arab", "HEBREW": "Hebr",
    "DEVANAGARI": "Deva", "BENGALI": "Beng", "GURMUKHI": "Guru", "GUJARATI": "Gujr",
    "ORIYA": "Orya", "TAMIL": "Taml", "TELUGU": "Telu", "KANNADA": "Knda", "MALAYALAM": "Mlym",
    "SINHALA": "Sinh", "THAI": "Thai", "LAO": "Laoo", "TIBETAN": "Tibt", "MYANMAR": "Mymr",
    "GEORGIAN": "Geor", "ARMENIAN": "Armn", "ETHIOPIC": "Ethi", "KHMER": "Khmr",
    "CJK": "Hani", "HIRAGANA": "Hira", "KATAKANA": "Kana", "HANGUL": "Hang", "YI": "Yiii",
    "CHEROKEE": "Cher", "CANADIAN": "Cans", "THAANA": "Thaa", "SYRIAC": "Syrc", "NKO": "Nkoo",
    "VAI": "Vaii", "TIFINAGH": "Tfng", "MONGOLIAN": "Mong", "BOPOMOFO": "Bopo",
    "TAI LE": "Tale", "TAI THAM": "Lana", "TAI VIET": "Tavt", "NEW TAI LUE": "Talu",
    "OL CHIKI": "Olck", "BAMUM": "Bamu", "CHAKMA": "Cakm", "GRANTHA": "Gran", "ADLAM": "Adlm",
    "BUGINESE": "Bugi", "JAVANESE": "Java", "BALINESE": "Bali", "SUNDANESE": "Sund",
    "LIMBU": "Limb", "MEETEI": "Mtei", "CHAM": "Cham", "SAMARITAN": "Samr", "OSAGE": "Osge",
}


def char_script(ch: str) -> str | None:
    """ISO 15924 code of a letter; None for anything that is not a letter."""
    if not unicodedata.category(ch).startswith("L"):
        return None
    words = unicodedata.name(ch, "").split(" ")
    for n in (3, 2, 1):
        if code := SCRIPT_PREFIXES.get(" ".join(words[:n])):
            return code
    return "Zyyy"


def dominant_script(texts: Iterable[str]) -> str:
    """Script of most letters. Han mixed with kana is Jpan; Han mixed with Hangul is Kore."""
    counts = Counter(s for t in texts for ch in t if (s := char_script(ch)))
    if not counts:
        return "Zyyy"
    total = sum(counts.values())
    if counts["Hira"] + counts["Kana"] > 0.1 * total:
        return "Jpan"
    if counts["Hang"] and counts["Hani"] > 0.1 * total:
        return "Kore"
    return counts.most_common(1)[0][0]
