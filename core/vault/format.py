"""The encrypted object format (``clinivault-object/v1``), streaming in both directions.

Why this shape: the kiosk must encrypt with the vault *public* key only (a stolen kiosk
reveals nothing), memory must stay bounded for any image size, and a custodian must be able
to decrypt an archived image decades from now with a short script and pyca/cryptography
alone. So the design follows age v1 (X25519 stanza, header MAC, STREAM payload in 64 KiB
chunks with a last-chunk flag), with AES-256-GCM as the clinical guidance asks and its own
magic: it is *not* age-compatible. Every byte is specified in docs/FORMAT.md.

Decryption streams authenticated chunks into ``dst`` as it goes and raises at the point a
problem is found (truncation is only known at the end). ``dst`` therefore holds plaintext
that must not be used unless the call returned: callers write it to a temp file and
discard that file on any exception.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from core.errors import IntegrityError, VaultError

CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16
FILE_KEY_SIZE = 32
PAYLOAD_NONCE_SIZE = 16
STANZA_BODY_SIZE = FILE_KEY_SIZE + TAG_SIZE  # 48

MAGIC = b"clinivault-object/v1"
STANZA_INFO = b"clinivault-object/v1/X25519"
HEADER_MAC_INFO = b"header"
PAYLOAD_INFO = b"payload"
_WRAP_NONCE = bytes(12)
_ENC_CHUNK = CHUNK_SIZE + TAG_SIZE

# The v1 header has exactly one X25519 stanza and fixed-width fields, so it is 188 bytes.
HEADER_SIZE = len(MAGIC) + 1 + len(b"-> X25519 ") + 43 + 1 + 64 + 1 + len(b"--- ") + 43 + 1
_MAC_SPAN = HEADER_SIZE - 1 - 43 - 1  # header bytes up to and including "---"


class ObjectFormatError(IntegrityError):
    """An encrypted object is malformed, damaged, altered, truncated or not for this key."""


class HeaderError(ObjectFormatError):
    """The header is not a well-formed clinivault-object/v1 header."""


class WrongKeyError(ObjectFormatError):
    """No stanza in the header opens with the key given."""


class HeaderMacError(ObjectFormatError):
    """The header MAC does not verify: the header was altered or the file key is wrong."""


class ChunkAuthError(ObjectFormatError):
    """A payload chunk failed AES-GCM authentication."""

    def __init__(self, chunk_index: int, message: str, hint: str | None = None) -> None:
        self.chunk_index = chunk_index
        super().__init__(message, hint)


class TruncatedError(ObjectFormatError):
    """The object ends before its final chunk (or inside its header)."""


class TrailingDataError(ObjectFormatError):
    """Bytes follow the final chunk."""


class PayloadFormatError(ObjectFormatError):
    """Authenticated chunks that break a structural rule (an empty final chunk after data)."""


_RESTORE = "The object is damaged or was altered; restore it from a backup"


@dataclass
class EncryptResult:
    """What the caller records about a freshly written object.

    ``file_key`` is returned only so the writer can verify its read-back
    (:func:`verify_object`) without the vault private key; drop it right after.
    """

    plaintext_size: int
    plaintext_sha256: str
    object_size: int
    file_key: bytes


def encrypted_size(plaintext_size: int) -> int:
    """Exact object size for a payload of *plaintext_size* bytes (for free-space checks)."""
    chunks = max(1, -(-plaintext_size // CHUNK_SIZE))
    return HEADER_SIZE + PAYLOAD_NONCE_SIZE + plaintext_size + chunks * TAG_SIZE


# -- encoding helpers ---------------------------------------------------------------------


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def _unb64(text: bytes, size: int, what: str) -> bytes:
    """Strict unpadded base64: right length, canonical encoding, else HeaderError."""
    try:
        raw = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise HeaderError(f"object header: {what} is not valid base64", _RESTORE) from None
    if len(raw) != size or _b64(raw) != text:
        raise HeaderError(f"object header: {what} is not the canonical base64 of {size} bytes",
                          _RESTORE)
    return raw


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _header_mac(file_key: bytes, mac_span: bytes) -> crypto_hmac.HMAC:
    mac = crypto_hmac.HMAC(_hkdf(file_key, b"", HEADER_MAC_INFO), hashes.SHA256())
    mac.update(mac_span)
    return mac


def _chunk_nonce(index: int, final: bool) -> bytes:
    return index.to_bytes(11, "big") + (b"\x01" if final else b"\x00")


def _read_full(src: BinaryIO, size: int) -> bytes:
    """Read up to *size* bytes, looping over short reads; fewer only at end of file."""
    data = src.read(size)
    if data is None:
        data = b""
    if len(data) == size or not data:
        return bytes(data)
    parts = [data]
    got = len(data)
    while got < size:
        more = src.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


# -- writing ------------------------------------------------------------------------------


def _wrap_file_key(file_key: bytes, recipient: X25519PublicKey,
                   ephemeral: X25519PrivateKey) -> tuple[bytes, bytes]:
    eph_pub = _raw_public(ephemeral.public_key())
    recipient_pub = _raw_public(recipient)
    try:
        shared = ephemeral.exchange(recipient)
    except ValueError:
        shared = bytes(32)
    if not any(shared):
        raise VaultError("the vault public key is a low-order X25519 point (all-zero shared "
                         "secret)", "vault.json is corrupt; restore it from a backup")
    wrap_key = _hkdf(shared, eph_pub + recipient_pub, STANZA_INFO)
    body = AESGCM(wrap_key).encrypt(_WRAP_NONCE, file_key, None)
    return eph_pub, body


def _encrypt(src: BinaryIO, dst: BinaryIO, recipient: X25519PublicKey, *, file_key: bytes,
             ephemeral: X25519PrivateKey, nonce: bytes) -> EncryptResult:
    """Encrypt with the given secrets. Only :func:`encrypt_stream` and test vectors call this."""
    eph_pub, body = _wrap_file_key(file_key, recipient, ephemeral)
    span = MAGIC + b"\n-> X25519 " + _b64(eph_pub) + b"\n" + _b64(body) + b"\n---"
    header = span + b" " + _b64(_header_mac(file_key, span).finalize()) + b"\n"
    assert len(header) == HEADER_SIZE
    dst.write(header)
    dst.write(nonce)
    aead = AESGCM(_hkdf(file_key, nonce, PAYLOAD_INFO))
    digest = hashlib.sha256()
    size = 0
    written = HEADER_SIZE + PAYLOAD_NONCE_SIZE
    index = 0
    current = _read_full(src, CHUNK_SIZE)
    while True:
        following = _read_full(src, CHUNK_SIZE) if len(current) == CHUNK_SIZE else b""
        final = not following
        digest.update(current)
        size += len(current)
        sealed = aead.encrypt(_chunk_nonce(index, final), current, None)
        dst.write(sealed)
        written += len(sealed)
        if final:
            break
        current = following
        index += 1
    return EncryptResult(size, digest.hexdigest(), written, file_key)


def encrypt_stream(src: BinaryIO, dst: BinaryIO, recipient: X25519PublicKey) -> EncryptResult:
    """Encrypt *src* to *recipient* into *dst* in 64 KiB chunks, hashing the plaintext."""
    return _encrypt(src, dst, recipient, file_key=os.urandom(FILE_KEY_SIZE),
                    ephemeral=X25519PrivateKey.generate(),
                    nonce=os.urandom(PAYLOAD_NONCE_SIZE))


def seal(data: bytes, recipient: X25519PublicKey) -> bytes:
    """Encrypt a small blob (patient ID, consent record) in the same format."""
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, recipient)
    return out.getvalue()


# -- reading ------------------------------------------------------------------------------


class _HashSink:
    """A write-only destination that keeps nothing but a SHA-256 of what passed through."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return len(data)


