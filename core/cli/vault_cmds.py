"""``clinivault init`` and ``clinivault custodian add``: creating a vault and its key slots."""

from __future__ import annotations

import argparse
import io
import os
import sys

from core.cli.common import config_from, passphrase, print_json, read_secret_file, vault_path
from core.errors import BadInput
from core.fsutil import atomic_write_bytes
from core.vault.vault import Vault, opened

AUDIT_KEY_WARNING = """\
AUDIT VERIFICATION KEY — shown once. Write it down or print it and store it OFFLINE,
away from this kiosk (auditors need it to verify the audit log; anyone who steals the
kiosk later cannot alter earlier log entries without it showing)."""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("init", help="create a new vault")
    p.add_argument("vault", help="directory for the new vault (new or empty)")
    p.add_argument("--custodian", required=True, help="name of the first custodian")
    p.add_argument("--passphrase-file", metavar="F", help="read the passphrase from F")
    p.add_argument("--audit-key-file", metavar="K",
                   help="also write the audit verification key to K (mode 0600)")
    p.add_argument("--no-qr", action="store_true", help="do not print the key as a QR code")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_init)

    c = sub.add_parser("custodian", help="manage custodian key slots")
    csub = c.add_subparsers(dest="custodian_command", metavar="ACTION")
    a = csub.add_parser("add", help="add a key slot for another custodian")
    a.add_argument("vault")
    a.add_argument("name", help="the new custodian's name")
    a.add_argument("--passphrase-file", metavar="F",
                   help="an existing custodian's passphrase (to unlock)")
    a.add_argument("--as", dest="unlock_as", metavar="NAME",
                   help="the existing custodian whose passphrase is given")
    a.add_argument("--new-passphrase-file", metavar="F", help="the new custodian's passphrase")
    a.set_defaults(func=cmd_custodian_add)


def _qr(text: str) -> str:
    try:
        import segno
    except ImportError:  # pragma: no cover - segno is a declared dependency
        return ""
    buf = io.StringIO()
    segno.make(text, error="m").terminal(out=buf, compact=True, border=2)
    return buf.getvalue()


def cmd_init(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    root = vault_path(args.vault)
    if args.audit_key_file and os.path.exists(args.audit_key_file):
        raise BadInput(f"audit key file {args.audit_key_file} already exists",
                       "Name a new file; an existing key file is never overwritten")
    secret = passphrase(args, confirm=True, prompt=f"Passphrase for custodian {args.custodian}: ")
    vault, k0 = Vault.init(root, args.custodian, secret, scrypt_log_n=cfg.vault.scrypt_log_n)
    try:
        if args.audit_key_file:
            atomic_write_bytes(args.audit_key_file, (k0.hex() + "\n").encode())
        seq, head = vault.audit.anchor()
    finally:
        vault.close()
    if args.json:
        print_json({"vault": str(root), "custodian": args.custodian, "audit_key": k0.hex(),
                    "anchor": f"{seq}:{head}"})
        return 0
    out = sys.stdout
    out.write(f"Vault created at {root} with custodian {args.custodian}.\n\n")
    out.write(AUDIT_KEY_WARNING + "\n\n")
    out.write(f"    {k0.hex()}\n\n")
    if not args.no_qr and out.isatty():
        out.write(_qr(k0.hex()))
    if args.audit_key_file:
        out.write(f"(also written to {args.audit_key_file})\n")
    return 0


def cmd_custodian_add(args: argparse.Namespace) -> int:
    if getattr(args, "custodian_command", None) != "add":
        raise BadInput("usage: clinivault custodian add VAULT NAME")
    cfg = config_from(args)
    with opened(vault_path(args.vault), actor=args.unlock_as or "custodian") as vault:
        existing = passphrase(args, prompt="An existing custodian's passphrase: ")
        private = vault.unlock(existing, args.unlock_as)
        if args.new_passphrase_file:
            new = read_secret_file(args.new_passphrase_file)
        else:
            new = passphrase(argparse.Namespace(), confirm=True,
                             prompt=f"Passphrase for custodian {args.name}: ")
        vault.add_custodian(private, args.name, new, scrypt_log_n=cfg.vault.scrypt_log_n,
                            actor=args.unlock_as or "custodian")
        slots = len(vault.keyfile.slots)
    print(f"Custodian {args.name} added ({slots} key slots).")
    return 0
