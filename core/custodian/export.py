"""Export for referral: sanitised JPEG copies, a manifest and a FHIR bundle, all or nothing.

Why each rule:

* **Sanitised copies only** (``core.custodian.sanitise``): the archived originals stay in the
  vault bit-exact; what leaves carries no location, maker note, XMP, IPTC, comment or
  thumbnail, and is upright.
* **Names** ``ID-YYYYMMDD-HHMMSS-NN.jpg``: the receiving clinic files by patient and capture
  time; NN (from 01) orders the images taken within one second. The time is the camera's wall
  clock as it recorded it (no zone conversion: that is what the EXIF inside says too). When an
  image has no capture time, the session's start (UTC) is used and the manifest says so.
* **Teaching and publication** exports use ``P01``, ``P02`` ... instead of the patient ID, and
  the manifest and FHIR bundle carry no identifier: consent to teaching is consent to show the
  image, not to disclose who it is. A health-record (referral) export is for one patient only.
* **Consent**: an export for teaching or publication is refused, whole, when any selected
  image's consent does not cover it; the message lists the sessions and counts. A partial
  export would look complete to whoever receives it.
* **Not exported**: RAW files and sidecars (a referral needs the image, and a sidecar can hold
  anything, including a second copy of the location) and videos; each is listed in the
  manifest with its reason. Non-JPEG images (PNG, TIFF, HEIF) are exported as JPEG.
* **The destination** must be a new or empty directory outside the vault, with no ``--force``:
  an export folder is handed over whole, and mixing it with earlier files risks sending one
  patient's images with another's manifest.
* **Atomic**: every file is written and fsynced into a hidden staging directory inside the
  destination (``.tmp-export-…``, same file system), checked, then renamed into place; any
  failure removes everything this export wrote, so the destination is left as it was.
  Decrypted originals exist only in memory.
* **Audit**: one "export" entry with counts, scope and session ids — never the patient ID.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.consent import SCOPES
from core.custodian import fhir
from core.custodian.access import Custodian, SessionSecrets
from core.custodian.sanitise import Sanitised, sanitise_image
from core.custodian.search import sessions_of
from core.errors import BadInput, ClinivaultError, FailedSafely, IntegrityError
from core.fsutil import DIR_MODE, FILE_MODE, TEMP_PREFIX, fsync_dir
from core.patient_id import PatientId, scheme_info

FORMAT = "clinivault-export/v1"
MANIFEST = "manifest.json"
BUNDLE = "fhir-bundle.json"
STAGING_PREFIX = f"{TEMP_PREFIX}export-"
DEFAULT_MAX_PIXELS = 200_000_000
MAX_EXPORT_BYTES = 512 * 1024 * 1024  # as DecodeLimits.max_file_mb: larger is no photograph

NOT_EXPORTED_REASONS = {
    "raw": "camera RAW files are not exported (the image from the same shot is)",
    "sidecar": "sidecar files are not exported (they can hold any metadata)",
    "video": "videos are not exported",
}
NOTES = [
    "Files are sanitised copies: pixels re-encoded as JPEG (quality 95, 4:4:4), orientation "
    "applied; EXIF rebuilt from an allow-list (Make, Model, Orientation=1, DateTimeOriginal, "
    "OffsetTimeOriginal, SubSecTimeOriginal); no GPS, maker notes, XMP, IPTC, comments or "
    "embedded thumbnail; ICC profile kept. The originals stay in the vault unchanged.",
    "Images archived as PNG, TIFF or HEIF are exported as JPEG.",
    "RAW files, sidecars and videos are not exported; see not_exported.",
]
_FILENAME_SAFE = re.compile(r"[^A-Za-z0-9_-]")


class ConsentNotGiven(BadInput):
    """The consent of some selected images does not cover the export's purpose."""


