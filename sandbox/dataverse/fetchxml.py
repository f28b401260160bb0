"""``GET leads?fetchXml=<fetch …>``: the FetchXML subset that Microsoft's Python SDK and common clients send.

Implemented (anything else is refused with 400, never answered with unfiltered rows):

* ``<fetch>`` attributes ``version``, ``output-format``, ``mapping="logical"``, ``distinct="false"``,
  ``no-lock``, ``top`` (1–5000), ``count`` (page size, 1–5000), ``page``, ``paging-cookie`` and
  ``returntotalrecordcount``; one ``<entity name="lead">`` (the entity set of the URL);
* ``<attribute name>``, ``<all-attributes/>``, ``<order attribute [descending]>``;
* ``<filter type="and|or">`` (nested) with ``<condition attribute operator [value]>`` and
  ``<value>`` children; operators ``eq ne neq gt ge lt le like not-like begins-with
  not-begin-with ends-with not-end-with in not-in null not-null``.

Refused as not supported by the sandbox (400 ``0x80060888``): ``link-entity``, aggregates,
``distinct="true"``, aliases, ``entityname``/``valueof`` on conditions, every other operator or
attribute, and ``Prefer: odata.maxpagesize`` (FetchXML pages with ``count``).

Semantics and decisions ([unverified] where the reference is silent):

* Values are converted to the attribute's type; comparisons are case-insensitive like the SQL
  collation. ``ne`` matches rows where the column is null (as the sandbox's OData ``ne``)
  [unverified]. ``like`` understands ``%``, ``_`` and ``[…]``; a null never matches ``like`` nor
  ``not-like``. ``begins-with``/``ends-with`` take the value literally.
* ``top`` returns at most that many rows and never more pages; ``top`` with ``count`` or ``page`` →
  400 ``0x80040203`` [unverified wording].
* Paging: rows ordered by the ``<order>`` elements then ``leadid``. When more rows exist and the
  client asked for the annotations (``Prefer: odata.include-annotations`` naming them, or ``*``),
  the answer carries ``@Microsoft.Dynamics.CRM.morerecords: true`` and
  ``@Microsoft.Dynamics.CRM.fetchxmlpagingcookie`` =
  ``<cookie pagenumber="n+1" pagingcookie="<double-encoded cookie>" istracking="False" />``; sent
  back as ``paging-cookie`` with ``page="n+1"`` it resumes after the last row (keyset). A cookie
  that is not the sandbox's or not for the previous page is ignored and the page is computed by
  simple paging (like the service, which ignores cookies for non-consecutive pages); simple paging
  is capped at 50 000 rows (400 beyond).
* Results omit null columns (FetchXML does not return them) and always carry ``leadid``. No
  ``<attribute>`` element means all columns [unverified].
* An attribute the lead does not have → 400 ``0x80041103`` "'lead' entity doesn't contain
  attribute with Name = 'x' and NameMapping = 'Logical'." [unverified code].
"""

from __future__ import annotations

import re
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sandbox.dataverse import errors, odata
from sandbox.dataverse.metadata import AttributeDef

if TYPE_CHECKING:
    from sandbox.dataverse.leads import LeadTable
    from sandbox.dataverse.service import Request

MAX_ROWS = 5000
SIMPLE_PAGING_LIMIT = 50_000
PAGING_COOKIE = "Microsoft.Dynamics.CRM.fetchxmlpagingcookie"
MORE_RECORDS = "Microsoft.Dynamics.CRM.morerecords"
TOTAL_COUNT = "Microsoft.Dynamics.CRM.totalrecordcount"
TOTAL_COUNT_EXCEEDED = "Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"

_FETCH_ATTRIBUTES = {
    "version",
    "output-format",
    "mapping",
    "distinct",
    "no-lock",
    "top",
    "count",
    "page",
    "paging-cookie",
    "returntotalrecordcount",
}
_COMPARISONS = {"eq": "eq", "ne": "ne", "neq": "ne", "gt": "gt", "ge": "ge", "lt": "lt", "le": "le"}
_STRING_MATCH = {"like", "not-like", "begins-with", "not-begin-with", "ends-with", "not-end-with"}
_LITERAL_KIND = {
    "string": "string",
    "int": "number",
    "decimal": "number",
    "bool": "bool",
    "guid": "guid",
    "datetime": "datetime",
    "date": "date",
}
_EDM_NAME = {
    "int": "Edm.Int32",
    "decimal": "Edm.Decimal",
    "bool": "Edm.Boolean",
    "guid": "Edm.Guid",
    "datetime": "Edm.DateTimeOffset",
    "date": "Edm.Date",
}
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass
class FetchQuery:
    """A parsed FetchXML query: what to return, how to filter and order, and which page."""

    select: list[str] | None  # output property names; None: every column
    options: odata.QueryOptions = field(default_factory=odata.QueryOptions)
    page: int = 1
    page_size: int = MAX_ROWS
    top: int | None = None
    cookie: dict[str, Any] | None = None
    total_count: bool = False


