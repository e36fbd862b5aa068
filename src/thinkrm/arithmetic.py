"""Checking the arithmetic a trace states: `12 * 7 = 84`, `\\frac{3}{4} = 0.75`, `\\binom{6}{3} = 20`.

Why its own module: finding the claims is a careful regex scan that must stay linear on hostile text, and
checking them is a small sandboxed evaluator (Python's `ast`, numbers and a few functions only, bounded
powers) with rounding rules for what a trace writes. `thinkrm.me2` turns the result into the
`arithmetic_checked` / `arithmetic_wrong` signals and their findings.
"""

from __future__ import annotations

import ast
import functools
import math
import operator
import re
from collections.abc import Iterator

# The scan must stay linear on hostile text. Possessive quantifiers stop the engine from retrying every split
# of a 300-digit number, and the bounded repetitions stop every start inside `1 + 1 + 1 + ...` from
# re-reading the rest of it; an expression longer than the bounds is simply not checked.
_NUM = r"\d{1,40}+(?:,\d{3}(?!\d)){0,6}+(?:\.\d{1,40}+)?+"
# Math-solution traces state much of their arithmetic in LaTeX (`\frac{3}{4} = 0.75`, `\binom{6}{3} = 20`,
# `2^{10} = 1024`, `5! = 120`); numeric-only forms are values like any number. `!` is a factorial only where
# an operator or ` =` follows, so "3 + 4 = 7!" stays an exclamation and `3!=6` a "not equal".
_LATEX_ATOM = (rf"\\[dt]?frac\{{{_NUM}\}}\{{{_NUM}\}}|\\binom\{{{_NUM}\}}\{{{_NUM}\}}|\\sqrt\{{{_NUM}\}}|"
               rf"\d{{1,3}}+!(?!=)(?=\s{{0,6}}+(?:=|[-+*/×÷·−]|\\times|\\cdot|\\div))")
_ATOM = rf"(?:{_LATEX_ATOM}|{_NUM})(?:\^\{{{_NUM}\}})?+"
_OP = r"(?:[-+*/^×÷·−]|\\times|\\cdot|\\div)"
_EXPR = rf"[(\s]{{0,6}}+[-−]?{_ATOM}(?:[\s)]{{0,6}}+{_OP}[\s(]{{0,6}}+[-−]?{_ATOM}){{0,12}}+[\s)]{{0,6}}+"
# The leading lookahead is the set of characters an expression can start with (see `_EXPR`), implied by the
# rest, so it changes no match; it rejects the letters of the prose before the lookbehinds run.
_CHAIN = re.compile(r"(?=[(\s\-−\\\d])"
                    rf"(?<![\w.,+\-*/^×÷·−)])(?<![+\-*/^×÷·−] ){_EXPR}(?:=(?!=){_EXPR}){{1,6}}+")
# A LaTeX binary operator or function right before the numbers makes them its operand (`5 \star 1 = 45`,
# `\log 8 + 1 = 4`); other commands (`\Rightarrow`, `\quad`, `\approx`) end a clause and do not.
_LATEX_OPERAND_OF = (r"times|cdot|div|star|ast|circ|bullet|odot|otimes|oplus|ominus|pm|mp|wedge|vee|cap|cup|"
                     r"setminus|b?mod|pmod|log|ln|lg|exp|a?r?c?(?:sin|cos|tan|cot|sec|csc)h?|max|min|gcd|det|deg")
_CONTEXT_BEFORE = re.compile(rf"(?:[\w\\_.^{{}}):']|[-+*/^×÷·−}}|]\s*|\\(?:{_LATEX_OPERAND_OF})\s*|\d\s+|%\s*of\s*)$")
# After the last number: a following operator, variable or command continues the expression; a remainder,
# percent sign, ratio colon, `mod` or decimal comma (`0,5`) means the number is not the plain value.
_CONTEXT_AFTER = re.compile(r"[\w\\_^{(|!:%]|,\\!|\{,\}|\.\\|,\d|"
                            r"\s*\$?\s*[,;]?\s*(?:[-+*/^×÷·−=(:%]|\\[a-zA-Z]|[a-z]\b|r\s*\d|rem|"
                            r"with (?:a |an |another )?rem|percent|mod)", re.IGNORECASE)
_OP_TRANSLATE = [("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"), ("×", "*"), ("·", "*"), ("÷", "/"),
                 ("−", "-"), ("^", "**")]
_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow}
_LATEX_TRANSLATE = [(re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}"), r"((\1)/(\2))"),
                    (re.compile(r"\\binom\{([^{}]*)\}\{([^{}]*)\}"), r"comb(\1,\2)"),
                    (re.compile(r"\\sqrt\{([^{}]*)\}"), r"sqrt(\1)"),
                    (re.compile(r"(\d+)!"), r"factorial(\1)"),
                    (re.compile(r"\^\{([^{}]*)\}"), r"^(\1)")]
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3})")
_LATEX_OP = re.compile(r"\\(?:[dt]?frac|binom|sqrt)\{|\d!|\^\{")


