"""The words of an expression, in any script: what the agent's evaluation and the data engine's text
filters compare. Casefolded and NFC-normalised with accents kept; a word is a run of letters, marks and
digits, except that each Han or kana character is a word of its own (Chinese and Japanese put no spaces
between words)."""

from __future__ import annotations

import unicodedata

# radicals, Hiragana + Katakana, the CJK ideograph blocks
_NO_SPACES = ((0x2E80, 0x2FDF), (0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF),
              (0x20000, 0x3134F))


def words(text: str) -> list[str]:
    """``"The café's 2 cups"`` → ``["the", "café", "s", "2", "cups"]``; ``"红色杯子"`` → one word a character."""
    out: list[str] = []
    word = ""
    for ch in unicodedata.normalize("NFC", text.casefold()) + " ":
        kind = unicodedata.category(ch)[0]
        if kind in "LMN" and not any(lo <= ord(ch) <= hi for lo, hi in _NO_SPACES):
            word += ch
            continue
        if word:
            out.append(word)
            word = ""
        if kind in "LN":  # a Han or kana character
            out.append(ch)
    return out
