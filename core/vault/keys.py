"""The vault key pair and the custodian passphrase slots (``vault.json``).

Why: the kiosk encrypts with the public key alone, so ingest needs no secret and a stolen
kiosk reveals nothing. The private key exists on disk only sealed, once per custodian, under
a key stretched from that custodian's passphrase with scrypt (memory-hard, parameters kept in
the file so they can be raised later). The format is in docs/FORMAT.md.

Each slot also stores a *passphrase check* (the second half of the scrypt output). It costs an
attacker nothing extra (the GCM tag is an equally cheap test of a guess) but lets an unlock
say "the passphrase is right but this slot is damaged" instead of blaming the custodian's
passphrase for a corrupt file.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import json
import os
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from core.errors import BadInput, VaultError, WrongPassphrase
from core.fsutil import atomic_write_bytes

KEYFILE_FORMAT = "clinivault-vault/v1"
SLOT_AAD_PREFIX = b"clinivault-slot/v1|"
MIN_PASSPHRASE_CHARS = 8
SALT_SIZE = 16
NONCE_SIZE = 12
SCRYPT_R = 8
SCRYPT_P = 1
# A tampered file must not make unlock allocate gigabytes: scrypt needs 128 * r * 2**log_n
# bytes (128 MiB at the default log_n 17, r 8), capped at 1 GiB.
LOG_N_RANGE = (10, 20)
R_RANGE = (1, 32)
P_RANGE = (1, 16)
MAX_SCRYPT_MEMORY = 1024**3
MAX_CUSTODIAN_CHARS = 64


@dataclass(frozen=True)
class KeySlot:
    """The vault private key sealed under one custodian's passphrase."""

    custodian: str
    salt: bytes
    log_n: int
    r: int
    p: int
    nonce: bytes
    sealed_private_key: bytes
    passphrase_check: bytes


@dataclass
class VaultKeyFile:
    """The parsed ``vault.json``."""

    public_key: X25519PublicKey
    slots: list[KeySlot]
    created: str
    audit_key_sealed: bytes | None


