"""Detection on real udev events: a loop card appears, is seen once, goes away; the vault's
own disk is refused; the CLI lists and watches."""

from __future__ import annotations

import io
import json
import os
import select
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from core.config import Config
from core.media.devices import (
    DeviceWatcher,
    MediaCandidate,
    MediaEvent,
    Rejection,
    candidate_for,
    describe_device,
)
from core.media.identity import CardChanged, CardGone, identify, recheck, same_card
from tests.e2e.conftest import LoopCard, blkid, run, settle
from tests.helpers import media_cli

ROOT = Path(__file__).resolve().parents[2]
EVENT_TIMEOUT_S = 5.0


class Recorder:
    """Collects watcher events; ``wait_for(pred)`` blocks on a Condition until one matches."""

    def __init__(self) -> None:
        self.events: list[MediaEvent] = []
        self._cond = threading.Condition()

    def __call__(self, ev: MediaEvent) -> None:
        with self._cond:
            self.events.append(ev)
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def wait_for(self, pred: Callable[[MediaEvent], bool], timeout: float = EVENT_TIMEOUT_S,
                 since: int = 0) -> MediaEvent | None:
        """The first event from index *since* on that matches *pred*, waiting for it."""
        with self._cond:
            found: list[MediaEvent] = []

            def ready() -> bool:
                found[:] = [e for e in self.events[since:] if pred(e)]
                return bool(found)

            self._cond.wait_for(ready, timeout)
            return found[0] if found else None


@pytest.fixture
def watcher(cfg: Config) -> Iterator[tuple[DeviceWatcher, Recorder]]:
    rec = Recorder()
    w = DeviceWatcher(rec, cfg)
    w.start()
    try:
        assert w.ready.wait(EVENT_TIMEOUT_S), "initial enumeration did not finish"
        yield w, rec
    finally:
        w.stop()


def test_card_is_reported_within_5s_of_losetup_and_removed_on_detach(
        watcher: tuple[DeviceWatcher, Recorder], loop_card: Callable[..., LoopCard]) -> None:
    w, rec = watcher
    card = loop_card(fs="exfat", label="EVT", files={"DCIM/100TEST/IMG_0001.JPG": b"x" * 9000},
                     attach=False)
    uuid = blkid(str(card.image))["UUID"]
    start = rec.mark()  # (making the card attached and detached it once already)
    node = card.attach(wait=False)  # no settle: the watcher alone must notice

    added = rec.wait_for(lambda e: e.action == "add" and e.candidate is not None
                         and e.candidate.uuid == uuid, since=start)
    assert added is not None, f"no add event for {node} within {EVENT_TIMEOUT_S} s"
    c = added.candidate
    assert c is not None
    assert (c.devnode, c.label, c.fs_type, c.bus) == (node, "EVT", "exfat", "loop")
    assert not added.initial
    assert any(x.devnode == node for x in w.current())

    start = rec.mark()
    card.detach(wait=False)
    removed = rec.wait_for(lambda e: e.action == "remove" and e.sys_path == added.sys_path,
                           since=start)
    assert removed is not None, f"no remove event for {node} within {EVENT_TIMEOUT_S} s"
    assert not any(x.devnode == node for x in w.current())


def test_card_present_at_start_is_reported_once(cfg: Config,
                                                loop_card: Callable[..., LoopCard]) -> None:
    import pyudev

    card = loop_card(fs="vfat", label="EARLY")
    rec = Recorder()
    w = DeviceWatcher(rec, cfg)
    probe = pyudev.Monitor.from_netlink(pyudev.Context())
    probe.filter_by("block")
    probe.start()
    w.start()
    try:
        assert w.ready.wait(EVENT_TIMEOUT_S)
        first = rec.wait_for(lambda e: e.devnode == card.loop)
        assert first is not None and first.initial and first.action == "add"
        assert first.candidate is not None and first.candidate.label == "EARLY"
        # udev re-announces the device (as a monitor started before enumeration can see it
        # twice): the watcher must not report it again.
        run("udevadm", "trigger", "--action=change", card.loop)
        sys_path = first.sys_path
        while True:
            dev = probe.poll(timeout=EVENT_TIMEOUT_S)
            assert dev is not None, "udev did not re-announce the device"
            if dev.sys_path.endswith(sys_path):
                break
    finally:
        w.stop()  # handles what the watcher's socket already holds, then joins
    mine = [e for e in rec.events if e.sys_path == first.sys_path]
    assert [(e.action, e.initial) for e in mine] == [("add", True)]


