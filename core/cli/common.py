"""Helpers shared by the command modules: config, passphrases, vault opening, output."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import unicodedata
from pathlib import Path
from typing import Any

from core.config import Config, load_config
from core.errors import BadInput


def config_from(args: argparse.Namespace) -> Config:
    return load_config(getattr(args, "config", None))


def normalise_secret(raw: bytes, what: str = "passphrase") -> bytes:
    """UTF-8 in NFC: the same passphrase typed on two keyboards must derive the same key."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(f"the {what} is not UTF-8 text") from None
    return unicodedata.normalize("NFC", text).encode("utf-8")


def read_secret_file(path: str, what: str = "passphrase") -> bytes:
    """The first line of *path*, without its newline (scripts and tests pass secrets this way)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(64 * 1024)
    except FileNotFoundError:
        raise BadInput(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise BadInput(f"{what} file {path} is a directory") from None
    except PermissionError:
        raise BadInput(f"{what} file {path} is not readable") from None
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not line:
        raise BadInput(f"{what} file {path} is empty")
    return normalise_secret(line, what)


def ask_secret(prompt: str, *, confirm: bool = False, what: str = "passphrase") -> bytes:
    """Prompt on the terminal without echo; refuse when there is no terminal to ask on."""
    if not sys.stdin.isatty():
        raise BadInput(f"no {what} given and no terminal to ask on",
                       f"Pass --{what}-file FILE")
    first = getpass.getpass(prompt)
    if confirm and getpass.getpass("Again: ") != first:
        raise BadInput(f"the two {what}s differ")
    return normalise_secret(first.encode("utf-8", "surrogateescape"), what)


def passphrase(args: argparse.Namespace, *, confirm: bool = False,
               attr: str = "passphrase_file", prompt: str = "Custodian passphrase: ") -> bytes:
    path = getattr(args, attr, None)
    if path:
        return read_secret_file(path)
    return ask_secret(prompt, confirm=confirm)


def vault_path(value: str) -> Path:
    return Path(os.path.abspath(value))


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, ensure_ascii=True)
    sys.stdout.write("\n")
