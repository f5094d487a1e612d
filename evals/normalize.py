"""Answer normalisation for knowledge evals.

`normalize(text, steps)` applies the named steps of `NORMALIZERS`. The steps form a *set*: they always run in
one fixed order (`lowercase`, `strip_punctuation`, `numeric_canonical`, `strip_articles`,
`collapse_whitespace`, `strip`), whatever order a spec lists them in, so "No.\\n" normalises the same under
[strip, strip_punctuation] and [strip_punctuation, strip]. Text is always put in Unicode NFC first (canonically
equivalent spellings of "é" compare equal). Reference and response always go through the same steps.

Label (yes/no) and abstain-token detection is case-insensitive whatever the steps, and tolerates leading
whitespace, newlines and markup ("**No**", "- Yes."): a label is a category, its case carries no meaning.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

NORMALIZERS = ("lowercase", "strip", "strip_punctuation", "collapse_whitespace", "strip_articles",
               "numeric_canonical")
# The order the steps run in (see the module docstring): punctuation goes before numbers (it keeps the
# separators inside numbers) and before articles ("the," is an article once the comma is gone); whitespace is
# tidied last because the earlier steps leave gaps.
_ORDER = ("lowercase", "strip_punctuation", "numeric_canonical", "strip_articles", "collapse_whitespace", "strip")
DEFAULT_NORMALIZE = ("lowercase", "strip", "collapse_whitespace")

# ------------------------------------------------------------------------------------------ normalisation
_APOSTROPHES = frozenset("'\u2019\u2018\u02bc")


def _is_punct(ch: str) -> bool:
    # Unicode punctuation (P*: curly quotes, em dashes, "*", "%", ...) plus the backtick, which Unicode files
    # under symbols but models use for inline code.
    return ch == "`" or unicodedata.category(ch).startswith("P")


def _strip_punctuation(text: str) -> str:
    """Remove punctuation, keeping what numbers and identifiers need.

    Kept: "." and "," between two digits ("2.12", "1,000"), a "-" that starts a number ("-3"), "_" inside a word
    (identifiers such as n_estimators). Between two word characters, apostrophes and periods are dropped
    ("don't" -> "dont", "U.S." -> "US") and other punctuation becomes a space ("Jean-Luc" -> "Jean Luc",
    "yes/no" -> "yes no"), so words do not run together. Anywhere else punctuation is dropped.
    """
    out: list[str] = []
    n = len(text)
    for i, ch in enumerate(text):
        if not _is_punct(ch):
            out.append(ch)
            continue
        before = text[i - 1] if i > 0 else ""
        after = text[i + 1] if i + 1 < n else ""
        decimal_or_group = ch in ".," and before.isdigit() and after.isdigit()
        leading_minus = ch == "-" and after.isdigit() and not (before.isalnum() or before == "_")
        if decimal_or_group or leading_minus:
            out.append(ch)
        elif before and after and _is_word(before) and _is_word(after):
            if ch == "_":
                out.append(ch)
            elif ch not in _APOSTROPHES and ch != ".":
                out.append(" ")
        # else: dropped
    return "".join(out)


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


# A number: optional sign, digits with optional thousands groups, optional decimals. Not part of a longer
# token ("v1.2.3", "12th", "1,00", "2024-09-12" stay as they are).
_NUMBER = re.compile(r"(?<![\w.,])([-+\u2212]?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\w]|[.,]\d)")


def _canonical_number(match: re.Match[str]) -> str:
    sign, whole, fraction = match.group(1), match.group(2), match.group(3) or ""
    digits = whole.replace(",", "")
    if len(digits) > 1 and digits.startswith("0") and not fraction:
        return match.group(0)  # "007", "02134": identifiers, not quantities
    try:
        value = Decimal(digits + fraction)
    except InvalidOperation:  # pragma: no cover - the pattern only matches valid decimals
        return match.group(0)
    if value == 0:
        return "0"  # also "-0" and "0.00"
    text = format(value.normalize(), "f")
    return ("-" if sign in ("-", "\u2212") else "") + text


# An article as a whole word: not glued to letters, apostrophes, hyphens or dots ("a.m.", "the-end", "A's").
_ARTICLE = re.compile(r"(\s*)(?<![\w'\u2019.\-])(?:a|an|the)(?![\w'\u2019.\-])(\s*)", re.IGNORECASE)


def _drop_article(match: re.Match[str]) -> str:
    lead, trail = match.group(1), match.group(2)
    # "in the house" -> "in house": keep one gap between the neighbours; at the text's edges or next to
    # punctuation ("(the house)") keep none.
    if lead and trail and match.start() > 0 and match.end() < len(match.string):
        return lead
    return ""


def normalize(text: str, steps: Sequence[str]) -> str:
    """Apply `steps` (a subset of NORMALIZERS, in the fixed order of the module docstring)."""
    unknown = [step for step in steps if step not in NORMALIZERS]
    if unknown:
        raise ValueError(f"unknown normalisation step(s): {', '.join(unknown)}")
    wanted = set(steps)
    text = unicodedata.normalize("NFC", text)
    for step in _ORDER:
        if step not in wanted:
            continue
        if step == "lowercase":
            text = text.casefold()
        elif step == "strip_punctuation":
            text = _strip_punctuation(text)
        elif step == "numeric_canonical":
            text = _NUMBER.sub(_canonical_number, text)
        elif step == "strip_articles":
            text = _ARTICLE.sub(_drop_article, text)
        elif step == "collapse_whitespace":
            text = re.sub(r"\s+", " ", text)
        elif step == "strip":
            text = text.strip()
    return text


# ------------------------------------------------------------------------------------------ matching helpers
def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    # Whole-word: not inside a longer word, and a number not inside a longer number ("3" is not in "3.5").
    return re.compile(r"(?<!\w)(?<!\d[.,])" + re.escape(phrase) + r"(?!\w)(?![.,]\d)")


def contains_phrase(haystack: str, phrase: str) -> bool:
    return bool(phrase) and _phrase_pattern(phrase).search(haystack) is not None


def answer_matches(response: str, target: str, steps: Sequence[str]) -> bool:
    """Does `response` give `target` as its answer: normalised equality, or the normalised target appearing as a
    whole-word phrase in the normalised response. An empty target never matches."""
    norm_target = normalize(target, steps)
    if not norm_target.strip():
        return False
    norm_response = normalize(response, steps)
    return norm_response == norm_target or contains_phrase(norm_response, norm_target)


_LEADING_MARKUP = re.compile(r"^[\W_]+")  # whitespace, newlines, "**", "- ", quotes, "(" ...


def leading_text(text: str) -> str:
    return _LEADING_MARKUP.sub("", text).casefold()


def starts_with_word(text: str, word: str) -> bool:
    """`text` starts with `word` (both casefolded), and the word ends there."""
    if not word or not text.startswith(word):
        return False
    rest = text[len(word):]
    return not rest or not _is_word(rest[0]) or not _is_word(word[-1])


def is_abstention(response: str, tokens: Sequence[str], steps: Sequence[str]) -> bool:
    """The response declines to answer: it equals an abstain token or starts with one as a whole word."""
    text = leading_text(normalize(response, steps))
    for token in tokens:
        norm = leading_text(normalize(token, steps)).strip()
        if norm and starts_with_word(text, norm):
            return True
    return False


# ---------------------------------------------------------------------------------------------- verdicts
