"""Kiosk accounts: who may sign in, in which role, with a PIN stored only as a scrypt hash.

Why here and not in the kiosk app: sign-in is a security rule (lockout after repeated
failures, every failure in the audit log, the PIN never stored), and the kiosk, the CLI and
the tests must all apply the same rule. The app only collects an ID and a PIN and shows the
message this module raises.

``users.json`` sits in the vault directory (``VaultLayout.users``) and is replaced atomically.
Each PIN is stretched with scrypt (N = 2**log_n, r = 8, p = 1; the parameters are stored per
user so raising ``[vault] scrypt_log_n`` later does not break existing PINs). The failed-attempt
count and the lockout time are stored too, so restarting the kiosk does not reset a lockout.

Roles: ``operator`` (ingest), ``custodian`` (records lead; unlocks the vault with a passphrase of
their own), ``auditor`` (reads and verifies the audit log; never sees images or patient IDs).

The audit log records sign-in, failed sign-in (with the reason, never the PIN) and lockout. A
failed attempt for an ID that is not an account is logged as ``actor: "unknown"`` without the
text typed: an operator who types a patient ID into the ID field must not put it in the log.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from core.errors import BadInput, VaultError
from core.fsutil import FILE_MODE, atomic_write_bytes

Role = Literal["operator", "custodian", "auditor"]
ROLES: tuple[Role, ...] = ("operator", "custodian", "auditor")
ROLE_LABELS: dict[str, str] = {
    "operator": "operator (takes images in)",
    "custodian": "custodian (records lead)",
    "auditor": "auditor (audit log only)",
}

FORMAT_VERSION = 1
SCRYPT_R = 8
SCRYPT_P = 1
SALT_SIZE = 16
HASH_SIZE = 32
LOG_N_RANGE = (10, 20)
MIN_PIN_LENGTH = 4
MAX_PIN_LENGTH = 64
#: Lower-case letters, digits, dot, hyphen, underscore: easy to type on a kiosk keyboard and
#: safe to show anywhere (the audit log, a terminal).
_USER_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,31}")
UNKNOWN_ACTOR = "unknown"
NOT_RECOGNISED = "ID or PIN not recognised"


class SignInError(BadInput):
    """The ID and PIN did not match an account. Deliberately does not say which was wrong."""


class LockedOut(SignInError):
    """Too many failed sign-ins for this account: refused until ``until`` (UTC)."""

    def __init__(self, user_id: str, until: datetime, *, just_locked: bool = False) -> None:
        local = until.astimezone().strftime("%H:%M")
        super().__init__(f"{user_id} is locked after too many failed sign-ins, until {local}",
                         "Ask a colleague, or wait and try again")
        self.user_id = user_id
        self.until = until
        #: True when this attempt caused the lockout (it was a wrong PIN, then the lock).
        self.just_locked = just_locked


class AuditSink(Protocol):
    """What sign-in needs of ``core.audit.AuditLog`` (a fake in unit tests)."""

    def append(self, actor: str, event: str, session: str | None = None,
               details: dict[str, Any] | None = None) -> Any: ...


@dataclass(frozen=True)
class PinHash:
    """scrypt parameters, salt and output for one PIN."""

    log_n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def matches(self, pin: bytes) -> bool:
        return hmac.compare_digest(_stretch(pin, self.salt, self.log_n, self.r, self.p),
                                   self.digest)

    def to_dict(self) -> dict[str, Any]:
        return {"kdf": "scrypt", "log_n": self.log_n, "r": self.r, "p": self.p,
                "salt": _b64(self.salt), "hash": _b64(self.digest)}


@dataclass(frozen=True)
class User:
    """One account. ``failed`` counts consecutive failed sign-ins since the last success."""

    id: str
    role: Role
    created: str
    pin: PinHash = field(repr=False)
    failed: int = 0
    locked_until: datetime | None = None

    def locked_at(self, now: datetime) -> bool:
        return self.locked_until is not None and now < self.locked_until

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "role": self.role, "created": self.created,
                "pin": self.pin.to_dict(), "failed": self.failed,
                "locked_until": (self.locked_until.strftime("%Y-%m-%dT%H:%M:%SZ")
                                 if self.locked_until else None)}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _stretch(pin: bytes, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=HASH_SIZE, n=2**log_n, r=r, p=p).derive(pin)


def _utc(now: datetime | None) -> datetime:
    return datetime.now(UTC) if now is None else now.astimezone(UTC)


def normalise_user_id(text: str) -> str:
    """IDs are compared case-insensitively and without surrounding spaces."""
    return text.strip().lower()


def check_user_id(user_id: str) -> str:
    """The normalised ID, or BadInput saying which characters an ID may hold."""
    uid = normalise_user_id(user_id)
    if not _USER_ID.fullmatch(uid):
        raise BadInput(f"user ID {user_id!r} is not allowed",
                       "Use 1 to 32 letters, digits, '.', '-' or '_', starting with a letter "
                       "or digit")
    return uid


def normalise_pin(pin: str | bytes) -> bytes:
    """UTF-8 in NFC, so the same PIN typed on two keyboards gives the same hash."""
    text = pin.decode("utf-8") if isinstance(pin, bytes) else pin
    return unicodedata.normalize("NFC", text).encode("utf-8")


def check_new_pin(pin: str | bytes) -> bytes:
    raw = normalise_pin(pin)
    length = len(raw.decode("utf-8"))
    if length < MIN_PIN_LENGTH:
        raise BadInput(f"the PIN is too short ({length} characters)",
                       f"Use at least {MIN_PIN_LENGTH}")
    if length > MAX_PIN_LENGTH:
        raise BadInput(f"the PIN is longer than {MAX_PIN_LENGTH} characters")
    if any(unicodedata.category(c).startswith("C") for c in raw.decode("utf-8")):
        raise BadInput("the PIN contains a control character")
    return raw


def hash_pin(pin: bytes, log_n: int) -> PinHash:
    lo, hi = LOG_N_RANGE
    if not isinstance(log_n, int) or isinstance(log_n, bool) or not lo <= log_n <= hi:
        raise BadInput(f"scrypt log_n must be a whole number from {lo} to {hi}, not {log_n!r}")
    salt = os.urandom(SALT_SIZE)
    return PinHash(log_n, SCRYPT_R, SCRYPT_P, salt, _stretch(pin, salt, log_n, SCRYPT_R,
                                                             SCRYPT_P))


# -- the file ----------------------------------------------------------------------------------


class _Bad(Exception):
    pass


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise _Bad(f"{where} has no {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _Bad(f"{where}.{key} has the wrong type")
    return value


def _pin_from(d: Any, where: str) -> PinHash:
    if not isinstance(d, dict) or d.get("kdf") != "scrypt":
        raise _Bad(f"{where}.pin must be a scrypt record")
    log_n, r, p = (_field(d, k, int, f"{where}.pin") for k in ("log_n", "r", "p"))
    if not (LOG_N_RANGE[0] <= log_n <= LOG_N_RANGE[1] and 1 <= r <= 32 and 1 <= p <= 16):
        raise _Bad(f"{where}.pin has scrypt parameters out of range")
    if 128 * r * 2**log_n > 1024**3:
        raise _Bad(f"{where}.pin asks scrypt for more than 1 GiB of memory")
    try:
        salt = base64.b64decode(_field(d, "salt", str, f"{where}.pin"), validate=True)
        digest = base64.b64decode(_field(d, "hash", str, f"{where}.pin"), validate=True)
    except ValueError:
        raise _Bad(f"{where}.pin holds bad base64") from None
    if len(salt) != SALT_SIZE or len(digest) != HASH_SIZE:
        raise _Bad(f"{where}.pin has a salt or hash of the wrong size")
    return PinHash(log_n, r, p, salt, digest)


def _user_from(d: Any, where: str) -> User:
    if not isinstance(d, dict):
        raise _Bad(f"{where} must be an object")
    uid = _field(d, "id", str, where)
    if not _USER_ID.fullmatch(uid):
        raise _Bad(f"{where}.id is not a valid user ID")
    role = _field(d, "role", str, where)
    if role not in ROLES:
        raise _Bad(f"{where}.role {role!r} is not one of {', '.join(ROLES)}")
    failed = _field(d, "failed", int, where)
    locked = d.get("locked_until")
    until = None
    if locked is not None:
        if not isinstance(locked, str):
            raise _Bad(f"{where}.locked_until must be a time")
        try:
            until = datetime.fromisoformat(locked.replace("Z", "+00:00")).astimezone(UTC)
        except ValueError:
            raise _Bad(f"{where}.locked_until is not a time") from None
    return User(id=uid, role=role, created=_field(d, "created", str, where),
                pin=_pin_from(d.get("pin"), where), failed=max(0, failed), locked_until=until)


class UserStore:
    """``users.json``: read on every call (the file is tiny), replaced atomically on change.

    Not for concurrent writers: the vault lock makes one process the owner of a vault.
    """

    def __init__(self, path: Path, *, scrypt_log_n: int, max_failed: int = 5,
                 lockout_minutes: float = 15) -> None:
        if max_failed < 1:
            raise BadInput("[kiosk] max_failed_signins must be at least 1")
        self.path = Path(path)
        self.scrypt_log_n = scrypt_log_n
        self.max_failed = max_failed
        self.lockout = timedelta(minutes=lockout_minutes)
        # A throwaway hash at the configured cost, so an unknown ID takes as long as a wrong
        # PIN and the time taken does not tell an attacker which IDs exist.
        self._decoy: PinHash | None = None

    @classmethod
    def for_vault(cls, vault_root: Path, config: Any) -> UserStore:
        """The store of the vault at *vault_root*, with limits from a loaded Config."""
        from core.vault.layout import VaultLayout

        return cls(VaultLayout(Path(vault_root)).users, scrypt_log_n=config.vault.scrypt_log_n,
                   max_failed=config.kiosk.max_failed_signins,
                   lockout_minutes=config.kiosk.lockout_minutes)

    # -- reading and writing -----------------------------------------------------------------
    def _load(self) -> dict[str, User]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise VaultError(f"cannot read {self.path.name}: {exc.strerror}") from None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
                raise _Bad(f"version must be {FORMAT_VERSION}")
            users = data.get("users")
            if not isinstance(users, list):
                raise _Bad("'users' must be a list")
            out: dict[str, User] = {}
            for n, d in enumerate(users):
                u = _user_from(d, f"users[{n}]")
                if u.id in out:
                    raise _Bad(f"user {u.id} is listed twice")
                out[u.id] = u
            return out
        except (ValueError, _Bad) as exc:
            raise VaultError(f"{self.path.name} is damaged: {exc}",
                             "Restore it from a backup, or ask a custodian to re-create the "
                             "accounts with 'clinivault user add'") from None

    def _save(self, users: dict[str, User]) -> None:
        data = {"version": FORMAT_VERSION,
                "users": [u.to_dict() for u in sorted(users.values(), key=lambda u: u.id)]}
        atomic_write_bytes(self.path, (json.dumps(data, indent=1, sort_keys=True) + "\n")
                           .encode("ascii"), FILE_MODE)

    # -- accounts ---------------------------------------------------------------------------
    def users(self) -> list[User]:
        return sorted(self._load().values(), key=lambda u: u.id)

    def get(self, user_id: str) -> User | None:
        return self._load().get(normalise_user_id(user_id))

    def add(self, user_id: str, role: str, pin: str | bytes, *,
            now: datetime | None = None) -> User:
        """Create an account; refuses an ID that exists (a PIN is never silently replaced)."""
        uid = check_user_id(user_id)
        if role not in ROLES:
            raise BadInput(f"unknown role {role!r}", f"Use one of {', '.join(ROLES)}")
        secret = check_new_pin(pin)
        users = self._load()
        if uid in users:
            raise BadInput(f"user {uid} already exists")
        user = User(id=uid, role=role, created=_utc(now).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    pin=hash_pin(secret, self.scrypt_log_n))
        users[uid] = user
        self._save(users)
        return user

    # -- signing in -------------------------------------------------------------------------
    def authenticate(self, user_id: str, pin: str | bytes, *,
                     now: datetime | None = None) -> User:
        """The account if *pin* is right; else SignInError, or LockedOut once it is locked.

        Counts consecutive failures; the ``max_failed``-th locks the account for the
        configured minutes. A success resets the count. Returns quietly only on success.
        """
        when = _utc(now)
        uid = normalise_user_id(user_id)
        secret = normalise_pin(pin)
        users = self._load()
        user = users.get(uid)
        if user is None:
            self._decoy_check(secret)
            raise SignInError(NOT_RECOGNISED, "Check your ID and PIN and try again")
        if user.locked_at(when):
            assert user.locked_until is not None
            raise LockedOut(uid, user.locked_until)
        if user.pin.matches(secret):
            if user.failed or user.locked_until:
                users[uid] = replace(user, failed=0, locked_until=None)
                self._save(users)
            return users[uid]
        # A lockout that has run out starts a fresh count.
        failed = 1 if user.locked_until is not None else user.failed + 1
        until = when + self.lockout if failed >= self.max_failed else None
        users[uid] = replace(user, failed=failed, locked_until=until)
        self._save(users)
        if until is not None:
            raise LockedOut(uid, until, just_locked=True)
        left = self.max_failed - failed
        raise SignInError(NOT_RECOGNISED,
                          f"Check your ID and PIN and try again ({left} "
                          f"{'try' if left == 1 else 'tries'} before this ID is locked)")

    def _decoy_check(self, secret: bytes) -> None:
        if self._decoy is None:
            self._decoy = hash_pin(b"decoy-pin", self.scrypt_log_n)
        self._decoy.matches(secret)


def sign_in(store: UserStore, audit: AuditSink, user_id: str, pin: str | bytes, *,
            now: datetime | None = None, station: str = "kiosk") -> User:
    """Authenticate and write the audit entry either way. Slow (scrypt): call off the UI thread.

    Logged: ``signin`` (actor = the user), ``signin.failed`` with the reason (``unknown ID``,
    ``wrong PIN``, ``locked``) and, when this failure locks the account, ``signin.locked``.
    """
    uid = normalise_user_id(user_id)
    known = store.get(uid) is not None if _USER_ID.fullmatch(uid) else False
    actor = uid if known else UNKNOWN_ACTOR
    try:
        user = store.authenticate(uid, pin, now=now)
    except LockedOut as exc:
        audit.append(actor, "signin.failed", None,
                     {"reason": "wrong PIN" if exc.just_locked else "locked",
                      "station": station})
        if exc.just_locked:
            audit.append(actor, "signin.locked", None,
                         {"minutes": store.lockout.total_seconds() / 60, "station": station})
        raise
    except SignInError:
        audit.append(actor, "signin.failed", None,
                     {"reason": "wrong PIN" if known else "unknown ID", "station": station})
        raise
    audit.append(user.id, "signin", None, {"role": user.role, "station": station})
    return user


def roles_of(users: Iterable[User]) -> dict[str, int]:
    """How many accounts hold each role (for ``clinivault user list`` and set-up checks)."""
    counts = dict.fromkeys(ROLES, 0)
    for u in users:
        counts[u.role] += 1
    return counts


@dataclass
class IdleTimer:
    """When the kiosk locks itself: *minutes* after the last key press.

    Pure: the caller passes monotonic seconds (the kiosk's clock, or a test's), so a test can
    make the kiosk idle without waiting.
    """

    minutes: float
    last: float = 0.0

    def touch(self, now: float) -> None:
        self.last = now

    def due(self, now: float) -> bool:
        return self.minutes > 0 and now - self.last >= self.minutes * 60


def unlock(store: UserStore, audit: AuditSink, locked_for: str, user_id: str,
           pin: str | bytes, *, now: datetime | None = None,
           station: str = "kiosk") -> User:
    """Unlock a kiosk locked during *locked_for*'s work: that user or a custodian only.

    Why the rule: a locked screen may hold a patient's session half done; another operator
    must not take it over, while the records lead can always end it. Failed PINs are logged
    and count towards the lockout exactly as at sign-in.
    """
    user = sign_in(store, audit, user_id, pin, now=now, station=station)
    if user.id != normalise_user_id(locked_for) and user.role != "custodian":
        audit.append(user.id, "unlock.refused", None,
                     {"locked_for": normalise_user_id(locked_for), "station": station})
        raise SignInError(f"the kiosk is locked for {locked_for}'s work",
                          f"Only {locked_for} or a custodian can unlock it")
    audit.append(user.id, "kiosk.unlocked", None, {"station": station})
    return user