@pytest.fixture
def mounted_ext4_vault(tmp_path: Path, loop_card: Callable[..., LoopCard]) -> Iterator[
        tuple[LoopCard, Path]]:
    """An ext4 loop device mounted with the kernel driver, with a vault folder on it."""
    card = loop_card(fs="ext4", label="VAULTDISK")
    where = tmp_path / "vaultdisk"
    where.mkdir()
    run("mount", "-t", "ext4", card.loop, str(where))
    try:
        vault = where / "vault"
        vault.mkdir()
        yield card, vault
    finally:
        run("umount", str(where), check=False)


def test_vault_disk_is_refused_even_with_accept_loop(
        cfg: Config, mounted_ext4_vault: tuple[LoopCard, Path]) -> None:
    card, vault = mounted_ext4_vault
    assert cfg.media.accept_loop
    assert isinstance(describe_device(card.loop, cfg), MediaCandidate)  # a card otherwise
    r = describe_device(card.loop, cfg, vault_path=vault)
    assert isinstance(r, Rejection)
    assert "system or the vault" in r.reason

    rec = Recorder()
    with DeviceWatcher(rec, cfg, vault_path=vault) as w:
        assert w.ready.wait(EVENT_TIMEOUT_S)
        seen = rec.wait_for(lambda e: e.devnode == card.loop)
    assert seen is not None and isinstance(seen.result, Rejection)
    assert "system or the vault" in seen.result.reason


@pytest.fixture
def site_config(tmp_path: Path) -> Path:
    p = tmp_path / "site.toml"
    p.write_text("[media]\naccept_loop = true\n")
    return p


def cli(*argv: str) -> tuple[int, str]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = media_cli.main(list(argv))
    return code, buf.getvalue()


def test_devices_lists_cards_and_refusals(site_config: Path, tmp_path: Path,
                                          loop_card: Callable[..., LoopCard],
                                          mounted_ext4_vault: tuple[LoopCard, Path]) -> None:
    card = loop_card(fs="exfat", label="LISTME")
    vault_card, vault = mounted_ext4_vault
    code, out = cli("--config", str(site_config), "devices", "--json", "--vault", str(vault))
    assert code == 0
    devices: list[dict[str, Any]] = json.loads(out)["devices"]
    by_node = {d["devnode"]: d for d in devices}
    assert by_node[card.loop]["card"] is True
    assert by_node[card.loop]["label"] == "LISTME"
    assert by_node[vault_card.loop]["card"] is False
    assert "system or the vault" in by_node[vault_card.loop]["reason"]

    code, text = cli("--config", str(site_config), "devices", "--vault", str(vault))
    assert code == 0
    line = next(ln for ln in text.splitlines() if ln.startswith(card.loop + " "))
    assert "card" in line and "LISTME" in line

    no_loops = tmp_path / "strict.toml"
    no_loops.write_text("[media]\naccept_loop = false\n")
    code, out = cli("--config", str(no_loops), "devices", "--json")
    entry = {d["devnode"]: d for d in json.loads(out)["devices"]}[card.loop]
    assert entry["card"] is False and "accept_loop" in entry["reason"]


def test_watch_prints_the_card_as_it_arrives(site_config: Path,
                                             loop_card: Callable[..., LoopCard]) -> None:
    card = loop_card(fs="vfat", label="WATCHME", attach=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.media_cli", "--config", str(site_config),
         "watch", "--count", "1", "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stderr is not None and proc.stdout is not None
        ready, _, _ = select.select([proc.stderr], [], [], 30)
        assert ready, "watch did not start"
        assert "watching" in proc.stderr.readline()
        node = card.attach(wait=False)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    lines = [json.loads(ln) for ln in out.splitlines()]
    live = [ln for ln in lines if not ln["initial"]]
    assert len(live) == 1
    assert live[0]["action"] == "add" and live[0]["devnode"] == node
    assert live[0]["card"] is True and live[0]["label"] == "WATCHME"
    settle()


def test_a_reinserted_card_is_recognised_by_its_file_system(
        cfg: Config, loop_card: Callable[..., LoopCard]) -> None:
    """What pausing and resuming a session rests on: a pulled card fails the identity check,
    the same card re-inserted is ``same_card`` (by UUID, size, serial) but a new insertion
    (so the session takes a fresh identity), and another card with the same label is not."""
    card = loop_card(fs="exfat", label="AGAIN")
    first = candidate_for(card.loop, cfg)
    ident = identify(first)
    recheck(ident)  # nothing changed yet
    card.detach()
    with pytest.raises(CardGone):
        recheck(ident)
    card.attach()
    again = candidate_for(card.loop, cfg)
    assert same_card(ident, again)
    with pytest.raises(CardChanged):
        recheck(ident)  # a new insertion: wipe only after taking a fresh identity
    fresh = identify(again)
    assert fresh.diskseq != ident.diskseq and fresh.fs_uuid == ident.fs_uuid
    recheck(fresh)
    other = loop_card(fs="exfat", label="AGAIN")
    assert not same_card(ident, candidate_for(other.loop, cfg))
