"""A credential pool: the load's writes spread over several application users of one organization.

Dataverse's service-protection limits (requests, execution time, concurrency per 5 minutes) apply per user, so one
application user is the hard cap of a loader. The Dynamics 365 connection's extra ``"pool": [...]`` names further
connections, each an application user of the same org and tenant with its own secret
(``d365.hooks.dynamics_settings``). ``DynamicsPool`` holds one ``DynamicsHook`` per member, so each has its own MSAL
token, its own throttle (``d365.hooks.throttle``) and its own ``x-ms-dop-hint``.

* ``send(operations, write)`` runs ``write(hook, operations)`` on the member with the most free capacity (fewest
  requests in flight relative to its concurrency cap; then the least used), so every member carries work and none is
  asked for more than its own throttle admits. ``write`` defaults to one ``$batch`` with continue-on-error
  (``write_batch``); a bulk-message writer with the same contract (one ``BatchResult`` per operation, in order) can
  take its place per call.
* A member that fails authentication (``DynamicsAuthError``: the token endpoint refuses its secret, e.g.
  AADSTS7000215; Dataverse answers 403; or a token is refused with 401 twice, i.e. also right after the hook's own
  refresh) is taken out **for the run**, recorded (connection id, client id, error code and a short reason, never
  the secret) and the same operations go to another member. Every planned write is an idempotent upsert or delete
  and an authentication failure means the request did not run, so resending is safe. When no member is left the last
  authentication error is raised.
* ``stats`` adds up the members' counters and lists, per member, the requests and operations it carried, and the
  members removed; ``throttle_snapshot`` does the same for the throttles.

``check_application_user`` is preflight's check of one member: token, WhoAmI, the application user exists, is enabled
and holds at least one security role (``systemusers(<id>)/systemuserroles_association``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from d365.hooks.dynamics import DynamicsHook
from d365.hooks.dynamics_batch import BatchRequest, BatchResult
from d365.hooks.dynamics_settings import PoolConfigError, check_pool_member
from d365.hooks.errors import DynamicsAuthError, DynamicsError

log = logging.getLogger(__name__)

Writer = Callable[[DynamicsHook, Sequence[BatchRequest]], list[BatchResult]]
HookFactory = Callable[[str], DynamicsHook]

# Entra ID codes a removed member is reported with, in words (the code itself is always kept).
AUTH_REASONS = {
    "AADSTS7000215": "invalid client secret",
    "AADSTS7000222": "client secret expired",
    "AADSTS7000216": "no client secret",
    "AADSTS700016": "application not found in the tenant",
    "AADSTS700024": "client assertion out of its valid time range",
}
# Throttle snapshot keys that are per-user settings or estimates: the pool shows one value, it does not add them up.
_SAME_FOR_ALL = frozenset({"window_seconds", "max_requests", "max_execution_ms", "safety_margin"})
_SMALLEST = frozenset({"min_concurrency"})
_LARGEST = frozenset({"request_estimate_ms"})


def write_batch(hook: DynamicsHook, operations: Sequence[BatchRequest]) -> list[BatchResult]:
    """The default writer: one ``$batch`` with continue-on-error (every planned write is safe to repeat)."""
    return hook.execute_batch(operations, continue_on_error=True, idempotent=True)


def auth_reason(exc: DynamicsAuthError) -> str:
    """A short, secret-free reason for a member's authentication failure."""
    if exc.code in AUTH_REASONS:
        return AUTH_REASONS[exc.code]
    if exc.status == 401:
        return "access token refused by Dataverse"
    if exc.status == 403:
        return "refused by Dataverse (403" + (f" {exc.code})" if exc.code else ")")
    return f"authentication failed ({exc.code or type(exc).__name__})"


@dataclass(frozen=True)
class RemovedMember:
    """A member taken out of the pool for the run: who, and why (never the secret)."""

    connection_id: str
    client_id: str
    error_code: str
    status: int | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """``user dynamics365_user2 removed from the pool: AADSTS7000215 invalid client secret``."""
        code = f"{self.error_code} " if self.error_code else ""
        return f"user {self.connection_id} removed from the pool: {code}{self.reason}"


class PoolMember:
    """One application user: its hook and what the pool sent through it."""

    def __init__(self, hook: DynamicsHook, index: int) -> None:
        self.hook = hook
        self.index = index
        self.in_flight = 0
        self.batches = 0
        self.operations = 0
        self.active = True

    @property
    def connection_id(self) -> str:
        return self.hook.dynamics365_conn_id

    @property
    def client_id(self) -> str:
        return self.hook.settings.client_id

    @property
    def cap(self) -> int:
        return max(1, int(self.hook.throttle.cap))

    def load(self) -> tuple[float, int, int]:
        """Sort key: requests in flight relative to the member's cap, then operations carried, then order."""
        return (self.in_flight / self.cap, self.operations, self.index)


