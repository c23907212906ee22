"""Simulated cards for tests: real JPEG files in a real directory tree."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import ImageFilter

from core.demo import scene


def jpeg_bytes(seed: int, size: tuple[int, int] = (2000, 1500), blur: float = 0.0) -> bytes:
    img = scene(size[0], size[1], seed)
    if blur:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def small_card(root: Path, *, sharp: int = 2, blurred: int = 1) -> list[Path]:
    """A DCIM folder with *sharp* good images and *blurred* badly blurred ones."""
    dcim = root / "DCIM" / "100TEST"
    dcim.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(sharp + blurred):
        p = dcim / f"IMG_{i + 1:04d}.JPG"
        p.write_bytes(jpeg_bytes(100 + i, blur=8.0 if i >= sharp else 0.0))
        paths.append(p)
    return paths


def digests(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every regular file under *root* (symlinks not followed)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def vault_bytes_contain(vault_root: Path, needle: bytes) -> list[str]:
    """Every file in the vault whose bytes contain *needle* (a plaintext leak check)."""
    return [str(p) for p in vault_root.rglob("*") if p.is_file() and needle in p.read_bytes()]
