"""Export for referral, end to end: real camera JPEGs (GPS, maker notes, thumbnails, XMP,
orientation 3 and 6, ICC) ingested into a real vault, exported through the CLI, and every
output file checked with Pillow *and* by searching its bytes; the manifest and the FHIR R4
bundle checked against the files; consent, destination and failure rules each tested.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from PIL import ExifTags, Image, ImageChops, ImageOps, ImageStat

from core.config import Config, load_config
from core.custodian.sanitise import SanitiseError, sanitise_image, verify_clean
from core.patient_id import scheme_info
from core.vault.vault import Vault
from tests.conftest import MEDIA, TEST_OVERRIDES
from tests.helpers.cards import jpeg_bytes
from tests.helpers.custodian import (
    VaultFiles,
    audit_events,
    ingest,
    make_card,
    new_vault,
    run_cli,
    sha256,
)

NHI_SYSTEM = "https://standards.digital.health.nz/ns/nhi-id"
XMP_MARKERS = (b"http://ns.adobe.com/xap", b"<x:xmpmeta", b"<?xpacket")
FHIR_DATETIME = re.compile(
    r"\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2}))?)?)?")
ALLOWED_IFD0 = {ExifTags.Base.Make, ExifTags.Base.Model, ExifTags.Base.Orientation,
                ExifTags.IFD.Exif}
ALLOWED_EXIF = {ExifTags.Base.DateTimeOriginal, ExifTags.Base.OffsetTimeOriginal,
                ExifTags.Base.SubsecTimeOriginal}


def camera_files() -> list[Path]:
    return sorted((MEDIA / "gps").glob("*.jpg")) + sorted((MEDIA / "plain").glob("*.jpg"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The shared media ingested as one session (every image kept) and exported once."""
    if not MEDIA.is_dir():
        pytest.skip(f"shared test media not found at {MEDIA}")
    base = tmp_path_factory.mktemp("export")
    cfg = load_config(use_env=False, overrides=TEST_OVERRIDES)
    vf = new_vault(base, cfg)
    files: dict[str, bytes | Path] = {p.name: p for p in camera_files()}
    files["hopper.png"] = MEDIA / "plain" / "plain07_hopper.png"
    card = make_card(base / "card", files)
    sid = ingest(vf.root, cfg, card, per_item={0: {"body_site": "left cheek"}})
    out = base / "referral"
    r = run_cli("--config", str(vf.site), "export", str(vf.root), "--patient", "zac 5361",
                "--to", str(out), *vf.unlock_args(), "--json")
    assert r.code == 0, r.err
    manifest = json.loads((out / "manifest.json").read_text())
    by_source = {m["source_sha256"]: m for m in manifest["files"]}
    originals = {sha256(p): p for p in (card / "DCIM" / "100TEST").iterdir()}
    return {"vf": vf, "cfg": cfg, "out": out, "manifest": manifest, "sid": sid,
            "pairs": [(originals[s], out / m["file"], m) for s, m in by_source.items()],
            "result": r.json()}


def _gps_rational_bytes(original: bytes) -> list[bytes]:
    """The original's GPSLatitude/GPSLongitude rationals exactly as its EXIF stores them."""
    img = Image.open(io.BytesIO(original))
    exif = img.getexif()
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    raw = img.info["exif"]
    order = "<" if raw[6:8] == b"II" else ">"
    found = []
    for tag in (2, 4):  # GPSLatitude, GPSLongitude
        value = gps.get(tag)
        if not value or not any(float(v) for v in value):
            continue
        packed = b"".join(struct.pack(order + "II", v.numerator, v.denominator) for v in value)
        assert packed in original  # the search below is meaningful
        found.append(packed)
    return found


def _pixel_difference(a: Image.Image, b: Image.Image) -> float:
    size = (64, 64)
    da = a.convert("RGB").resize(size)
    db = b.convert("RGB").resize(size)
    return sum(ImageStat.Stat(ImageChops.difference(da, db)).mean) / 3


