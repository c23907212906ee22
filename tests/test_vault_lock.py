"""One clinivault per vault: a second instance, in this or another process, is refused clearly.

Real lock files and real child processes; the parent waits on the child's pipe, never on time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import VaultError
from core.vault.lock import VaultLock

REPO = Path(__file__).resolve().parents[1]

HOLDER = """
import sys
from core.vault.lock import VaultLock
with VaultLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()          # hold until the parent closes our stdin
print("released", flush=True)
"""


def start_holder(vault: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(vault)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "locked\n"
    return proc


def test_lock_records_the_holder_pid_and_is_released(tmp_path: Path) -> None:
    lock = VaultLock(tmp_path)
    with lock:
        assert lock.locked
        assert lock.path == tmp_path / "lock"
        assert lock.path.read_text() == f"{os.getpid()}\n"
        assert lock.holder_pid() == os.getpid()
        assert oct(lock.path.stat().st_mode & 0o777) == "0o600"
    assert not lock.locked
    assert lock.path.exists()  # never deleted: deleting lock files races
    assert lock.holder_pid() is None
    lock.acquire()  # reusable
    lock.release()
    lock.release()  # harmless twice


def test_second_instance_in_the_same_process_is_refused(tmp_path: Path) -> None:
    with VaultLock(tmp_path), pytest.raises(VaultError) as info:
        VaultLock(tmp_path).acquire()
    assert str(info.value).startswith(
        f"vault {tmp_path} is in use by another clinivault (pid {os.getpid()})"
    )
    with VaultLock(tmp_path):  # free again afterwards
        pass


def test_another_process_holding_the_vault_is_named(tmp_path: Path) -> None:
    proc = start_holder(tmp_path)
    try:
        with pytest.raises(VaultError) as info:
            VaultLock(tmp_path).acquire()
        assert f"vault {tmp_path} is in use by another clinivault (pid {proc.pid})" in str(
            info.value
        )
        assert info.value.exit_code == 2
        assert "close the other clinivault" in info.value.user_message()
    finally:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        assert proc.stdout.readline() == "released\n"
        proc.wait()
    assert proc.returncode == 0
    with VaultLock(tmp_path) as lock:
        assert lock.holder_pid() == os.getpid()


def test_a_killed_holder_frees_the_vault(tmp_path: Path) -> None:
    proc = start_holder(tmp_path)
    with pytest.raises(VaultError, match=f"pid {proc.pid}"):
        VaultLock(tmp_path).acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with VaultLock(tmp_path) as lock:  # the kernel dropped the flock; stale pid is overwritten
        assert lock.path.read_text() == f"{os.getpid()}\n"


def test_lock_file_path_and_vault_path_name_the_same_lock(tmp_path: Path) -> None:
    by_file = VaultLock(tmp_path / "lock")
    assert (by_file.root, by_file.path) == (tmp_path, tmp_path / "lock")
    with by_file, pytest.raises(VaultError, match=f"vault {tmp_path} is in use"):
        VaultLock(tmp_path).acquire()
    named_lock = tmp_path / "lock-vault" / "lock"  # a vault directory that is called "lock"
    named_lock.mkdir(parents=True)
    assert VaultLock(named_lock).path == named_lock / "lock"


def test_lock_is_released_when_the_block_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), VaultLock(tmp_path):
        raise RuntimeError("boom")
    with VaultLock(tmp_path) as lock:
        assert lock.locked


def test_missing_vault_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(VaultError, match="does not exist"):
        VaultLock(tmp_path / "nowhere").acquire()
    assert not (tmp_path / "nowhere").exists()


def test_lock_file_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("precious\n")
    vault = tmp_path / "vault"
    vault.mkdir()
    (vault / "lock").symlink_to(target)
    with pytest.raises(VaultError, match="lock file"):
        VaultLock(vault).acquire()
    assert target.read_text() == "precious\n"
