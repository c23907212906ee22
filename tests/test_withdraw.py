"""Consent withdrawal: narrowing re-seals the consent and the catalog follows; withdrawing all
destroys the images and leaves a tombstone with no decryptable trace of the session.

Real vault, real ingest, real crypto; every claim is checked on the files on disk.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from core.config import Config
from core.custodian.access import unlock
from core.custodian.search_index import derive_key, index_dir, read_month
from core.vault import format as objfmt
from core.vault.layout import VaultLayout
from core.vault.vault import Vault
from tests.conftest import TEST_PASSPHRASE
from tests.helpers.cards import jpeg_bytes
from tests.helpers.custodian import VaultFiles, audit_events, ingest, make_card, new_vault, run_cli


@pytest.fixture
def two(tmp_path: Path, cfg: Config) -> tuple[VaultFiles, str, str]:
    """Two sessions of ZAC5361, both consented to record, teaching and publication; the first
    has two images and a sidecar."""
    vf = new_vault(tmp_path, cfg)
    first = ingest(vf.root, cfg, make_card(tmp_path / "c1", {
        "IMG_0001.JPG": jpeg_bytes(1, (240, 180)), "IMG_0001.THM": jpeg_bytes(5, (80, 60)),
        "IMG_0002.JPG": jpeg_bytes(2, (240, 180))}),
        scopes=("record", "teaching", "publication"), keywords=["keloid"])
    second = ingest(vf.root, cfg, make_card(tmp_path / "c2", {
        "IMG_0003.JPG": jpeg_bytes(3, (240, 180))}),
        scopes=("record", "teaching", "publication"), keywords=["keloid"])
    return vf, first, second


def record(root: Path, sid: str) -> dict[str, Any]:
    with Vault.open(root, startup=False) as vault:
        rec = vault.catalog.get_session(sid)
    assert rec is not None
    return rec


def unsealed(root: Path, sealed_b64: str) -> dict[str, Any]:
    with Vault.open(root, startup=False) as vault:
        private = vault.unlock(TEST_PASSPHRASE)
    return json.loads(objfmt.unseal(base64.b64decode(sealed_b64), private))


def cli(vf: VaultFiles, *args: str) -> Any:
    return run_cli("--config", str(vf.site), *args[:1], str(vf.root), *args[1:],
                   *vf.unlock_args())


def test_withdrawing_teaching_reseals_consent_and_refuses_teaching_exports(
        tmp_path: Path, two: tuple[VaultFiles, str, str]) -> None:
    vf, first, second = two
    old_sealed = record(vf.root, first)["sealed"]
    r = cli(vf, "withdraw", "--session", first, "--scope", "teaching")
    assert r.code == 0, r.err
    assert "teaching consent withdrawn; consent now covers record, publication" in r.out
    rec = record(vf.root, first)
    assert rec["consent_scopes"] == ["record", "publication"]
    assert rec["sealed"] != old_sealed and len(rec["objects"]) == 3
    blob = unsealed(vf.root, rec["sealed"])
    assert blob["consent"]["scopes"] == ["record", "publication"]
    assert blob["consent"]["withdrawn"] == ["teaching"]
    assert blob["patient"] == {"scheme": "nhi", "value": "ZAC5361"}
    assert len(blob["objects"]) == 3 and blob["keywords"] == ["keloid"]
    assert record(vf.root, second)["consent_scopes"] == ["record", "teaching", "publication"]
    r = cli(vf, "export", "--session", first, "--scope", "teaching", "--to",
            str(tmp_path / "t"))
    assert r.code == 2 and "consent does not cover teaching" in r.err
    r = cli(vf, "export", "--session", first, "--scope", "publication", "--to",
            str(tmp_path / "p"))
    assert r.code == 0, r.err
    found = cli(vf, "find", "--patient", "ZAC5361", "--scope", "teaching", "--json")
    assert [h["session"] for h in found.json()] == [second]
    withdrawn = [e for e in audit_events(vf.root) if e["event"] == "consent.withdrawn"]
    assert [(e["session"], e["details"]["scope"]) for e in withdrawn] == [(first, "teaching")]
    again = cli(vf, "withdraw", "--session", first, "--scope", "teaching")
    assert again.code == 0 and "nothing changed" in again.out
    assert record(vf.root, first)["sealed"] == rec["sealed"]


def test_withdrawing_all_leaves_no_decryptable_trace_of_the_session(
        tmp_path: Path, two: tuple[VaultFiles, str, str]) -> None:
    vf, first, second = two
    cli(vf, "find", "--patient", "ZAC5361")  # the index knows the session before
    before = record(vf.root, first)
    object_ids = [o["id"] for o in before["objects"]]
    layout = VaultLayout(vf.root)
    assert all(layout.object_path(oid).exists() for oid in object_ids)

    refused = cli(vf, "withdraw", "--session", first, "--scope", "all")
    assert refused.code == 2 and "--yes" in refused.err
    assert all(layout.object_path(oid).exists() for oid in object_ids)

    r = cli(vf, "withdraw", "--session", first, "--scope", "all", "--yes", "--json")
    assert r.code == 0, r.err
    assert r.json()["objects_destroyed"] == 3 and r.json()["images_destroyed"] == 2
    # No object file, no object id anywhere in the catalog, index or other vault files.
    assert not any(layout.object_path(oid).exists() for oid in object_ids)
    for path in vf.root.rglob("*"):
        if path.is_file() and path.name != "log.jsonl":
            data = path.read_bytes()
            assert not any(oid.encode() in data for oid in object_ids), path
    # The tombstone: counts and dates, no content.
    rec = record(vf.root, first)
    assert rec["objects"] == [] and rec["consent_scopes"] == [] and rec["state"] == "withdrawn"
    assert rec["tombstone"]["objects_destroyed"] == 3
    assert rec["tombstone"]["images_destroyed"] == 2
    assert rec["tombstone"]["withdrawn"].endswith("Z")
    assert (rec["taken"], rec["retained"], rec["started"]) == (
        before["taken"], before["retained"], before["started"])
    assert unsealed(vf.root, rec["sealed"]) == {"withdrawn": True, "version": 1}
    # check: every remaining object decrypts, no orphans, nothing missing.
    check = cli(vf, "check", "--json")
    assert check.code == 0, check.out + check.err
    assert check.json()["orphans"] == [] and check.json()["missing"] == []
    assert check.json()["objects"] == 1
    # The index no longer finds the session's images; the other session is untouched.
    found = cli(vf, "find", "--patient", "ZAC5361", "--json").json()
    assert [h["session"] for h in found] == [second]
    tomb = cli(vf, "find", "--keyword", "keloid", "--include-withdrawn", "--json").json()
    assert tomb == [h for h in tomb if h["session"] == second]  # its keywords are gone too
    with Vault.open(vf.root, startup=False) as vault:
        custodian = unlock(vault, TEST_PASSPHRASE)
        entry = custodian.index.get(first)
        key = derive_key(custodian.private)
    assert entry is not None and entry["z"] is True and entry["p"] is None and entry["k"] == []
    holders = set()
    for f in index_dir(layout).glob("????-??.idx"):
        for sid, e in read_month(key, f.name, f.read_bytes()).items():
            if e["p"] is not None:
                holders.add(sid)
    assert holders == {second}
    # Done twice is refused; exporting it is refused.
    assert cli(vf, "withdraw", "--session", first, "--scope", "all", "--yes").code == 2
    r = cli(vf, "export", "--session", first, "--to", str(tmp_path / "x"))
    assert r.code == 2 and "withdrawn" in r.err
    events = [e for e in audit_events(vf.root) if e["event"] == "consent.withdrawn"]
    assert events[-1]["session"] == first and events[-1]["details"]["objects_destroyed"] == 3
    assert b"ZAC5361" not in (vf.root / "audit" / "log.jsonl").read_bytes()


def test_withdrawal_finishes_after_a_crash_that_destroyed_some_objects(
        two: tuple[VaultFiles, str, str]) -> None:
    vf, first, _second = two
    rec = record(vf.root, first)
    with Vault.open(vf.root, startup=False) as vault:  # as if a crash stopped the first run
        assert vault.objects.remove(rec["objects"][0]["id"])
    r = cli(vf, "withdraw", "--session", first, "--scope", "all", "--yes", "--json")
    assert r.code == 0, r.err
    assert r.json()["objects_destroyed"] == 3
    event = [e for e in audit_events(vf.root) if e["event"] == "consent.withdrawn"][-1]
    assert event["details"]["already_gone"] == 1
    assert cli(vf, "check", "--json").json()["missing"] == []


@pytest.mark.parametrize("args, words", [
    (["--session", "20200101T000000Z-00000000", "--scope", "teaching"], "not in this vault"),
    (["--session", "yesterday", "--scope", "teaching"], "is not a session id"),
    (["--session", "S", "--scope", "record"], "invalid choice"),
    (["--scope", "teaching"], "required"),
])
def test_bad_withdrawals_get_one_line_exit_2(two: tuple[VaultFiles, str, str],
                                             args: list[str], words: str) -> None:
    vf, first, _second = two
    args = [first if a == "S" else a for a in args]
    catalog_before = {p.name: p.read_bytes() for p in (vf.root / "catalog").iterdir()}
    r = cli(vf, "withdraw", *args)
    assert r.code == 2, r.err
    assert words in r.err and len(r.err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in (vf.root / "catalog").iterdir()} == catalog_before


def test_a_refused_session_has_nothing_to_withdraw(tmp_path: Path, cfg: Config) -> None:
    from core import consent as consentmod
    from core.session import IngestSession

    vf = new_vault(tmp_path, cfg)
    card = make_card(tmp_path / "card", {"A.JPG": jpeg_bytes(1, (200, 150))})
    with Vault.open(vf.root, actor="nurse1") as vault:
        s = IngestSession(vault, cfg, card, "nurse1")
        s.scan()
        s.assess()
        s.record_consent(consentmod.refuse(recorded_by_name="R. Nurse",
                                           recorded_by_role="Nurse", witness="W. Itness",
                                           statement=cfg.consent.statement))
        s.wipe()
        sid = s.id
    r = cli(vf, "withdraw", "--session", sid, "--scope", "all", "--yes")
    assert r.code == 2 and "consent was refused" in r.err
