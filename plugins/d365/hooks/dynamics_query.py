"""Reading rows through the Dynamics hook: paged queries, lookups by a column's values, users.

Paging follows ``@odata.nextLink`` unchanged with the same page size, and checks each link before it is
requested (same origin as the organization, never a page already read). A lookup by values splits them into
``Microsoft.Dynamics.CRM.In(...)`` filters that each fit a GET URL (``d365.hooks.odata.in_filters``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple
from urllib.parse import unquote, urljoin, urlsplit

from d365.hooks.dynamics_auth import normalise_origin
from d365.hooks.dynamics_core import DynamicsCore
from d365.hooks.errors import DynamicsPagingError
from d365.hooks.odata import (
    LOOKUP_CHUNK,
    LOOKUP_URL_BUDGET,
    in_filters,
    key_segment,
    odata_literal,
    page_key,
    query_string,
)


class ValueLookup(NamedTuple):
    """The rows a lookup by values found, and how many ``In()`` queries it took (pages not counted)."""

    rows: list[dict[str, Any]]
    requests: int


class DynamicsQueries(DynamicsCore):
    """Row reads of the Dynamics hook."""

    def query(
        self,
        entity_set: str,
        *,
        select: Sequence[str] | None = None,
        filter: str | None = None,
        orderby: str | None = None,
        page_size: int = 5000,
    ) -> Iterator[dict[str, Any]]:
        """Every matching row, page by page (``@odata.nextLink`` followed unchanged, same maxpagesize)."""
        if page_size <= 0:
            raise ValueError("page_size must be positive")
        params = {"$select": ",".join(select) if select else None, "$filter": filter, "$orderby": orderby}
        query = query_string(params)
        url: str | None = f"{entity_set}?{query}" if query else entity_set
        headers = {"Prefer": f"odata.maxpagesize={page_size}"}
        seen: set[tuple[str, str, str]] = set()
        while url:
            seen.add(page_key(self._url(url)))
            page = self._collection(url, headers)  # no "value" list: an error, never "no rows"
            yield from page["value"]
            url = self._next_link(page.get("@odata.nextLink"), seen)

    def query_in(
        self,
        entity_set: str,
        column: str,
        values: Iterable[str | int | uuid.UUID],
        *,
        select: Sequence[str] | None = None,
        filter: str | None = None,
        chunk_size: int = LOOKUP_CHUNK,
        max_url_length: int = LOOKUP_URL_BUDGET,
    ) -> ValueLookup:
        """The rows whose ``column`` holds one of ``values`` (and match ``filter``, e.g. ``statecode eq 0``).

        Values are deduplicated and sent as ``Microsoft.Dynamics.CRM.In(...)`` filters of at most ``chunk_size``
        values, each request URL at most ``max_url_length`` characters; every page of every chunk is read. Any
        failure raises (a lookup that failed is never "no rows"), and errors name the path, never the values.
        """
        select_text = ",".join(select) if select else None
        fixed = len(self._url(f"{entity_set}?{query_string({'$select': select_text})}&$filter="))
        rows: list[dict[str, Any]] = []
        requests = 0
        for flt in in_filters(column, values, extra=filter, max_values=chunk_size, max_encoded=max_url_length - fixed):
            requests += 1
            rows.extend(self.query(entity_set, select=select, filter=flt))
        return ValueLookup(rows, requests)

    def _next_link(self, link: Any, seen: set[tuple[str, str, str]]) -> str | None:
        """The next page's absolute URL, checked BEFORE it is requested: same origin as the organization
        (scheme, host, port: anything else would receive the bearer token) and not a page already read (a
        server repeating a link would page forever). Errors name the path, never the query (``$filter`` values)."""
        if link is None or link == "":
            return None
        if not isinstance(link, str):
            raise DynamicsPagingError(
                f"@odata.nextLink is {type(link).__name__}, not a URL", code="NextLinkNotAUrl", method="GET"
            )
        absolute = urljoin(self.web_api_url + "/", link.strip())
        parts = urlsplit(absolute)
        try:
            origin = normalise_origin(absolute)
        except ValueError:
            origin = ""
        if origin != normalise_origin(self.org_url):
            shown = origin or "(no host)"
            raise DynamicsPagingError(
                f"@odata.nextLink points to {shown}, outside the organization {self.org_url}; not followed "
                "(it would receive the access token)",
                code="NextLinkForeignOrigin",
                method="GET",
                path=unquote(parts.path),
            )
        if page_key(absolute) in seen:
            raise DynamicsPagingError(
                "@odata.nextLink repeats a page already read; paging stopped instead of looping",
                code="NextLinkRepeated",
                method="GET",
                path=unquote(parts.path),
            )
        return absolute

    def list_systemusers(self, filter: str | None = None, select: list[str] | None = None) -> list[dict[str, Any]]:
        """System users (owner candidates); the caller filters enabled, interactive users as needed."""
        columns = select or [
            "systemuserid",
            "fullname",
            "internalemailaddress",
            "domainname",
            "isdisabled",
            "accessmode",
            "applicationid",
            "azureactivedirectoryobjectid",
        ]
        return list(self.query("systemusers", select=columns, filter=filter))

    def find_systemuser(
        self, *, user_id: str | None = None, email: str | None = None, domainname: str | None = None
    ) -> dict[str, Any] | None:
        """The user with this id, primary email or domain name (all given criteria must match); None if none."""
        clauses = []
        if user_id:
            key_segment(user_id)  # validates the GUID
            clauses.append(f"systemuserid eq {str(user_id).strip('{}').lower()}")
        if email:
            clauses.append(f"internalemailaddress eq {odata_literal(email)}")
        if domainname:
            clauses.append(f"domainname eq {odata_literal(domainname)}")
        if not clauses:
            raise ValueError("find_systemuser needs user_id, email or domainname")
        users = self.list_systemusers(filter=" and ".join(clauses))
        return users[0] if users else None
