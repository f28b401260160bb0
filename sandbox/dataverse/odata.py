"""OData v4 request parsing and query execution for the Dataverse sandbox.

* Resource paths: segments split outside quotes/parentheses, then percent-decoded; key predicates
  ``leads(<guid>)``, ``leads(uni_applicantid='A''B')``, composite ``leads(k1=2,k2='x')``.
* ``$filter``: a real recursive-descent parser: ``eq ne gt ge lt le and or not``, parentheses,
  ``null``, ``true``/``false``, numbers, bare GUIDs and dates, ``'...'`` strings with ``''``
  escaping, enum literals (``Microsoft.Dynamics.CRM.AttributeRequiredLevel'None'``), property paths
  (``RequiredLevel/Value``), ``contains``/``startswith``/``endswith`` and the Dataverse query
  functions ``Microsoft.Dynamics.CRM.In/NotIn/Null/NotNull``.
* Comparison semantics: string comparisons are case-insensitive (Dataverse runs on a
  case-insensitive SQL collation). A comparison with a null operand is false except ``ne``, which
  follows OData (``null ne 'x'`` is true) [unverified: FetchXML ``ne`` translation].
* Paging: rows are ordered by ``$orderby`` then by the primary id (ascending). The ``$skiptoken``
  is a Dataverse-shaped ``<cookie pagenumber="n" pagingcookie="..." istracking="False" />`` whose
  paging cookie is a keyset (the last row's sort values and id, base64 JSON), so rows inserted or
  deleted between pages never make another row appear twice or vanish.
* ``$top`` with ``Prefer: odata.maxpagesize``: ``$top`` caps the TOTAL across pages (OData 4.0
  server-driven paging: the pages partition the ``$top`` result). Each page holds at most
  ``min(maxpagesize, rows left of $top)``; the skiptoken carries the remaining budget, and the page
  that completes ``$top`` has no nextLink. Decision: the reference (§2.6) reads the Power Apps page
  "``$top`` is ignored" when both are sent; the sandbox never serves more rows than ``$top`` asked
  for, because a client that relies on ``$top`` as a cap (Microsoft's Python SDK does: "max total
  records") must not be handed every row.
* Custom query options (names without ``$``) are refused with 400 unless the entity set implements
  them (``fetchXml`` on ``leads``, see ``fetchxml.py``); ``sql`` is always refused (see
  :func:`check_custom_options`), so no query option is ever silently ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import urllib.parse
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sandbox.dataverse import errors

MAX_PAGE_SIZE = 5000
COUNT_LIMIT = 5000

GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


_SIMPLE_KEY_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*'((?:[^']|'')*)'$")


def is_guid(text: str) -> bool:
    return bool(GUID_RE.match(text))


# ======================================================================================
# Resource path
# ======================================================================================
@dataclass
class Segment:
    name: str
    # None: no parentheses; "" for "()"; otherwise the raw (decoded) text between them.
    args: str | None = None

    @property
    def text(self) -> str:
        return self.name if self.args is None else f"{self.name}({self.args})"


def split_top_level(text: str, sep: str, *, quote: str | None = None, nested: bool = False) -> list[str]:
    """Split ``text`` on ``sep`` where it stands outside ``quote``-delimited runs and, with ``nested``,
    outside parentheses (which are themselves ignored inside quotes). Empty parts are kept."""
    parts: list[str] = []
    buf: list[str] = []
    depth = 0
    quoted = False
    for ch in text:
        if ch == quote:
            quoted = not quoted
        elif nested and not quoted and ch == "(":
            depth += 1
        elif nested and not quoted and ch == ")":
            depth -= 1
        if ch == sep and depth == 0 and not quoted:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return parts


def split_path(path: str) -> list[Segment]:
    """Split a (still percent-encoded) resource path into decoded segments."""
    # Split on the decoded text but respect quotes, so a '/' inside a key literal stays put.
    raw_segments = split_top_level(urllib.parse.unquote(path), "/", quote="'", nested=True)
    segments = []
    for raw in raw_segments:
        if raw == "":
            continue
        paren = raw.find("(")
        if paren > 0 and raw.endswith(")"):
            segments.append(Segment(raw[:paren], raw[paren + 1 : -1]))
        else:
            segments.append(Segment(raw))
    return segments


def parse_key(args: str) -> tuple[str, Any]:
    """Parse the text between a key segment's parentheses.

    Returns ``("id", guid)`` for a bare GUID, ``("single", value)`` for one unnamed literal and
    ``("named", {name: value, ...})`` (insertion-ordered) for ``name=value`` pairs.
    """
    text = args.strip()
    if is_guid(text):
        return "id", text.lower()
    simple = _SIMPLE_KEY_RE.match(text)
    if simple:
        return "named", {simple.group(1): simple.group(2).replace("''", "'")}
    lexer = _Lexer(text)
    tokens = lexer.tokens
    pos = 0

    def literal(i: int) -> tuple[Any, int]:
        tok = tokens[i]
        if tok.kind in ("string", "number", "guid", "bool", "null", "datetime", "date", "enum"):
            return tok.value, i + 1
        raise errors.bad_request(f"Bad Request - Error in query syntax: invalid key value '{tok.text}'.")

    if len(tokens) >= 1 and tokens[0].kind != "ident":
        value, pos = literal(0)
        if pos != len(tokens) - 1:
            raise errors.bad_request("Bad Request - Error in query syntax.")
        return "single", value
    named: dict[str, Any] = {}
    while tokens[pos].kind != "eof":
        name_tok = tokens[pos]
        if name_tok.kind != "ident" or tokens[pos + 1].text != "=":
            raise errors.bad_request("Bad Request - Error in query syntax.")
        value, pos = literal(pos + 2)
        named[name_tok.text] = value
        if tokens[pos].text == ",":
            pos += 1
        elif tokens[pos].kind != "eof":
            raise errors.bad_request("Bad Request - Error in query syntax.")
    if not named:
        raise errors.bad_request("Bad Request - Error in query syntax.")
    return "named", named


def format_key_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def parse_query_string(query: str) -> dict[str, str]:
    """System query options. ``+`` is a space (as ASP.NET decodes it); a repeated option is an error."""
    options: dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if name in options:
            raise errors.bad_request(
                f"Query option '{name}' was specified more than once, but it must be specified at most once."
            )
        options[name] = value
    return options


# ======================================================================================
# Lexer
# ======================================================================================
@dataclass
class Token:
    kind: str  # ident, string, number, guid, datetime, date, bool, null, enum, op, eof
    text: str
    value: Any = None
    pos: int = 0


_DATETIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?")
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}(?![\w:])")
_GUID_TOKEN_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![\w-])")
_NUMBER_RE = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?[mMdDfFlL]?(?![\w])")
_IDENT_RE = re.compile(r"[A-Za-z_$@][\w.$@]*(/[A-Za-z_][\w.]*)*")


def canonical_datetime(text: str) -> str:
    """ISO 8601 literal → ``YYYY-MM-DDTHH:MM:SSZ`` in UTC."""
    value = text.strip()
    if value.endswith("Z") or value.endswith("z"):
        value = value[:-1] + "+00:00"
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = list(self._scan())

    def _error(self, pos: int) -> errors.ODataError:
        return errors.bad_request(f"Syntax error at position {pos} in '{self.text}'.")

    def _scan(self) -> Iterator[Token]:
        text = self.text
        i = 0
        n = len(text)
        while i < n:
            ch = text[i]
            if ch.isspace():
                i += 1
                continue
            if ch in "(),[]=":
                yield Token("op", ch, pos=i)
                i += 1
                continue
            if ch == "'":
                value, i = self._string(i)
                yield Token("string", value, value, pos=i)
                continue
            m = _GUID_TOKEN_RE.match(text, i)
            if m:
                yield Token("guid", m.group(), m.group().lower(), pos=i)
                i = m.end()
                continue
            m = _DATETIME_RE.match(text, i)
            if m:
                try:
                    yield Token("datetime", m.group(), canonical_datetime(m.group()), pos=i)
                except ValueError as exc:
                    raise self._error(i) from exc
                i = m.end()
                continue
            m = _DATE_RE.match(text, i)
            if m:
                yield Token("date", m.group(), m.group(), pos=i)
                i = m.end()
                continue
            m = _NUMBER_RE.match(text, i)
            if m:
                raw = m.group().rstrip("mMdDfFlL")
                is_float = any(c in raw for c in ".eE")
                yield Token("number", m.group(), float(raw) if is_float else int(raw), pos=i)
                i = m.end()
                continue
            m = _IDENT_RE.match(text, i)
            if m:
                word = m.group()
                end = m.end()
                if end < n and text[end] == "'" and "." in word:  # enum literal Ns.Type'Value'
                    value, end = self._string(end)
                    yield Token("enum", word + "'" + value + "'", value, pos=i)
                    i = end
                    continue
                if word == "null":
                    yield Token("null", word, None, pos=i)
                elif word in ("true", "false"):
                    yield Token("bool", word, word == "true", pos=i)
                else:
                    yield Token("ident", word, word, pos=i)
                i = end
                continue
            raise self._error(i)
        yield Token("eof", "", pos=n)

    def _string(self, i: int) -> tuple[str, int]:
        text = self.text
        j = i + 1
        out: list[str] = []
        while True:
            k = text.find("'", j)
            if k < 0:
                raise errors.bad_request(f"There is an unterminated string literal at position {i} in '{text}'.")
            out.append(text[j:k])
            if k + 1 < len(text) and text[k + 1] == "'":
                out.append("'")
                j = k + 2
                continue
            return "".join(out), k + 1


# ======================================================================================
# $filter parser → AST
# ======================================================================================
# AST nodes (tuples):
#   ("lit", value, kind)            kind: string number guid datetime date bool null enum
#   ("prop", path)
#   ("cmp", op, left, right)        op: eq ne gt ge lt le
#   ("and", a, b) / ("or", a, b) / ("not", a)
#   ("func", name, prop_node, lit_node)   contains/startswith/endswith
#   ("in", path, [values], negate)
#   ("isnull", path, negate)
_CMP_OPS = {"eq", "ne", "gt", "ge", "lt", "le"}


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _Lexer(text).tokens
        self.i = 0

    def peek(self) -> Token:
        return self.tokens[self.i]

    def take(self) -> Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        tok = self.take()
        if tok.text != text:
            raise errors.bad_request(f"Syntax error at position {tok.pos} in '{self.text}'.")

    def parse(self) -> tuple:
        node = self.or_expr()
        if self.peek().kind != "eof":
            raise errors.bad_request(f"Syntax error at position {self.peek().pos} in '{self.text}'.")
        return node

    def or_expr(self) -> tuple:
        node = self.and_expr()
        while self.peek().kind == "ident" and self.peek().text == "or":
            self.take()
            node = ("or", node, self.and_expr())
        return node

    def and_expr(self) -> tuple:
        node = self.not_expr()
        while self.peek().kind == "ident" and self.peek().text == "and":
            self.take()
            node = ("and", node, self.not_expr())
        return node

    def not_expr(self) -> tuple:
        if self.peek().kind == "ident" and self.peek().text == "not":
            self.take()
            return ("not", self.not_expr())
        return self.cmp_expr()

    def cmp_expr(self) -> tuple:
        left = self.primary()
        tok = self.peek()
        if tok.kind == "ident" and tok.text in _CMP_OPS:
            self.take()
            right = self.primary()
            return ("cmp", tok.text, left, right)
        if tok.kind == "ident" and tok.text in ("has", "add", "sub", "mul", "div", "mod"):
            raise errors.bad_request(f"The operator '{tok.text}' is not supported.")
        return left

    def primary(self) -> tuple:
        tok = self.take()
        if tok.text == "(" and tok.kind == "op":
            node = self.or_expr()
            self.expect(")")
            return node
        if tok.kind in ("string", "number", "guid", "datetime", "date", "bool", "null", "enum"):
            return ("lit", tok.value, tok.kind)
        if tok.kind == "ident":
            if self.peek().text == "(" and self.peek().kind == "op":
                return self.function(tok)
            return ("prop", tok.text)
        raise errors.bad_request(f"Syntax error at position {tok.pos} in '{self.text}'.")

    def function(self, name_tok: Token) -> tuple:
        name = name_tok.text
        self.expect("(")
        short = name.rsplit(".", 1)[-1]
        if name.startswith("Microsoft.Dynamics.CRM."):
            params: dict[str, Any] = {}
            while self.peek().text != ")":
                pname = self.take()
                self.expect("=")
                if self.peek().text == "[":
                    self.take()
                    values = []
                    while self.peek().text != "]":
                        lit = self.take()
                        if lit.kind not in ("string", "number", "guid", "datetime", "date", "bool", "null", "enum"):
                            raise errors.bad_request(f"Syntax error at position {lit.pos} in '{self.text}'.")
                        values.append((lit.value, lit.kind))
                        if self.peek().text == ",":
                            self.take()
                    self.expect("]")
                    params[pname.text] = values
                else:
                    lit = self.take()
                    params[pname.text] = (lit.value, lit.kind)
                if self.peek().text == ",":
                    self.take()
            self.expect(")")
            prop = params.get("PropertyName")
            if not isinstance(prop, tuple) or prop[1] != "string":
                raise errors.bad_request(f"The function '{name}' requires the parameter 'PropertyName'.")
            if short in ("In", "NotIn"):
                values = params.get("PropertyValues")
                if not isinstance(values, list):
                    raise errors.bad_request(f"The function '{name}' requires the parameter 'PropertyValues'.")
                return ("in", prop[0], values, short == "NotIn")
            if short in ("Null", "NotNull"):
                return ("isnull", prop[0], short == "NotNull")
            raise errors.bad_request(f"The function '{name}' is not supported by the sandbox.")
        if short in ("contains", "startswith", "endswith"):
            arg1 = self.primary()
            self.expect(",")
            arg2 = self.primary()
            self.expect(")")
            if arg1[0] != "prop" or arg2[0] != "lit" or arg2[2] != "string":
                raise errors.bad_request(f"The function '{short}' requires a property and a string literal.")
            return ("func", short, arg1, arg2)
        raise errors.bad_request(f"An unknown function with name '{name}' was found.")


def parse_filter(text: str) -> tuple:
    return _Parser(text).parse()


# ======================================================================================
# Tables and compilation
# ======================================================================================
# Value kinds used for type checks: string guid int decimal bool datetime date enum any
_EDM = {
    "string": "Edm.String",
    "guid": "Edm.Guid",
    "int": "Edm.Int32",
    "decimal": "Edm.Decimal",
    "bool": "Edm.Boolean",
    "datetime": "Edm.DateTimeOffset",
    "date": "Edm.Date",
    "enum": "Edm.Enum",
}
_LIT_COMPAT = {
    "string": {"string"},
    "guid": {"guid"},
    "int": {"number"},
    "decimal": {"number"},
    "bool": {"bool"},
    "datetime": {"datetime", "date"},
    "date": {"date", "datetime"},
    "enum": {"enum", "string"},
    "any": {"string", "number", "guid", "datetime", "date", "bool", "enum"},
}
_LIT_EDM = {
    "string": "Edm.String",
    "number": "Edm.Int32",
    "guid": "Edm.Guid",
    "datetime": "Edm.DateTimeOffset",
    "date": "Edm.Date",
    "bool": "Edm.Boolean",
    "enum": "Edm.Enum",
}
_OP_KIND = {
    "eq": "Equal",
    "ne": "NotEqual",
    "gt": "GreaterThan",
    "ge": "GreaterThanOrEqual",
    "lt": "LessThan",
    "le": "LessThanOrEqual",
}

Getter = Callable[[Any], Any]


class Table(Protocol):
    entity_set: str
    type_name: str  # e.g. Microsoft.Dynamics.CRM.lead
    primary_id: str

    def resolve(self, name: str) -> tuple[Getter, str]:
        """Getter and value kind for a property (path) usable in $filter/$orderby; raise if unknown."""
        ...

    def rows_by_id(self, ids: Iterable[str]) -> Iterator[Any]: ...

    def get_row(self, row_id: str) -> Any | None: ...

    def sorted_ids(self) -> Sequence[str]: ...

    def index_lookup(self, name: str, values: list[Any]) -> set[str] | None: ...

    def row_id(self, row: Any) -> str: ...


class DictRows:
    """The row-source half of :class:`Table` over a fixed list of dicts keyed by ``primary_id``.

    Subclasses set ``entity_set``, ``type_name`` and ``primary_id`` and implement ``resolve``. No
    property is indexed unless a subclass overrides ``index_lookup``.
    """

    primary_id: str

    def __init__(self, rows: Iterable[dict[str, Any]]) -> None:
        self.rows = {row[self.primary_id]: row for row in rows}
        self._sorted = sorted(self.rows)

    def rows_by_id(self, ids: Iterable[str]) -> Iterator[dict[str, Any]]:
        for row_id in ids:
            row = self.rows.get(row_id)
            if row is not None:
                yield row

    def get_row(self, row_id: str) -> dict[str, Any] | None:
        return self.rows.get(row_id)

    def sorted_ids(self) -> list[str]:
        return self._sorted

    def index_lookup(self, name: str, values: list[Any]) -> set[str] | None:
        return None

    def row_id(self, row: dict[str, Any]) -> str:
        return row[self.primary_id]


def _norm(value: Any) -> Any:
    if isinstance(value, str):
        return value.casefold()
    return value


def _literal_for(kind: str, lit_value: Any, lit_kind: str) -> Any:
    if lit_kind == "null":
        return None
    if kind == "datetime" and lit_kind == "date":
        return lit_value + "T00:00:00Z"
    if kind == "date" and lit_kind == "datetime":
        return lit_value[:10]
    return _norm(lit_value)


def compile_filter(ast: tuple, table: Table) -> Callable[[Any], bool]:
    kind = ast[0]
    if kind == "and":
        a, b = compile_filter(ast[1], table), compile_filter(ast[2], table)
        return lambda row: a(row) and b(row)
    if kind == "or":
        a, b = compile_filter(ast[1], table), compile_filter(ast[2], table)
        return lambda row: a(row) or b(row)
    if kind == "not":
        a = compile_filter(ast[1], table)
        return lambda row: not a(row)
    if kind == "cmp":
        return _compile_cmp(ast, table)
    if kind == "func":
        getter, vkind = table.resolve(ast[2][1])
        if vkind not in ("string", "any"):
            raise errors.bad_request(
                f"The '{ast[1]}' function requires a string property; '{ast[2][1]}' is {_EDM.get(vkind, vkind)}."
            )
        needle = ast[3][1].casefold()
        fn = ast[1]

        def string_fn(row: Any) -> bool:
            value = getter(row)
            if not isinstance(value, str):
                return False
            value = value.casefold()
            if fn == "contains":
                return needle in value
            if fn == "startswith":
                return value.startswith(needle)
            return value.endswith(needle)

        return string_fn
    if kind == "in":
        getter, vkind = table.resolve(ast[1])
        values = set()
        for value, lit_kind in ast[2]:
            _check_compat(ast[1], vkind, lit_kind, "eq")
            values.add(_literal_for(vkind, value, lit_kind))
        negate = ast[3]
        return lambda row: (_norm(getter(row)) in values) != negate
    if kind == "isnull":
        getter, _ = table.resolve(ast[1])
        negate = ast[2]
        return lambda row: (getter(row) is None) != negate
    if kind == "pred":  # a ready predicate (FetchXML ``like``), see fetchxml.py
        return ast[1]
    if kind == "lit" and ast[2] == "bool":
        value = ast[1]
        return lambda row: value
    if kind == "prop":
        getter, vkind = table.resolve(ast[1])
        if vkind != "bool":
            raise errors.bad_request("The $filter expression must evaluate to a single boolean value.")
        return lambda row: getter(row) is True
    raise errors.bad_request("The $filter expression must evaluate to a single boolean value.")


def _check_compat(name: str, vkind: str, lit_kind: str, op: str) -> None:
    if lit_kind == "null":
        return
    if lit_kind not in _LIT_COMPAT.get(vkind, {lit_kind}):
        raise errors.bad_request(
            "A binary operator with incompatible types was detected. Found operand types "
            f"'{_EDM.get(vkind, vkind)}' and '{_LIT_EDM.get(lit_kind, lit_kind)}' for operator kind '{_OP_KIND[op]}'."
        )


def _compile_cmp(ast: tuple, table: Table) -> Callable[[Any], bool]:
    _, op, left, right = ast
    if left[0] == "lit" and right[0] == "prop":
        flip = {"gt": "lt", "lt": "gt", "ge": "le", "le": "ge"}
        op = flip.get(op, op)
        left, right = right, left
    if left[0] != "prop" or right[0] != "lit":
        raise errors.bad_request("Comparisons must be between a property and a literal value in this sandbox.")
    getter, vkind = table.resolve(left[1])
    _check_compat(left[1], vkind, right[2], op)
    literal = _literal_for(vkind, right[1], right[2])
    if literal is None:
        if op == "eq":
            return lambda row: getter(row) is None
        if op == "ne":
            return lambda row: getter(row) is not None
        return lambda row: False
    if op == "eq":
        return lambda row: _norm(getter(row)) == literal
    if op == "ne":
        return lambda row: _norm(getter(row)) != literal

    def compare(row: Any) -> bool:
        value = getter(row)
        if value is None:
            return False
        value = _norm(value)
        try:
            if op == "gt":
                return value > literal
            if op == "ge":
                return value >= literal
            if op == "lt":
                return value < literal
            return value <= literal
        except TypeError:
            return False

    return compare


def index_candidates(ast: tuple | None, table: Table) -> set[str] | None:
    """Ids that can possibly match, from the table's indexes; None when a scan is needed."""
    if ast is None:
        return None
    kind = ast[0]
    if kind == "cmp" and ast[1] == "eq":
        left, right = ast[2], ast[3]
        if left[0] == "lit":
            left, right = right, left
        if left[0] == "prop" and right[0] == "lit" and right[2] not in ("null",):
            return table.index_lookup(left[1], [right[1]])
        return None
    if kind == "in" and not ast[3]:
        return table.index_lookup(ast[1], [v for v, k in ast[2] if k != "null"])
    if kind == "and":
        a = index_candidates(ast[1], table)
        b = index_candidates(ast[2], table)
        if a is None:
            return b
        if b is None:
            return a
        return a & b
    if kind == "or":
        a = index_candidates(ast[1], table)
        if a is None:
            return None
        b = index_candidates(ast[2], table)
        if b is None:
            return None
        return a | b
    return None