def test_every_exported_camera_image_is_clean_upright_and_keeps_capture_time(
        exported: dict[str, Any]) -> None:
    pairs = exported["pairs"]
    assert len(pairs) == len(camera_files()) + 1
    gps_checked = orientation6 = icc_checked = 0
    for original_path, out_path, entry in pairs:
        original = original_path.read_bytes()
        data = out_path.read_bytes()
        src = Image.open(io.BytesIO(original))
        out = Image.open(io.BytesIO(data))
        assert out.format == "JPEG"
        exif = out.getexif()
        # Pillow's view: only allow-listed tags, no GPS, no maker note, no IFD1 thumbnail.
        assert set(exif) <= ALLOWED_IFD0, (out_path.name, set(exif))
        assert exif.get_ifd(ExifTags.IFD.GPSInfo) == {}
        assert ExifTags.IFD.GPSInfo not in exif
        assert set(exif.get_ifd(ExifTags.IFD.Exif)) <= ALLOWED_EXIF
        assert ExifTags.Base.MakerNote not in exif.get_ifd(ExifTags.IFD.Exif)
        assert exif.get_ifd(ExifTags.IFD.IFD1) == {}
        assert exif.get(ExifTags.Base.Orientation) == 1
        assert not {"xmp", "XML:com.adobe.xmp", "comment", "photoshop", "adobe"} & set(out.info)
        # The bytes: no XMP, no IPTC/Photoshop block, no GPS or maker-note IFD entries.
        for marker in XMP_MARKERS:
            assert marker not in data, (out_path.name, marker)
        assert b"Photoshop 3.0" not in data and b"\xff\xed" not in data
        assert b"\xff\xfe" not in data.split(b"\xff\xda", 1)[0]  # no COM before the scan
        for structure in (b"\x88\x25\x00\x04", b"\x25\x88\x04\x00",  # GPS IFD pointer
                          b"\x92\x7c\x00\x07", b"\x7c\x92\x07\x00"):  # MakerNote entry
            assert structure not in data, (out_path.name, structure)
        app1 = data[data.index(b"\xff\xe1"):]
        app1 = app1[:4 + int.from_bytes(app1[2:4], "big")]
        assert b"\xff\xd8" not in app1  # no embedded thumbnail JPEG
        assert data.count(b"\xff\xd8") == 1
        if entry["source_format"] == "JPEG" and src.getexif().get_ifd(ExifTags.IFD.GPSInfo):
            for packed in _gps_rational_bytes(original):
                assert packed not in data
                gps_checked += 1
        # Orientation applied to the pixels, exactly as exif_transpose would.
        upright = ImageOps.exif_transpose(src)
        assert out.size == upright.size
        assert _pixel_difference(out, upright) < 6, out_path.name
        orientation = src.getexif().get(ExifTags.Base.Orientation, 1)
        assert entry["orientation_applied"] == orientation
        if orientation == 6:
            orientation6 += 1
            assert out.size == (src.size[1], src.size[0])
            assert _pixel_difference(out, src.rotate(90, expand=True)) > 20
        if orientation == 3:
            assert _pixel_difference(out, src) > _pixel_difference(out, upright) + 10
        # Capture time kept, and the name made from it.
        src_sub = src.getexif().get_ifd(ExifTags.IFD.Exif)
        dto = src_sub.get(ExifTags.Base.DateTimeOriginal)
        if dto:
            assert exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] == dto
            stamp = dto.replace(":", "").replace(" ", "-")
            assert out_path.name == f"ZAC5361-{stamp}-01.jpg"
        # ICC profile kept when the original had one.
        if src.info.get("icc_profile"):
            assert out.info.get("icc_profile") == src.info["icc_profile"]
            icc_checked += 1
        else:
            assert "icc_profile" not in out.info
    assert gps_checked >= 5 and orientation6 == 1 and icc_checked == 2


