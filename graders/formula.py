"""A multi grader's `calculate_output`: an arithmetic formula over its sub-graders' rewards.

Evaluated by simpleeval (a maintained safe-expression evaluator: it walks Python's AST and allows only what it
is given), never by `eval`. Allowed: numbers, the sub-grader names, + - * /, ^ and ** (power, as OpenAI's
formulas write it), unary minus, parentheses, and the functions min, max, abs, floor, ceil, exp, sqrt, log.
Names, attribute access, subscripts, comprehensions, strings and every other function are refused when the
grader is validated (`check`), so a job never starts with a formula that cannot run.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Mapping
from typing import Any

FUNCTIONS = {"min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil, "exp": math.exp,
             "sqrt": math.sqrt, "log": math.log}
_MAX_POWER = 1000.0


def _power(base: float, exponent: float) -> float:
    if abs(exponent) > _MAX_POWER:
        raise ValueError(f"exponent {exponent} is out of range")
    return float(base) ** float(exponent)


OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
             ast.Pow: _power, ast.USub: operator.neg, ast.UAdd: operator.pos}


def _python_syntax(formula: str) -> str:
    """`^` is power in a formula (binding like `**`, tighter than * and +), so it is written as `**` before
    parsing: Python would read it as exclusive-or, below +. Formulas hold no strings, so the swap is exact."""
    return formula.strip().replace("^", "**")
_ALLOWED_OPERATORS = tuple(OPERATORS)


class FormulaError(ValueError):
    """A formula that does not parse, uses what is not allowed, or names an unknown variable."""


def check(formula: str, variables: set[str]) -> None:
    """Raise FormulaError unless `formula` uses only the allowed syntax and names in `variables`."""
    try:
        tree = ast.parse(_python_syntax(formula), mode="eval")
    except SyntaxError as exc:
        raise FormulaError(f"calculate_output does not parse: {exc.msg}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.operator | ast.unaryop):
            if not isinstance(node, _ALLOWED_OPERATORS):
                raise FormulaError(f"calculate_output: operator {type(node).__name__} is not allowed "
                                   "(+ - * / ^ ** only)")
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
                raise FormulaError("calculate_output: only min, max, abs, floor, ceil, exp, sqrt and log can be "
                                   "called, with positional arguments")
        elif isinstance(node, ast.Name):
            if node.id not in variables and node.id not in FUNCTIONS:
                raise FormulaError(f"calculate_output names {node.id!r}, which is not one of its graders "
                                   f"({', '.join(sorted(variables))})")
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise FormulaError("calculate_output: only numbers can be written as constants")
        elif not isinstance(node, ast.Expression | ast.BinOp | ast.UnaryOp | ast.Load):
            raise FormulaError(f"calculate_output: {type(node).__name__} is not allowed in a formula")


def evaluate(formula: str, values: Mapping[str, float]) -> float:
    """The formula's value for the sub-grader rewards `values`; raises FormulaError (after `check`) when the
    arithmetic fails (division by zero, log of 0) or the result is not a finite number."""
    from simpleeval import SimpleEval

    check(formula, set(values))
    evaluator = SimpleEval(operators=dict(OPERATORS), functions=dict(FUNCTIONS), names=dict(values))
    try:
        result: Any = evaluator.eval(_python_syntax(formula))
    except (ArithmeticError, ValueError, TypeError) as exc:
        raise FormulaError(f"calculate_output failed: {exc}") from None
    if isinstance(result, bool) or not isinstance(result, int | float) or not math.isfinite(result):
        raise FormulaError(f"calculate_output gave {result!r}, not a finite number")
    return float(result)