# ======================================================================================
# $select / $orderby / $expand
# ======================================================================================
def parse_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_orderby(text: str) -> list[tuple[str, bool]]:
    """[(property, descending)]"""
    result = []
    for part in parse_list(text):
        words = part.split()
        if len(words) == 1:
            result.append((words[0], False))
        elif len(words) == 2 and words[1] in ("asc", "desc"):
            result.append((words[0], words[1] == "desc"))
        else:
            raise errors.bad_request(f"Syntax error in $orderby '{text}'.")
    return result


def parse_expand(text: str) -> dict[str, dict[str, str]]:
    """``A($select=x,y;$filter=...),B`` → {"A": {"$select": "x,y", ...}, "B": {}}"""
    items: dict[str, dict[str, str]] = {}
    for part in split_top_level(text, ",", nested=True):
        part = part.strip()
        if not part:
            continue
        if "(" in part and part.endswith(")"):
            name, inner = part.split("(", 1)
            inner = inner[:-1]
            opts: dict[str, str] = {}
            for option in inner.split(";"):
                if "=" in option:
                    key, value = option.split("=", 1)
                    opts[key.strip()] = value.strip()
            items[name.strip()] = opts
        else:
            items[part] = {}
    return items


# ======================================================================================
# Query execution with keyset paging
# ======================================================================================
@dataclass
class QueryOptions:
    filter_ast: tuple | None = None
    orderby: list[tuple[str, bool]] = field(default_factory=list)
    top: int | None = None
    count: bool = False
    page_size: int | None = None  # from Prefer: odata.maxpagesize (FetchXML: count)
    cursor: dict[str, Any] | None = None


