"""Arithmetic over parameter names, for derived dynamics quantities (``masspole * length``), without ``eval``."""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping

from rlflat.errors import RlflatError

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def expression_names(expression: str) -> set[str]:
    """The variable names an expression reads (used to validate specs before any env is built)."""
    return {node.id for node in ast.walk(_parse(expression)) if isinstance(node, ast.Name)}


def evaluate(expression: str, values: Mapping[str, float]) -> float:
    """Evaluate ``+ - * / **``, numbers and names from ``values``; anything else is rejected."""

    def visit(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return visit(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return float(node.value)
        if isinstance(node, ast.Name):
            if node.id not in values:
                raise RlflatError(f"unknown name {node.id!r} in {expression!r}; valid names: {', '.join(values)}")
            return float(values[node.id])
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](visit(node.left), visit(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](visit(node.operand))
        raise RlflatError(f"unsupported syntax {ast.dump(node)!r} in {expression!r}; use numbers, names, + - * / **")

    return visit(_parse(expression))


def _parse(expression: str) -> ast.Expression:
    try:
        return ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise RlflatError(f"malformed expression {expression!r}: {exc.msg}") from None