@dataclass(frozen=True)
class ExportedFile:
    name: str
    sha256: str
    size: int
    session: str
    source_object: str
    source_sha256: str
    source_format: str
    captured: str | None
    captured_from: str
    width: int
    height: int
    orientation_applied: int
    icc_kept: bool

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.name, "sha256": self.sha256, "size": self.size,
                "session": self.session, "source_object": self.source_object,
                "source_sha256": self.source_sha256, "source_format": self.source_format,
                "converted_to_jpeg": self.source_format != "JPEG", "captured": self.captured,
                "captured_from": self.captured_from, "width": self.width,
                "height": self.height, "orientation_applied": self.orientation_applied,
                "icc_profile_kept": self.icc_kept}


@dataclass
class ExportResult:
    directory: Path
    scope: str
    sessions: list[str]
    files: list[ExportedFile] = field(default_factory=list)
    not_exported: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "scope": self.scope,
                "sessions": self.sessions, "files": [f.as_dict() for f in self.files],
                "not_exported": self.not_exported}


@dataclass
class _Planned:
    session: str
    object_id: str
    sha256: str
    size: int
    index: int
    captured: datetime
    captured_text: str | None
    captured_from: str
    label: str
    body_site: str | None
    name: str = ""


# -- destination ------------------------------------------------------------------------------


def check_destination(to: Path, vault_root: Path) -> bool:
    """Refuse a destination inside the vault or not empty; return True if it must be created.

    Called by the CLI before the vault is opened (bad input changes nothing) and again by
    :func:`export`.
    """
    dest = Path(os.path.realpath(to))
    vault = Path(os.path.realpath(vault_root))
    if dest == vault or vault in dest.parents:
        raise BadInput(f"{to} is inside the vault", "Export to a directory outside the vault")
    if dest.exists():
        if not dest.is_dir():
            raise BadInput(f"{to} exists and is not a directory")
        entries = sorted(os.listdir(dest))
        if entries:
            if all(e.startswith(STAGING_PREFIX) for e in entries):
                raise BadInput(f"{to} holds an unfinished export ({entries[0]})",
                               "Delete it, or export to a new directory")
            raise BadInput(f"{to} is not empty",
                           "Export to a new or empty directory (an export is handed over whole)")
        if not os.access(dest, os.W_OK | os.X_OK):
            raise BadInput(f"{to} is not writable")
        return False
    if not dest.parent.is_dir():
        raise BadInput(f"{dest.parent} does not exist", "Create the parent directory first")
    return True


# -- planning ---------------------------------------------------------------------------------


def _parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _capture(meta: dict[str, Any], obj: dict[str, Any], started: str
             ) -> tuple[datetime, str | None, str]:
    for source, value in (("exif", meta.get("captured")), ("exif", obj.get("captured"))):
        when = _parse_time(value)
        if when is not None:
            return when, value, source
    when = _parse_time(started) or datetime.now(UTC)
    return when, None, "session start (UTC): the image has no capture time"


def _file_label(patient: PatientId) -> str:
    return _FILENAME_SAFE.sub("_", patient.value) or "UNKNOWN"


def _select(custodian: Custodian, sessions: list[str], patient: PatientId | None
            ) -> list[tuple[dict[str, Any], SessionSecrets]]:
    if patient is not None:
        sessions = sessions_of(custodian, patient)
        if not sessions:
            raise BadInput(f"no sessions with images for this {scheme_info(patient.scheme).label}",
                           "Check the identifier and scheme ('clinivault find --patient ID')")
    chosen = []
    for sid in dict.fromkeys(sessions):
        record = custodian.record(sid)
        if record.get("tombstone") is not None:
            raise BadInput(f"session {sid} was withdrawn; it holds no images")
        secrets = custodian.secrets(record)
        if patient is not None and secrets.patient != patient:
            continue  # the index was stale for this session; the sealed record decides
        if secrets.consent is None or not secrets.consent.granted or secrets.patient is None:
            raise BadInput(f"session {sid} has no consented images (consent was refused)")
        chosen.append((record, secrets))
    if not chosen:
        raise BadInput("no sessions with images to export")
    return chosen


