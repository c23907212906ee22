"""The embedded demo: a throwaway vault and a simulated card of generated sample photographs.

Why generated: the demo must run on a fresh machine with no camera, no hardware and no
patient data. The card holds what a real session meets: sharp images, a blurred one, a dark
one, a burst of near-copies, a RAW+JPEG pair's sidecar, and one corrupt file.
"""

from __future__ import annotations

import io
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DEMO_PASSPHRASE = b"demo custodian passphrase"
DEMO_CUSTODIAN = "demo-custodian"
DEMO_OPERATOR = "nurse1"
DEMO_PATIENT = "ZAC5361"  # a Z-prefixed NHI: a reserved test identifier
DEMO_OVERRIDES = {
    "patient_id": {"allow_test_ids": True, "scheme": "nhi"},
    "media": {"accept_loop": True},
    "vault": {"scrypt_log_n": 14},
}


def scene(width: int, height: int, seed: int) -> Image.Image:
    """A photograph-like scene: lit gradient, shapes with hard edges, fine texture."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = 90 + 60 * (x / width) + 40 * np.sin(y / height * 3.1 + seed)
    rgb = np.stack([base * rng.uniform(0.8, 1.2) for _ in range(3)], axis=-1)
    texture = rng.normal(0, 12, (height // 4 + 1, width // 4 + 1, 1)).astype(np.float32)
    texture = np.kron(texture, np.ones((4, 4, 1), np.float32))[:height, :width]
    rgb = np.clip(rgb + texture + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(rgb, "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(40):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 30, width // 6)), int(rng.integers(height // 30,
                                                                            height // 6))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=colour)
        else:
            draw.rectangle((x0, y0, x0 + w, y0 + h), outline=colour, width=max(2, width // 400))
    for _ in range(30):
        pts = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(2)]
        draw.line(pts, fill=tuple(int(c) for c in rng.integers(0, 256, 3)),
                  width=max(1, width // 800))
    return img


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def darken(img: Image.Image, ev: float) -> Image.Image:
    """Exposure change in linear light (sRGB approximated by gamma 2.2), clipped."""
    a = np.asarray(img, dtype=np.float32) / 255.0
    lin = np.power(a, 2.2) * (2.0 ** ev)
    out = np.power(np.clip(lin, 0, 1), 1 / 2.2) * 255.0
    return Image.fromarray(out.astype(np.uint8), "RGB")


@dataclass(frozen=True)
class DemoCard:
    root: Path
    sharp: int
    blurred: int
    dark: int
    duplicates: int
    corrupt: int


def make_sample_card(root: Path, *, size: tuple[int, int] = (2000, 1500),
                     seed: int = 7) -> DemoCard:
    """Write a DCIM tree of sample photographs to *root* (created if missing)."""
    dcim = root / "DCIM" / "100DEMO"
    dcim.mkdir(parents=True, exist_ok=True)
    w, h = size
    n = 1
    sharp = 5

    def put(img: Image.Image) -> Path:
        nonlocal n
        path = dcim / f"IMG_{n:04d}.JPG"
        path.write_bytes(_jpeg(img))
        n += 1
        return path

    for i in range(sharp):
        put(scene(w, h, seed + i))
    put(scene(w, h, seed + 50).filter(ImageFilter.GaussianBlur(4 * max(w, h) / 2000)))
    put(darken(scene(w, h, seed + 60), -3.0))
    burst = scene(w, h, seed + 70)
    put(burst)
    shifted = burst.transform(burst.size, Image.Transform.AFFINE, (1, 0, w * 0.015, 0, 1, 0))
    put(shifted.filter(ImageFilter.GaussianBlur(1.5)))
    (dcim / "IMG_0001.THM").write_bytes(_jpeg(scene(160, 120, seed).convert("RGB"), 70))
    corrupt = _jpeg(scene(w, h, seed + 90))
    (dcim / f"IMG_{n:04d}.JPG").write_bytes(corrupt[: len(corrupt) // 3])
    return DemoCard(root=root, sharp=sharp + 1, blurred=1, dark=1, duplicates=1, corrupt=1)


def make_demo_vault(base: Path):  # type: ignore[no-untyped-def]
    """A new vault under *base*/vault with the demo custodian; returns (vault, k0)."""
    from core.config import load_config
    from core.vault.vault import Vault

    cfg = load_config(use_env=False, overrides=DEMO_OVERRIDES)
    return Vault.init(base / "vault", DEMO_CUSTODIAN, DEMO_PASSPHRASE,
                      scrypt_log_n=cfg.vault.scrypt_log_n)


def run_headless_demo(argv: Sequence[str]) -> int:
    """Until the kiosk app starts here: one scripted session on the simulated card."""
    from core import consent
    from core.config import load_config
    from core.patient_id import parse_patient_id
    from core.session import IngestSession

    base = Path(tempfile.mkdtemp(prefix="clinivault-demo-"))
    cfg = load_config(use_env=False, overrides=DEMO_OVERRIDES)
    card = make_sample_card(base / "card")
    vault, _k0 = make_demo_vault(base)
    with vault:
        s = IngestSession(vault, cfg, card.root, DEMO_OPERATOR)
        s.scan()
        s.assess()
        s.record_consent(consent.grant(
            scopes=("record", "teaching"), method="written", obtained_by_name="Demo Nurse",
            obtained_by_role="Registered nurse", body_areas=["left forearm"],
            statement=cfg.consent.statement))
        s.identify(parse_patient_id(DEMO_PATIENT, "nhi", allow_test_ids=True))
        s.finish_review(["demo"])
        s.archive()
        s.wipe()
        print(s.summary().note())
    print(f"(demo vault and card in {base})", file=sys.stderr)
    return 0
