"""Custodian key slots and vault.json: create, unlock, add a slot, and every way the file can
be wrong giving a VaultError that names the problem.

Why: a custodian who is told "wrong passphrase" when the file is damaged (or the reverse) may
lock themselves out of the clinical record; each failure must say what it is.
"""

from __future__ import annotations

import base64
import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from core.config import load_config
from core.errors import BadInput, VaultError, WrongPassphrase
from core.vault import format as vf
from core.vault import keys

ROOT = Path(__file__).resolve().parent.parent
VECTORS = json.loads((ROOT / "tests" / "vectors" / "object_v1.json").read_text())
FAST = 12
PW_A = b"correct horse battery staple"
PW_B = "grüne Bananen sind sauer".encode()


@pytest.fixture(scope="module")
def made() -> tuple[keys.VaultKeyFile, X25519PrivateKey]:
    return keys.new_key_file("Alice", PW_A, FAST)


@pytest.fixture
def saved(tmp_path: Path, made: tuple[keys.VaultKeyFile, X25519PrivateKey]) -> Path:
    path = tmp_path / "vault.json"
    keys.save_key_file(path, made[0])
    return path


def raw(key: X25519PrivateKey) -> bytes:
    return key.private_bytes_raw()


def test_new_key_file_and_unlock(made: tuple[keys.VaultKeyFile, X25519PrivateKey]) -> None:
    kf, private = made
    assert [s.custodian for s in kf.slots] == ["Alice"]
    slot = kf.slots[0]
    assert (slot.log_n, slot.r, slot.p) == (FAST, 8, 1)
    assert len(slot.salt) == 16 and len(slot.nonce) == 12
    assert len(slot.sealed_private_key) == 48 and len(slot.passphrase_check) == 32
    assert raw(private) not in slot.sealed_private_key
    assert kf.public_key.public_bytes_raw() == private.public_key().public_bytes_raw()
    assert raw(keys.unlock(kf, PW_A)) == raw(private)
    assert raw(keys.unlock(kf, PW_A, "alice")) == raw(private)  # names ignore case


def test_save_and_load(saved: Path, made: tuple[keys.VaultKeyFile, X25519PrivateKey]) -> None:
    kf, private = made
    assert saved.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in saved.parent.iterdir()] == ["vault.json"]  # no temp debris
    doc = json.loads(saved.read_text())
    assert doc["format"] == "clinivault-vault/v1"
    assert doc["created"].endswith("Z")
    assert base64.b64decode(doc["public_key"]) == kf.public_key.public_bytes_raw()
    assert doc["slots"][0]["kdf"] == {"name": "scrypt", "salt": doc["slots"][0]["kdf"]["salt"],
                                      "log_n": FAST, "r": 8, "p": 1}
    assert doc["audit_key_sealed"] is None
    loaded = keys.load_key_file(saved)
    assert loaded.slots == kf.slots and loaded.created == kf.created
    assert raw(keys.unlock(loaded, PW_A)) == raw(private)


def test_audit_key_sealed_round_trips(tmp_path: Path,
                                      made: tuple[keys.VaultKeyFile, X25519PrivateKey]) -> None:
    kf, private = made
    kf = copy.copy(kf)
    kf.audit_key_sealed = vf.seal(b"K0" * 16, kf.public_key)
    keys.save_key_file(tmp_path / "vault.json", kf)
    loaded = keys.load_key_file(tmp_path / "vault.json")
    assert loaded.audit_key_sealed == kf.audit_key_sealed
    assert vf.unseal(loaded.audit_key_sealed, private) == b"K0" * 16


def test_wrong_passphrase(made: tuple[keys.VaultKeyFile, X25519PrivateKey]) -> None:
    kf, _ = made
    with pytest.raises(WrongPassphrase, match="does not open any custodian slot") as info:
        keys.unlock(kf, b"correct horse battery stapler")
    assert info.value.exit_code == 2
    with pytest.raises(WrongPassphrase, match="slot for 'Alice'"):
        keys.unlock(kf, b"Correct horse battery staple", "Alice")


def test_unknown_custodian(made: tuple[keys.VaultKeyFile, X25519PrivateKey]) -> None:
    with pytest.raises(BadInput, match="no slot for custodian 'Bob'") as info:
        keys.unlock(made[0], PW_A, "Bob")
    assert "Alice" in info.value.user_message()