def plan_export(custodian: Custodian, chosen: list[tuple[dict[str, Any], SessionSecrets]],
                scope: str) -> tuple[list[_Planned], list[dict[str, Any]], PatientId | None]:
    """Which images go out under which names, and which objects do not (with reasons)."""
    patients = list(dict.fromkeys(s.patient for _r, s in chosen if s.patient is not None))
    if scope == "record" and len(patients) > 1:
        raise BadInput("the sessions belong to different patients",
                       "A referral export is for one patient: export them separately")
    uncovered: dict[str, int] = {}
    planned: list[_Planned] = []
    skipped: list[dict[str, Any]] = []
    for record, secrets in chosen:
        sid = record["session"]
        assert secrets.consent is not None and secrets.patient is not None
        label = (_file_label(secrets.patient) if scope == "record"
                 else f"P{patients.index(secrets.patient) + 1:02d}")
        for obj in record.get("objects") or []:
            if obj["kind"] != "image":
                skipped.append({"session": sid, "source_object": obj["id"], "kind": obj["kind"],
                                "reason": NOT_EXPORTED_REASONS.get(obj["kind"], "not an image")})
                continue
            if obj["size"] > MAX_EXPORT_BYTES:
                skipped.append({"session": sid, "source_object": obj["id"], "kind": obj["kind"],
                                "reason": "too large to re-encode as a photograph"})
                continue
            if not secrets.consent.covers(scope):
                uncovered[sid] = uncovered.get(sid, 0) + 1
                continue
            meta = secrets.objects.get(obj["id"], {})
            when, text, source = _capture(meta, obj, record["started"])
            site = meta.get("body_site") if isinstance(meta.get("body_site"), str) else None
            planned.append(_Planned(sid, obj["id"], obj["sha256"], obj["size"], obj["index"],
                                    when, text, source, label, (site or "").strip() or None))
    if uncovered:
        total = sum(uncovered.values())
        listing = ", ".join(f"{sid}: {n}" for sid, n in uncovered.items())
        raise ConsentNotGiven(
            f"consent does not cover {scope} for {total} image{'s' if total != 1 else ''} "
            f"({listing}); nothing was exported",
            "Export only sessions whose consent covers it, or --scope record for a referral")
    if not planned:
        raise BadInput("the selected sessions hold no images to export"
                       + (f" ({len(skipped)} RAW/sidecar/video objects are never exported)"
                          if skipped else ""))
    _name(planned)
    return planned, skipped, patients[0] if scope == "record" else None


def _name(planned: list[_Planned]) -> None:
    """``LABEL-YYYYMMDD-HHMMSS-NN.jpg``; NN counts images of one label within one second."""
    planned.sort(key=lambda p: (p.label, p.captured.strftime("%Y%m%d%H%M%S%f"), p.session,
                                p.index))
    counters: dict[str, int] = {}
    for p in planned:
        stem = f"{p.label}-{p.captured:%Y%m%d-%H%M%S}"
        counters[stem] = counters.get(stem, 0) + 1
        p.name = f"{stem}-{counters[stem]:02d}.jpg"


# -- writing ----------------------------------------------------------------------------------