@dataclass
class QueryResult:
    rows: list[Any]
    next_cursor: dict[str, Any] | None
    page_number: int
    count: int | None = None
    count_exceeded: bool = False


def _sort_key(value: Any) -> tuple:
    if value is None:
        return (0, "")
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, str):
        return (1, value.casefold())
    return (1, value)


def run_query(table: Table, options: QueryOptions) -> QueryResult:
    predicate = compile_filter(options.filter_ast, table) if options.filter_ast is not None else None
    order_getters = [(table.resolve(name)[0], desc) for name, desc in options.orderby]
    candidates = index_candidates(options.filter_ast, table)
    cursor = options.cursor
    # Rows of $top still to serve: the first page starts with $top, later pages carry the rest in the cursor.
    budget: int | None = options.top
    if cursor is not None and isinstance(cursor.get("t"), int):
        budget = cursor["t"]
    if options.page_size is not None:
        limit = min(options.page_size, MAX_PAGE_SIZE)
        paged = True
    elif budget is not None:
        limit = min(budget, MAX_PAGE_SIZE)
        paged = False
    else:
        limit = MAX_PAGE_SIZE
        paged = True
    if budget is not None:
        limit = min(limit, budget)
    page_number = int(cursor.get("p", 1)) + 1 if cursor else 1

    count: int | None = None
    exceeded = False
    if options.count:
        ids_for_count: Iterable[str] = candidates if candidates is not None else table.sorted_ids()
        total = 0
        for row in table.rows_by_id(ids_for_count):
            if predicate is None or predicate(row):
                total += 1
                if total > COUNT_LIMIT:
                    exceeded = True
                    break
        count = min(total, COUNT_LIMIT)

    rows: list[Any]
    if not order_getters:
        ids: Sequence[str] = sorted(candidates) if candidates is not None else table.sorted_ids()
        start = bisect_right(ids, cursor["id"]) if cursor else 0
        rows = []
        for index in range(start, len(ids)):
            row = table.get_row(ids[index])
            if row is None:
                continue
            if predicate is None or predicate(row):
                rows.append(row)
                if len(rows) > limit:
                    break
    else:
        source = table.rows_by_id(candidates if candidates is not None else table.sorted_ids())
        matched = [row for row in source if predicate is None or predicate(row)]
        matched.sort(key=table.row_id)
        for getter, desc in reversed(order_getters):
            matched.sort(key=lambda row, g=getter: _sort_key(g(row)), reverse=desc)
        start = 0
        if cursor:
            start = _seek(matched, cursor, order_getters, table)
        rows = matched[start : start + limit + 1]

    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = None
    left = None if budget is None else budget - len(rows)
    if more and paged and rows and (left is None or left > 0):
        last = rows[-1]
        next_cursor = {"p": page_number, "id": table.row_id(last), "k": [g(last) for g, _ in order_getters]}
        if left is not None:
            next_cursor["t"] = left
    return QueryResult(
        rows=rows, next_cursor=next_cursor, page_number=page_number, count=count, count_exceeded=exceeded
    )