@dataclass
class _Header:
    eph_pub: bytes
    body: bytes
    mac: bytes
    span: bytes


# The header, position by position: literal bytes, or None where a base64 character goes.
_B64_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_TEMPLATE: list[int | None] = [
    *MAGIC, 0x0A, *b"-> X25519 ", *[None] * 43, 0x0A, *[None] * 64, 0x0A, *b"--- ",
    *[None] * 43, 0x0A,
]
_LINES = ((21, "the version line"), (75, "the '-> X25519' stanza line"),
          (140, "the stanza body line (64 base64 characters)"), (HEADER_SIZE, "the '---' MAC line"))


def _read_header(src: BinaryIO) -> _Header:
    raw = _read_full(src, HEADER_SIZE)
    if not MAGIC.startswith(raw[: len(MAGIC)]):
        if raw.startswith(b"clinivault-object/"):
            version = raw.split(b"\n", 1)[0].decode("ascii", "replace")
            raise HeaderError(f"unsupported object version {version!r} (this program reads "
                              "clinivault-object/v1)", "Use a newer clinivault to read it")
        raise HeaderError("not a clinivault object (its first line is not "
                          "'clinivault-object/v1')", "Check that the file is a vault object")
    for pos, byte in enumerate(raw):
        want = _TEMPLATE[pos]
        if (byte not in _B64_CHARS) if want is None else (byte != want):
            line = next(name for end, name in _LINES if pos < end)
            raise HeaderError(f"object header is malformed: {line} is wrong (byte {pos})",
                              _RESTORE)
    if len(raw) < HEADER_SIZE:
        raise TruncatedError(f"object is truncated inside its header ({len(raw)} of "
                             f"{HEADER_SIZE} bytes)", _RESTORE)
    eph_pub = _unb64(raw[31:74], 32, "the ephemeral public key")
    body = _unb64(raw[75:139], STANZA_BODY_SIZE, "the stanza body")
    mac = _unb64(raw[144:187], 32, "the header MAC")
    return _Header(eph_pub, body, mac, raw[:_MAC_SPAN])


