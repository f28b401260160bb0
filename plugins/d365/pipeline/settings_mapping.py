"""One ``data_mapping`` entry: where a lead attribute's value comes from (a source field, a template or a
constant) and how it is formatted, checked against the source registry (``fields.SOURCE_FIELDS``)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import StrictBool, field_validator, model_validator

from d365.pipeline.fields import SOURCE_FIELDS
from d365.pipeline.settings_base import _check_timezone, _close, _Model
from d365.pipeline.settings_sections import ConsentRef

Format = Literal["text", "date", "datetime_utc", "date_local", "e164", "country_name", "country_code"]
# which formats make sense for which source kind
_FORMATS_BY_KIND: dict[str, set[str]] = {
    "text": {"text"},
    "int": {"text"},
    "bool": {"text"},
    "list": {"text"},
    "date": {"text", "date", "date_local", "datetime_utc"},
    "datetime": {"text", "date", "date_local", "datetime_utc"},
    "phone": {"text", "e164"},
    "country": {"text", "country_code", "country_name"},
}
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def template_placeholders(template: str) -> list[str]:
    """Source names a template reads; ``{{`` and ``}}`` are literal braces."""
    return PLACEHOLDER.findall(template.replace("{{", "").replace("}}", ""))


Scalar = str | int | float | bool | None


class FieldMapping(_Model):
    """One lead attribute's source. A bare string in YAML is shorthand for ``{source: <string>}``."""

    source: str | None = None
    template: str | None = None
    constant: Scalar = None
    fallback: tuple[str, ...] = ()
    format: Format | None = None
    timezone: str | None = None
    separator: str = ","
    value_map: dict[str, Scalar] | None = None
    default: Scalar = None
    picklist: StrictBool = False
    on_missing_option: Literal["quarantine", "add", "ignore"] = "quarantine"
    add_allowlist: tuple[str, ...] = ()
    max_length_policy: Literal["truncate", "quarantine"] | None = None
    if_empty: Literal["null", "omit", "quarantine"] = "null"
    consents: tuple[ConsentRef, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"source": data}
        return data

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str | None) -> str | None:
        return None if value is None else _check_timezone(value)

    @model_validator(mode="after")
    def _consistent(self) -> FieldMapping:
        forms = [f for f in ("source", "template", "constant") if f in self.model_fields_set]
        if self.source is None and "source" in forms:
            forms.remove("source")
        if self.template is None and "template" in forms:
            forms.remove("template")
        if len(forms) != 1:
            raise ValueError("give exactly one of 'source', 'template' or 'constant'")
        names = list(SOURCE_FIELDS)
        if self.source is not None and self.source not in SOURCE_FIELDS:
            hint = _close(self.source, names)
            if "{" in self.source:
                hint = "; to combine fields use {template: '...'}"
            raise ValueError(f"unknown source {self.source!r}{hint} (see docs/settings.md for the list)")
        for name in self.fallback:
            if name not in SOURCE_FIELDS:
                raise ValueError(f"unknown fallback source {name!r}{_close(name, names)}")
        if self.fallback and self.source is None:
            raise ValueError("'fallback' needs 'source'")
        if self.template is not None:
            for name in template_placeholders(self.template):
                if name.strip() not in SOURCE_FIELDS:
                    raise ValueError(f"template placeholder {{{name}}} is not a source field{_close(name, names)}")
        if self.format is not None and self.source is not None:
            kind = SOURCE_FIELDS[self.source].kind
            if self.format not in _FORMATS_BY_KIND[kind]:
                allowed = ", ".join(sorted(_FORMATS_BY_KIND[kind]))
                raise ValueError(f"format {self.format!r} does not apply to {self.source} (allowed: {allowed})")
        if self.format is not None and self.source is None and self.format != "text":
            raise ValueError(f"format {self.format!r} applies only to a 'source'")
        if self.consents is not None and self.source != "consent.given":
            raise ValueError("'consents' applies only to source consent.given")
        if not self.picklist and ("on_missing_option" in self.model_fields_set or self.add_allowlist):
            raise ValueError("'on_missing_option' and 'add_allowlist' need 'picklist: true'")
        if self.add_allowlist and self.on_missing_option != "add":
            raise ValueError("'add_allowlist' needs 'on_missing_option: add'")
        if self.on_missing_option == "add" and not self.add_allowlist:
            raise ValueError("'on_missing_option: add' needs 'add_allowlist' (the labels that may be added, or '*')")
        return self

    @property
    def form(self) -> Literal["source", "template", "constant"]:
        if self.source is not None:
            return "source"
        if self.template is not None:
            return "template"
        return "constant"

    def reads(self) -> list[str]:
        """The source fields this entry reads."""
        if self.source is not None:
            return [self.source, *self.fallback]
        if self.template is not None:
            return [n.strip() for n in template_placeholders(self.template)]
        return []
