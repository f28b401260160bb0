"""Picklist options added on the fly: collect what the leads need, add each missing option once, publish once.

Airflow-free; ``plan_step`` drives it with the Dynamics hook's calls.

The mapping (``fit``) matches a label to an option ignoring case, accents and repeated spaces. A label with
no option whose attribute allows adding it (``on_missing_option: add`` + ``add_allowlist``) is reported as
``options_needed`` (attribute, label) and left out of the payload; the transform keeps such a lead as
*pending* (``transform/leads.jsonl`` row with ``options_needed``). A label that is not allowed quarantines
the record in the transform (reason: the attribute and ``missing_option``, never the value).

``ensure_options`` then, once per run:

1. dedupes the requests across leads by (attribute, normalised label): "fall SEMESTER" and "Fall semester"
   are one option, added under the first spelling seen (leads in applicant-id order);
2. reads the attribute options once (``current``: the plan reads the metadata again with ``Consistency:
   Strong``, because an option added a few seconds ago by an earlier run may not be in the cached metadata
   the preflight read), and adds nothing that exists there;
3. adds each missing option (``insert``: ``InsertOptionValue``; its returned value is used, no re-read);
4. publishes once (``publish``: ``PublishXml`` for the table) when something was added.

A failed insert fails only the leads needing that option (``OptionsResult.failed``: error code); they are
retried by the next run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from d365.pipeline.fit import normalize_label

OptionKey = tuple[str, str]  # (attribute, normalised label)


def option_key(attribute: str, label: str) -> OptionKey:
    return attribute, normalize_label(label)


@dataclass
class OptionsResult:
    values: dict[OptionKey, int] = field(default_factory=dict)  # every requested option → its value
    added: list[dict[str, Any]] = field(default_factory=list)  # {"attribute", "label", "value"} per insert
    failed: dict[OptionKey, str] = field(default_factory=dict)  # option → error code of its insert
    published: bool = False
    publish_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "existing": len(self.values) - len(self.added),
            "failed": [{"attribute": a, "error_code": code} for (a, _), code in sorted(self.failed.items())],
            "published": self.published,
            "publish_error": self.publish_error,
        }


def needed_options(leads: Iterable[Any]) -> dict[OptionKey, tuple[str, str]]:
    """(attribute, normalised label) → (attribute, label as first seen), over every lead's
    ``options_needed`` (pairs; a ``MappedLead``), leads in the order given."""
    wanted: dict[OptionKey, tuple[str, str]] = {}
    for lead in leads:
        for attribute, label in lead.options_needed or ():
            wanted.setdefault(option_key(attribute, label), (attribute, label))
    return wanted


def ensure_options(
    wanted: Mapping[OptionKey, tuple[str, str]],
    *,
    current: Callable[[], Mapping[str, Mapping[int, str] | None]],
    insert: Callable[[str, str], int],
    publish: Callable[[], None],
    error_code: Callable[[Exception], str] = lambda exc: type(exc).__name__,
) -> OptionsResult:
    """Make every wanted option exist; see the module docstring. ``current()`` is called at most once
    (only when something is wanted), ``publish()`` at most once (only when something was added)."""
    result = OptionsResult()
    if not wanted:
        return result
    existing: dict[OptionKey, int] = {}
    for attribute, options in current().items():
        for value, label in (options or {}).items():
            if isinstance(label, str):
                existing.setdefault(option_key(attribute, label), value)
    for key, (attribute, label) in wanted.items():
        if key in existing:
            result.values[key] = existing[key]
            continue
        try:
            value = int(insert(attribute, label))
        except Exception as exc:  # one option's failure fails only the leads that need it
            result.failed[key] = error_code(exc) or type(exc).__name__
            continue
        result.values[key] = value
        result.added.append({"attribute": attribute, "label": label, "value": value})
    if result.added:
        try:
            publish()
            result.published = True
        except Exception as exc:  # the options exist and take values; forms see them after the next publish
            result.publish_error = error_code(exc) or type(exc).__name__
    return result


def fill_options(
    payload: Mapping[str, Any], needed: Sequence[Sequence[str]], values: Mapping[OptionKey, int]
) -> tuple[dict[str, Any], list[str]]:
    """The payload with each needed option's value (the plan fills what the transform left pending),
    and the attributes still without one."""
    filled = dict(payload)
    missing: list[str] = []
    for attribute, label in needed:
        value = values.get(option_key(attribute, label))
        if value is None:
            missing.append(attribute)
        else:
            filled[attribute] = value
    return filled, missing