def _compare_to_cursor(row: Any, cursor: dict[str, Any], order_getters: list[tuple[Getter, bool]], table: Table) -> int:
    for (getter, desc), cursor_value in zip(order_getters, cursor.get("k", []), strict=False):
        a, b = _sort_key(getter(row)), _sort_key(cursor_value)
        if a == b:
            continue
        try:
            result = -1 if a < b else 1
        except TypeError:
            result = -1 if str(a) < str(b) else 1
        return -result if desc else result
    row_id = table.row_id(row)
    if row_id == cursor["id"]:
        return 0
    return -1 if row_id < cursor["id"] else 1


def _seek(rows: list[Any], cursor: dict[str, Any], order_getters: list[tuple[Getter, bool]], table: Table) -> int:
    """Index of the first row strictly after the cursor (rows are sorted)."""
    lo, hi = 0, len(rows)
    while lo < hi:
        mid = (lo + hi) // 2
        if _compare_to_cursor(rows[mid], cursor, order_getters, table) <= 0:
            lo = mid + 1
        else:
            hi = mid
    return lo


def encode_skiptoken(cursor: dict[str, Any]) -> str:
    cookie = urllib.parse.quote(paging_cookie(cursor), safe="")
    return f'<cookie pagenumber="{cursor["p"] + 1}" pagingcookie="{cookie}" istracking="False" />'


