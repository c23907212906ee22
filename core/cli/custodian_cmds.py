"""``clinivault find | export | withdraw | backup | restore``: the custodian's headless tools.

Every argument (identifier and its check digit, dates, scopes, destination directories) is
checked before the vault is opened or a passphrase is asked for, so bad input changes
nothing and logs nothing. ``find``, ``export`` and ``withdraw`` unlock the vault with a
custodian passphrase (``--passphrase-file`` for scripts); ``backup`` and ``restore`` copy
ciphertext and need none.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

from core import patient_id as pid
from core.cli.common import config_from, passphrase, print_json, vault_path
from core.config import Config
from core.consent import SCOPES
from core.errors import BadInput
from core.vault.vault import opened


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    f = sub.add_parser("find", help="find sessions by patient ID, keyword or body site")
    f.add_argument("vault")
    f.add_argument("--patient", metavar="ID", help="the patient identifier")
    f.add_argument("--scheme", metavar="|".join(pid.SCHEMES),
                   help="identifier scheme (default: config)")
    f.add_argument("--keyword", metavar="K", help="keyword or diagnosis (part of a word will do)")
    f.add_argument("--body-site", metavar="S", help="body site (part of a word will do)")
    f.add_argument("--since", metavar="YYYY-MM-DD", help="sessions started on or after")
    f.add_argument("--until", metavar="YYYY-MM-DD", help="sessions started on or before")
    f.add_argument("--scope", choices=SCOPES, help="only sessions whose consent covers this")
    f.add_argument("--include-withdrawn", action="store_true",
                   help="also list withdrawn sessions (tombstones)")
    _unlock_args(f)
    f.add_argument("--json", action="store_true", help="print a JSON list")
    f.set_defaults(func=cmd_find)

    e = sub.add_parser("export", help="export sanitised copies for a referral")
    e.add_argument("vault")
    e.add_argument("--session", action="append", default=[], metavar="S",
                   help="session to export (repeatable)")
    e.add_argument("--patient", metavar="ID", help="export every session of this patient")
    e.add_argument("--scheme", metavar="|".join(pid.SCHEMES),
                   help="identifier scheme (default: config)")
    e.add_argument("--to", required=True, metavar="DIR",
                   help="a new or empty directory outside the vault")
    e.add_argument("--scope", choices=SCOPES, default="record",
                   help="purpose: record (referral, default), teaching or publication")
    _unlock_args(e)
    e.add_argument("--json", action="store_true", help="print the manifest as JSON")
    e.set_defaults(func=cmd_export)

    w = sub.add_parser("withdraw", help="record a patient's withdrawal of consent")
    w.add_argument("vault")
    w.add_argument("--session", required=True, metavar="S")
    w.add_argument("--scope", required=True, choices=("teaching", "publication", "all"),
                   help="teaching or publication narrows consent; all destroys the images")
    w.add_argument("--yes", action="store_true",
                   help="confirm --scope all: the session's images are destroyed")
    _unlock_args(w)
    w.add_argument("--json", action="store_true")
    w.set_defaults(func=cmd_withdraw)

    b = sub.add_parser("backup", help="copy new objects, the catalog and the audit log")
    b.add_argument("vault")
    b.add_argument("--to", required=True, metavar="DIR",
                   help="the backup directory (new, empty, or an earlier backup of this vault)")
    b.add_argument("--as", dest="actor", default="custodian", metavar="NAME",
                   help="who runs it, for the audit log")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_backup)

    r = sub.add_parser("restore", help="rebuild a vault from a backup")
    r.add_argument("backup")
    r.add_argument("--to", required=True, metavar="NEWVAULT",
                   help="a new or empty directory for the restored vault")
    r.add_argument("--as", dest="actor", default="custodian", metavar="NAME")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_restore)


def _unlock_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--passphrase-file", metavar="F", help="read the passphrase from F")
    p.add_argument("--custodian", metavar="NAME", help="the custodian whose passphrase it is")


def _patient(args: argparse.Namespace, cfg: Config) -> pid.PatientId | None:
    if not args.patient:
        return None
    scheme = args.scheme or cfg.patient_id.scheme
    pid.scheme_info(scheme)
    return pid.parse_patient_id(args.patient, scheme,
                                allow_test_ids=cfg.patient_id.allow_test_ids,
                                mrn_pattern=cfg.patient_id.mrn_pattern)


def _date(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadInput(f"{option} {value!r} is not a date", "Write it as YYYY-MM-DD") from None


def cmd_find(args: argparse.Namespace) -> int:
    from core.custodian.access import unlock
    from core.custodian.search import Query, search

    cfg = config_from(args)
    query = Query(patient=_patient(args, cfg), keyword=args.keyword, body_site=args.body_site,
                  since=_date(args.since, "--since"), until=_date(args.until, "--until"),
                  scope=args.scope, include_withdrawn=args.include_withdrawn)
    with opened(vault_path(args.vault), actor=args.custodian or "custodian") as vault:
        custodian = unlock(vault, passphrase(args), args.custodian)
        hits = search(custodian, query)
        stats = custodian.index_stats
    if args.json:
        print_json([h.as_dict() for h in hits])
        return 0
    if stats and stats.unsealed:
        n = stats.unsealed
        print(f"(search index brought up to date: {n} session{'s' if n != 1 else ''} added)",
              file=sys.stderr)
    for h in hits:
        print(h.line())
    print(f"{len(hits)} session{'s' if len(hits) != 1 else ''} found")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from core.catalog import session_day
    from core.custodian.access import unlock
    from core.custodian.export import check_destination, export

    cfg = config_from(args)
    patient = _patient(args, cfg)
    for sid in args.session:
        session_day(sid)  # a malformed id is named before anything else
    if bool(args.session) == (patient is not None):
        raise BadInput("name the sessions (--session S) or the patient (--patient ID), not both")
    root = vault_path(args.vault)
    to = Path(args.to)
    check_destination(to, root)
    with opened(root, actor=args.custodian or "custodian") as vault:
        custodian = unlock(vault, passphrase(args), args.custodian)
        result = export(custodian, to=to, scope=args.scope, sessions=args.session,
                        patient=patient, max_pixels=int(cfg.imaging.max_pixels))
    if args.json:
        print_json(result.as_dict())
        return 0
    print(f"{len(result.files)} images exported to {result.directory} ({args.scope}), with "
          "manifest.json and fhir-bundle.json")
    for f in result.files:
        note = " (from " + f.source_format + ")" if f.source_format != "JPEG" else ""
        print(f"  {f.name}{note}")
    if result.not_exported:
        print(f"  not exported: {len(result.not_exported)} RAW/sidecar/video files "
              "(listed in manifest.json)")
    return 0


def cmd_withdraw(args: argparse.Namespace) -> int:
    from core.catalog import session_day
    from core.custodian.access import unlock
    from core.custodian.withdraw import withdraw

    session_day(args.session)  # a malformed id is named before anything else
    if args.scope == "all" and not args.yes:
        raise BadInput("--scope all destroys the session's images and cannot be undone",
                       "Pass --yes to confirm")
    with opened(vault_path(args.vault), actor=args.custodian or "custodian") as vault:
        custodian = unlock(vault, passphrase(args), args.custodian)
        result = withdraw(custodian, args.session, args.scope)
    if args.json:
        print_json(result.as_dict())
    else:
        print(result.line())
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from core.custodian.backup import backup, check_backup_destination

    root = vault_path(args.vault)
    to = vault_path(args.to)
    check_backup_destination(to, root)
    with opened(root, actor=args.actor) as vault:
        stats = backup(vault, to, actor=args.actor)
    if args.json:
        print_json(stats.as_dict())
    else:
        print(f"backup to {to}: {stats.line()}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from core.custodian.backup import restore

    stats = restore(vault_path(args.backup), vault_path(args.to), actor=args.actor)
    if args.json:
        print_json(stats.as_dict())
    else:
        print(f"restored {stats.files} files ({stats.objects} objects, {stats.bytes} bytes) "
              f"into {vault_path(args.to)}; run 'clinivault check' and 'clinivault audit "
              "verify' on it")
    return 0