def test_add_slot_then_unlock_with_either(tmp_path: Path,
                                          made: tuple[keys.VaultKeyFile, X25519PrivateKey]) -> None:
    kf, private = made
    two = keys.add_slot(kf, private, "Bob", PW_B, FAST)
    assert len(kf.slots) == 1, "add_slot returns a copy"
    keys.save_key_file(tmp_path / "vault.json", two)
    loaded = keys.load_key_file(tmp_path / "vault.json")
    assert [s.custodian for s in loaded.slots] == ["Alice", "Bob"]
    assert loaded.slots[0].salt != loaded.slots[1].salt
    for pw, name in ((PW_A, "Alice"), (PW_B, "Bob")):
        assert raw(keys.unlock(loaded, pw)) == raw(private)
        assert raw(keys.unlock(loaded, pw, name)) == raw(private)
    with pytest.raises(WrongPassphrase):
        keys.unlock(loaded, PW_A, "Bob")


def test_add_slot_refuses_duplicates_and_foreign_keys(
        made: tuple[keys.VaultKeyFile, X25519PrivateKey]) -> None:
    kf, private = made
    with pytest.raises(BadInput, match="already has a slot"):
        keys.add_slot(kf, private, "ALICE", PW_B, FAST)
    with pytest.raises(VaultError, match="does not belong to this vault"):
        keys.add_slot(kf, X25519PrivateKey.generate(), "Bob", PW_B, FAST)


@pytest.mark.parametrize(("passphrase", "words"), [
    (b"", "empty"),
    (b"short12", "at least 8 characters"),
    ("äöüß123".encode(), "at least 8 characters"),  # 7 characters, 11 bytes
])
def test_passphrase_rules(passphrase: bytes, words: str) -> None:
    with pytest.raises(BadInput, match=words):
        keys.new_key_file("Alice", passphrase, FAST)


def test_eight_characters_is_enough() -> None:
    kf, private = keys.new_key_file("Alice", b"12345678", FAST)
    assert raw(keys.unlock(kf, b"12345678")) == raw(private)


def test_unlock_rejects_empty_passphrase(made: tuple[keys.VaultKeyFile, X25519PrivateKey]) -> None:
    with pytest.raises(BadInput, match="empty"):
        keys.unlock(made[0], b"")


@pytest.mark.parametrize(("name", "words"), [
    ("", "empty"), ("   ", "empty"), (" Alice", "spaces"), ("Al\nice", "control"),
    ("x" * 65, "longer than 64"),
])
def test_custodian_name_rules(name: str, words: str) -> None:
    with pytest.raises(BadInput, match=words):
        keys.new_key_file(name, PW_A, FAST)


@pytest.mark.parametrize("log_n", [9, 21, True])
def test_log_n_range(log_n: Any) -> None:
    with pytest.raises(BadInput, match="log_n"):
        keys.new_key_file("Alice", PW_A, log_n)


# -- tampering --------------------------------------------------------------------------------


def edit(path: Path, change: Any) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def flip_b64(text: str, index: int = 0) -> str:
    data = bytearray(base64.b64decode(text))
    data[index] ^= 1
    return base64.b64encode(bytes(data)).decode()


def test_tampered_sealed_key_is_not_called_a_wrong_passphrase(saved: Path) -> None:
    def tamper(doc: dict) -> None:
        slot = doc["slots"][0]
        slot["sealed_private_key"] = flip_b64(slot["sealed_private_key"], 5)
    edit(saved, tamper)
    kf = keys.load_key_file(saved)
    with pytest.raises(VaultError, match="passphrase is right but the key slot for 'Alice' is "
                                         "damaged") as info:
        keys.unlock(kf, PW_A)
    assert not isinstance(info.value, WrongPassphrase)
    assert "backup" in info.value.user_message()
    with pytest.raises(WrongPassphrase):
        keys.unlock(kf, b"not the passphrase")


@pytest.mark.parametrize("field", ["public_key", "custodian", "nonce"])
def test_tampered_slot_binding_is_detected(saved: Path, field: str) -> None:
    def tamper(doc: dict) -> None:
        if field == "public_key":
            doc["public_key"] = base64.b64encode(
                X25519PrivateKey.generate().public_key().public_bytes_raw()).decode()
        elif field == "custodian":
            doc["slots"][0]["custodian"] = "Mallory"
        else:
            doc["slots"][0]["nonce"] = flip_b64(doc["slots"][0]["nonce"])
    edit(saved, tamper)
    with pytest.raises(VaultError, match="damaged or was altered") as info:
        keys.unlock(keys.load_key_file(saved), PW_A)
    assert not isinstance(info.value, WrongPassphrase)


