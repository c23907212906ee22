"""A FHIR R4 ``Bundle`` (type ``collection``) of ``Media`` resources describing an export.

Why FHIR R4 Media: referral systems in NZ and the UK take FHIR R4, where ``Media`` is the
resource for a clinical photograph (R5 replaced it with DocumentReference; R4/R4B still have
it). Each Media points at its exported file by relative URL (the file name, in the same
folder as the bundle) and carries the file's size and SHA-1 (``Attachment.hash`` is base64 of
the SHA-1 of the data, by the R4 definition), so the receiver can check every file.

The subject is given by identifier, with the scheme's system URI from ``core.patient_id``
(NHI, NHS number, CHI); a site MRN has no national system, so it is typed ``MR`` (HL7 v2
table 0203) instead. Exports for teaching or publication carry no subject at all.

``createdDateTime``: FHIR requires a time zone whenever a time is given. A camera that wrote
OffsetTimeOriginal gives one; most do not, and guessing the zone would state something we do
not know, so such images get the capture *date* only (the exact wall-clock time stays in the
file's EXIF and name).
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.patient_id import PatientId, scheme_info

MEDIA_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/media-type"
IDENTIFIER_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0203"


def fhir_hash(data: bytes) -> str:
    """``Attachment.hash``: base64 of the SHA-1 of the data."""
    return base64.b64encode(hashlib.sha1(data, usedforsecurity=False).digest()).decode("ascii")


def fhir_datetime(captured: datetime | None) -> str | None:
    """A valid FHIR dateTime: full with zone when the zone is known, else the date only."""
    if captured is None:
        return None
    if captured.tzinfo is None or captured.utcoffset() is None:
        return captured.date().isoformat()
    text = captured.isoformat()
    return text.replace("+00:00", "Z") if text.endswith("+00:00") else text


def subject_identifier(patient: PatientId) -> dict[str, Any]:
    system = scheme_info(patient.scheme).fhir_system
    if system:
        return {"system": system, "value": patient.value}
    return {"type": {"coding": [{"system": IDENTIFIER_TYPE_SYSTEM, "code": "MR",
                                 "display": "Medical record number"}]},
            "value": patient.value}


@dataclass(frozen=True)
class MediaFile:
    """What the bundle says about one exported file."""

    file_name: str
    data_sha1_b64: str
    size: int
    width: int
    height: int
    captured: datetime | None
    body_site: str | None = None
    device_name: str | None = None


def media_resource(item: MediaFile, patient: PatientId | None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Media",
        "id": str(uuid.uuid4()),
        "status": "completed",
        "type": {"coding": [{"system": MEDIA_TYPE_SYSTEM, "code": "image", "display": "Image"}]},
    }
    if patient is not None:
        resource["subject"] = {"identifier": subject_identifier(patient)}
    created = fhir_datetime(item.captured)
    if created:
        resource["createdDateTime"] = created
    if item.body_site:
        resource["bodySite"] = {"text": item.body_site}
    if item.device_name:
        resource["deviceName"] = item.device_name
    resource["height"] = item.height
    resource["width"] = item.width
    resource["content"] = {"contentType": "image/jpeg", "url": item.file_name,
                           "size": item.size, "hash": item.data_sha1_b64,
                           "title": item.file_name}
    return resource


def bundle(items: list[MediaFile], patient: PatientId | None,
           timestamp: datetime) -> dict[str, Any]:
    """The Bundle document (a JSON-ready dict)."""
    entries = []
    for item in items:
        resource = media_resource(item, patient)
        entries.append({"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource})
    return {"resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "collection",
            "timestamp": fhir_datetime(timestamp), "entry": entries}