def claims(text: str) -> Iterator[tuple[int, int, bool, str, float]]:
    """Yield (start, end, holds, note, value of the right side) for each `expr = expr` pair in `text` where a
    side has an operator: the arithmetic a trace states, checked."""
    for m in _CHAIN.finditer(text):
        raw = m.group(0)
        start = m.start() + len(raw) - len(raw.lstrip())
        end = m.end() - (len(raw) - len(raw.rstrip()))
        before = text[max(0, start - 32):start]
        after = text[end:end + 32]
        # Numbers touching a variable, a LaTeX command or another operator are part of a larger
        # expression (`x - 2 + 3 = 1`, `2^{42} \cdot 3 \cdot 7 = ...`, `= 128 i`, `= 1 remainder 1`), and
        # checking the numeric fragment alone would report a false error.
        if _CONTEXT_BEFORE.search(before) or _CONTEXT_AFTER.match(after):
            continue
        sides = m.group(0).split("=")
        for left, right in zip(sides, sides[1:]):
            if not (has_op(left) or has_op(right)) or is_notation(left, right):
                continue
            lv, rv = evaluate(left), evaluate(right)
            if lv is None or rv is None:
                continue
            claim = f"{left.strip()} = {right.strip()}"
            holds = close_enough(lv, rv, right)
            yield start, end, holds, claim if holds else f"{claim} (left side is {lv:g})", rv


def is_notation(left: str, right: str) -> bool:
    """Chains that are not equalities: a running sum (`5+6+7+8 = 5+6 = 11, 11+7 = 18`) restates a prefix of
    the left side, and digit notation (`123 = 1 + 2 + 3`) spells out the digits of a plain number."""
    lt, rt = "".join(left.split()), "".join(right.split())
    return (len(rt) < len(lt) and lt.startswith(rt)) or (lt.isdigit() and re.sub(r"\D", "", rt) == lt)


def has_op(expr: str) -> bool:
    s = expr.strip().lstrip("(").lstrip()
    s = s[1:] if s[:1] in ("-", "−") else s  # a leading minus is a sign, not a claim
    return bool(re.search(_OP, s) or _LATEX_OP.search(s))


@functools.lru_cache(maxsize=4096)  # traces repeat the same sums when they re-check
def evaluate(expr: str) -> float | None:
    """Safely evaluate a numeric expression (numbers, + - * / ^, parentheses); None if not evaluable."""
    s = _THOUSANDS.sub("", expr.strip())
    for pattern, repl in _LATEX_TRANSLATE:
        s = pattern.sub(repl, s)
    for a, b in _OP_TRANSLATE:
        s = s.replace(a, b)
    try:
        tree = ast.parse(s, mode="eval")
    except SyntaxError:
        return None

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and (abs(b) > 64 or abs(a) > 1e6):
                raise OverflowError  # bounded so `9^9^9` cannot stall the analysis
            return _BIN[type(node.op)](a, b)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS
                and not node.keywords and len(node.args) == _CALLS[node.func.id]):
            return _call(node.func.id, [ev(a) for a in node.args])
        raise ValueError

    try:
        v = ev(tree)
    except (ValueError, ZeroDivisionError, OverflowError, TypeError, RecursionError):
        return None
    return v if isinstance(v, float) and math.isfinite(v) else None


_CALLS = {"comb": 2, "factorial": 1, "sqrt": 1}


def _call(name: str, args: list[float]) -> float:
    """`\\binom`, `!` and `\\sqrt` on the values they were written with, bounded like `^`."""
    if name == "sqrt":
        if args[0] < 0:
            raise ValueError
        return math.sqrt(args[0])
    if any(a != int(a) or a < 0 or a > 1000 for a in args):
        raise ValueError
    n = [int(a) for a in args]
    if name == "factorial":
        if n[0] > 170:
            raise OverflowError
        return float(math.factorial(n[0]))
    return float(math.comb(n[0], n[1]))


def close_enough(lv: float, rv: float, right: str) -> bool:
    """Equal, or equal up to the precision the right-hand side is written with.

    A plain decimal may be the left rounded or truncated to its decimals (`1/3 = 0.33`, `1.4 / 6.8 = 0.205`,
    `160000 / 9 = 17777.777...`). An expression may hold rounded decimals substituted into it
    (`\\sqrt{2} + 1 = 1.414 + 1`, `\\frac{1}{4} + \\frac{1}{3} = 0.25 + 0.33`): each may be off by one unit of its
    last place, scaled by the largest number it could be multiplied with.
    """
    if math.isclose(lv, rv, rel_tol=1e-9, abs_tol=1e-9):
        return True
    if has_op(right):
        plain = _THOUSANDS.sub("", right)
        decimals = re.findall(r"(?<![\d.])\d+\.(\d+)", plain)
        if not decimals:
            return False
        numbers = [abs(float(x)) for x in re.findall(r"\d+(?:\.\d+)?", plain)]
        unit = 10.0 ** -min(len(d) for d in decimals)
        return abs(lv - rv) <= unit * len(decimals) * max(1.0, *numbers)
    if "." in right:
        q = 10.0 ** len(right.strip().strip(")").split(".")[-1])
        return any(math.isclose(rv, v / q, rel_tol=1e-9, abs_tol=1e-3 / q)
                   for v in (round(lv * q), math.trunc(lv * q)))
    return False