class DynamicsPool:
    """Several application users of one organization used as one writer; safe to share between worker threads.

    :param hooks: the primary connection's hook first, then one per pool member (``from_connection`` builds them)
    """

    def __init__(self, hooks: Sequence[DynamicsHook]) -> None:
        if not hooks:
            raise ValueError("a pool needs at least one hook")
        primary = hooks[0].settings
        clients = {primary.client_id.lower(): primary.conn_id}
        for hook in hooks[1:]:
            member = hook.settings
            check_pool_member(primary, member)
            seen = clients.setdefault(member.client_id.lower(), member.conn_id)
            if seen != member.conn_id:
                raise PoolConfigError(
                    f"connection {member.conn_id!r} (client {member.client_id}) in the pool of {primary.conn_id!r}: "
                    f"the same application user as {seen!r}; a pool needs distinct application users",
                    code="PoolConfig",
                )
        self.members = [PoolMember(hook, i) for i, hook in enumerate(hooks)]
        self.removed: list[RemovedMember] = []
        self._lock = threading.Lock()
        self._last_auth_error: DynamicsAuthError | None = None

    @classmethod
    def from_connection(
        cls, conn_id: str, *, members: Sequence[str] | None = None, make_hook: HookFactory = DynamicsHook
    ) -> DynamicsPool:
        """The pool of ``conn_id``: its own hook, then one per member (``members``, else the connection's ``pool``
        extra). ``make_hook(conn_id)`` builds each hook (the load passes its throttle settings this way)."""
        primary = make_hook(conn_id)
        names = primary.settings.pool if members is None else tuple(members)
        return cls([primary, *(make_hook(name) for name in names)])

    # -- members ------------------------------------------------------------------------------------------------
    @property
    def primary(self) -> DynamicsHook:
        return self.members[0].hook

    @property
    def active(self) -> list[PoolMember]:
        with self._lock:
            return [m for m in self.members if m.active]

    @property
    def cap(self) -> int:
        """Requests the pool can have in flight: the sum of its active members' concurrency caps."""
        return sum(m.cap for m in self.active)

    @property
    def dop_hints(self) -> dict[str, int | None]:
        return {m.connection_id: m.hook.dop_hint for m in self.members}

    def whoami(self) -> dict[str, dict[str, Any]]:
        """WhoAmI on every active member (proves its token, reads its ``x-ms-dop-hint``); a member that fails
        authentication is removed. Raises the last authentication error when none is left."""
        answers: dict[str, dict[str, Any]] = {}
        for member in self.active:
            try:
                answers[member.connection_id] = member.hook.whoami()
            except DynamicsAuthError as exc:
                self._remove(member, exc)
        if not self.active:
            raise self._exhausted()
        return answers

    def _acquire(self, prefer: PoolMember | None) -> PoolMember | None:
        with self._lock:
            if prefer is not None and prefer.active:
                chosen: PoolMember | None = prefer
            else:
                candidates = [m for m in self.members if m.active]
                chosen = min(candidates, key=PoolMember.load) if candidates else None
            if chosen is not None:
                chosen.in_flight += 1
            return chosen

    def _release(self, member: PoolMember, operations: int | None) -> None:
        with self._lock:
            member.in_flight -= 1
            if operations is not None:
                member.batches += 1
                member.operations += operations

    def _remove(self, member: PoolMember, exc: DynamicsAuthError) -> None:
        with self._lock:
            self._last_auth_error = exc
            if not member.active:
                return  # another thread removed it already
            member.active = False
            entry = RemovedMember(member.connection_id, member.client_id, exc.code, exc.status, auth_reason(exc))
            self.removed.append(entry)
            left = sum(m.active for m in self.members)
        log.warning(
            "Dynamics 365 pool: %s (client %s); %d of %d application users left for this run",
            entry.describe(),
            entry.client_id,
            left,
            len(self.members),
        )

    def _exhausted(self) -> DynamicsError:
        if self._last_auth_error is not None:
            return self._last_auth_error
        return PoolConfigError("no application user left in the pool", code="PoolExhausted")

    # -- writing ------------------------------------------------------------------------------------------------
    def send(self, operations: Sequence[BatchRequest], write: Writer = write_batch) -> list[BatchResult]:
        """``write(hook, operations)`` on the least loaded member; on an authentication failure the member leaves
        the pool and the same operations go to another one. Other errors are the caller's (as from a hook)."""
        refused_once: set[int] = set()
        prefer: PoolMember | None = None
        while True:
            member = self._acquire(prefer)
            prefer = None
            if member is None:
                raise self._exhausted()
            try:
                results = write(member.hook, operations)
            except DynamicsAuthError as exc:
                self._release(member, None)
                if exc.status == 401 and member.index not in refused_once:
                    # The hook already dropped a refused token and fetched a new one; that one was refused too (an
                    # early expiry while the request was on its way). Nothing ran: once more on the same member.
                    refused_once.add(member.index)
                    prefer = member
                    continue
                self._remove(member, exc)
                continue
            except BaseException:
                self._release(member, None)
                raise
            self._release(member, len(operations))
            return results

    # -- reporting ----------------------------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, Any]:
        """The members' hook counters added up, and ``pool``: per member what it carried, and who was removed."""
        merged: dict[str, Any] = {}
        for member in self.members:
            for key, value in member.hook.stats.items():
                merged[key] = merged.get(key, 0) + value
        merged["pool"] = self.pool_stats()
        return merged

    def pool_stats(self) -> dict[str, Any]:
        with self._lock:
            members = [
                {
                    "connection_id": m.connection_id,
                    "client_id": m.client_id,
                    "active": m.active,
                    "batches": m.batches,
                    "operations": m.operations,
                    "requests": m.hook.stats.get("requests", 0),
                    "retries": m.hook.stats.get("retries", 0),
                    "throttled": m.hook.stats.get("throttled", 0),
                    "dop_hint": m.hook.dop_hint,
                    "concurrency_cap": m.cap,
                }
                for m in self.members
            ]
            removed = [r.to_json() for r in self.removed]
        return {"users": len(members), "members": members, "removed": removed}

    def throttle_snapshot(self) -> dict[str, Any]:
        """One member: its throttle's snapshot. Several: counters added up (settings shown once, the smallest
        concurrency reached, the largest request estimate), and each member's own under ``members``."""
        snapshots = {m.connection_id: m.hook.throttle.snapshot() for m in self.members}
        if len(snapshots) == 1:
            return next(iter(snapshots.values()))
        merged: dict[str, Any] = {}
        for snap in snapshots.values():
            for key, value in snap.items():
                if key not in merged:
                    merged[key] = value
                elif isinstance(value, bool) or not isinstance(value, int | float) or key in _SAME_FOR_ALL:
                    continue
                elif key in _SMALLEST:
                    merged[key] = min(merged[key], value)
                elif key in _LARGEST:
                    merged[key] = max(merged[key], value)
                else:
                    merged[key] = merged[key] + value
        merged["members"] = snapshots
        return merged

    def close(self) -> None:
        for member in self.members:
            member.hook.close()


