"""What every settings section shares: the strict base model (unknown keys fail, YAML types are kept) and the
validators and value types the sections and the root model use (e-mail, timezone, logical names, fractions)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator


def _check_email(value: str) -> str:
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"{value!r} is not a valid e-mail address ({exc})") from None


def _check_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(f"unknown timezone {value!r} (use an IANA name such as 'Europe/Tallinn' or 'UTC')") from None
    return value


def _close(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


# Dataverse logical names: lower-case SchemaNames (see /work/shared/reference/dataverse-web-api.md §3): a letter,
# then lower-case letters, digits and underscores; at most 50 characters. Column names from the settings go
# into URLs, $select and $filter: nothing else may pass.
LOGICAL_NAME = re.compile(r"[a-z][a-z0-9_]{0,49}")


def check_logical_name(value: str) -> str:
    """``value`` if it is a Dataverse logical name, else a ValueError saying the rule."""
    if not isinstance(value, str) or not LOGICAL_NAME.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a logical name (lower-case letters, digits and underscores, starting with a "
            "letter, at most 50 characters; e.g. 'firstname' or 'uni_applicantid')"
        )
    return value


# A column (or table) logical name in the settings.
LogicalName = Annotated[str, AfterValidator(check_logical_name)]
# A share between 0 and 1 (a YAML number; true/false or text is refused, see ``_Model``).
Fraction = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


def _scalar_kinds(annotation: Any) -> set[str]:
    """The scalar kinds a field's type accepts: bool, int, float, str, or "other" (models, lists, Any)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _scalar_kinds(get_args(annotation)[0])
    if origin in (Union, UnionType):
        return set().union(*(_scalar_kinds(arg) for arg in get_args(annotation)))
    if origin is Literal:
        return {type(v).__name__ for v in get_args(annotation)} & {"bool", "int", "float", "str"} or {"other"}
    if annotation is type(None):
        return set()
    if annotation in (bool, int, float, str):
        return {annotation.__name__}
    return {"other"}


def _strict_scalar(kinds: set[str], value: Any) -> Any:
    """Refuse what pydantic's lax mode would convert silently: true/false as a number, a number as true/false,
    a number written as text, a fraction where a whole number belongs."""
    if "other" in kinds or not kinds:
        return value
    numeric = kinds & {"int", "float"}
    if isinstance(value, bool):
        if "bool" not in kinds and numeric:
            raise ValueError(f"expected a number, got {str(value).lower()} (true/false is not a number)")
    elif isinstance(value, int | float):
        if "bool" in kinds and not numeric and "str" not in kinds:
            raise ValueError(f"expected true or false, got {value!r} (a number is not a boolean)")
        if isinstance(value, float) and kinds & {"int"} and not kinds & {"float"} and "str" not in kinds:
            raise ValueError(f"expected a whole number, got {value!r}")
    elif isinstance(value, str) and numeric and "str" not in kinds:
        raise ValueError(f"expected a number, got the text {value!r} (write numbers without quotes)")
    return value


class _Model(BaseModel):
    """Every settings section: unknown keys fail, and a value keeps its YAML type: true/false is never read as
    a number, a number never as true/false, quoted text never as a number (pydantic's lax mode would)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_scalars(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        return value if field is None else _strict_scalar(_scalar_kinds(field.annotation), value)