def test_manifest_names_hashes_and_sources(exported: dict[str, Any]) -> None:
    manifest, out, vf = exported["manifest"], exported["out"], exported["vf"]
    assert manifest["format"] == "clinivault-export/v1" and manifest["scope"] == "record"
    assert manifest["patient"] == {"scheme": "nhi", "value": "ZAC5361", "system": NHI_SYSTEM}
    assert manifest["sessions"] == [exported["sid"]]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([m["file"] for m in manifest["files"]]
                           + ["fhir-bundle.json", "manifest.json"])
    catalog = json.loads(next((vf.root / "catalog").glob("*.json")).read_text())
    record = next(iter(catalog["sessions"].values()))
    object_ids = {o["id"] for o in record["objects"]}
    for m in manifest["files"]:
        assert re.fullmatch(r"ZAC5361-\d{8}-\d{6}-\d{2}\.jpg", m["file"])
        assert sha256(out / m["file"]) == m["sha256"]
        assert (out / m["file"]).stat().st_size == m["size"]
        assert m["source_object"] in object_ids
    png = [m for m in manifest["files"] if m["source_format"] == "PNG"]
    assert len(png) == 1 and png[0]["converted_to_jpeg"] is True
    assert png[0]["captured_from"].startswith("session start")
    assert any("exported as JPEG" in n for n in manifest["notes"])
    assert exported["result"]["files"] == manifest["files"]


def test_fhir_bundle_is_an_r4_collection_of_media_matching_the_files(
        exported: dict[str, Any]) -> None:
    out = exported["out"]
    bundle = json.loads((out / "fhir-bundle.json").read_text())
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    assert FHIR_DATETIME.fullmatch(bundle["timestamp"])
    entries = bundle["entry"]
    assert len(entries) == len(exported["manifest"]["files"])
    ids = set()
    for entry in entries:
        media = entry["resource"]
        assert entry["fullUrl"] == f"urn:uuid:{media['id']}"
        assert re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", media["id"])
        ids.add(media["id"])
        assert media["resourceType"] == "Media"
        assert media["status"] == "completed"
        assert media["subject"] == {"identifier": {"system": NHI_SYSTEM, "value": "ZAC5361"}}
        assert scheme_info("nhi").fhir_system == NHI_SYSTEM
        content = media["content"]
        data = (out / content["url"]).read_bytes()
        assert content["contentType"] == "image/jpeg"
        assert content["title"] == content["url"]
        assert content["size"] == len(data)
        assert content["hash"] == base64.b64encode(hashlib.sha1(data).digest()).decode()
        assert (media["width"], media["height"]) == Image.open(io.BytesIO(data)).size
        if "createdDateTime" in media:
            assert FHIR_DATETIME.fullmatch(media["createdDateTime"])
            # These cameras wrote no zone: FHIR then allows the date only.
            assert content["url"][8:16] == media["createdDateTime"].replace("-", "")
        assert set(media) <= {"resourceType", "id", "status", "type", "subject",
                              "createdDateTime", "bodySite", "deviceName", "height", "width",
                              "content"}
    assert len(ids) == len(entries)
    assert sum(1 for e in entries if e["resource"].get("bodySite") == {"text": "left cheek"}) == 1


def test_fhir_bundle_parses_with_fhir_resources(exported: dict[str, Any]) -> None:
    pytest.importorskip("fhir.resources", reason="fhir.resources is a test-only dependency")
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.media import Media

    raw = json.loads((exported["out"] / "fhir-bundle.json").read_text())
    bundle = Bundle.model_validate(raw)
    assert all(isinstance(e.resource, Media) for e in bundle.entry)
    assert bundle.entry[0].resource.subject.identifier.system == NHI_SYSTEM
    broken = json.loads(json.dumps(raw))
    broken["entry"][0]["resource"]["createdDateTime"] = "2008-10-22T16:28:39"  # no zone
    with pytest.raises(ValueError):
        Bundle.model_validate(broken)


