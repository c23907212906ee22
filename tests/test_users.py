"""Kiosk accounts (core.users) and ``clinivault user add|list`` (core.cli.user_cmds)."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from core.cli import user_cmds
from core.config import Config
from core.errors import BadInput, VaultError
from core.users import (
    IdleTimer,
    LockedOut,
    SignInError,
    UserStore,
    check_user_id,
    roles_of,
    sign_in,
    unlock,
)

T0 = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)


class Recorder:
    """An audit sink that keeps what was appended."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, dict[str, Any]]] = []

    def append(self, actor: str, event: str, session: str | None = None,
               details: dict[str, Any] | None = None) -> None:
        self.entries.append((actor, event, details or {}))

    def events(self) -> list[tuple[str, str]]:
        return [(a, e) for a, e, _ in self.entries]


@pytest.fixture
def store(tmp_path: Path) -> UserStore:
    s = UserStore(tmp_path / "users.json", scrypt_log_n=10, max_failed=3, lockout_minutes=15)
    s.add("Nurse1", "operator", "1234", now=T0)
    s.add("lead1", "custodian", "5678", now=T0)
    return s


def test_pin_is_stored_only_as_a_scrypt_hash_with_its_parameters(store: UserStore) -> None:
    raw = store.path.read_text()
    assert "1234" not in raw
    data = json.loads(raw)
    pin = data["users"][1]["pin"]
    assert data["users"][1]["id"] == "nurse1"  # IDs are lower-cased
    assert pin["kdf"] == "scrypt" and (pin["log_n"], pin["r"], pin["p"]) == (10, 8, 1)
    assert store.path.stat().st_mode & 0o777 == 0o600


def test_sign_in_accepts_the_right_pin_and_logs_it(store: UserStore) -> None:
    audit = Recorder()
    user = sign_in(store, audit, " NURSE1 ", "1234", now=T0)
    assert (user.id, user.role) == ("nurse1", "operator")
    assert audit.events() == [("nurse1", "signin")]


def test_failures_count_then_lock_for_the_configured_minutes(store: UserStore) -> None:
    audit = Recorder()
    for n in (2, 1):
        with pytest.raises(SignInError) as err:
            sign_in(store, audit, "nurse1", "0000", now=T0)
        assert f"{n} tr" in err.value.user_message()
    with pytest.raises(LockedOut) as locked:
        sign_in(store, audit, "nurse1", "0000", now=T0)
    assert locked.value.until == T0 + timedelta(minutes=15)
    # Locked: the right PIN is refused too, and the refusal is logged as "locked".
    with pytest.raises(LockedOut):
        sign_in(store, audit, "nurse1", "1234", now=T0 + timedelta(minutes=14))
    assert audit.events().count(("nurse1", "signin.failed")) == 4
    assert ("nurse1", "signin.locked") in audit.events()
    assert audit.entries[-1][2]["reason"] == "locked"
    # The lockout survives a restart of the kiosk (it is in the file) and then runs out.
    again = UserStore(store.path, scrypt_log_n=10, max_failed=3, lockout_minutes=15)
    assert again.get("nurse1").locked_at(T0 + timedelta(minutes=1))  # type: ignore[union-attr]
    user = sign_in(again, audit, "nurse1", "1234", now=T0 + timedelta(minutes=16))
    assert user.failed == 0 and user.locked_until is None


def test_a_success_resets_the_count(store: UserStore) -> None:
    audit = Recorder()
    for _ in range(2):
        with pytest.raises(SignInError):
            sign_in(store, audit, "nurse1", "0000", now=T0)
    sign_in(store, audit, "nurse1", "1234", now=T0)
    for _ in range(2):
        with pytest.raises(SignInError):
            sign_in(store, audit, "nurse1", "0000", now=T0)
    assert not isinstance(store.get("nurse1"), type(None))
    assert store.get("nurse1").failed == 2  # type: ignore[union-attr]


def test_unknown_id_is_logged_without_what_was_typed(store: UserStore) -> None:
    audit = Recorder()
    with pytest.raises(SignInError) as err:
        sign_in(store, audit, "ZAC5361", "1234", now=T0)
    assert err.value.user_message().startswith("ID or PIN not recognised")
    assert audit.entries == [("unknown", "signin.failed",
                              {"reason": "unknown ID", "station": "kiosk"})]


def test_unlock_is_for_the_same_user_or_a_custodian(store: UserStore) -> None:
    store.add("nurse2", "operator", "4321", now=T0)
    audit = Recorder()
    with pytest.raises(SignInError) as err:
        unlock(store, audit, "nurse1", "nurse2", "4321", now=T0)
    assert "locked for nurse1" in err.value.user_message()
    assert ("nurse2", "unlock.refused") in audit.events()
    assert unlock(store, audit, "nurse1", "nurse1", "1234", now=T0).id == "nurse1"
    assert unlock(store, audit, "nurse1", "lead1", "5678", now=T0).id == "lead1"
    assert audit.events().count(("nurse1", "kiosk.unlocked")) == 1


@pytest.mark.parametrize("bad", ["", "a b", "x" * 33, "-lead", "nurse/1", "n\u00fcrse"])
def test_user_ids_are_plain(bad: str) -> None:
    with pytest.raises(BadInput):
        check_user_id(bad)


def test_adding_refuses_duplicates_short_pins_and_unknown_roles(store: UserStore) -> None:
    with pytest.raises(BadInput, match="already exists"):
        store.add("NURSE1", "operator", "9999")
    with pytest.raises(BadInput, match="too short"):
        store.add("nurse3", "operator", "123")
    with pytest.raises(BadInput, match="unknown role"):
        store.add("nurse3", "admin", "1234")
    assert roles_of(store.users()) == {"operator": 1, "custodian": 1, "auditor": 0}


def test_a_damaged_file_is_a_clear_error(store: UserStore) -> None:
    store.path.write_text('{"version": 1, "users": [{"id": "x"}]}')
    with pytest.raises(VaultError, match=r"users\.json is damaged"):
        store.users()


def test_idle_timer() -> None:
    t = IdleTimer(5, last=100.0)
    assert not t.due(100 + 299)
    assert t.due(100 + 300)
    t.touch(400)
    assert not t.due(401)
    assert not IdleTimer(0).due(10**9)  # 0 minutes: never lock


# -- the CLI --------------------------------------------------------------------------------

def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    user_cmds.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_user_add_and_list(vault: Any, cfg: Config, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("core.cli.user_cmds.config_from", lambda _a: cfg)
    root = vault.root
    vault.close()  # the CLI takes the vault lock itself
    pin = tmp_path / "pin"
    pin.write_text("2468\n")
    assert cli("user", "add", str(root), "nurse7", "--role", "operator",
               "--pin-file", str(pin)) == 0
    assert "User nurse7 added (operator)." in capsys.readouterr().out
    assert cli("user", "list", str(root), "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(u["id"], u["role"]) for u in listed] == [("nurse7", "operator")]
    store = UserStore.for_vault(root, cfg)
    assert sign_in(store, Recorder(), "nurse7", "2468").role == "operator"
    log = (root / "audit" / "log.jsonl").read_text()
    assert '"event":"user.added"' in log and "2468" not in log