def _unwrap(header: _Header, identity: X25519PrivateKey) -> bytes:
    try:
        shared = identity.exchange(X25519PublicKey.from_public_bytes(header.eph_pub))
    except ValueError:  # OpenSSL refuses an all-zero result itself
        shared = bytes(32)
    if not any(shared):
        raise HeaderError("object header: the ephemeral key is a low-order point (all-zero "
                          "shared secret); the header was forged or damaged", _RESTORE)
    recipient_pub = _raw_public(identity.public_key())
    wrap_key = _hkdf(shared, header.eph_pub + recipient_pub, STANZA_INFO)
    try:
        return AESGCM(wrap_key).decrypt(_WRAP_NONCE, header.body, None)
    except InvalidTag:
        raise WrongKeyError("the object's key stanza does not open with this vault key",
                            "It was encrypted to another vault, or its header is damaged") from None


def _check_mac(header: _Header, file_key: bytes) -> None:
    try:
        _header_mac(file_key, header.span).verify(header.mac)
    except InvalidSignature:
        raise HeaderMacError("object header MAC does not verify (header altered, or the "
                             "wrong file key)", _RESTORE) from None


def _decrypt_payload(src: BinaryIO, dst: BinaryIO | _HashSink, file_key: bytes) -> int:
    nonce = _read_full(src, PAYLOAD_NONCE_SIZE)
    if len(nonce) < PAYLOAD_NONCE_SIZE:
        raise TruncatedError("object is truncated: it ends before its payload nonce", _RESTORE)
    aead = AESGCM(_hkdf(file_key, nonce, PAYLOAD_INFO))
    size = 0
    index = 0
    current = _read_full(src, _ENC_CHUNK)
    while True:
        if len(current) < TAG_SIZE:
            raise TruncatedError(f"object is truncated: it ends inside chunk {index} "
                                 "before a final chunk", _RESTORE)
        full = len(current) == _ENC_CHUNK
        following = _read_full(src, _ENC_CHUNK) if full else b""
        final = not following
        try:
            plain = aead.decrypt(_chunk_nonce(index, final), current, None)
        except InvalidTag:
            _diagnose(aead, index, current, final, full)
            raise  # pragma: no cover - _diagnose always raises
        if final and not plain and index > 0:
            raise PayloadFormatError(f"chunk {index} is an empty final chunk after data, "
                                     "which the format forbids", _RESTORE)
        size += len(plain)
        dst.write(plain)
        if final:
            return size
        current = following
        index += 1


def _diagnose(aead: AESGCM, index: int, sealed: bytes, final: bool, full: bool) -> None:
    """Name what is wrong with a chunk that failed under the flag its position implies."""
    if full:
        try:
            aead.decrypt(_chunk_nonce(index, not final), sealed, None)
        except InvalidTag:
            pass
        else:
            if final:  # a valid middle chunk with nothing after it
                raise TruncatedError(f"object is truncated: it ends after chunk {index}, "
                                     "which is not the final chunk", _RESTORE)
            raise TrailingDataError(f"object has data after its final chunk ({index})",
                                    _RESTORE)
    raise ChunkAuthError(index, f"payload chunk {index} failed authentication (damaged, "
                         "altered, reordered, truncated inside the chunk, or followed by "
                         "extra data)", _RESTORE)


def decrypt_stream(src: BinaryIO, dst: BinaryIO, identity: X25519PrivateKey) -> int:
    """Decrypt an object with the vault private key; return the plaintext size.

    Authenticated chunks are written to *dst* as they are read; on any exception *dst*
    holds an incomplete prefix that the caller must discard.
    """
    header = _read_header(src)
    file_key = _unwrap(header, identity)
    _check_mac(header, file_key)
    return _decrypt_payload(src, dst, file_key)


def decrypt_stream_with_file_key(src: BinaryIO, dst: BinaryIO, file_key: bytes) -> int:
    """Decrypt with the object's own file key (the writer's read-back check, no private key).

    The header MAC proves the header was made with this file key; the stanza is not opened.
    Same contract for *dst* as :func:`decrypt_stream`.
    """
    header = _read_header(src)
    _check_mac(header, file_key)
    return _decrypt_payload(src, dst, file_key)


def verify_object(src: BinaryIO, file_key: bytes) -> tuple[int, str]:
    """Authenticate a whole object with its file key; return (size, SHA-256 hex) of plaintext."""
    header = _read_header(src)
    _check_mac(header, file_key)
    sink = _HashSink()
    size = _decrypt_payload(src, sink, file_key)
    return size, sink.digest.hexdigest()


def unseal(blob: bytes, identity: X25519PrivateKey) -> bytes:
    """Decrypt a blob made by :func:`seal`; nothing is returned unless all of it verified."""
    out = io.BytesIO()
    decrypt_stream(io.BytesIO(blob), out, identity)
    return out.getvalue()