def test_export_is_audited_with_counts_and_no_patient_id(exported: dict[str, Any]) -> None:
    root = exported["vf"].root
    events = [e for e in audit_events(root) if e["event"] == "export"]
    assert len(events) == 1
    assert events[0]["details"]["images"] == len(exported["manifest"]["files"])
    assert events[0]["details"]["scope"] == "record"
    assert events[0]["details"]["converted"] == 1
    assert b"ZAC5361" not in (root / "audit" / "log.jsonl").read_bytes()


def test_the_sanitiser_check_refuses_what_camera_files_carry() -> None:
    if not MEDIA.is_dir():
        pytest.skip(f"shared test media not found at {MEDIA}")
    with pytest.raises(SanitiseError, match="GPS"):
        verify_clean((MEDIA / "gps" / "gps01_nikon-coolpix-p6000.jpg").read_bytes())
    with pytest.raises(SanitiseError, match="thumbnail"):
        verify_clean((MEDIA / "plain" / "plain05_nikon-e950.jpg").read_bytes())
    clean = sanitise_image(jpeg_bytes(1, (64, 48)), max_pixels=10**8).data
    verify_clean(clean)
    with_comment = clean[:2] + b"\xff\xfe\x00\x07hello" + clean[2:]
    with pytest.raises(SanitiseError, match="comment"):
        verify_clean(with_comment)
    xmp = b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta/>"
    with_xmp = clean[:2] + b"\xff\xe1" + (len(xmp) + 2).to_bytes(2, "big") + xmp + clean[2:]
    with pytest.raises(SanitiseError, match="XMP"):
        verify_clean(with_xmp)
    with pytest.raises(SanitiseError, match="after the end"):
        verify_clean(clean + b"\xff\xd8trailing")


def _save(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def test_non_jpeg_and_unusual_modes_become_clean_upright_jpegs() -> None:
    base = Image.open(io.BytesIO(jpeg_bytes(5, (120, 80))))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2024:03:01 10:11:12"
    exif.get_ifd(ExifTags.IFD.GPSInfo)[2] = (1.0, 2.0, 3.0)
    cases = {
        "tiff": _save(base, "TIFF", exif=exif.tobytes()),
        "png-rgba": _save(base.convert("RGBA"), "PNG"),
        "png-16bit": _save(base.convert("L").convert("I;16"), "PNG"),
        "cmyk-jpeg": _save(base.convert("CMYK"), "JPEG", comment=b"patient name here"),
        "palette": _save(base.convert("P"), "PNG"),
    }
    for name, data in cases.items():
        result = sanitise_image(data, max_pixels=10**8)
        out = Image.open(io.BytesIO(result.data))
        assert out.format == "JPEG" and out.mode in ("RGB", "L"), name
        assert b"patient name" not in result.data
        assert out.getexif().get_ifd(ExifTags.IFD.GPSInfo) == {}
        if name == "tiff":
            assert result.converted and out.size == (80, 120)
            assert out.getexif().get_ifd(ExifTags.IFD.Exif)[
                ExifTags.Base.DateTimeOriginal] == "2024:03:01 10:11:12"
        else:
            assert out.size == (120, 80), name


def test_a_decompression_bomb_is_refused_at_export() -> None:
    data = _save(Image.new("RGB", (400, 400)), "PNG")
    with pytest.raises(SanitiseError, match="could not be decoded"):
        sanitise_image(data, max_pixels=1000)


# -- smaller vaults for the rules -------------------------------------------------------------


def _dto_jpeg(seed: int, when: str) -> bytes:
    img = Image.open(io.BytesIO(jpeg_bytes(seed, (320, 240))))
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = when
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.OffsetTimeOriginal] = "+13:00"
    return _save(img, "JPEG", quality=90, exif=exif.tobytes())