# -- helpers ------------------------------------------------------------------------------


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _raw_private(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def _slot_aad(custodian: str, public_raw: bytes) -> bytes:
    return SLOT_AAD_PREFIX + custodian.encode("utf-8") + b"|" + public_raw


def _stretch(passphrase: bytes, salt: bytes, log_n: int, r: int, p: int) -> tuple[bytes, bytes]:
    """scrypt to 64 bytes: (slot key, passphrase check)."""
    out = Scrypt(salt=salt, length=64, n=2**log_n, r=r, p=p).derive(passphrase)
    return out[:32], out[32:]


def _check_passphrase(passphrase: bytes, *, new: bool) -> None:
    if not isinstance(passphrase, bytes):
        raise BadInput("the passphrase must be bytes")
    if not passphrase:
        raise BadInput("the passphrase is empty", "Type the custodian passphrase")
    if new:
        try:
            chars = len(passphrase.decode("utf-8"))
        except UnicodeDecodeError:
            chars = len(passphrase)
        if chars < MIN_PASSPHRASE_CHARS:
            raise BadInput(f"a custodian passphrase needs at least {MIN_PASSPHRASE_CHARS} "
                           f"characters (this one has {chars})",
                           "Choose a longer passphrase, e.g. four unrelated words")


def _check_custodian(name: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise BadInput("the custodian name is empty", "Give the custodian's name")
    if name != name.strip():
        raise BadInput(f"the custodian name {name!r} starts or ends with spaces")
    if len(name) > MAX_CUSTODIAN_CHARS:
        raise BadInput(f"the custodian name is longer than {MAX_CUSTODIAN_CHARS} characters")
    if any(unicodedata.category(c).startswith("C") for c in name):
        raise BadInput(f"the custodian name {name!r} contains control characters")


def _check_log_n(log_n: int) -> None:
    lo, hi = LOG_N_RANGE
    if not isinstance(log_n, int) or isinstance(log_n, bool) or not lo <= log_n <= hi:
        raise BadInput(f"scrypt log_n must be a whole number from {lo} to {hi}, not {log_n!r}")


def _seal_slot(private: X25519PrivateKey, custodian: str, passphrase: bytes,
               log_n: int) -> KeySlot:
    salt = os.urandom(SALT_SIZE)
    nonce = os.urandom(NONCE_SIZE)
    slot_key, check = _stretch(passphrase, salt, log_n, SCRYPT_R, SCRYPT_P)
    aad = _slot_aad(custodian, _raw_public(private.public_key()))
    sealed = AESGCM(slot_key).encrypt(nonce, _raw_private(private), aad)
    return KeySlot(custodian, salt, log_n, SCRYPT_R, SCRYPT_P, nonce, sealed, check)


def _now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- public API ---------------------------------------------------------------------------


def new_key_file(custodian: str, passphrase: bytes,
                 log_n: int) -> tuple[VaultKeyFile, X25519PrivateKey]:
    """A fresh vault key pair with one slot for *custodian*; the caller saves it."""
    _check_custodian(custodian)
    _check_passphrase(passphrase, new=True)
    _check_log_n(log_n)
    private = X25519PrivateKey.generate()
    slot = _seal_slot(private, custodian, passphrase, log_n)
    return VaultKeyFile(private.public_key(), [slot], _now_utc(), None), private


def add_slot(kf: VaultKeyFile, private: X25519PrivateKey, custodian: str, passphrase: bytes,
             log_n: int) -> VaultKeyFile:
    """A copy of *kf* with one more slot; refuses a custodian name already present."""
    _check_custodian(custodian)
    _check_passphrase(passphrase, new=True)
    _check_log_n(log_n)
    if not hmac.compare_digest(_raw_public(private.public_key()), _raw_public(kf.public_key)):
        raise VaultError("the private key given does not belong to this vault")
    taken = {s.custodian.casefold() for s in kf.slots}
    if custodian.casefold() in taken:
        raise BadInput(f"custodian {custodian!r} already has a slot in this vault",
                       "Choose another name")
    slot = _seal_slot(private, custodian, passphrase, log_n)
    return dataclasses.replace(kf, slots=[*kf.slots, slot])


def unlock(kf: VaultKeyFile, passphrase: bytes, custodian: str | None = None) -> X25519PrivateKey:
    """Open the named custodian's slot (or try every slot) and return the private key."""
    _check_passphrase(passphrase, new=False)
    slots = kf.slots
    if custodian is not None:
        slots = [s for s in kf.slots if s.custodian.casefold() == custodian.casefold()]
        if not slots:
            names = ", ".join(s.custodian for s in kf.slots) or "none"
            raise BadInput(f"this vault has no slot for custodian {custodian!r}",
                           f"Custodians: {names}")
    public_raw = _raw_public(kf.public_key)
    damaged: list[str] = []
    for slot in slots:
        slot_key, check = _stretch(passphrase, slot.salt, slot.log_n, slot.r, slot.p)
        try:
            raw = AESGCM(slot_key).decrypt(slot.nonce, slot.sealed_private_key,
                                           _slot_aad(slot.custodian, public_raw))
        except InvalidTag:
            if hmac.compare_digest(check, slot.passphrase_check):
                damaged.append(slot.custodian)
            continue
        private = X25519PrivateKey.from_private_bytes(raw)
        if not hmac.compare_digest(_raw_public(private.public_key()), public_raw):
            raise VaultError(f"the slot for {slot.custodian!r} opens but holds a key that does "
                             "not match the vault public key; vault.json is corrupt",
                             "Restore vault.json from a backup")
        return private
    if damaged:
        raise VaultError(f"the passphrase is right but the key slot for {damaged[0]!r} is "
                         "damaged or was altered (or the public key in vault.json was)",
                         "Restore vault.json from a backup")
    who = f"the slot for {custodian!r}" if custodian is not None else "any custodian slot"
    raise WrongPassphrase(f"the passphrase does not open {who}",
                          "Check the passphrase (it is case-sensitive) and try again")


# -- vault.json ---------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def to_json(kf: VaultKeyFile) -> bytes:
    """The exact bytes :func:`save_key_file` writes."""
    doc = {
        "format": KEYFILE_FORMAT,
        "created": kf.created,
        "public_key": _b64(_raw_public(kf.public_key)),
        "slots": [
            {
                "custodian": s.custodian,
                "kdf": {"name": "scrypt", "salt": _b64(s.salt), "log_n": s.log_n,
                        "r": s.r, "p": s.p},
                "passphrase_check": _b64(s.passphrase_check),
                "nonce": _b64(s.nonce),
                "sealed_private_key": _b64(s.sealed_private_key),
            }
            for s in kf.slots
        ],
        "audit_key_sealed": None if kf.audit_key_sealed is None else _b64(kf.audit_key_sealed),
    }
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def save_key_file(path: Path, kf: VaultKeyFile) -> None:
    """Write ``vault.json`` atomically, mode 0600."""
    if not kf.slots:
        raise VaultError("refusing to save a vault key file with no custodian slot "
                         "(the private key would be lost)")
    atomic_write_bytes(path, to_json(kf))


class _Bad(Exception):
    """A field of vault.json is wrong; the message names it."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Bad(f"key {key!r} appears twice")
        out[key] = value
    return out


def _obj(value: Any, where: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Bad(f"{where} must be a JSON object")
    missing = sorted(keys - value.keys())
    if missing:
        raise _Bad(f"{where}.{missing[0]} is missing" if where else f"{missing[0]} is missing")
    extra = sorted(value.keys() - keys)
    if extra:
        raise _Bad(f"{where}.{extra[0]} is not a known field" if where
                   else f"{extra[0]} is not a known field")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _Bad(f"{where} must be text")
    return value


def _int(value: Any, where: str, bounds: tuple[int, int]) -> int:
    lo, hi = bounds
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise _Bad(f"{where} must be a whole number from {lo} to {hi}")
    return value


def _bytes(value: Any, where: str, size: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise _Bad(f"{where} must be base64 text")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise _Bad(f"{where} is not valid base64") from None
    if _b64(raw) != value:
        raise _Bad(f"{where} is not canonical base64")
    if size is not None and len(raw) != size:
        raise _Bad(f"{where} must be {size} bytes, not {len(raw)}")
    return raw


def _public_key(value: Any) -> X25519PublicKey:
    key = X25519PublicKey.from_public_bytes(_bytes(value, "public_key", 32))
    try:  # a low-order point would make every object undecryptable
        X25519PrivateKey.generate().exchange(key)
    except ValueError:
        raise _Bad("public_key is a low-order X25519 point, not a usable key") from None
    return key


def _slot(value: Any, where: str) -> KeySlot:
    s = _obj(value, where, {"custodian", "kdf", "passphrase_check", "nonce",
                            "sealed_private_key"})
    custodian = _str(s["custodian"], f"{where}.custodian")
    try:
        _check_custodian(custodian)
    except BadInput as exc:
        raise _Bad(f"{where}.custodian: {exc.message}") from None
    kdf = _obj(s["kdf"], f"{where}.kdf", {"name", "salt", "log_n", "r", "p"})
    if kdf["name"] != "scrypt":
        raise _Bad(f"{where}.kdf.name must be \"scrypt\"")
    log_n = _int(kdf["log_n"], f"{where}.kdf.log_n", LOG_N_RANGE)
    r = _int(kdf["r"], f"{where}.kdf.r", R_RANGE)
    p = _int(kdf["p"], f"{where}.kdf.p", P_RANGE)
    if 128 * r * 2**log_n > MAX_SCRYPT_MEMORY:
        raise _Bad(f"{where}.kdf asks scrypt for more than 1 GiB of memory")
    return KeySlot(
        custodian=custodian,
        salt=_bytes(kdf["salt"], f"{where}.kdf.salt", SALT_SIZE),
        log_n=log_n, r=r, p=p,
        nonce=_bytes(s["nonce"], f"{where}.nonce", NONCE_SIZE),
        sealed_private_key=_bytes(s["sealed_private_key"], f"{where}.sealed_private_key", 48),
        passphrase_check=_bytes(s["passphrase_check"], f"{where}.passphrase_check", 32),
    )


def parse_key_file(data: bytes, source: str = "vault.json") -> VaultKeyFile:
    """Parse and validate the bytes of a ``vault.json``; VaultError names the bad field."""
    hint = "Restore vault.json from a backup"
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        raise VaultError(f"{source} is not UTF-8 text", hint) from None
    except json.JSONDecodeError as exc:
        raise VaultError(f"{source} is not valid JSON (line {exc.lineno}, column {exc.colno})",
                         hint) from None
    except _Bad as exc:
        raise VaultError(f"{source} is corrupt: {exc}", hint) from None
    if not isinstance(doc, dict) or doc.get("format") != KEYFILE_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else None
        raise VaultError(f"{source} is not a clinivault vault key file (format is {found!r}, "
                         f"expected {KEYFILE_FORMAT!r})", hint)
    try:
        _obj(doc, "", {"format", "created", "public_key", "slots", "audit_key_sealed"})
        created = _str(doc["created"], "created")
        try:
            datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            raise _Bad("created must be a UTC time like 2025-01-31T09:30:00Z") from None
        public_key = _public_key(doc["public_key"])
        if not isinstance(doc["slots"], list) or not doc["slots"]:
            raise _Bad("slots must be a non-empty list")
        slots = [_slot(v, f"slots[{i}]") for i, v in enumerate(doc["slots"])]
        names = [s.custodian.casefold() for s in slots]
        if len(set(names)) != len(names):
            raise _Bad("slots: two slots have the same custodian name")
        audit = doc["audit_key_sealed"]
        audit_key_sealed = None if audit is None else _bytes(audit, "audit_key_sealed")
    except _Bad as exc:
        raise VaultError(f"{source} is corrupt: {exc}", hint) from None
    return VaultKeyFile(public_key, slots, created, audit_key_sealed)


def load_key_file(path: Path) -> VaultKeyFile:
    """Read ``vault.json``; every failure is a VaultError with a one-line message."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise VaultError(f"no vault key file at {path}",
                         "Check the vault path, or create a vault with 'clinivault init'") from None
    except IsADirectoryError:
        raise VaultError(f"{path} is a directory, not a vault key file") from None
    except PermissionError:
        raise VaultError(f"vault key file {path} is not readable",
                         "Run as the vault's owner or check its permissions") from None
    except OSError as exc:
        raise VaultError(f"vault key file {path} could not be read: {exc.strerror}") from None
    return parse_key_file(data, str(path))
