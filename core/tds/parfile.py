"""A whitelisting interpreter for tds2el's ``input.par`` and ``conf_file``.

tds2el executed these files as Python.  difframe parses them with :mod:`ast` and
evaluates only what such files legitimately contain, so a file can never run
code:

* assignments ``name = expression`` (also ``a = b = ...`` and ``name += ...``);
* literals, arithmetic, comparisons, ``and``/``or``/``not``, ``x if c else y``,
  names assigned earlier, lists, tuples, dicts, indexing, list concatenation;
* list and dict comprehensions (``[... for i in range(3) if ...]``);
* ``if`` blocks (``if False:``, ``if True:``, any condition built from the above);
* calls of :data:`ALLOWED_CALLS` and ``minimiser.Variable(value, min, max)``;
* comments, docstrings and ``pass``.

Anything else (imports, other attribute access, dunder names, lambdas, function
or class definitions, loops, other calls) is refused with a UsageError naming the
file and the line.  Sizes are capped so a file cannot exhaust memory.
"""

from __future__ import annotations

import ast
import logging
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difframe.errors import DataError, UsageError

__all__ = ["Variable", "parse_parfile", "read_parfile", "ALLOWED_CALLS"]

log = logging.getLogger("difframe.tds.parfile")

MAX_ITEMS = 1_000_000  # the longest list, range or string a file may build


@dataclass(frozen=True)
class Variable:
    """``minimiser.Variable(value, min, max)``: a fit variable with its bounds."""

    value: float
    min: float
    max: float

    def as_list(self) -> list[float]:
        return [self.value, self.min, self.max]


def _range(*args):
    if not all(isinstance(a, int) and not isinstance(a, bool) for a in args) or not 1 <= len(args) <= 3:
        raise TypeError("range takes 1 to 3 integers")
    r = range(*args)
    _check_size(len(r))
    return list(r)


def _variable(value, vmin, vmax):
    values = []
    for what, v in (("value", value), ("min", vmin), ("max", vmax)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"minimiser.Variable {what} must be a number, got {v!r}")
        values.append(float(v))
    if not values[1] <= values[0] <= values[2]:
        raise ValueError(f"minimiser.Variable({values[0]}, {values[1]}, {values[2]}): need min <= value <= max")
    return Variable(*values)


#: the functions a parameter file may call, by name
ALLOWED_CALLS = {
    "range": _range,
    "abs": abs,
    "float": float,
    "int": int,
    "bool": bool,
    "str": str,
    "round": round,
    "min": min,
    "max": max,
    "len": len,
    "list": list,
    "tuple": tuple,
}
_ATTRIBUTE_CALLS = {("minimiser", "Variable"): _variable}
_CONSTANTS = {"True": True, "False": False, "None": None}

_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
_COMPARE = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
    ast.GtE: operator.ge, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_, ast.IsNot: operator.is_not,
}


class _TooLarge(ValueError):
    """A list, range or string beyond :data:`MAX_ITEMS`."""


def _check_size(n: int) -> None:
    if n > MAX_ITEMS:
        raise _TooLarge(f"the result would hold {n} items (at most {MAX_ITEMS} allowed)")


class _Refused(Exception):
    """Raised with the node that is not allowed and why."""

    def __init__(self, node: ast.AST, message: str) -> None:
        super().__init__(message)
        self.node = node