@pytest.fixture
def small(tmp_path: Path, cfg: Config) -> tuple[VaultFiles, str, Path]:
    """A vault with one session: two images in the same second (one with a .THM sidecar),
    one a second later; consent record only."""
    vf = new_vault(tmp_path, cfg)
    card = make_card(tmp_path / "card", {
        "IMG_0001.JPG": _dto_jpeg(1, "2025:06:01 09:30:15"),
        "IMG_0001.THM": jpeg_bytes(9, (160, 120)),
        "IMG_0002.JPG": _dto_jpeg(2, "2025:06:01 09:30:15"),
        "IMG_0003.JPG": _dto_jpeg(3, "2025:06:01 09:30:16"),
    })
    sid = ingest(vf.root, cfg, card, scopes=("record",))
    return vf, sid, card


def test_images_in_one_second_are_numbered_and_sidecars_listed_not_exported(
        tmp_path: Path, small: tuple[VaultFiles, str, Path]) -> None:
    vf, sid, _card = small
    out = tmp_path / "out"
    r = run_cli("--config", str(vf.site), "export", str(vf.root), "--session", sid,
                "--to", str(out), *vf.unlock_args())
    assert r.code == 0, r.err
    jpgs = sorted(p.name for p in out.glob("*.jpg"))
    assert jpgs == ["ZAC5361-20250601-093015-01.jpg", "ZAC5361-20250601-093015-02.jpg",
                    "ZAC5361-20250601-093016-01.jpg"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [n["kind"] for n in manifest["not_exported"]] == ["sidecar"]
    assert "sidecar" in manifest["not_exported"][0]["reason"]
    bundle = json.loads((out / "fhir-bundle.json").read_text())
    created = {e["resource"]["createdDateTime"] for e in bundle["entry"]}
    assert created == {"2025-06-01T09:30:15+13:00", "2025-06-01T09:30:16+13:00"}
    assert "not exported: 1" in r.out


def test_teaching_export_is_refused_whole_when_consent_does_not_cover_it(
        tmp_path: Path, small: tuple[VaultFiles, str, Path]) -> None:
    vf, sid, _card = small
    out = tmp_path / "teach"
    before = len(audit_events(vf.root))
    r = run_cli("--config", str(vf.site), "export", str(vf.root), "--session", sid,
                "--scope", "teaching", "--to", str(out), *vf.unlock_args())
    assert r.code == 2
    assert f"consent does not cover teaching for 3 images ({sid}: 3)" in r.err
    assert len(r.err.strip().splitlines()) == 1
    assert not out.exists()
    assert "export" not in [e["event"] for e in audit_events(vf.root)[before:]]


def test_teaching_export_uses_a_pseudonym_and_carries_no_identifier(
        tmp_path: Path, cfg: Config) -> None:
    vf = new_vault(tmp_path, cfg)
    card = make_card(tmp_path / "card", {"IMG_0001.JPG": _dto_jpeg(4, "2025:01:02 03:04:05")})
    ingest(vf.root, cfg, card, scopes=("record", "teaching"))
    out = tmp_path / "teach"
    r = run_cli("--config", str(vf.site), "export", str(vf.root), "--patient", "ZAC5361",
                "--scope", "teaching", "--to", str(out), *vf.unlock_args())
    assert r.code == 0, r.err
    assert [p.name for p in out.glob("*.jpg")] == ["P01-20250102-030405-01.jpg"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["patient"] is None and manifest["scope"] == "teaching"
    bundle = json.loads((out / "fhir-bundle.json").read_text())
    assert "subject" not in bundle["entry"][0]["resource"]
    for p in out.iterdir():
        assert b"ZAC5361" not in p.read_bytes()


def test_a_failed_export_leaves_no_file_behind(tmp_path: Path,
                                               small: tuple[VaultFiles, str, Path]) -> None:
    vf, sid, _card = small
    # The last image the export reaches (ids are random: pick by catalog order, not by name,
    # so the failure comes after earlier images were written and must be cleaned up).
    with Vault.open(vf.root, actor="test", startup=False) as v:
        record = v.catalog.get_session(sid)
        last_image = [o["id"] for o in record["objects"] if o["kind"] == "image"][-1]
        victim = v.layout.object_path(last_image)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    for out, existed in ((tmp_path / "new-dir", False), (tmp_path / "empty-dir", True)):
        if existed:
            out.mkdir()
        r = run_cli("--config", str(vf.site), "export", str(vf.root), "--session", sid,
                    "--to", str(out), *vf.unlock_args())
        assert r.code == 1, r.err
        assert "failed authentication" in r.err or "does not match" in r.err
        assert out.exists() == existed
        if existed:
            assert list(out.iterdir()) == []
    events = [e["event"] for e in audit_events(vf.root)]
    assert events.count("export.failed") == 2 and "export" not in events


@pytest.mark.parametrize("case, words", [
    ("not-empty", "is not empty"),
    ("inside-vault", "inside the vault"),
    ("a-file", "not a directory"),
    ("no-parent", "does not exist"),
    ("both", "not both"),
    ("neither", "not both"),
    ("bad-id", "check"),
    ("unknown-session", "not in this vault"),
    ("bad-scope", "invalid choice"),
])
def test_bad_export_requests_get_one_line_and_change_nothing(
        tmp_path: Path, small: tuple[VaultFiles, str, Path], case: str, words: str) -> None:
    vf, sid, _card = small
    to = tmp_path / "out"
    args = ["--session", sid]
    if case == "not-empty":
        to.mkdir()
        (to / "old.jpg").write_bytes(b"x")
    elif case == "inside-vault":
        to = vf.root / "catalog" / "x"
    elif case == "a-file":
        to.write_bytes(b"x")
    elif case == "no-parent":
        to = tmp_path / "missing" / "out"
    elif case == "both":
        args += ["--patient", "ZAC5361"]
    elif case == "neither":
        args = []
    elif case == "bad-id":
        args = ["--patient", "ZAC5362"]
    elif case == "unknown-session":
        args = ["--session", "20200101T000000Z-00000000"]
    elif case == "bad-scope":
        args += ["--scope", "gossip"]
    before = sorted(p.name for p in tmp_path.iterdir())
    log_before = (vf.root / "audit" / "log.jsonl").read_bytes()
    r = run_cli("--config", str(vf.site), "export", str(vf.root), *args, "--to", str(to),
                *vf.unlock_args())
    assert r.code == 2, (r.out, r.err)
    assert words in r.err
    assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if case != "unknown-session":  # validated before the vault is opened: nothing logged
        assert (vf.root / "audit" / "log.jsonl").read_bytes() == log_before
    assert not (vf.root / "catalog" / "x").exists()


def test_a_referral_export_is_for_one_patient(tmp_path: Path, cfg: Config) -> None:
    vf = new_vault(tmp_path, cfg)
    a = ingest(vf.root, cfg, make_card(tmp_path / "a", {"A.JPG": jpeg_bytes(1, (200, 150))}))
    b = ingest(vf.root, cfg, make_card(tmp_path / "b", {"B.JPG": jpeg_bytes(2, (200, 150))}),
               patient="943 476 5919", scheme="nhs")
    r = run_cli("--config", str(vf.site), "export", str(vf.root), "--session", a, "--session",
                b, "--to", str(tmp_path / "out"), *vf.unlock_args())
    assert r.code == 2 and "different patients" in r.err
    assert not (tmp_path / "out").exists()
    r = run_cli("--config", str(vf.site), "export", str(vf.root), "--session", b,
                "--to", str(tmp_path / "nhs"), *vf.unlock_args())
    assert r.code == 0, r.err
    bundle = json.loads((tmp_path / "nhs" / "fhir-bundle.json").read_text())
    assert bundle["entry"][0]["resource"]["subject"]["identifier"] == {
        "system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}
    assert [p.name[:10] for p in (tmp_path / "nhs").glob("*.jpg")] == ["9434765919"]
    assert os.listdir(tmp_path / "nhs") and not list((tmp_path / "nhs").glob(".tmp-*"))