def test_damaged_passphrase_check_still_unlocks(
        saved: Path, made: tuple[keys.VaultKeyFile, X25519PrivateKey]) -> None:
    edit(saved, lambda d: d["slots"][0].update(
        passphrase_check=flip_b64(d["slots"][0]["passphrase_check"])))
    assert raw(keys.unlock(keys.load_key_file(saved), PW_A)) == raw(made[1])


def test_slot_holding_another_key_is_refused(saved: Path) -> None:
    # Someone who knows the passphrase seals a different key under the same AAD.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    doc = json.loads(saved.read_text())
    slot = doc["slots"][0]
    key = Scrypt(salt=base64.b64decode(slot["kdf"]["salt"]), length=64, n=2**FAST, r=8,
                 p=1).derive(PW_A)[:32]
    aad = b"clinivault-slot/v1|Alice|" + base64.b64decode(doc["public_key"])
    other = X25519PrivateKey.generate().private_bytes_raw()
    slot["sealed_private_key"] = base64.b64encode(
        AESGCM(key).encrypt(base64.b64decode(slot["nonce"]), other, aad)).decode()
    saved.write_text(json.dumps(doc))
    with pytest.raises(VaultError, match="does not match the vault public key"):
        keys.unlock(keys.load_key_file(saved), PW_A)


# -- corrupt vault.json -------------------------------------------------------------------------

LOW_ORDER = base64.b64encode(bytes(32)).decode()


def _set(path: list[Any], value: Any) -> Any:
    def change(doc: dict) -> None:
        target = doc
        for part in path[:-1]:
            target = target[part]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return change


_DELETE = object()

CORRUPTIONS = [
    ("format", _set(["format"], "clinivault-vault/v2"), "not a clinivault vault key file"),
    ("missing field", _set(["public_key"], _DELETE), "public_key is missing"),
    ("unknown field", _set(["extra"], 1), "extra is not a known field"),
    ("created", _set(["created"], "yesterday"), "created must be a UTC time"),
    ("public key base64", _set(["public_key"], "!!!"), "public_key is not valid base64"),
    ("public key length", _set(["public_key"], "AAAA"), "public_key must be 32 bytes"),
    ("low-order public key", _set(["public_key"], LOW_ORDER), "low-order"),
    ("no slots", _set(["slots"], []), "slots must be a non-empty list"),
    ("slots not a list", _set(["slots"], {}), "slots must be a non-empty list"),
    ("slot not an object", _set(["slots", 0], "x"), "slots[0] must be a JSON object"),
    ("kdf name", _set(["slots", 0, "kdf", "name"], "argon2"), 'slots[0].kdf.name must be'),
    ("log_n huge", _set(["slots", 0, "kdf", "log_n"], 40), "slots[0].kdf.log_n must be"),
    ("log_n text", _set(["slots", 0, "kdf", "log_n"], "17"), "slots[0].kdf.log_n must be"),
    ("r bool", _set(["slots", 0, "kdf", "r"], True), "slots[0].kdf.r must be"),
    ("memory", lambda d: d["slots"][0]["kdf"].update(log_n=20, r=16), "more than 1 GiB"),
    ("salt length", _set(["slots", 0, "kdf", "salt"], "AAAA"), "slots[0].kdf.salt must be 16"),
    ("nonce missing", _set(["slots", 0, "nonce"], _DELETE), "slots[0].nonce is missing"),
    ("sealed key type", _set(["slots", 0, "sealed_private_key"], 5),
     "slots[0].sealed_private_key must be base64 text"),
    ("sealed key length", _set(["slots", 0, "sealed_private_key"], "AAAA"),
     "slots[0].sealed_private_key must be 48 bytes"),
    ("non-canonical", _set(["slots", 0, "kdf", "salt"], "AAAAAAAAAAAAAAAAAAAAAB=="),
     "slots[0].kdf.salt is not canonical base64"),
    ("custodian empty", _set(["slots", 0, "custodian"], ""), "slots[0].custodian: "),
    ("audit key", _set(["audit_key_sealed"], 7), "audit_key_sealed must be base64 text"),
]


