"""``clinivault audit anchor|verify|show``: the auditor's view of the tamper-evident log."""

from __future__ import annotations

import argparse
import json
import sys

from core import audit as auditlog
from core.cli.common import print_json, vault_path
from core.errors import BadInput, VaultError
from core.vault.layout import VaultLayout
from core.vault.vault import opened


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("audit", help="anchor, verify or show the audit log")
    asub = p.add_subparsers(dest="audit_command", metavar="ACTION")
    a = asub.add_parser("anchor", help="print the current (sequence, head hash) to write down")
    a.add_argument("vault")
    a.set_defaults(func=cmd_anchor)
    v = asub.add_parser("verify", help="verify every entry of the log")
    v.add_argument("vault")
    v.add_argument("--key-file", required=True, metavar="F",
                   help="the audit verification key (hex) shown at init")
    v.add_argument("--anchor", action="append", default=[], metavar="SEQ:HASH",
                   help="an anchor written down earlier (repeatable)")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)
    s = asub.add_parser("show", help="print the log")
    s.add_argument("vault")
    s.add_argument("--json", action="store_true", help="one JSON object per line")
    s.set_defaults(func=cmd_show)
    p.set_defaults(func=lambda _a: (_ for _ in ()).throw(
        BadInput("usage: clinivault audit anchor|verify|show VAULT")))


def _layout(value: str) -> VaultLayout:
    layout = VaultLayout(vault_path(value))
    if not layout.audit_log.exists():
        raise VaultError(f"no audit log in {value}", "Check the vault path")
    return layout


def cmd_anchor(args: argparse.Namespace) -> int:
    with opened(vault_path(args.vault), actor="auditor", startup=False) as vault:
        seq, head = vault.audit.anchor()
    print(f"{seq}:{head}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    layout = _layout(args.vault)
    k0 = auditlog.load_key_file(args.key_file)
    anchors = [auditlog.parse_anchor(a) for a in args.anchor]
    result = auditlog.verify_log(layout.audit_log, k0, anchors=anchors,
                                 key_state_path=layout.audit_key)
    if args.json:
        print_json({"ok": result.ok, "entries": result.entries,
                    "first_bad_line": result.first_bad_line, "reason": result.reason,
                    "note": result.note})
    elif result.ok:
        print(f"{result.entries} entries verified"
              + (f" ({result.note})" if result.note else ""))
    else:
        print(f"audit log FAILED verification at line {result.first_bad_line}: {result.reason}"
              f" ({result.entries} entries before it verified)")
    return 0 if result.ok else 1


def cmd_show(args: argparse.Namespace) -> int:
    layout = _layout(args.vault)
    out = sys.stdout
    for entry in auditlog.read_entries(layout.audit_log):
        if args.json:
            out.write(json.dumps(entry, sort_keys=True, ensure_ascii=True) + "\n")
            continue
        safe = auditlog.safe_text
        details = " ".join(f"{safe(str(k))}={safe(str(v))}"
                           for k, v in sorted((entry.get("details") or {}).items()))
        out.write(f"{entry['seq']:>7} {safe(str(entry['time']))} {safe(str(entry['actor']))} "
                  f"{safe(str(entry['event']))} {safe(str(entry.get('session') or '-'))} "
                  f"{details}\n")
    return 0
