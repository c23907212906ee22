"""Per-file wipe: session files are overwritten and removed; nothing else is touched."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.media.safe_open import FileIdentity
from core.media.scan import CardFile, ScanResult, scan_card
from core.wipe import BLOCK, STEPS, WIPE_PREFIX, WipeOutcome, wipe_files

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
NOBODY = 65534

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 16 + b"\xff\xd9"
CR2 = b"II*\x00\x10\x00\x00\x00CR\x02\x00" + bytes(range(256)) * 8
MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isommp41" + bytes(64)


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def real_jpeg(name: str = "gps01_nikon-coolpix-p6000.jpg") -> bytes:
    path = MEDIA / "gps" / name
    if not path.is_file():
        pytest.skip(f"shared test media {path} is not available")
    return path.read_bytes()


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def names_in(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def differs_entirely(new: bytes, old: bytes) -> bool:
    """Random bytes over the old content: about 1 in 256 positions agree by chance."""
    same = sum(a == b for a, b in zip(new, old, strict=True))
    return same < len(old) // 64 + 8 and old[:32] not in new


def remount_read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, capture_output=True)


def camera_card(card: Path) -> None:
    dcim = card / "DCIM" / "100CANON"
    write(dcim / "IMG_0001.JPG", real_jpeg())
    write(dcim / "IMG_0001.CR2", CR2)
    write(dcim / "IMG_0001.THM", JPEG)
    write(dcim / "IMG_0002.JPG", JPEG + b"2")
    write(dcim / "MVI_0003.MP4", MP4)
    write(card / "MISC" / "readme.txt", b"left alone\n")


def session_files(result: ScanResult) -> list[CardFile]:
    return [f for it in result.items for f in it.files()]


def test_wipe_removes_session_files_and_touches_nothing_else(tmp_path: Path) -> None:
    card = tmp_path / "card"
    camera_card(card)
    outside = write(tmp_path / "outside" / "secret.jpg", JPEG + b"outside")
    linked = write(tmp_path / "outside" / "linked.jpg", JPEG + b"linked")
    (card / "DCIM" / "100CANON" / "IMG_0009.JPG").symlink_to(outside)
    (card / "DCIM" / "100CANON" / "dirlink").symlink_to(outside.parent)
    os.link(linked, card / "DCIM" / "100CANON" / "IMG_0010.JPG")
    os.mkfifo(card / "DCIM" / "100CANON" / "IMG_0011.JPG")
    outside_before, linked_before = snapshot(outside), snapshot(linked)
    video_before = snapshot(card / "DCIM" / "100CANON" / "MVI_0003.MP4")
    result = scan_card(card)
    files = session_files(result)
    assert len(files) == 4
    # even if a caller passes the unsafe entries, they are refused
    bogus = [CardFile(s.parts, FileIdentity(0, 0, 1, 0), "image", "jpeg")
             for s in result.skipped]

    outcome = wipe_files(card, files + bogus)

    assert outcome.wiped == [f.parts for f in files]
    assert outcome.bytes_overwritten == sum(f.size for f in files)
    assert {p[-1] for p, _ in outcome.not_wiped} == {
        "IMG_0009.JPG", "dirlink", "IMG_0010.JPG", "IMG_0011.JPG", "readme.txt"}
    assert not outcome.read_only and outcome.partly_wiped == []
    assert names_in(card / "DCIM" / "100CANON") == [
        "IMG_0009.JPG", "IMG_0010.JPG", "IMG_0011.JPG", "MVI_0003.MP4", "dirlink"]
    assert snapshot(outside) == outside_before
    assert snapshot(linked) == linked_before
    assert snapshot(card / "DCIM" / "100CANON" / "MVI_0003.MP4") == video_before
    assert (card / "MISC" / "readme.txt").read_bytes() == b"left alone\n"
    assert outcome.summary() == (
        "4 files overwritten and removed (on flash media this is not a sanitisation of the "
        "card); 5 files not wiped")


def test_held_descriptor_sees_the_file_overwritten_then_emptied(tmp_path: Path) -> None:
    card = tmp_path / "card"
    original = real_jpeg()
    path = write(card / "DCIM" / "IMG_0001.JPG", original)
    (f,) = scan_card(card).files()
    held = os.open(path, os.O_RDONLY)  # keeps the inode alive after the unlink
    seen: dict[str, bytes] = {}

    def look(step: str) -> None:
        seen[step] = os.pread(held, len(original) + 1, 0)

    try:
        outcome = wipe_files(card, [f], crash_hook=look)
        assert os.fstat(held).st_size == 0
        assert os.pread(held, 100, 0) == b""
        assert os.fstat(held).st_nlink == 0  # unlinked
    finally:
        os.close(held)
    assert seen[STEPS[0]] == original  # before the overwrite
    assert len(seen["wipe.truncate"]) == len(original)
    assert differs_entirely(seen["wipe.truncate"], original)
    assert seen["wipe.rename"] == b""
    assert outcome.wiped == [f.parts]
    assert names_in(card / "DCIM") == []  # no random-named leftover either


def test_crash_before_truncate_leaves_overwritten_bytes(tmp_path: Path) -> None:
    card = tmp_path / "card"
    original = real_jpeg("gps04_samsung-gt-i9000.jpg")
    path = write(card / "IMG_0001.JPG", original)
    (f,) = scan_card(card).files()

    def crash(step: str) -> None:
        if step == "wipe.truncate":
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        wipe_files(card, [f], crash_hook=crash)

    after = path.read_bytes()
    assert len(after) == len(original)
    assert differs_entirely(after, original)


def test_steps_in_order_for_each_file(tmp_path: Path) -> None:
    card = tmp_path / "card"
    camera_card(card)
    files = session_files(scan_card(card))
    steps: list[str] = []
    wipe_files(card, files, crash_hook=steps.append)
    assert steps == list(STEPS) * len(files)


def test_crash_at_rename_then_resume_finishes_the_file(tmp_path: Path) -> None:
    card = tmp_path / "card"
    path = write(card / "DCIM" / "IMG_0001.JPG", JPEG)
    (f,) = scan_card(card).files()

    def crash(step: str) -> None:
        if step == "wipe.rename":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        wipe_files(card, [f], crash_hook=crash)
    assert path.stat().st_size == 0  # data gone, name still there

    outcome = wipe_files(card, [f])
    assert outcome.wiped == [f.parts]
    assert outcome.bytes_overwritten == 0
    assert names_in(card / "DCIM") == []


def test_crash_at_unlink_leaves_only_an_empty_random_name(tmp_path: Path) -> None:
    card = tmp_path / "card"
    write(card / "DCIM" / "IMG_0001.JPG", JPEG)
    (f,) = scan_card(card).files()

    def crash(step: str) -> None:
        if step == "wipe.unlink":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        wipe_files(card, [f], crash_hook=crash)
    (left,) = names_in(card / "DCIM")
    assert left.startswith(WIPE_PREFIX) and len(left) == len(WIPE_PREFIX) + 16
    assert (card / "DCIM" / left).stat().st_size == 0

    again = wipe_files(card, [f])
    assert again.already_removed == [f.parts]
    assert again.summary().endswith("; 1 file already removed")


def test_file_modified_after_scan_is_not_wiped(tmp_path: Path) -> None:
    card = tmp_path / "card"
    grown = write(card / "IMG_0001.JPG", JPEG)
    touched = write(card / "IMG_0002.JPG", JPEG + b"2")
    replaced = write(card / "IMG_0003.JPG", JPEG + b"3")
    write(card / "IMG_0004.JPG", JPEG + b"4")
    files = scan_card(card).files()
    with grown.open("ab") as fh:
        fh.write(b"appended after the scan")
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    write(card / "new", JPEG + b"3")
    os.replace(card / "new", replaced)  # same bytes, another inode
    expected = {p: snapshot(p) for p in (grown, touched, replaced)}

    outcome = wipe_files(card, files)

    assert outcome.wiped == [("IMG_0004.JPG",)]
    reasons = dict(outcome.not_wiped)
    assert set(reasons) == {("IMG_0001.JPG",), ("IMG_0002.JPG",), ("IMG_0003.JPG",)}
    assert all(r.startswith("changed since the card was scanned") for r in reasons.values())
    assert {p: snapshot(p) for p in expected} == expected
    assert outcome.summary().endswith("; 3 files not wiped")


def test_file_swapped_for_symlink_after_scan_is_not_followed(tmp_path: Path) -> None:
    card = tmp_path / "card"
    path = write(card / "DCIM" / "IMG_0001.JPG", JPEG)
    outside = write(tmp_path / "vault" / "precious", b"do not touch" * 100)
    before = snapshot(outside)
    (f,) = scan_card(card).files()
    path.unlink()
    path.symlink_to(outside)

    outcome = wipe_files(card, [f])

    assert outcome.wiped == []
    assert outcome.not_wiped == [(f.parts, "is a symbolic link (not followed): not wiped")]
    assert snapshot(outside) == before
    assert path.is_symlink()


def test_folder_swapped_for_symlink_after_scan_is_not_followed(tmp_path: Path) -> None:
    card = tmp_path / "card"
    write(card / "DCIM" / "IMG_0001.JPG", JPEG)
    (f,) = scan_card(card).files()
    decoy = write(tmp_path / "elsewhere" / "IMG_0001.JPG", JPEG)
    before = snapshot(decoy)
    shutil.rmtree(card / "DCIM")
    (card / "DCIM").symlink_to(decoy.parent)

    outcome = wipe_files(card, [f])

    assert outcome.wiped == []
    assert snapshot(decoy) == before


def test_hard_link_made_after_scan_is_refused(tmp_path: Path) -> None:
    card = tmp_path / "card"
    path = write(card / "IMG_0001.JPG", JPEG)
    (f,) = scan_card(card).files()
    os.link(path, tmp_path / "second-name")

    outcome = wipe_files(card, [f])

    assert outcome.wiped == []
    (reason,) = [r for _, r in outcome.not_wiped]
    assert reason.startswith("is a hard link (shared with another file)")
    assert (tmp_path / "second-name").read_bytes() == JPEG


def test_missing_file_is_already_removed_and_duplicates_once(tmp_path: Path) -> None:
    card = tmp_path / "card"
    gone = write(card / "IMG_0001.JPG", JPEG)
    write(card / "IMG_0002.JPG", JPEG + b"2")
    files = scan_card(card).files()
    gone.unlink()

    outcome = wipe_files(card, [*files, files[1]])

    assert outcome.already_removed == [files[0].parts]
    assert outcome.wiped == [files[1].parts]
    assert outcome.not_wiped == []
    assert outcome.summary() == ("1 file overwritten and removed (on flash media this is not a "
                                 "sanitisation of the card); 1 file already removed")


def test_odd_names_are_wiped_exactly(tmp_path: Path) -> None:
    card = tmp_path / "card"
    (card / "DCIM").mkdir(parents=True)
    base = os.fsencode(card / "DCIM")
    odd = [b"new\nline.jpg", b"esc\x1b[31mred.jpg", b"bad\xff\xfe.jpg"]
    lookalike = "bad\ufffd\ufffd.jpg".encode()  # what a name "fixed" by decoding would be
    for raw in [*odd, lookalike]:
        with open(os.path.join(base, raw), "wb") as fh:
            fh.write(JPEG + raw)
    files = [f for f in scan_card(card).files() if os.fsencode(f.name) in odd]
    assert len(files) == 3

    outcome = wipe_files(card, files)

    assert sorted(os.fsencode(p[-1]) for p in outcome.wiped) == sorted(odd)
    assert os.listdir(base) == [lookalike]
    with open(os.path.join(base, lookalike), "rb") as fh:
        assert fh.read() == JPEG + lookalike


def test_progress_reports_bytes_across_blocks(tmp_path: Path) -> None:
    card = tmp_path / "card"
    big = JPEG + os.urandom(BLOCK * 2 + 12345)
    write(card / "IMG_0001.JPG", big)
    write(card / "IMG_0002.JPG", JPEG)
    files = scan_card(card).files()
    seen: list[tuple[int, int]] = []

    outcome = wipe_files(card, files, progress=lambda done, total: seen.append((done, total)))

    total = len(big) + len(JPEG)
    assert outcome.bytes_overwritten == total
    assert len(seen) >= 4
    assert all(t == total for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert seen[-1] == (total, total)


def test_progress_completes_when_files_are_passed_by(tmp_path: Path) -> None:
    card = tmp_path / "card"
    write(card / "IMG_0001.JPG", JPEG)
    changed = write(card / "IMG_0002.JPG", JPEG + b"2")
    files = scan_card(card).files()
    changed.write_bytes(b"different")
    seen: list[tuple[int, int]] = []
    outcome = wipe_files(card, files, progress=lambda d, t: seen.append((d, t)))
    assert outcome.bytes_overwritten == len(JPEG)
    assert seen[-1] == (len(JPEG) * 2 + 1, len(JPEG) * 2 + 1)


def test_read_only_card_is_a_clear_outcome(
    tmp_path: Path, mount_tmpfs: Callable[[Path], Path]
) -> None:
    card = mount_tmpfs(tmp_path / "card")
    camera_card(card)
    result = scan_card(card)
    files = session_files(result)
    before = {p: snapshot(p) for p in card.rglob("*") if p.is_file()}
    remount_read_only(card)

    outcome = wipe_files(card, files)

    assert outcome.read_only
    assert outcome.wiped == [] and outcome.partly_wiped == [] and outcome.bytes_overwritten == 0
    assert [p for p, _ in outcome.not_wiped] == [f.parts for f in files]
    assert outcome.not_wiped[0][1] == "the card is read-only (write-protected): nothing was changed"
    assert all(r == "not attempted: the card is read-only" for _, r in outcome.not_wiped[1:])
    assert outcome.summary() == "card is write-protected: nothing was wiped"
    assert {p: snapshot(p) for p in card.rglob("*") if p.is_file()} == before


def test_card_turning_read_only_mid_wipe_is_reported_honestly(
    tmp_path: Path, mount_tmpfs: Callable[[Path], Path]
) -> None:
    card = mount_tmpfs(tmp_path / "card")
    camera_card(card)
    files = session_files(scan_card(card))
    steps: list[str] = []

    def protect_at_second_unlink(step: str) -> None:
        steps.append(step)
        if steps.count("wipe.unlink") == 2:  # no file is open for writing at this step
            remount_read_only(card)

    outcome = wipe_files(card, files, crash_hook=protect_at_second_unlink)

    assert outcome.read_only
    assert outcome.wiped == [files[0].parts]
    assert outcome.partly_wiped == [files[1].parts]
    assert outcome.not_wiped[0] == (files[1].parts, (
        "the card became read-only while removing it (its content was overwritten and "
        "emptied, but it was not removed)"))
    assert [r for _, r in outcome.not_wiped[1:]] == ["not attempted: the card is read-only"] * 2
    assert outcome.summary() == (
        "card became read-only during the wipe: 1 file overwritten and removed; 1 file partly "
        "wiped and left on the card; 2 files not wiped")
    assert (card.joinpath(*files[2].parts)).read_bytes() == JPEG  # untouched


def _as_nobody(card: Path, job: Callable[[], Any]) -> Any:
    """Run *job* in a child process with the card as its working folder and no privileges."""
    if os.geteuid() != 0:
        os.chdir(card)
        return job()
    for p in [card, *card.rglob("*")]:
        os.lchown(p, NOBODY, NOBODY)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop root, run, send the result back, never return into pytest
        status = 0
        try:
            os.close(read_end)
            os.chdir(card)  # the tmp_path parents are not searchable by nobody
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            payload = pickle.dumps(("ok", job()))
        except BaseException as exc:
            payload = pickle.dumps(("error", repr(exc)))
            status = 1
        try:
            with os.fdopen(write_end, "wb") as out:
                out.write(payload)
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as inp:
        data = inp.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    assert kind == "ok", value
    return value


@pytest.mark.timeout(60)
def test_without_permission_nothing_is_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    card = tmp_path / "card"
    write(card / "DCIM" / "IMG_0001.JPG", JPEG + b"1")
    protected = write(card / "DCIM" / "IMG_0002.JPG", JPEG + b"2")
    locked_file = write(card / "LOCKED" / "IMG_0003.JPG", JPEG + b"3")
    files = scan_card(card).files()
    protected.chmod(0o444)  # what vfat shows for a file the camera marked "protected"
    (card / "LOCKED").chmod(0o555)  # a folder we may not rename or unlink in
    before = {p: snapshot(p) for p in (protected, locked_file)}

    def job() -> WipeOutcome:
        return wipe_files(".", files)

    try:
        outcome = _as_nobody(card, job)
    finally:
        (card / "LOCKED").chmod(0o755)

    assert outcome.wiped == [("DCIM", "IMG_0001.JPG")]
    reasons = dict(outcome.not_wiped)
    assert reasons[("DCIM", "IMG_0002.JPG")].startswith("no permission to write it")
    assert reasons[("LOCKED", "IMG_0003.JPG")] == (
        "its folder cannot be written (permission denied): not wiped, nothing was changed")
    assert not outcome.read_only and outcome.partly_wiped == []
    assert {p: snapshot(p) for p in before} == before


@pytest.mark.parametrize(
    ("outcome", "words"),
    [
        (WipeOutcome(), "0 files overwritten and removed (on flash media this is not a "
                        "sanitisation of the card)"),
        (WipeOutcome(wiped=[("a",)], stopped="the card stopped responding",
                     not_wiped=[(("b",), "x")]),
         "wipe stopped (the card stopped responding): 1 file overwritten and removed; "
         "1 file not wiped"),
        (WipeOutcome(read_only=True, not_wiped=[(("a",), "x"), (("b",), "y")]),
         "card is write-protected: nothing was wiped"),
    ],
)
def test_summary_words(outcome: WipeOutcome, words: str) -> None:
    assert outcome.summary() == words
    assert outcome.mode == "files"