class _Interpreter:
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.names: dict[str, Any] = {}
        self.assigned_at: dict[str, int] = {}
        self.lineno = 0

    # -- statements -----------------------------------------------------------------

    def run(self, body: list[ast.stmt]) -> None:
        for stmt in body:
            self.statement(stmt)

    def statement(self, node: ast.stmt) -> None:
        self.lineno = node.lineno
        if isinstance(node, ast.Assign):
            value = self.expr(node.value, {})
            for target in node.targets:
                self.assign(target, value)
        elif isinstance(node, ast.AugAssign) and type(node.op) in _BINARY:
            current = self.expr(ast.Name(id=self._target_name(node.target), ctx=ast.Load(),
                                         lineno=node.lineno, col_offset=0), {})
            self.assign(node.target, self._apply(node, _BINARY[type(node.op)], current, self.expr(node.value, {})))
        elif isinstance(node, ast.If):
            self.run(node.body if self.expr(node.test, {}) else node.orelse)
        elif isinstance(node, ast.Pass):
            pass
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            pass  # a docstring or a bare string used as a comment
        else:
            raise _Refused(node, f"{_describe(node)} is not allowed in a parameter file")

    def _target_name(self, target: ast.expr) -> str:
        if not isinstance(target, ast.Name):
            raise _Refused(target, "only plain names can be assigned (no attributes, indexing or unpacking)")
        if target.id.startswith("__"):
            raise _Refused(target, f"the name {target.id!r} is not allowed (dunder names are refused)")
        return target.id

    def assign(self, target: ast.expr, value: Any) -> None:
        name = self._target_name(target)
        if name in self.assigned_at:
            log.warning("%s, line %d: %s assigned again (first at line %d); the last value is used",
                        self.filename, target.lineno, name, self.assigned_at[name])
        self.assigned_at[name] = target.lineno
        self.names[name] = value

    # -- expressions ----------------------------------------------------------------

    def expr(self, node: ast.expr, local: dict[str, Any]) -> Any:
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (str, bytes)):
                _check_size(len(node.value))
            return node.value
        if isinstance(node, ast.Name):
            return self.name(node, local)
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.expr(e, local) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                raise _Refused(node, "dict unpacking (**) is not allowed")
            return {self._hashable(k, local): self.expr(v, local) for k, v in zip(node.keys, node.values)}
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self.expr(node.left, local), self.expr(node.right, local)
            return self._apply(node, _BINARY[type(node.op)], left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return self._apply(node, _UNARY[type(node.op)], self.expr(node.operand, local))
        if isinstance(node, ast.BoolOp):
            is_and = isinstance(node.op, ast.And)
            value = None
            for operand in node.values:
                value = self.expr(operand, local)
                if bool(value) != is_and:
                    return value
            return value
        if isinstance(node, ast.Compare):
            left = self.expr(node.left, local)
            for op, right_node in zip(node.ops, node.comparators):
                right = self.expr(right_node, local)
                if not self._apply(node, _COMPARE[type(op)], left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return self.expr(node.body if self.expr(node.test, local) else node.orelse, local)
        if isinstance(node, ast.Subscript):
            return self._subscript(node, local)
        if isinstance(node, ast.Call):
            return self.call(node, local)
        if isinstance(node, (ast.ListComp, ast.DictComp)):
            return self.comprehension(node, local)
        if isinstance(node, ast.Attribute):
            raise _Refused(node, f"attribute access {_dotted(node)!r} is not allowed "
                                 "(only minimiser.Variable(value, min, max) may be called)")
        raise _Refused(node, f"{_describe(node)} is not allowed in a parameter file")

    def name(self, node: ast.Name, local: dict[str, Any]) -> Any:
        if node.id.startswith("__"):
            raise _Refused(node, f"the name {node.id!r} is not allowed (dunder names are refused)")
        for scope in (local, self.names, _CONSTANTS):
            if node.id in scope:
                return scope[node.id]
        if node.id in ALLOWED_CALLS or node.id == "minimiser":
            raise _Refused(node, f"{node.id!r} can only be called, not used as a value")
        raise _Refused(node, f"name {node.id!r} is not defined (it must be assigned on an earlier line)")

    def _hashable(self, node: ast.expr, local: dict[str, Any]) -> Any:
        key = self.expr(node, local)
        try:
            hash(key)
        except TypeError:
            raise _Refused(node, f"a {type(key).__name__} cannot be a dict key") from None
        return key

    def _subscript(self, node: ast.Subscript, local: dict[str, Any]) -> Any:
        container = self.expr(node.value, local)
        if isinstance(node.slice, ast.Slice):
            parts = [None if p is None else self.expr(p, local) for p in (node.slice.lower, node.slice.upper,
                                                                          node.slice.step)]
            index: Any = slice(*parts)
        else:
            index = self.expr(node.slice, local)
        if isinstance(container, (list, tuple)) and isinstance(index, (list, tuple)):
            raise _Refused(node, f"a {type(container).__name__} cannot be indexed by a {type(index).__name__} "
                                 "(is a '+' missing between two lists?)")
        if not isinstance(container, (list, tuple, dict, str)):
            raise _Refused(node, f"a {type(container).__name__} cannot be indexed")
        return self._apply(node, operator.getitem, container, index)

    def call(self, node: ast.Call, local: dict[str, Any]) -> Any:
        if isinstance(node.func, ast.Name) and node.func.id in ALLOWED_CALLS and node.func.id not in self.names:
            func, shown = ALLOWED_CALLS[node.func.id], node.func.id
        elif isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) and \
                (node.func.value.id, node.func.attr) in _ATTRIBUTE_CALLS:
            func, shown = _ATTRIBUTE_CALLS[(node.func.value.id, node.func.attr)], _dotted(node.func)
        else:
            shown = _dotted(node.func)
            raise _Refused(node, f"calling {shown!r} is not allowed (allowed: {', '.join(sorted(ALLOWED_CALLS))}, "
                                 "minimiser.Variable)")
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise _Refused(node, "argument unpacking (* or **) is not allowed")
        args = [self.expr(a, local) for a in node.args]
        kwargs = {k.arg: self.expr(k.value, local) for k in node.keywords}
        return self._apply(node, func, *args, shown=shown, **kwargs)

    def comprehension(self, node: ast.ListComp | ast.DictComp, local: dict[str, Any]) -> Any:
        results: list[Any] = []

        def loop(generators: list[ast.comprehension], scope: dict[str, Any]) -> None:
            if not generators:
                if isinstance(node, ast.ListComp):
                    results.append(self.expr(node.elt, scope))
                else:
                    results.append((self._hashable(node.key, scope), self.expr(node.value, scope)))
                _check_size(len(results))
                return
            gen = generators[0]
            if gen.is_async:
                raise _Refused(gen.iter, "async comprehensions are not allowed")
            iterable = self.expr(gen.iter, scope)
            if not isinstance(iterable, (list, tuple, str)):
                raise _Refused(gen.iter, f"a comprehension can only run over a list, tuple or range, "
                                         f"not a {type(iterable).__name__}")
            names = self._comprehension_targets(gen.target)
            for item in iterable:
                inner = dict(scope)
                if len(names) == 1:
                    inner[names[0]] = item
                else:
                    if not isinstance(item, (list, tuple)) or len(item) != len(names):
                        raise _Refused(gen.target, f"cannot unpack {item!r} into {len(names)} names")
                    inner.update(zip(names, item))
                if all(self.expr(cond, inner) for cond in gen.ifs):
                    loop(generators[1:], inner)

        loop(node.generators, dict(local))
        return results if isinstance(node, ast.ListComp) else dict(results)

    def _comprehension_targets(self, target: ast.expr) -> list[str]:
        elts = target.elts if isinstance(target, ast.Tuple) else [target]
        return [self._target_name(e) for e in elts]

    def _apply(self, node: ast.AST, func, *args, shown: str | None = None, **kwargs) -> Any:
        if func is operator.mul and len(args) == 2:
            seq, n = (args[0], args[1]) if isinstance(args[0], (list, tuple, str)) else (args[1], args[0])
            if isinstance(seq, (list, tuple, str)) and isinstance(n, int):
                _check_size(len(seq) * n)
        if func is operator.add and len(args) == 2 and all(isinstance(a, (list, tuple, str)) for a in args):
            _check_size(len(args[0]) + len(args[1]))
        if func is operator.mod and args and isinstance(args[0], str):
            raise _Refused(node, "string formatting with % is not allowed")
        if func is operator.pow and len(args) == 2 and all(isinstance(a, int) for a in args) and abs(args[1]) > 64:
            raise _Refused(node, f"integer power {args[0]}**{args[1]} is too large")
        try:
            return func(*args, **kwargs)
        except _Refused:
            raise
        except (TypeError, ValueError, ZeroDivisionError, KeyError, IndexError, OverflowError) as exc:
            where = f" in {shown}(...)" if shown else ""
            raise _Refused(node, f"cannot evaluate{where}: {exc}") from None


def _dotted(node: ast.expr) -> str:
    return ast.unparse(node)


def _describe(node: ast.AST) -> str:
    names = {
        ast.Import: "import", ast.ImportFrom: "import", ast.FunctionDef: "a function definition",
        ast.AsyncFunctionDef: "a function definition", ast.ClassDef: "a class definition", ast.For: "a for loop",
        ast.While: "a while loop", ast.With: "a with block", ast.Lambda: "a lambda", ast.Delete: "del",
        ast.Global: "global", ast.Try: "try", ast.Raise: "raise", ast.Expr: "an expression statement",
        ast.JoinedStr: "an f-string", ast.GeneratorExp: "a generator expression", ast.SetComp: "a set comprehension",
        ast.Set: "a set", ast.Starred: "unpacking (*)", ast.NamedExpr: "an assignment expression (:=)",
        ast.Return: "return", ast.Assert: "assert", ast.AnnAssign: "an annotated assignment",
    }
    return names.get(type(node), type(node).__name__)


def parse_parfile(text: str, filename: str = "<parameters>") -> dict[str, Any]:
    """Evaluate the assignments of a tds2el parameter file; returns name -> value in file order.

    ``minimiser.Variable(...)`` values become :class:`Variable`.  Raises UsageError
    naming ``filename`` and the line for a syntax error or anything not allowed.
    """
    try:
        tree = ast.parse(text, filename=filename)
    except SyntaxError as exc:
        raise UsageError(f"{filename}, line {exc.lineno}: syntax error: {exc.msg}"
                         + (f": {exc.text.strip()}" if exc.text else "")) from None
    interpreter = _Interpreter(filename)
    try:
        interpreter.run(tree.body)
    except _Refused as exc:
        raise UsageError(f"{filename}, line {getattr(exc.node, 'lineno', '?')}: {exc}") from None
    except _TooLarge as exc:
        raise UsageError(f"{filename}, line {interpreter.lineno}: {exc}") from None
    except RecursionError:
        raise UsageError(f"{filename}: expressions nested too deeply") from None
    return interpreter.names


def read_parfile(path: str | Path) -> dict[str, Any]:
    """:func:`parse_parfile` of a file; DataError when it cannot be read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"parameter file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read parameter file {path}: {exc}") from None
    return parse_parfile(text, str(path))
