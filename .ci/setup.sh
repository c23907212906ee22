#!/usr/bin/env bash
# Set up everything clinivault needs on a fresh Debian machine, idempotently:
#   - a virtual environment in .venv with the project and its test tools (pip install -e .[test]);
#   - with --e2e and as root: the Debian tools the end-to-end tests use (loop devices, exFAT/FAT
#     file systems and their FUSE drivers, udev), and a running udevd.
# Sourced or run by .ci/demo and .ci/test; safe to run again (a stamp skips a repeated pip install).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "clinivault setup: creating .venv" >&2
    "$python" -m venv .venv
fi
stamp=".venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "clinivault setup: installing the project and its dependencies into .venv" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
    rm -f .venv/.installed-*
    touch "$stamp"
fi

if [ "${1:-}" = "--e2e" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "clinivault setup: not root; end-to-end tests on loop devices will be skipped" >&2
    else
        need=()
        command -v mkfs.exfat >/dev/null || need+=(exfatprogs)
        command -v mkfs.vfat >/dev/null || need+=(dosfstools)
        command -v mount.exfat-fuse >/dev/null || need+=(exfat-fuse)
        command -v fusefat >/dev/null || need+=(fusefat)
        [ -x /lib/systemd/systemd-udevd ] || need+=(udev)
        command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
        command -v fusermount >/dev/null || command -v fusermount3 >/dev/null || need+=(fuse3)
        command -v tmux >/dev/null || need+=(tmux)
        if [ ${#need[@]} -gt 0 ]; then
            echo "clinivault setup: installing Debian packages: ${need[*]}" >&2
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq
            apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
        fi
        if ! pgrep -x systemd-udevd >/dev/null 2>&1; then
            /lib/systemd/systemd-udevd --daemon || echo "clinivault setup: could not start udevd" >&2
        fi
    fi
fi
