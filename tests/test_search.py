"""Search after unlock: by patient ID (normalised with its scheme), keyword, body site, date and
consent scope, through the CLI and through the encrypted search index it keeps.

Real vaults, real ingests, real encryption; the index files are read back from disk.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from core.catalog import new_session_id
from core.config import Config
from core.custodian.access import unlock
from core.custodian.search import Query, search
from core.custodian.search_index import (
    IndexFileError,
    SearchIndex,
    derive_key,
    index_dir,
    read_month,
)
from core.errors import BadInput
from core.vault.layout import VaultLayout
from core.vault.vault import Vault
from tests.conftest import TEST_PASSPHRASE
from tests.helpers.cards import jpeg_bytes, vault_bytes_contain
from tests.helpers.custodian import VaultFiles, audit_events, ingest, make_card, new_vault, run_cli


@pytest.fixture
def three(tmp_path: Path, cfg: Config) -> tuple[VaultFiles, dict[str, str]]:
    """Patient ZAC5361 twice (eczema; then psoriasis with a per-image body site and teaching
    consent), and NHS 943 476 5870 once."""
    vf = new_vault(tmp_path, cfg)
    ids = {
        "a1": ingest(vf.root, cfg, make_card(tmp_path / "c1", {"A.JPG": jpeg_bytes(1, (240, 180))}),
                     keywords=["Eczema"], scopes=("record",)),
        "a2": ingest(vf.root, cfg, make_card(tmp_path / "c2", {
            "B.JPG": jpeg_bytes(2, (240, 180)), "C.JPG": jpeg_bytes(3, (240, 180))}),
            keywords=["psoriasis"], body_areas=["scalp"],
            per_item={1: {"body_site": "left cheek", "keywords": ["plaque"]}},
            scopes=("record", "teaching")),
        "b": ingest(vf.root, cfg, make_card(tmp_path / "c3", {"D.JPG": jpeg_bytes(4, (240, 180))}),
                    patient="943 476 5870", scheme="nhs", keywords=["eczema herpeticum"]),
    }
    return vf, ids


def sessions(hits: list[dict[str, Any]]) -> list[str]:
    return sorted(h["session"] for h in hits)


def find(vf: VaultFiles, *args: str) -> list[dict[str, Any]]:
    r = run_cli("--config", str(vf.site), "find", str(vf.root), *args, *vf.unlock_args(),
                "--json")
    assert r.code == 0, r.err
    return r.json()


def test_find_by_patient_keyword_body_site_scope_and_date(
        three: tuple[VaultFiles, dict[str, str]]) -> None:
    vf, ids = three
    hits = find(vf, "--patient", "zac 5361")  # typed lower case with a space: normalised
    assert sessions(hits) == sorted([ids["a1"], ids["a2"]])
    assert hits[0]["patient"] == {"scheme": "nhi", "value": "ZAC5361",
                                  "system": "https://standards.digital.health.nz/ns/nhi-id"}
    assert sorted(h["images"] for h in hits) == [1, 2]
    nhs = find(vf, "--patient", "943-476-5870", "--scheme", "nhs")
    assert sessions(nhs) == [ids["b"]]
    assert sessions(find(vf, "--keyword", "ECZ")) == sorted([ids["a1"], ids["b"]])
    assert sessions(find(vf, "--keyword", "plaque")) == [ids["a2"]]
    assert sessions(find(vf, "--body-site", "cheek")) == [ids["a2"]]
    assert sessions(find(vf, "--body-site", "scalp")) == [ids["a2"]]
    assert sessions(find(vf, "--keyword", "ecz", "--patient", "ZAC5361")) == [ids["a1"]]
    assert sessions(find(vf, "--patient", "ZAC5361", "--scope", "teaching")) == [
        ids["a2"]]
    today = datetime.now(UTC).date()
    assert len(find(vf, "--keyword", "e", "--since", today.isoformat())) == 3
    assert find(vf, "--keyword", "e", "--since", (today + timedelta(days=1)).isoformat()) == []
    assert find(vf, "--keyword", "e", "--until", (today - timedelta(days=1)).isoformat()) == []
    assert find(vf, "--patient", "9434765919", "--scheme", "nhs") == []  # valid, not held
    text = run_cli("--config", str(vf.site), "find", str(vf.root), "--patient", "ZAC5361",
                   *vf.unlock_args())
    assert text.code == 0
    assert text.out.splitlines()[-1] == "2 sessions found"
    assert "NHI ZAC5361" in text.out and "sites: scalp, left cheek" in text.out


def test_searches_are_audited_without_what_was_searched_for(
        three: tuple[VaultFiles, dict[str, str]]) -> None:
    vf, _ids = three
    find(vf, "--patient", "ZAC5361")
    find(vf, "--keyword", "psoriasis", "--scope", "teaching")
    searches = [e for e in audit_events(vf.root) if e["event"] == "search"]
    assert [s["details"]["by"] for s in searches] == [["patient"], ["keyword", "scope"]]
    assert [s["details"]["results"] for s in searches] == [2, 1]
    assert searches[0]["details"]["indexed"] == 3 and searches[1]["details"]["indexed"] == 0
    log = (vf.root / "audit" / "log.jsonl").read_bytes()
    assert b"ZAC5361" not in log and b"psoriasis" not in log


def test_the_index_is_sealed_under_a_key_only_an_unlock_gives(
        three: tuple[VaultFiles, dict[str, str]]) -> None:
    vf, _ids = three
    layout = VaultLayout(vf.root)
    assert not index_dir(layout).exists()  # the kiosk (ingest) never touches the index
    find(vf, "--patient", "ZAC5361")
    files = sorted(index_dir(layout).glob("*.idx"))
    assert [f.name for f in files][-1] == "meta.idx" and len(files) == 2
    for needle in (b"ZAC5361", b"9434765870", b"psoriasis", b"cheek"):
        assert vault_bytes_contain(vf.root, needle) == []
    month = files[0]
    with Vault.open(vf.root, startup=False) as vault:
        private = vault.unlock(TEST_PASSPHRASE)
    entries = read_month(derive_key(private), month.name, month.read_bytes())
    assert {tuple(e["p"]) for e in entries.values()} == {("nhi", "ZAC5361"),
                                                          ("nhs", "9434765870")}
    with pytest.raises(IndexFileError, match="does not authenticate"):
        read_month(derive_key(X25519PrivateKey.generate()), month.name, month.read_bytes())
    with pytest.raises(IndexFileError):  # a month file cannot pose as another month
        read_month(derive_key(private), "1999-01.idx", month.read_bytes())
    first, second = month.read_bytes(), None
    find(vf, "--keyword", "x")  # nothing changed: the month file is not rewritten
    second = month.read_bytes()
    assert first == second


def _refresh(root: Path) -> tuple[Any, int]:
    with Vault.open(root, startup=False) as vault:
        custodian = unlock(vault, TEST_PASSPHRASE)
        index = custodian.index
        return custodian.index_stats, len(index)


def test_unlock_unseals_only_sessions_not_yet_indexed(tmp_path: Path, cfg: Config) -> None:
    vf = new_vault(tmp_path, cfg)
    ingest(vf.root, cfg, make_card(tmp_path / "c1", {"A.JPG": jpeg_bytes(1, (200, 150))}))
    stats, n = _refresh(vf.root)
    assert (stats.unsealed, n) == (1, 1)
    ingest(vf.root, cfg, make_card(tmp_path / "c2", {"B.JPG": jpeg_bytes(2, (200, 150))}))
    stats, n = _refresh(vf.root)
    assert (stats.unsealed, stats.days_changed, n) == (1, 1, 2)
    stats, n = _refresh(vf.root)
    assert (stats.unsealed, stats.days_changed, n) == (0, 0, 2)


def _commit_sealed(vault: Vault, when: datetime, blob: dict[str, Any] | bytes) -> str:
    """A catalog record for a session that started at *when*, committed now (out of order,
    as recovery can), with *blob* sealed the way ingest seals it."""
    sid = new_session_id(when)
    raw = blob if isinstance(blob, bytes) else vault.seal(
        json.dumps(blob, sort_keys=True).encode())
    stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    vault.catalog.commit_session({"session": sid, "started": stamp, "operator": "nurse1",
                                  "state": "done", "sealed": base64.b64encode(raw).decode()})
    return sid


def test_a_session_committed_late_for_an_earlier_day_is_still_found(
        tmp_path: Path, cfg: Config) -> None:
    vf = new_vault(tmp_path, cfg)
    ingest(vf.root, cfg, make_card(tmp_path / "c1", {"A.JPG": jpeg_bytes(1, (200, 150))}))
    _refresh(vf.root)
    with Vault.open(vf.root, startup=False) as vault:
        late = _commit_sealed(vault, datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC), {
            "patient": {"scheme": "nhi", "value": "ZAC5361"}, "consent": None,
            "keywords": ["late"], "objects": {}})
    hits = find(vf, "--patient", "ZAC5361")
    assert late in [h["session"] for h in hits] and len(hits) == 2
    assert sessions(find(vf, "--keyword", "late", "--until", "2021-12-31")) == [late]


def test_a_damaged_replayed_or_missing_index_file_is_rebuilt_not_trusted(
        tmp_path: Path, cfg: Config, three: tuple[VaultFiles, dict[str, str]]) -> None:
    vf, ids = three
    assert len(find(vf, "--keyword", "e")) == 3
    idx = index_dir(VaultLayout(vf.root))
    month = next(f for f in idx.glob("*.idx") if f.name != "meta.idx")
    authentic_old = month.read_bytes()
    data = bytearray(authentic_old)
    data[-5] ^= 0xFF
    month.write_bytes(bytes(data))
    stats, n = _refresh(vf.root)
    assert n == 3 and stats.unsealed == 3 and any("watermark" in r for r in stats.rebuilt)
    # An older, authentic copy of the month file put back is noticed too.
    later = ingest(vf.root, cfg, make_card(tmp_path / "c4", {"E.JPG": jpeg_bytes(9, (240, 180))}))
    assert _refresh(vf.root)[0].unsealed == 1
    month.write_bytes(authentic_old)
    stats, n = _refresh(vf.root)
    assert n == 4 and stats.unsealed == 4 and stats.rebuilt
    assert later in sessions(find(vf, "--patient", "ZAC5361"))
    month.unlink()
    stats, n = _refresh(vf.root)
    assert n == 4 and stats.unsealed == 4
    meta = idx / "meta.idx"
    meta.write_bytes(meta.read_bytes()[:-1] + b"\x00")
    stats, n = _refresh(vf.root)
    assert n == 4 and any("authenticate" in r for r in stats.rebuilt)
    assert sessions(find(vf, "--patient", "ZAC5361")) == sorted([ids["a1"], ids["a2"], later])


def test_a_session_whose_details_do_not_unseal_is_reported_not_fatal(
        tmp_path: Path, cfg: Config) -> None:
    vf = new_vault(tmp_path, cfg)
    good = ingest(vf.root, cfg, make_card(tmp_path / "c1", {"A.JPG": jpeg_bytes(1, (200, 150))}))
    with Vault.open(vf.root, startup=False) as vault:
        other = X25519PrivateKey.generate().public_key()
        from core.vault import format as objfmt
        bad = _commit_sealed(vault, datetime.now(UTC) - timedelta(days=2),
                             objfmt.seal(b"{}", other))
    stats, n = _refresh(vf.root)
    assert n == 2 and stats.unreadable == [bad]
    assert sessions(find(vf, "--patient", "ZAC5361")) == [good]
    with Vault.open(vf.root, startup=False) as vault:
        custodian = unlock(vault, TEST_PASSPHRASE)
        entry = custodian.index.get(bad)
    assert entry is not None and "does not open" in entry["e"]


@pytest.mark.parametrize("args, words", [
    ([], "say what to find"),
    (["--patient", "ZAC5362"], "check"),
    (["--patient", "ZAC5361", "--scheme", "xyz"], "unknown patient ID scheme"),
    (["--keyword", "x", "--since", "2024-13-01"], "is not a date"),
    (["--keyword", "x", "--since", "2025-01-02", "--until", "2025-01-01"], "is after"),
    (["--keyword", "   "], "is empty"),
    (["--keyword", "x", "--scope", "gossip"], "invalid choice"),
])
def test_bad_find_requests_get_one_line_exit_2_and_log_nothing(
        tmp_path: Path, cfg: Config, args: list[str], words: str) -> None:
    vf = new_vault(tmp_path, cfg)
    before = (vf.root / "audit" / "log.jsonl").read_bytes()
    r = run_cli("--config", str(vf.site), "find", str(vf.root), *args, *vf.unlock_args())
    assert r.code == 2, r.err
    assert words in r.err and len(r.err.strip().splitlines()) == 1
    assert (vf.root / "audit" / "log.jsonl").read_bytes() == before


def test_wrong_passphrase_is_refused_and_logged(tmp_path: Path, cfg: Config) -> None:
    vf = new_vault(tmp_path, cfg)
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    r = run_cli("--config", str(vf.site), "find", str(vf.root), "--keyword", "x",
                "--passphrase-file", str(wrong))
    assert r.code == 2 and "passphrase" in r.err and "Traceback" not in r.err
    assert [e["event"] for e in audit_events(vf.root)][-1] == "unlock.failed"
    assert not index_dir(VaultLayout(vf.root)).exists()


def test_query_needs_a_criterion_and_a_sane_range() -> None:
    with pytest.raises(BadInput):
        Query(since=date(2025, 1, 1))
    assert Query(keyword="x").kinds() == ["keyword"]


def test_search_api_matches_cli(three: tuple[VaultFiles, dict[str, str]]) -> None:
    vf, ids = three
    with Vault.open(vf.root, startup=False) as vault:
        custodian = unlock(vault, TEST_PASSPHRASE)
        hits = search(custodian, Query(keyword="psoriasis"))
        index: SearchIndex = custodian.index
    assert [h.session for h in hits] == [ids["a2"]]
    assert hits[0].patient is not None and hits[0].patient.value == "ZAC5361"
    assert "ZAC5361" not in repr(hits[0].patient)  # PatientId hides its value in reprs
    assert len(index) == 3


def test_keyword_search_is_case_insensitive_beyond_ascii(tmp_path: Path, cfg: Config) -> None:
    vf = new_vault(tmp_path, cfg)
    with Vault.open(vf.root, startup=False) as vault:
        sid = _commit_sealed(vault, datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC), {
            "patient": {"scheme": "nhi", "value": "ZAC5361"}, "consent": None,
            "keywords": ["Läsion an der Straße"], "objects": {}})
        other = _commit_sealed(vault, datetime(2024, 6, 6, 7, 8, 9, tzinfo=UTC), {
            "patient": {"scheme": "nhi", "value": "ZAC5361"}, "consent": None,
            "keywords": ["ulcer"], "objects": {}})
    # "strasse" is how "Straße" casefolds: the month holding it must still be looked at.
    assert sessions(find(vf, "--keyword", "STRASSE")) == [sid]
    assert sessions(find(vf, "--keyword", "läsion")) == [sid]
    assert sessions(find(vf, "--keyword", "ULC")) == [other]
    assert sessions(find(vf, "--keyword", 'a"b\\c')) == []
