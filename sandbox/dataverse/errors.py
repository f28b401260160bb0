"""OData error bodies and the Dataverse error catalogue used by the sandbox.

Every client error inside the service is raised as :class:`ODataError` and turned into
``{"error":{"code":"0x...","message":"..."}}`` by the dispatcher. Codes and messages follow the
catalogue in the Web API reference (§2.3); where the reference marks a code as unknown, the choice
is documented next to the helper that builds it.

What the real service supports but the sandbox does not (``BulkDelete``, the ``sql`` query
parameter, FetchXML beyond the implemented subset) is refused by :func:`not_supported`: 400 with
code ``0x80060888`` (the code of the service's other query-option refusals, e.g. ``$skip``) and a
message that starts with the feature and says "is not supported by the Dataverse sandbox". Never a
200 with data that ignores part of the request.
"""

from __future__ import annotations

ENTITY_TYPE = "Microsoft.Dynamics.CRM.{}"


class ODataError(Exception):
    """A client-visible failure: HTTP status, Dataverse error code (hex string, may be empty), message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


# -- codes ---------------------------------------------------------------------------------
OBJECT_DOES_NOT_EXIST = "0x80040217"
DUPLICATE_RECORD = "0x80040237"
DUPLICATE_DETECTED = "0x80040333"
STRING_TOO_LONG = "0x80044331"
VALUE_OUT_OF_RANGE = "0x8004431a"
ODATA_ERROR = "0x80060888"
PAYLOAD_ERROR = "0x80048d19"
UNEXPECTED = "0x80040216"
CONCURRENCY_MISMATCH = "0x80060882"
INVALID_ARGUMENT = "0x80040203"
USER_DISABLED = "0x80040225"
# FetchXML naming an attribute the entity does not have [unverified code; message as the service words it]
FETCH_NO_ATTRIBUTE = "0x80041103"
NOT_A_MEMBER = "0x80072560"


def not_found_by_id(entity: str, record_id: str) -> ODataError:
    return ODataError(404, OBJECT_DOES_NOT_EXIST, f"{entity} With Id = {record_id} Does Not Exist")


def not_found_by_key(entity: str) -> ODataError:
    return ODataError(
        404, OBJECT_DOES_NOT_EXIST, f"A record with the specified key values does not exist in {entity} entity"
    )


def resource_not_found(segment: str) -> ODataError:
    return ODataError(404, ODATA_ERROR, f"Resource not found for the segment '{segment}'.")


def unknown_property(name: str, type_name: str) -> ODataError:
    """Unknown property in $select/$filter/$orderby (OData wording)."""
    return ODataError(400, ODATA_ERROR, f"Could not find a property named '{name}' on type '{type_name}'.")


def undeclared_property(name: str, type_name: str) -> ODataError:
    """Unknown property in a write payload (OData wording)."""
    return ODataError(
        400,
        ODATA_ERROR,
        f"The property '{name}' does not exist on type '{type_name}'. Make sure to only use property names "
        "that are defined by the type or mark the type as open type.",
    )


def payload_error(entity_set: str, inner: str) -> ODataError:
    """OData deserialisation failures (wrong JSON type, bad literal) as Dataverse wraps them."""
    return ODataError(
        400,
        PAYLOAD_ERROR,
        f"Error identified in Payload provided by the user for Entity :'{entity_set}', For more information on this "
        f"error please follow this help link https://go.microsoft.com/fwlink/?linkid=2195293  ----> "
        f"InnerException : Microsoft.OData.ODataException: {inner}",
    )


def bad_request(message: str, code: str = ODATA_ERROR) -> ODataError:
    return ODataError(400, code, message)


def method_not_allowed(method: str) -> ODataError:
    return ODataError(405, ODATA_ERROR, f"The requested resource does not support http method '{method}'.")


def string_too_long(attr: str, entity: str, max_length: int) -> ODataError:
    return ODataError(
        400,
        STRING_TOO_LONG,
        f"A validation error occurred.  The length of the '{attr}' attribute of the '{entity}' entity exceeded "
        f"the maximum allowed length of '{max_length}'.",
    )


def out_of_range(value: object, attr: str, entity: str, accepted: str) -> ODataError:
    return ODataError(
        400,
        VALUE_OUT_OF_RANGE,
        f"A validation error occurred. The value {value} of '{attr}' on record of type '{entity}' is outside the "
        f"valid range. Accepted Values: {accepted}",
    )


def duplicate_key() -> ODataError:
    return ODataError(412, DUPLICATE_RECORD, "A record with matching key values already exists.")


def duplicate_detected() -> ODataError:
    return ODataError(
        500,
        DUPLICATE_DETECTED,
        "A record was not created or updated because a duplicate of the current record already exists.",
    )


def version_mismatch() -> ODataError:
    return ODataError(
        412, CONCURRENCY_MISMATCH, "The version of the existing record doesn't match the RowVersion property provided."
    )


def key_not_defined(entity: str) -> ODataError:
    return ODataError(
        400, INVALID_ARGUMENT, f"The specified key attributes are not a defined key for the {entity} entity"
    )


def not_supported(feature: str, instead: str) -> ODataError:
    """A feature of the real service that the sandbox refuses instead of answering wrongly."""
    return ODataError(400, ODATA_ERROR, f"{feature} is not supported by the Dataverse sandbox; {instead}.")
