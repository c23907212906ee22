"""safe_open: links, special files, other file systems and swapped files are refused."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.errors import EXIT_BAD_INPUT, BadInput, FailedSafely
from core.media.safe_open import (
    CardFileError,
    FileIdentity,
    card_file,
    display_name,
    open_card_dir,
    open_card_file,
    open_dir_at,
    open_root,
)

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 4 + b"\xff\xd9"


@pytest.fixture
def card(tmp_path: Path) -> Path:
    root = tmp_path / "card"
    (root / "DCIM" / "100CANON").mkdir(parents=True)
    (root / "DCIM" / "100CANON" / "IMG_0001.JPG").write_bytes(JPEG)
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "secret.txt"
    path.parent.mkdir()
    path.write_bytes(b"not for the card\n")
    return path


@pytest.fixture
def root_fd(card: Path) -> Iterator[int]:
    fd = open_root(card)
    try:
        yield fd
    finally:
        os.close(fd)


def remount_read_only(where: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True, capture_output=True)


def reason_of(root_fd: int, parts: tuple[str, ...], **kwargs: object) -> str:
    with pytest.raises(CardFileError) as info:
        fd = open_card_file(root_fd, parts, **kwargs)  # type: ignore[arg-type]
        os.close(fd)
    return info.value.reason


IMG = ("DCIM", "100CANON", "IMG_0001.JPG")


def test_opens_a_regular_file_blocking_close_on_exec(root_fd: int) -> None:
    fd = open_card_file(root_fd, IMG)
    try:
        assert os.read(fd, len(JPEG) + 10) == JPEG
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        with pytest.raises(OSError) as info:
            os.write(fd, b"x")  # opened read-only
        assert info.value.errno == errno.EBADF
    finally:
        os.close(fd)


def test_write_mode_opens_read_write(card: Path, root_fd: int) -> None:
    fd = open_card_file(root_fd, IMG, write=True)
    try:
        os.pwrite(fd, b"XY", 0)
    finally:
        os.close(fd)
    assert card.joinpath(*IMG).read_bytes()[:2] == b"XY"


def test_symlink_to_outside_file_is_refused(card: Path, outside: Path, root_fd: int) -> None:
    before = outside.stat()
    (card / "DCIM" / "link.jpg").symlink_to(outside)
    assert reason_of(root_fd, ("DCIM", "link.jpg")) == "symlink"
    assert reason_of(root_fd, ("DCIM", "link.jpg"), write=True) == "symlink"
    assert outside.read_bytes() == b"not for the card\n"
    assert outside.stat().st_mtime_ns == before.st_mtime_ns


def test_dangling_symlink_is_refused(card: Path, root_fd: int) -> None:
    (card / "gone.jpg").symlink_to(card / "nowhere.jpg")
    assert reason_of(root_fd, ("gone.jpg",)) == "symlink"


def test_symlinked_folder_on_the_way_is_refused(card: Path, outside: Path, root_fd: int) -> None:
    (card / "EVIL").symlink_to(outside.parent)
    assert reason_of(root_fd, ("EVIL", "secret.txt")) == "symlink"
    with pytest.raises(CardFileError) as info:
        open_card_dir(root_fd, ("EVIL",))
    assert info.value.reason == "symlink"


@pytest.mark.timeout(20)
def test_fifo_is_refused_without_blocking(card: Path, root_fd: int) -> None:
    os.mkfifo(card / "pipe.jpg")
    assert reason_of(root_fd, ("pipe.jpg",)) == "not_regular"
    assert reason_of(root_fd, ("pipe.jpg",), write=True) == "not_regular"


def test_socket_is_refused(card: Path, root_fd: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(card)  # AF_UNIX paths are short: bind by relative name
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind("sock.jpg")
        assert reason_of(root_fd, ("sock.jpg",)) == "not_regular"


def test_device_node_is_refused(card: Path, root_fd: int) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    os.mknod(card / "null.jpg", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    with pytest.raises(CardFileError) as info:
        open_card_file(root_fd, ("null.jpg",), write=True)
    assert info.value.reason == "not_regular"
    assert "device node" in str(info.value)


def test_folder_where_a_file_is_expected_and_back(card: Path, root_fd: int) -> None:
    assert reason_of(root_fd, ("DCIM",)) == "not_regular"
    with pytest.raises(CardFileError) as info:
        open_card_dir(root_fd, IMG)
    assert info.value.reason == "not_regular"


def test_hard_link_is_refused(card: Path, outside: Path, root_fd: int) -> None:
    os.link(outside, card / "DCIM" / "shared.jpg")
    assert reason_of(root_fd, ("DCIM", "shared.jpg"), write=True) == "hard_link"
    assert outside.read_bytes() == b"not for the card\n"


@pytest.mark.parametrize(
    "parts",
    [("..",), (".",), ("DCIM", "..", "DCIM"), ("DCIM/100CANON", "IMG_0001.JPG"), ("",),
     ("IMG\0.JPG",), ()],
)
def test_names_that_leave_the_card_are_refused(root_fd: int, parts: tuple[str, ...]) -> None:
    assert reason_of(root_fd, parts) == "outside"


def test_a_single_string_is_not_a_path(root_fd: int) -> None:
    with pytest.raises(TypeError):
        open_card_file(root_fd, "DCIM/100CANON/IMG_0001.JPG")


def test_vanished_file(root_fd: int) -> None:
    assert reason_of(root_fd, ("DCIM", "IMG_9999.JPG")) == "vanished"
    assert reason_of(root_fd, ("NOPE", "IMG_0001.JPG")) == "vanished"


def test_file_swapped_for_symlink_after_scan_is_refused(
    card: Path, outside: Path, root_fd: int
) -> None:
    path = card.joinpath(*IMG)
    scanned = FileIdentity.from_stat(path.stat())
    swap = path.with_name("swap")
    swap.symlink_to(outside)
    os.replace(swap, path)  # IMG_0001.JPG is now a link to the outside file
    assert reason_of(root_fd, IMG, expect=scanned) == "symlink"
    assert reason_of(root_fd, IMG, expect=scanned, write=True) == "symlink"
    assert outside.read_bytes() == b"not for the card\n"


def test_file_replaced_by_another_file_after_scan_is_refused(card: Path, root_fd: int) -> None:
    path = card.joinpath(*IMG)
    scanned = FileIdentity.from_stat(path.stat())
    other = path.with_name("other")
    other.write_bytes(JPEG)  # same size and content, different inode
    os.replace(other, path)
    assert reason_of(root_fd, IMG, expect=scanned) == "changed"
    assert reason_of(root_fd, IMG, expect=scanned, same_content=False) == "changed"


def test_file_modified_after_scan(card: Path, root_fd: int) -> None:
    path = card.joinpath(*IMG)
    scanned = FileIdentity.from_stat(path.stat())
    with path.open("ab") as fh:
        fh.write(b"more")
    assert reason_of(root_fd, IMG, expect=scanned) == "changed"
    fd = open_card_file(root_fd, IMG, expect=scanned, same_content=False)  # same inode
    os.close(fd)
    os.utime(path, ns=(scanned.mtime_ns, scanned.mtime_ns + 1_000_000_000))
    assert reason_of(root_fd, IMG, expect=scanned) == "changed"


def test_folder_swapped_after_listing_is_refused(card: Path, root_fd: int) -> None:
    dcim = card / "DCIM"
    st = dcim.lstat()
    os.rename(dcim, card / "OLD")
    (card / "DCIM").mkdir()
    with pytest.raises(CardFileError) as info:
        fd = open_dir_at(root_fd, "DCIM", root_dev=st.st_dev, expect=(st.st_dev, st.st_ino))
        os.close(fd)
    assert info.value.reason == "changed"


def test_other_file_system_inside_the_card_is_refused(
    card: Path, root_fd: int, mount_tmpfs: Callable[..., Path]
) -> None:
    inner = mount_tmpfs(card / "MOUNTED")
    (inner / "IMG_0002.JPG").write_bytes(JPEG)
    assert reason_of(root_fd, ("MOUNTED", "IMG_0002.JPG")) == "other_device"
    with pytest.raises(CardFileError) as info:
        open_card_dir(root_fd, ("MOUNTED",))
    assert info.value.reason == "other_device"


def test_file_mounted_over_a_card_file_is_refused(
    tmp_path: Path, card: Path, root_fd: int, mount_tmpfs: Callable[..., Path]
) -> None:
    other = mount_tmpfs(tmp_path / "elsewhere")
    (other / "IMG_0002.JPG").write_bytes(JPEG + b"elsewhere")
    target = card / "DCIM" / "IMG_0002.JPG"
    target.write_bytes(JPEG)
    mount_tmpfs(target, bind_from=other / "IMG_0002.JPG")
    assert reason_of(root_fd, ("DCIM", "IMG_0002.JPG"), write=True) == "other_device"


def test_write_on_a_read_only_card_is_read_only(
    tmp_path: Path, mount_tmpfs: Callable[..., Path]
) -> None:
    card = mount_tmpfs(tmp_path / "ro")
    (card / "IMG_0001.JPG").write_bytes(JPEG)
    remount_read_only(card)
    fd = open_root(card)
    try:
        assert reason_of(fd, ("IMG_0001.JPG",), write=True) == "read_only"
        rfd = open_card_file(fd, ("IMG_0001.JPG",))  # reading still works
        assert os.read(rfd, 3) == b"\xff\xd8\xff"
        os.close(rfd)
    finally:
        os.close(fd)


def test_card_file_error_is_failed_safely_and_names_the_file(card: Path, root_fd: int) -> None:
    name = "evil\n\x1b[2Jname.jpg"
    (card / name).symlink_to("/etc/passwd")
    with pytest.raises(CardFileError) as info:
        open_card_file(root_fd, (name,))
    err = info.value
    assert isinstance(err, FailedSafely)
    assert err.parts == (name,)
    assert str(err) == "evil\\n\\x1b[2Jname.jpg is a symbolic link (not followed)"
    assert "\n" not in str(err) and "\x1b" not in str(err)


def test_open_root_errors_are_bad_input(tmp_path: Path, card: Path) -> None:
    (tmp_path / "afile").write_bytes(b"x")
    (tmp_path / "link").symlink_to(card)
    for path, words in [(tmp_path / "missing", "does not exist"),
                        (tmp_path / "afile", "is not a folder"),
                        (tmp_path / "link", "is a symbolic link")]:
        with pytest.raises(BadInput) as info:
            open_root(path)
        assert words in info.value.message
        assert info.value.exit_code == EXIT_BAD_INPUT
        assert "\n" not in info.value.user_message()


def test_card_file_reads_exact_bytes_of_odd_names(card: Path) -> None:
    raw_names = [b"new\nline.jpg", b"esc\x1b[31mred.jpg", b"bad\xff\xfe.jpg", b"tab\there.jpg"]
    for i, raw in enumerate(raw_names):
        with open(os.path.join(os.fsencode(card), raw), "wb") as fh:
            fh.write(JPEG + bytes([i]))
    names = {os.fsencode(n): n for n in os.listdir(card)}
    for i, raw in enumerate(raw_names):
        with card_file(card, (names[raw],)) as fh:
            assert fh.read() == JPEG + bytes([i])


def test_card_file_checks_identity(card: Path) -> None:
    path = card.joinpath(*IMG)
    scanned = FileIdentity.from_stat(path.stat())
    with card_file(card, IMG, expect=scanned) as fh:
        assert fh.read(3) == b"\xff\xd8\xff"
    path.write_bytes(JPEG + b"changed")
    with pytest.raises(CardFileError) as info, card_file(card, IMG, expect=scanned):
        pass
    assert info.value.reason == "changed"


# -- display_name ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parts", "shown"),
    [
        (("DCIM", "IMG_0001.JPG"), "DCIM/IMG_0001.JPG"),
        (("new\nline.jpg",), "new\\nline.jpg"),
        (("esc\x1b[31mred.jpg",), "esc\\x1b[31mred.jpg"),
        ((os.fsdecode(b"bad\xff\xfe.jpg"),), "bad\\xff\\xfe.jpg"),
        (("back\\slash.jpg",), "back\\\\slash.jpg"),
        (("cr\rtab\tdel\x7f.jpg",), "cr\\rtab\\tdel\\x7f.jpg"),
        (("IMG\u202egpj.exe",), "IMG\\u202egpj.exe"),  # right-to-left override
        (("nbsp\u00a0zero\u200bwidth.jpg",), "nbsp\\xa0zero\\u200bwidth.jpg"),
        (("line\u2028sep.jpg",), "line\\u2028sep.jpg"),
        (("c1\x9b31m.jpg",), "c1\\x9b31m.jpg"),
        (("Ærø café 写真.jpg",), "Ærø café 写真.jpg"),  # printable text is left alone
        (("with space.jpg",), "with space.jpg"),
    ],
)
def test_display_name_escapes(parts: tuple[str, ...], shown: str) -> None:
    assert display_name(parts) == shown


def test_display_name_of_a_single_string() -> None:
    assert display_name("a\nb") == "a\\nb"


def test_display_keeps_different_names_apart() -> None:
    assert display_name(("a\\x1b",)) != display_name(("a\x1b",))
    assert display_name((os.fsdecode(b"\xff"),)) != display_name(("\xff",))


@given(st.lists(st.text(st.characters(exclude_categories=())), min_size=1, max_size=4))
def test_display_name_is_always_printable(parts: list[str]) -> None:
    assert display_name(parts).isprintable()