def _decrypt(custodian: Custodian, p: _Planned) -> bytes:
    buf = io.BytesIO()
    size = custodian.vault.objects.open_plaintext(p.object_id, custodian.private, buf)
    data = buf.getvalue()
    if size != p.size or hashlib.sha256(data).hexdigest() != p.sha256:
        raise IntegrityError(f"object {p.object_id} (session {p.session}) does not match the "
                             "catalog's SHA-256; nothing was exported",
                             "Run 'clinivault check' and restore it from a backup")
    return data


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 FILE_MODE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def export(custodian: Custodian, *, to: Path, scope: str = "record",
           sessions: list[str] | None = None, patient: PatientId | None = None,
           max_pixels: int = DEFAULT_MAX_PIXELS,
           progress: Callable[[int, int], None] | None = None) -> ExportResult:
    """Export the images of *sessions* (or of every session of *patient*) into *to*."""
    if scope not in SCOPES:
        raise BadInput(f"unknown export scope {scope!r} (known: {', '.join(SCOPES)})")
    if bool(sessions) == (patient is not None):
        raise BadInput("name the sessions (--session S) or the patient (--patient ID), not both")
    create = check_destination(to, custodian.vault.root)
    chosen = _select(custodian, list(sessions or []), patient)
    planned, skipped, subject = plan_export(custodian, chosen, scope)
    dest = Path(os.path.realpath(to))
    result = ExportResult(dest, scope, [r["session"] for r, _s in chosen], [], skipped)
    created_dir = False
    staging: Path | None = None
    placed: list[Path] = []
    try:
        if create:
            dest.mkdir(mode=DIR_MODE)
            created_dir = True
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=dest))
        media: list[fhir.MediaFile] = []
        for n, p in enumerate(planned):
            clean = sanitise_image(_decrypt(custodian, p), max_pixels=max_pixels)
            _write_new(staging / p.name, clean.data)
            result.files.append(_exported(p, clean))
            media.append(fhir.MediaFile(
                file_name=p.name, data_sha1_b64=fhir.fhir_hash(clean.data),
                size=len(clean.data), width=clean.width, height=clean.height,
                captured=p.captured if p.captured_text else None, body_site=p.body_site))
            if progress:
                progress(n + 1, len(planned))
        now = datetime.now(UTC).replace(microsecond=0)
        _write_new(staging / MANIFEST, _json_bytes(_manifest(result, subject, now)))
        _write_new(staging / BUNDLE, _json_bytes(fhir.bundle(media, subject, now)))
        fsync_dir(staging)
        for name in [*(f.name for f in result.files), MANIFEST, BUNDLE]:
            target = dest / name
            if os.path.lexists(target):
                raise FailedSafely(f"{target} appeared while exporting; nothing was exported")
            os.rename(staging / name, target)
            placed.append(target)
        fsync_dir(dest)
        staging.rmdir()
        staging = None
    except BaseException as exc:
        for target in placed:
            with contextlib.suppress(OSError):
                target.unlink()
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if created_dir:
            shutil.rmtree(dest, ignore_errors=True)
        with contextlib.suppress(OSError):
            fsync_dir(dest if dest.exists() else dest.parent)
        with contextlib.suppress(ClinivaultError, OSError):
            custodian.vault.audit.append(custodian.actor, "export.failed", None, {
                "scope": scope, "sessions": result.sessions, "images": len(planned),
                "error": type(exc).__name__})
        if isinstance(exc, OSError):
            raise FailedSafely(f"writing the export failed ({exc.strerror or exc}); nothing "
                               "was exported", "Check the destination disk and try again"
                               ) from exc
        raise
    custodian.vault.audit.append(
        custodian.actor, "export", result.sessions[0] if len(result.sessions) == 1 else None,
        {"scope": scope, "images": len(result.files), "sessions": result.sessions,
         "not_exported": len(skipped),
         "converted": sum(1 for f in result.files if f.source_format != "JPEG")})
    return result


def _exported(p: _Planned, clean: Sanitised) -> ExportedFile:
    return ExportedFile(
        name=p.name, sha256=hashlib.sha256(clean.data).hexdigest(), size=len(clean.data),
        session=p.session, source_object=p.object_id, source_sha256=p.sha256,
        source_format=clean.source_format, captured=p.captured_text,
        captured_from=p.captured_from, width=clean.width, height=clean.height,
        orientation_applied=clean.orientation, icc_kept=clean.icc_kept)


def _manifest(result: ExportResult, subject: PatientId | None, now: datetime) -> dict[str, Any]:
    patient = None
    if subject is not None:
        patient = {"scheme": subject.scheme, "value": subject.value,
                   "system": scheme_info(subject.scheme).fhir_system}
    return {"format": FORMAT, "created": now.isoformat().replace("+00:00", "Z"),
            "scope": result.scope, "patient": patient, "sessions": result.sessions,
            "files": [f.as_dict() for f in result.files],
            "not_exported": result.not_exported, "fhir_bundle": BUNDLE, "notes": NOTES}
