"""``clinivault ingest | recover | check``: the ingest session without a screen.

The interface is fixed (scripts and auditors rely on it); see ``clinivault ingest --help``.
Every argument is validated before the vault is opened or the card is read, so bad input
changes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from core import consent as consentmod
from core import patient_id as pid
from core.cli.common import config_from, passphrase, print_json, vault_path
from core.errors import EXIT_FAILED_SAFELY, BadInput
from core.session.card import is_block_device
from core.vault.vault import opened

if TYPE_CHECKING:
    from collections.abc import Callable

    from core.session import IngestSession, Progress, SessionSummary


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("ingest", help="take a card's images into the vault, then wipe the card")
    p.add_argument("vault")
    p.add_argument("--source", required=True,
                   help="the card: a mounted directory, or its block device (/dev/sdb1)")
    p.add_argument("--patient", required=True, metavar="ID", help="the patient identifier")
    p.add_argument("--scheme", metavar="|".join(pid.SCHEMES),
                   help="identifier scheme (default: config)")
    p.add_argument("--consent", required=True, metavar="SCOPES",
                   help="record[,teaching][,publication], or none for consent refused")
    p.add_argument("--method", choices=consentmod.METHODS, help="how consent was given")
    p.add_argument("--obtained-by", required=True, metavar="NAME",
                   help="who obtained consent (or recorded the refusal)")
    p.add_argument("--obtained-by-role", metavar="ROLE", default="clinician",
                   help="their job title (default: clinician)")
    p.add_argument("--body-area", action="append", default=[], metavar="AREA",
                   help="body area photographed (repeatable)")
    p.add_argument("--witness", metavar="NAME", help="witness (method witness, or refusal)")
    p.add_argument("--guardian", metavar="NAME", help="parent/guardian (method guardian)")
    p.add_argument("--guardian-relationship", metavar="REL", help="e.g. mother")
    p.add_argument("--operator", required=True, metavar="ID", help="the operator's user ID")
    p.add_argument("--keyword", action="append", default=[], metavar="K",
                   help="keyword, e.g. a diagnosis (repeatable)")
    p.add_argument("--discard", choices=("auto", "none"), default="auto",
                   help="auto: discard what the quality check flags; none: keep everything")
    p.add_argument("--wipe", choices=("files", "device", "none"), default=None,
                   help="files: overwrite and remove the session's files (default for a "
                        "directory); device: also overwrite and verify the whole card "
                        "(default for a block device); none: leave the card as it is")
    p.add_argument("--destroy-unarchived", action="store_true",
                   help="with --wipe device: the operator confirms that files on the card "
                        "that were not archived (unreadable, not images) are destroyed too")
    p.add_argument("--yes", action="store_true", help="confirm: the card will be wiped")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_ingest)

    r = sub.add_parser("recover", help="finish or roll back an interrupted session")
    r.add_argument("vault")
    r.add_argument("--no-wipe", action="store_true", help="do not finish pending wipes")
    r.set_defaults(func=cmd_recover)

    c = sub.add_parser("check", help="decrypt every object and compare with the catalog")
    c.add_argument("vault")
    c.add_argument("--passphrase-file", metavar="F")
    c.add_argument("--custodian", metavar="NAME")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_check)


def _consent_from(args: argparse.Namespace, statement: str) -> consentmod.ConsentRecord:
    scopes = consentmod.parse_scopes(args.consent)
    if not scopes:
        if not args.witness:
            raise BadInput("consent refused needs --witness NAME: the wipe of a refused "
                           "session is witnessed")
        return consentmod.refuse(recorded_by_name=args.obtained_by,
                                 recorded_by_role=args.obtained_by_role,
                                 witness=args.witness, statement=statement)
    if not args.method:
        raise BadInput("--method is required when consent is given "
                       f"(one of {', '.join(consentmod.METHODS)})")
    return consentmod.grant(
        scopes=scopes, method=args.method, obtained_by_name=args.obtained_by,
        obtained_by_role=args.obtained_by_role,
        body_areas=args.body_area or ["not stated (headless ingest)"], statement=statement,
        witness=args.witness, guardian=args.guardian,
        guardian_relationship=args.guardian_relationship)


def _progress_printer(enabled: bool):  # type: ignore[no-untyped-def]
    last: dict[str, int] = {}

    def show(p: Progress) -> None:
        if not enabled:
            return
        pct = int(100 * p.done / p.total) if p.total else 0
        if last.get(p.step) == pct and p.done != p.total:
            return
        last[p.step] = pct
        sys.stderr.write(f"\r{p.step}: {p.done}/{p.total or '?'} ({pct}%)   ")
        if p.total and p.done >= p.total:
            sys.stderr.write("\n")
        sys.stderr.flush()
    return show


def cmd_ingest(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    scheme = args.scheme or cfg.patient_id.scheme
    pid.scheme_info(scheme)  # an unknown scheme is named before anything else
    patient = pid.parse_patient_id(args.patient, scheme,
                                   allow_test_ids=cfg.patient_id.allow_test_ids,
                                   mrn_pattern=cfg.patient_id.mrn_pattern)
    consent = _consent_from(args, cfg.consent.statement)
    source = Path(args.source)
    if not source.exists():
        raise BadInput(f"card path {source} does not exist")
    if not (source.is_dir() or is_block_device(source)):
        raise BadInput(f"card path {source} is not a directory or a block device",
                       "Give the directory where the card is mounted, or its device")
    if args.wipe == "device" and not is_block_device(source):
        raise BadInput("--wipe device needs the card's block device as --source",
                       "Use --wipe files for a directory")
    if not args.yes:
        raise BadInput("ingest wipes the card after archiving", "Pass --yes to confirm")
    wipe_mode = args.wipe or "auto"
    show = _progress_printer(not args.json and sys.stderr.isatty())
    from core.session import IngestSession  # imaging and quality: only when ingesting
    from core.session.card import open_card

    with opened(vault_path(args.vault), actor=args.operator) as vault:
        card = open_card(source, cfg, vault_root=vault.root)
        try:
            summary = _run_ingest(IngestSession(vault, cfg, card, args.operator), args,
                                  consent, patient, wipe_mode, show)
        finally:
            card.close()
    return _report(summary, args)


def _run_ingest(session: IngestSession, args: argparse.Namespace,
                consent: consentmod.ConsentRecord, patient: pid.PatientId, wipe_mode: str,
                show: Callable[[Progress], None]) -> SessionSummary:
    """The session's steps in order, as the kiosk takes them, answered from the arguments."""
    session.scan(show)
    session.assess(show)
    session.record_consent(consent)
    if consent.granted:
        session.identify(patient)
        if args.discard == "none":
            session.keep_all()
        session.finish_review(args.keyword)
        session.archive(show)
        if wipe_mode == "none":
            session.skip_wipe("--wipe none")
            return session.summary()
    session.wipe(show, mode=wipe_mode, destroy_unarchived=args.destroy_unarchived)
    return session.summary()



def _report(summary: SessionSummary, args: argparse.Namespace) -> int:
    result = summary.as_dict()
    if args.json:
        print_json(result)
    else:
        print(summary.note())
        for r in summary.rejected:
            print(f"  left on the card: {r['file']}: {r['reason']}")
    if summary.wipe is not None and not summary.wipe.complete:
        if not args.json:
            print(f"clinivault: the card was not fully wiped: {summary.wipe.words}",
                  file=sys.stderr)
        return EXIT_FAILED_SAFELY
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from core.session import recover
    with opened(vault_path(args.vault), actor="recovery") as vault:
        results = recover(vault, wipe=not args.no_wipe)
    if not results:
        print("no unfinished sessions")
    for r in results:
        print(r.line())
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from core.check import check_vault
    with opened(vault_path(args.vault), actor=args.custodian or "custodian") as vault:
        private = vault.unlock(passphrase(args), args.custodian)
        report = check_vault(vault, private)
    if args.json:
        print_json({"ok": report.ok, "objects": report.objects_checked,
                    "bytes": report.bytes_checked, "problems": report.problems,
                    "orphans": report.orphans, "missing": report.missing})
    else:
        print("\n".join(report.lines()))
    return 0 if report.ok else EXIT_FAILED_SAFELY
