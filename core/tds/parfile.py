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
file and the line.  A budget (:data:`LIMITS`) bounds the work and memory any file
can ask for: integer size, items in a value, comprehension iterations, nesting
depth, file size and lines, and total operations; each refusal names the file, the
line and the limit.  Messages never quote a file that did not parse as Python, so
naming ``/etc/passwd`` as a conf_file does not echo it.
"""

from __future__ import annotations

import ast
import io
import logging
import math
import operator
import os
import re
import stat
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difframe.errors import DataError, UsageError

__all__ = ["Variable", "ParValues", "parse_parfile", "read_parfile", "short_repr", "ALLOWED_CALLS", "LIMITS"]

log = logging.getLogger("difframe.tds.parfile")

MAX_ITEMS = 1_000_000  # items in one value: list/dict entries, nested ones included, characters, 64-bit words
MAX_INT_BITS = 4096  # the largest integer (tds2el files need a few dozen bits)
MAX_ITERATIONS = 100_000  # comprehension iterations in one file (tds2el files need a few dozen)
MAX_DEPTH = 100  # nesting of one expression (brackets, operators, calls)
MAX_FILE_BYTES = 1_000_000
MAX_LINES = 10_000
MAX_OPERATIONS = 5_000_000  # evaluation steps, an item created or compared counting one (about 10 s at most)

#: the budget, by name, as docs/security.md lists it
LIMITS = {"items": MAX_ITEMS, "integer bits": MAX_INT_BITS, "comprehension iterations": MAX_ITERATIONS,
          "nesting depth": MAX_DEPTH, "file bytes": MAX_FILE_BYTES, "lines": MAX_LINES,
          "operations": MAX_OPERATIONS}


class ParValues(dict):
    """Name -> value in file order, with ``lines``: name -> line of its (last) assignment."""

    lines: dict[str, int]


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
            raise TypeError(f"minimiser.Variable {what} must be a number, got {short_repr(v)}")
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


class _OverBudget(ValueError):
    """A value or an amount of work beyond one of the :data:`LIMITS`."""


def _check_size(n: int) -> None:
    if n > MAX_ITEMS:
        raise _OverBudget(f"the result would hold {n} items (at most {MAX_ITEMS} allowed)")


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (values in messages may be large)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"<an integer of {value.bit_length()} bits>"
    text = repr(value) if not isinstance(value, (list, tuple, dict)) or len(value) <= 20 else \
        f"<a {type(value).__name__} of {len(value)} items>"
    return text if len(text) <= limit else text[:limit] + "..."


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
        self.operations = 0
        self.iterations = 0
        self._weights: dict[int, tuple[Any, int, int]] = {}  # id -> (container, weight, depth); never mutated

    # -- the budget -----------------------------------------------------------------

    def charge(self, amount: int) -> None:
        self.operations += amount
        if self.operations > MAX_OPERATIONS:
            raise _OverBudget(f"the file needs more than {MAX_OPERATIONS} operations (the budget of one file)")

    def weight(self, value: Any) -> int:
        """Items a value holds, nested ones and characters included (a big integer counts its 64-bit words)."""
        return self._measure(value)[0]

    def _measure(self, value: Any) -> tuple[int, int]:
        """(weight, nesting depth) of a value; containers are measured once (children were measured when made)."""
        if isinstance(value, (str, bytes)):
            return len(value), 0
        if isinstance(value, int):
            return value.bit_length() // 64, 0
        if not isinstance(value, (list, tuple, dict)):
            return 0, 0
        cached = self._weights.get(id(value))
        if cached is not None and cached[0] is value:
            return cached[1], cached[2]
        items = [x for pair in value.items() for x in pair] if isinstance(value, dict) else value
        total, depth = len(value), 0
        for item in items:
            kind = type(item)
            if kind is float or kind is bool or item is None:
                continue
            if kind is int:  # the common cases inline: a list of 10**6 numbers is measured in a blink
                total += item.bit_length() >> 6
                continue
            w, d = self._measure(item)
            total, depth = total + w, max(depth, d)
        self._weights[id(value)] = (value, total, depth + 1)
        return total, depth + 1

    def check_value(self, value: Any) -> Any:
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            raise _OverBudget(f"an integer of {value.bit_length()} bits is too large (at most {MAX_INT_BITS})")
        weight, depth = self._measure(value)
        if weight > MAX_ITEMS:
            raise _OverBudget(f"a value of {weight} items (nested ones and characters counted) is too large "
                              f"(at most {MAX_ITEMS} allowed)")
        if depth > MAX_DEPTH:
            raise _OverBudget(f"a value nested {depth} deep is too deep (at most {MAX_DEPTH} levels)")
        return value

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
        self.lineno = getattr(node, "lineno", self.lineno)
        self.charge(1)
        return self.check_value(self._expr(node, local))

    def _expr(self, node: ast.expr, local: dict[str, Any]) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return self.name(node, local)
        if isinstance(node, (ast.List, ast.Tuple)):
            _check_size(len(node.elts))
            items = [self.expr(e, local) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                raise _Refused(node, "dict unpacking (**) is not allowed")
            _check_size(len(node.keys))
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
        total = [0]

        def loop(generators: list[ast.comprehension], scope: dict[str, Any]) -> None:
            if not generators:
                if isinstance(node, ast.ListComp):
                    item = self.expr(node.elt, scope)
                    total[0] += 1 + self.weight(item)
                else:
                    item = (self._hashable(node.key, scope), self.expr(node.value, scope))
                    total[0] += 1 + self.weight(item[0]) + self.weight(item[1])
                results.append(item)
                _check_size(total[0])
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
                self.iterations += 1
                if self.iterations > MAX_ITERATIONS:
                    raise _OverBudget(f"more than {MAX_ITERATIONS} comprehension iterations in one file")
                inner = dict(scope)
                if len(names) == 1:
                    inner[names[0]] = item
                else:
                    if not isinstance(item, (list, tuple)) or len(item) != len(names):
                        raise _Refused(gen.target, f"cannot unpack {short_repr(item)} into {len(names)} names")
                    inner.update(zip(names, item))
                if all(self.expr(cond, inner) for cond in gen.ifs):
                    loop(generators[1:], inner)

        loop(node.generators, dict(local))
        return results if isinstance(node, ast.ListComp) else dict(results)

    def _comprehension_targets(self, target: ast.expr) -> list[str]:
        elts = target.elts if isinstance(target, ast.Tuple) else [target]
        return [self._target_name(e) for e in elts]

    def _apply(self, node: ast.AST, func, *args, shown: str | None = None, **kwargs) -> Any:
        """``func(*args, **kwargs)`` after checking that its result stays within the budget."""
        self._precheck(node, func, args)
        weights = sum(self.weight(a) for a in (*args, *kwargs.values()))
        if func is not operator.getitem:  # comparisons, calls and arithmetic visit their operands
            self.charge(weights)
        try:
            result = func(*args, **kwargs)
        except _Refused:
            raise
        except (TypeError, ValueError, ZeroDivisionError, KeyError, IndexError, OverflowError) as exc:
            where = f" in {shown}(...)" if shown else ""
            raise _Refused(node, f"cannot evaluate{where}: {str(exc)[:200]}") from None
        if func is not operator.getitem or isinstance(args[1], slice):
            self.charge(self.weight(result))
        return result

    def _precheck(self, node: ast.AST, func, args: tuple) -> None:
        """Refuse before computing what would exceed the item or integer budget."""
        if len(args) != 2:
            return
        a, b = args
        ints = all(isinstance(x, int) for x in args)
        if func is operator.mul:
            seq, n = (a, b) if isinstance(a, (list, tuple, str)) else (b, a)
            if isinstance(seq, (list, tuple, str)) and isinstance(n, int):
                _check_size(self.weight(seq) * n)
            elif ints and a.bit_length() + b.bit_length() > MAX_INT_BITS:
                raise _OverBudget(f"a product of {a.bit_length() + b.bit_length()} bits is too large "
                                  f"(integers have at most {MAX_INT_BITS} bits)")
        elif func is operator.add and all(isinstance(x, (list, tuple, str)) for x in args):
            _check_size(self.weight(a) + self.weight(b))
        elif func is operator.mod and isinstance(a, str):
            raise _Refused(node, "string formatting with % is not allowed")
        elif func is operator.pow and ints and b > 0 and abs(a) > 1:
            bits = math.log2(abs(a)) * b
            if bits > MAX_INT_BITS:
                raise _OverBudget(f"integer power of {a.bit_length()}-bit base and exponent {short_repr(b)} is too "
                                  f"large (about {bits:.3g} bits; integers have at most {MAX_INT_BITS} bits)")


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


def parse_parfile(text: str, filename: str = "<parameters>") -> ParValues:
    """Evaluate the assignments of a tds2el parameter file; returns name -> value in file order.

    ``minimiser.Variable(...)`` values become :class:`Variable`.  Raises UsageError
    naming ``filename``, the line and the limit for a syntax error, anything not
    allowed or anything beyond the budget.
    """
    _check_extent(text, filename)
    try:
        tree = ast.parse(text, filename=filename)
    except SyntaxError as exc:  # the file may be anything: name the place, quote none of it
        raise UsageError(f"{filename}, line {exc.lineno}: syntax error: {_safe_syntax_message(exc.msg)}") from None
    except (MemoryError, RecursionError):  # the parser's own limits on nesting
        raise UsageError(f"{filename}, line {_busiest_line(text)}: expression nested too deeply "
                         f"(at most {MAX_DEPTH} levels)") from None
    _check_depth(tree, filename)
    interpreter = _Interpreter(filename)
    try:
        interpreter.run(tree.body)
    except _Refused as exc:
        raise UsageError(f"{filename}, line {getattr(exc.node, 'lineno', '?')}: {str(exc)[:400]}") from None
    except _OverBudget as exc:
        raise UsageError(f"{filename}, line {interpreter.lineno}: {exc}") from None
    except RecursionError:
        raise UsageError(f"{filename}, line {interpreter.lineno}: expressions nested too deeply "
                         f"(at most {MAX_DEPTH} levels)") from None
    values = ParValues(interpreter.names)
    values.lines = dict(interpreter.assigned_at)
    return values


def _check_extent(text: str, filename: str) -> None:
    """File size, line count and NUL bytes, before the parser sees the text."""
    if "\0" in text:
        raise UsageError(f"{filename}, line {_line_at(text, text.index(chr(0)))}: a NUL byte; "
                         "a parameter file is text")
    encoded = text.encode("utf-8", "surrogatepass")
    size = len(encoded)
    if size > MAX_FILE_BYTES:
        line = _line_at(encoded, MAX_FILE_BYTES)
        raise UsageError(f"{filename}, line {line}: the file is {size} bytes or more, more than the "
                         f"{MAX_FILE_BYTES} a parameter file may have")
    lines = text.count("\n") + (not text.endswith("\n"))
    if lines > MAX_LINES:
        raise UsageError(f"{filename}, line {MAX_LINES + 1}: more than {MAX_LINES} lines, the most a parameter "
                         "file may have")


def _line_at(text: str | bytes, offset: int) -> int:
    return text.count("\n" if isinstance(text, str) else b"\n", 0, offset) + 1


def _safe_syntax_message(message: str) -> str:
    """The parser's message without the pieces of the file it quotes (a bracket is kept: ``'{' was never closed``)."""
    message = re.sub(r"'(?![\[\](){}]')[^']*'", "a token", message)
    return re.sub(r"\s*\(U\+[0-9A-Fa-f]+\)", "", message)


def _busiest_line(text: str) -> int | str:
    """The line with the most tokens (where the parser gave up on nesting)."""
    counts: dict[int, int] = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            counts[token.start[0]] = counts.get(token.start[0], 0) + 1
    except (tokenize.TokenError, SyntaxError):
        pass
    return max(counts, key=counts.get) if counts else "?"


def _check_depth(tree: ast.AST, filename: str) -> None:
    """Refuse a syntax tree deeper than :data:`MAX_DEPTH` below its statements (walked without recursion)."""
    stack = [(tree, 0, "?")]
    while stack:
        node, depth, line = stack.pop()
        line = getattr(node, "lineno", line)
        if depth > MAX_DEPTH:
            raise UsageError(f"{filename}, line {line}: expression nested too deeply (at most {MAX_DEPTH} levels)")
        stack.extend((child, depth + 1, line) for child in ast.iter_child_nodes(node))


def read_parfile(path: str | Path) -> ParValues:
    """:func:`parse_parfile` of a file; DataError when it cannot be read (regular files only, at most
    :data:`MAX_FILE_BYTES`; what is read is never quoted)."""
    path = Path(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise DataError(f"parameter file {path} is not a regular file")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as stream:
            if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
                raise DataError(f"parameter file {path} is not a regular file")
            raw = stream.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise DataError(f"parameter file {path} does not exist") from None
    except OSError as exc:
        raise DataError(f"cannot read parameter file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise UsageError(f"{path}, line {_line_at(raw, MAX_FILE_BYTES)}: the file is more than "
                         f"{MAX_FILE_BYTES} bytes, the most a parameter file may have")
    try:
        text = raw.decode("utf-8-sig")  # files saved on Windows may open with a byte-order mark
    except UnicodeDecodeError as exc:
        raise DataError(f"cannot read parameter file {path}: it is not UTF-8 text (line "
                        f"{_line_at(raw, exc.start)})") from None
    return parse_parfile(text, str(path))
