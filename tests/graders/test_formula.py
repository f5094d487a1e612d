"""A multi grader's formula: arithmetic over sub-grader names, nothing else."""

from __future__ import annotations

import pytest

from graders.formula import FormulaError, check, evaluate


@pytest.mark.parametrize("formula, expected", [
    ("0.5 * exact + 0.5 * similar", 0.6), ("exact ^ 2 + similar ** 2", 1.04), ("-exact + 1", 0.0),
    ("min(exact, similar) * 2", 0.4), ("max(exact, similar)", 1.0), ("abs(similar - exact)", 0.8),
    ("floor(similar * 10) / 10 + ceil(similar)", 1.2), ("sqrt(4) * exp(0) * log(exp(1))", 2.0),
    ("(exact + similar) / 2", 0.6),
])
def test_formulas_compute(formula: str, expected: float) -> None:
    assert evaluate(formula, {"exact": 1.0, "similar": 0.2}) == pytest.approx(expected)


@pytest.mark.parametrize("formula, words", [
    ("__import__('os').system('id')", "only min, max"), ("exact.__class__", "Attribute"),
    ("open('/etc/passwd')", "only min, max"), ("'text'", "only numbers"), ("exact if similar else 0", "IfExp"),
    ("[exact][0]", "Subscript"), ("[exact]", "List"), ("unknown + 1", "not one of its graders"), ("exact // 2", "FloorDiv"),
    ("exact % 2", "Mod"), ("exact and similar", "BoolOp"), ("exact < similar", "Compare"),
    ("lambda: 1", "Lambda"), ("max(exact, key=abs)", "positional"), ("exact +", "does not parse"),
    ("True + 1", "only numbers"),
])
def test_anything_beyond_arithmetic_is_refused(formula: str, words: str) -> None:
    with pytest.raises(FormulaError, match=words):
        check(formula, {"exact", "similar"})


@pytest.mark.parametrize("formula", ["exact / 0", "log(0)", "sqrt(-1)", "9 ^ 99999", "exp(1000)"])
def test_arithmetic_that_fails_is_a_formula_error(formula: str) -> None:
    with pytest.raises(FormulaError):
        evaluate(formula, {"exact": 1.0})