@pytest.mark.parametrize(("change", "words"), [c[1:] for c in CORRUPTIONS],
                         ids=[c[0] for c in CORRUPTIONS])
def test_corrupt_fields_are_named(saved: Path, change: Any, words: str) -> None:
    edit(saved, change)
    with pytest.raises(VaultError) as info:
        keys.load_key_file(saved)
    message = info.value.user_message()
    assert words in message
    assert str(saved) in message
    assert "\n" not in message
    assert info.value.exit_code == 2


def test_duplicate_custodians_in_file(saved: Path) -> None:
    edit(saved, lambda d: d["slots"].append(dict(d["slots"][0], custodian="alice")))
    with pytest.raises(VaultError, match="same custodian name"):
        keys.load_key_file(saved)


@pytest.mark.parametrize(("content", "words"), [
    (b"", "is not valid JSON"),
    (b"{not json", "is not valid JSON (line 1"),
    (b"\xff\xfe{}", "is not UTF-8"),
    (b"[1, 2]", "is not a clinivault vault key file"),
    (b'{"format": "clinivault-vault/v1", "format": "x"}', "'format' appears twice"),
])
def test_unparseable_files(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "vault.json"
    path.write_bytes(content)
    with pytest.raises(VaultError, match=words.replace("(", r"\(")):
        keys.load_key_file(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VaultError, match="no vault key file at") as info:
        keys.load_key_file(tmp_path / "vault.json")
    assert "clinivault init" in info.value.user_message()


def test_directory_instead_of_file(tmp_path: Path) -> None:
    (tmp_path / "vault.json").mkdir()
    with pytest.raises(VaultError, match="is a directory"):
        keys.load_key_file(tmp_path / "vault.json")


def test_path_through_a_file(tmp_path: Path) -> None:
    (tmp_path / "vault").write_text("not a directory")
    with pytest.raises(VaultError, match="could not be read: Not a directory"):
        keys.load_key_file(tmp_path / "vault" / "vault.json")


def test_unreadable_file(saved: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    saved.chmod(0)
    with pytest.raises(VaultError, match="not readable"):
        keys.load_key_file(saved)


Made = tuple[keys.VaultKeyFile, X25519PrivateKey]


def test_save_refuses_a_file_without_slots(tmp_path: Path, made: Made) -> None:
    empty = keys.VaultKeyFile(made[0].public_key, [], made[0].created, None)
    with pytest.raises(VaultError, match="no custodian slot"):
        keys.save_key_file(tmp_path / "vault.json", empty)
    assert not (tmp_path / "vault.json").exists()


def test_save_replaces_atomically(saved: Path,
                                  made: tuple[keys.VaultKeyFile, X25519PrivateKey]) -> None:
    kf, private = made
    two = keys.add_slot(kf, private, "Bob", PW_B, FAST)
    inode = saved.stat().st_ino
    keys.save_key_file(saved, two)
    assert saved.stat().st_ino != inode  # a new file renamed over the old one
    assert saved.stat().st_mode & 0o777 == 0o600
    assert len(keys.load_key_file(saved).slots) == 2


# -- vectors and the shipped default cost --------------------------------------------------------


def test_vault_json_vector_unlocks(tmp_path: Path) -> None:
    vector = VECTORS["vault_json"]
    path = tmp_path / "vault.json"
    path.write_text(json.dumps(vector["file"]))
    kf = keys.load_key_file(path)
    private = keys.unlock(kf, vector["passphrase_utf8"].encode(), "Test Custodian")
    assert raw(private).hex() == VECTORS["recipient_private_key_hex"]
    assert keys.to_json(kf) == (json.dumps(vector["file"], indent=2) + "\n").encode()


@pytest.mark.slow
def test_unlock_with_shipped_default_parameters() -> None:
    log_n = load_config(use_env=False).vault.scrypt_log_n
    assert log_n >= 17
    kf, private = keys.new_key_file("Alice", PW_A, log_n)  # 128 MiB of scrypt memory
    assert kf.slots[0].log_n == log_n
    assert raw(keys.unlock(kf, PW_A)) == raw(private)
    with pytest.raises(WrongPassphrase):
        keys.unlock(kf, PW_B)