def _invalid(message: str) -> errors.ODataError:
    return errors.bad_request(message, code=errors.INVALID_ARGUMENT)


def _unsupported(what: str) -> errors.ODataError:
    return errors.not_supported(what, "the sandbox implements the FetchXML subset in sandbox/dataverse/fetchxml.py")


def _check_attributes(element: ET.Element, allowed: set[str]) -> None:
    for name in element.attrib:
        if name not in allowed:
            raise _unsupported(f"The FetchXML attribute '{name}' on <{element.tag}>")


def _int_attribute(element: ET.Element, name: str, low: int, high: int) -> int | None:
    text = element.get(name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise _invalid(f"The value '{text}' of the fetch attribute '{name}' is not an integer.") from None
    if not low <= value <= high:
        raise _invalid(f"The fetch attribute '{name}' must lie between {low} and {high}; it is {value}.")
    return value


def parse(text: str, table: LeadTable) -> FetchQuery:
    """Parse and type-check a FetchXML document against the lead table; raise ODataError when it is refused."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise _invalid(f"The fetchXml parameter is not well-formed XML: {exc}.") from None
    if root.tag != "fetch":
        raise _invalid(f"The root element of a FetchXML query must be <fetch>, not <{root.tag}>.")
    _check_attributes(root, _FETCH_ATTRIBUTES)
    if root.get("mapping", "logical") != "logical":
        raise _unsupported(f"The FetchXML mapping '{root.get('mapping')}'")
    if root.get("distinct", "false").lower() not in ("false", "0"):
        raise _unsupported("FetchXML distinct='true'")
    entities = list(root)
    if len(entities) != 1 or entities[0].tag != "entity":
        found = ", ".join(f"<{child.tag}>" for child in entities) or "nothing"
        if any(child.tag != "entity" for child in entities):
            raise _unsupported(f"FetchXML with {found} under <fetch>")
        raise _invalid("A FetchXML query needs exactly one <entity> element.")
    entity = entities[0]
    _check_attributes(entity, {"name"})
    if entity.get("name") != "lead":
        raise _invalid(
            f"The entity '{entity.get('name')}' in the FetchXML does not match the entity set "
            f"'{table.entity_set}' of the request."
        )

    query = FetchQuery(select=[])
    top = _int_attribute(root, "top", 1, MAX_ROWS)
    count = _int_attribute(root, "count", 1, MAX_ROWS)
    page = _int_attribute(root, "page", 1, 1_000_000)
    if top is not None and (count is not None or page is not None):
        raise _invalid("The top attribute can't be specified with paging attribute page or count.")
    query.top = top
    query.page = page or 1
    query.page_size = count or MAX_ROWS
    if query.page > 1 and query.page * query.page_size > SIMPLE_PAGING_LIMIT and root.get("paging-cookie") is None:
        raise _invalid(f"Simple paging (page and count, no paging cookie) is limited to {SIMPLE_PAGING_LIMIT} rows.")
    cookie_text = root.get("paging-cookie")
    if cookie_text is not None:
        cookie = odata.decode_paging_cookie(cookie_text)
        if cookie is not None and cookie["p"] == query.page - 1:
            query.cookie = cookie
    query.total_count = root.get("returntotalrecordcount", "false").lower() in ("true", "1")

    conditions: list[tuple] = []
    all_columns = False
    for child in entity:
        if child.tag == "attribute":
            _check_attributes(child, {"name"})
            attr = _attribute(table, child.get("name"))
            if attr.output_name not in query.select:  # type: ignore[operator]
                query.select.append(attr.output_name)  # type: ignore[union-attr]
        elif child.tag == "all-attributes":
            _check_attributes(child, set())
            all_columns = True
        elif child.tag == "order":
            _check_attributes(child, {"attribute", "descending"})
            attr = _attribute(table, child.get("attribute"))
            descending = child.get("descending", "false").lower()
            if descending not in ("true", "false", "1", "0"):
                raise _invalid(f"The value '{descending}' of the order attribute 'descending' is not a boolean.")
            query.options.orderby.append((attr.logical, descending in ("true", "1")))
        elif child.tag == "filter":
            node = _filter(child, table)
            if node is not None:
                conditions.append(node)
        else:
            raise _unsupported(f"The FetchXML element <{child.tag}>")
    if all_columns or not query.select:
        query.select = None
    query.options.filter_ast = _combine("and", conditions)
    return query


def _attribute(table: LeadTable, name: str | None) -> AttributeDef:
    if not name:
        raise _invalid("A FetchXML attribute, order or condition needs the name of a column.")
    attr = table.meta.attribute(name)
    if attr is None or attr.logical != name:
        raise errors.ODataError(
            400,
            errors.FETCH_NO_ATTRIBUTE,
            f"'lead' entity doesn't contain attribute with Name = '{name}' and NameMapping = 'Logical'.",
        )
    if not attr.is_property:
        raise _unsupported(f"The FetchXML column '{name}' (not a Web API property of lead)")
    return attr


def _combine(kind: str, nodes: list[tuple]) -> tuple | None:
    if not nodes:
        return None
    node = nodes[0]
    for other in nodes[1:]:
        node = (kind, node, other)
    return node


def _filter(element: ET.Element, table: LeadTable) -> tuple | None:
    _check_attributes(element, {"type"})
    kind = element.get("type", "and").lower()
    if kind not in ("and", "or"):
        raise _invalid(f"The filter type '{kind}' is not valid; use 'and' or 'or'.")
    nodes = []
    for child in element:
        if child.tag == "condition":
            nodes.append(_condition(child, table))
        elif child.tag == "filter":
            node = _filter(child, table)
            if node is not None:
                nodes.append(node)
        else:
            raise _unsupported(f"The FetchXML element <{child.tag}> inside <filter>")
    return _combine(kind, nodes)


def _condition(element: ET.Element, table: LeadTable) -> tuple:
    _check_attributes(element, {"attribute", "operator", "value"})
    attr = _attribute(table, element.get("attribute"))
    operator = element.get("operator")
    values = [child for child in element]
    for child in values:
        if child.tag != "value":
            raise _unsupported(f"The FetchXML element <{child.tag}> inside <condition>")
    texts = [child.text or "" for child in values]
    if element.get("value") is not None:
        texts.insert(0, element.get("value") or "")
    name = attr.logical
    kind = attr.kind
    if operator in ("null", "not-null"):
        if texts:
            raise _invalid(f"The condition operator '{operator}' on '{name}' takes no value.")
        return ("isnull", name, operator == "not-null")
    if operator in ("in", "not-in"):
        if not texts:
            raise _invalid(f"The condition operator '{operator}' on '{name}' needs at least one <value>.")
        return ("in", name, [(_convert(name, kind, t), _LITERAL_KIND[kind]) for t in texts], operator == "not-in")
    if operator in _COMPARISONS or operator in _STRING_MATCH:
        if len(texts) != 1:
            raise _invalid(f"The condition operator '{operator}' on '{name}' needs exactly one value.")
        if operator in _COMPARISONS:
            value = _convert(name, kind, texts[0])
            return ("cmp", _COMPARISONS[operator], ("prop", name), ("lit", value, _LITERAL_KIND[kind]))
        if kind != "string":
            raise _invalid(f"The condition operator '{operator}' needs a text column; '{name}' is not one.")
        return ("pred", _string_match(table, name, operator, texts[0]))
    raise _unsupported(f"The FetchXML condition operator '{operator}'")


def _convert(name: str, kind: str, text: str) -> Any:
    """A condition value as the column's type (the service converts FetchXML values the same way)."""
    value = text.strip()
    try:
        if kind == "string":
            return text
        if kind == "int":
            return int(value)
        if kind == "decimal":
            return float(value)
        if kind == "bool":
            if value.lower() in ("1", "true"):
                return True
            if value.lower() in ("0", "false"):
                return False
            raise ValueError(value)
        if kind == "guid":
            guid = value.strip("{}")
            if not odata.is_guid(guid):
                raise ValueError(value)
            return guid.lower()
        if kind == "datetime":
            return odata.canonical_datetime(value)
        if kind == "date":
            if not _DATE_RE.match(value[:10]):
                raise ValueError(value)
            return value[:10]
    except ValueError:
        raise _invalid(
            f"The value of the condition on 'lead.{name}' cannot be converted to {_EDM_NAME.get(kind, kind)}."
        ) from None
    raise _unsupported(f"A FetchXML condition on the column '{name}'")


def like_regex(pattern: str) -> re.Pattern[str]:
    """SQL LIKE (``%``, ``_``, ``[set]``, ``[^set]``) as an anchored, case-insensitive regular expression."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "%":
            out.append(".*")
        elif ch == "_":
            out.append(".")
        elif ch == "[":
            end = pattern.find("]", i + 2)
            if end < 0:
                out.append(re.escape(ch))
            else:
                body = pattern[i + 1 : end]
                negate = body.startswith("^")
                members = body[1:] if negate else body
                escaped = "".join("\\" + c if c in "\\]^[" else c for c in members)
                out.append(f"[{'^' if negate else ''}{escaped}]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


def _string_match(table: LeadTable, name: str, operator: str, value: str) -> Callable[[Any], bool]:
    getter, _ = table.resolve(name)
    if operator in ("like", "not-like"):
        regex = like_regex(value)

        def matches(text: str) -> bool:
            return regex.fullmatch(text) is not None

    elif operator in ("begins-with", "not-begin-with"):
        prefix = value.casefold()

        def matches(text: str) -> bool:
            return text.casefold().startswith(prefix)

    else:
        suffix = value.casefold()

        def matches(text: str) -> bool:
            return text.casefold().endswith(suffix)

    negate = operator.startswith("not-")

    def predicate(row: Any) -> bool:
        current = getter(row)
        if not isinstance(current, str):
            return False  # SQL: NULL is neither LIKE nor NOT LIKE anything
        return matches(current) != negate

    return predicate


def run(table: LeadTable, query: FetchQuery) -> tuple[odata.QueryResult, int | None, bool]:
    """The requested page (keyset from the cookie, else simple paging), the total count if asked, and whether
    the total count hit its limit."""
    options = query.options
    total: int | None = None
    exceeded = False
    if query.total_count:
        counted = odata.run_query(table, odata.QueryOptions(filter_ast=options.filter_ast, count=True, top=0))
        total, exceeded = counted.count, counted.count_exceeded
    if query.top is not None:
        options.top = query.top
        return odata.run_query(table, options), total, exceeded
    options.page_size = query.page_size
    if query.cookie is not None:
        options.cursor = query.cookie
        return odata.run_query(table, options), total, exceeded
    options.cursor = None
    for _ in range(query.page - 1):  # simple paging: walk the keyset pages up to the one asked for
        result = odata.run_query(table, options)
        if result.next_cursor is None:
            return odata.QueryResult(rows=[], next_cursor=None, page_number=query.page), total, exceeded
        options.cursor = result.next_cursor
    return odata.run_query(table, options), total, exceeded


def paging_cookie_annotation(cursor: dict[str, Any]) -> str:
    """The ``fetchxmlpagingcookie`` value: the outer cookie, the inner one URL-encoded twice (as the service does)."""
    inner = urllib.parse.quote(urllib.parse.quote(odata.paging_cookie(cursor), safe=""), safe="")
    return f'<cookie pagenumber="{cursor["p"] + 1}" pagingcookie="{inner}" istracking="False" />'


def response_body(req: Request, table: LeadTable, web_api_url: str, text: str, users: Any) -> dict[str, Any]:
    """Run a FetchXML query for ``GET leads?fetchXml=…`` and build the JSON answer."""
    others = [name for name in req.query if name != "fetchXml"]
    if others:
        raise _invalid(f"The fetchXml query parameter cannot be combined with {', '.join(sorted(others))}.")
    if "odata.maxpagesize" in req.prefer:
        raise errors.not_supported(
            "Prefer: odata.maxpagesize with fetchXml", "page FetchXML with the fetch element's count and page"
        )
    query = parse(text, table)
    result, total, exceeded = run(table, query)
    annotate = req.wants_annotation("OData.Community.Display.V1.FormattedValue")
    body: dict[str, Any] = {"@odata.context": f"{web_api_url}/$metadata#{table.entity_set}"}
    if query.total_count:
        body[f"@{TOTAL_COUNT}"] = -1 if exceeded else total
        body[f"@{TOTAL_COUNT_EXCEEDED}"] = exceeded
    more = result.next_cursor is not None
    if more and req.wants_annotation(PAGING_COOKIE):
        body[f"@{PAGING_COOKIE}"] = paging_cookie_annotation(result.next_cursor)  # type: ignore[arg-type]
    if req.wants_annotation(MORE_RECORDS):
        body[f"@{MORE_RECORDS}"] = more
    rows = []
    for row in result.rows:
        rendered = table.render(row, query.select, annotate, users if annotate else None)
        rows.append({name: value for name, value in rendered.items() if value is not None})
    body["value"] = rows
    return body
