"""``clinivault user add | list``: the kiosk's accounts (operator, custodian, auditor).

Run by whoever sets the kiosk up, with the kiosk app stopped (the vault lock makes one process
its owner). The PIN is read from ``--pin-file`` or asked twice without echo; only its scrypt
hash is stored (``core.users``). Adding an account is an audit event.
"""

from __future__ import annotations

import argparse

from core.cli.common import ask_secret, config_from, print_json, read_secret_file, vault_path
from core.errors import BadInput
from core.users import ROLES, UserStore
from core.vault.vault import opened


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("user", help="add or list kiosk accounts (operators, custodians, "
                                    "auditors)")
    usub = p.add_subparsers(dest="user_command", metavar="ACTION")
    a = usub.add_parser("add", help="add an account with a PIN")
    a.add_argument("vault")
    a.add_argument("id", help="the user ID typed at sign-in (letters, digits, . - _)")
    a.add_argument("--role", required=True, choices=ROLES)
    a.add_argument("--pin-file", metavar="F", help="read the PIN from the first line of F")
    a.add_argument("--by", metavar="NAME", default="cli",
                   help="who is adding the account (for the audit log)")
    a.set_defaults(func=cmd_user_add)
    ls = usub.add_parser("list", help="list accounts and their roles")
    ls.add_argument("vault")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_user_list)
    p.set_defaults(func=lambda _a: (_ for _ in ()).throw(
        BadInput("usage: clinivault user add|list VAULT ...")))


def cmd_user_add(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    pin = (read_secret_file(args.pin_file, "PIN") if args.pin_file
           else ask_secret(f"PIN for {args.id}: ", confirm=True, what="PIN"))
    with opened(vault_path(args.vault), actor=args.by) as vault:
        store = UserStore.for_vault(vault.root, cfg)
        user = store.add(args.id, args.role, pin)
        vault.audit.append(args.by, "user.added", None, {"user": user.id, "role": user.role})
    print(f"User {user.id} added ({user.role}).")
    return 0


def cmd_user_list(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    with opened(vault_path(args.vault), actor="cli", startup=False) as vault:
        users = UserStore.for_vault(vault.root, cfg).users()
    if args.json:
        print_json([{"id": u.id, "role": u.role, "created": u.created,
                     "locked": u.locked_until is not None} for u in users])
        return 0
    if not users:
        print("no accounts (add one with 'clinivault user add VAULT ID --role operator')")
    for u in users:
        print(f"{u.id:<20} {u.role:<10} created {u.created}")
    return 0