def decode_skiptoken(token: str) -> dict[str, Any]:
    match = re.search(r'pagingcookie="([^"]*)"', token)
    if match:
        cursor = decode_paging_cookie(urllib.parse.unquote(urllib.parse.unquote(match.group(1))))
        if cursor is not None:
            return cursor
    raise errors.bad_request("The $skiptoken value is not valid.", code="0x80040203")


def paging_cookie(cursor: dict[str, Any]) -> str:
    """The inner paging cookie for a keyset cursor: ``<cookie page="n" sbx="<base64 JSON>" />``."""
    payload = base64.urlsafe_b64encode(json.dumps(cursor, separators=(",", ":")).encode()).decode().rstrip("=")
    return f'<cookie page="{cursor["p"]}" sbx="{payload}" />'


def decode_paging_cookie(inner: str) -> dict[str, Any] | None:
    """The keyset cursor inside a paging cookie made by :func:`paging_cookie`; None if it is not one."""
    payload = re.search(r'sbx="([^"]*)"', inner)
    if not payload:
        return None
    data = payload.group(1)
    try:
        cursor = json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    except (ValueError, binascii.Error):
        return None
    if isinstance(cursor, dict) and isinstance(cursor.get("id"), str) and isinstance(cursor.get("p"), int):
        return cursor
    return None


def check_custom_options(query: dict[str, str], entity_set: str, implemented: tuple[str, ...] = ()) -> None:
    """Refuse every query option without ``$`` that this entity set does not implement: never ignore one.

    ``sql`` (the preview SQL endpoint) and ``fetchXml`` / ``savedQuery`` / ``userQuery`` where not
    implemented would otherwise answer 200 with every row, their filters and ``top`` ignored.
    """
    for name in query:
        if name.startswith("$") or name in implemented:
            continue
        if name == "sql":
            raise errors.not_supported(
                "The sql query parameter (Dataverse's SQL endpoint)",
                "use $filter/$select/$orderby/$top, or fetchXml on leads",
            )
        if name in ("fetchXml", "savedQuery", "userQuery"):
            raise errors.not_supported(
                f"The {name} query parameter on {entity_set}", "use $filter/$select/$orderby/$top"
            )
        raise errors.bad_request(f"The query parameter {name} is not supported")


def build_next_link(base_url: str, query: dict[str, str], cursor: dict[str, Any]) -> str:
    params = {k: v for k, v in query.items() if k != "$skiptoken"}
    params["$skiptoken"] = encode_skiptoken(cursor)
    return base_url + "?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote, safe="$,()'=")