# -- preflight's check of one application user -----------------------------------------------------------------
class ApplicationUserProblem(DynamicsError):
    """An application user that cannot write: missing in the org, disabled, or without a security role."""

    @property
    def retryable(self) -> bool:
        return False


@dataclass(frozen=True)
class ApplicationUser:
    """What preflight learned of one member: its Dataverse user and roles (names only)."""

    connection_id: str
    client_id: str
    user_id: str
    roles: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "roles": list(self.roles)}


def check_application_user(hook: DynamicsHook, who: Mapping[str, Any] | None = None) -> ApplicationUser:
    """Token and WhoAmI (``who`` when the caller has it already), then the user: it exists, is enabled and holds at
    least one security role. Raises the hook's error (``DynamicsAuthError`` for a refused secret) or
    ``ApplicationUserProblem``; messages name the user by id, never a secret."""
    who = who if who is not None else hook.whoami()
    user_id = str(who.get("UserId") or "")
    user = hook.find_systemuser(user_id=user_id)  # checks that WhoAmI named a GUID
    if user is None:
        raise ApplicationUserProblem(f"its application user {user_id} is not a user of the organization")
    if user.get("isdisabled"):
        raise ApplicationUserProblem(f"its application user {user_id} is disabled")
    roles = tuple(
        str(row.get("name") or row.get("roleid"))
        for row in hook.query(f"systemusers({user_id})/systemuserroles_association", select=["name", "roleid"])
    )
    if not roles:
        raise ApplicationUserProblem(
            f"its application user {user_id} has no security role; give it one that may write leads"
        )
    return ApplicationUser(hook.dynamics365_conn_id, hook.settings.client_id, user_id, roles)
