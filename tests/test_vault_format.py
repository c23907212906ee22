"""The encrypted object format: round trips, every rejection by its specific error, the
documented vectors through an independent decoder, and bounded memory on 256 MB.

Why so many tamper cases: an archived clinical image that silently decrypts to something
else (or to a prefix of itself) is worse than one that fails loudly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import io
import json
import random
import re
import time
import tracemalloc
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import IntegrityError, VaultError
from core.vault import format as vf

ROOT = Path(__file__).resolve().parent.parent
VECTORS = json.loads((ROOT / "tests" / "vectors" / "object_v1.json").read_text())
CHUNK = vf.CHUNK_SIZE
SEALED = CHUNK + 16
HEADER = 188
PAYLOAD_START = HEADER + 16
KEY = X25519PrivateKey.generate()


def pattern(size: int, seed: int = 1) -> bytes:
    """Deterministic bytes where every 64 KiB chunk differs (so swaps are visible)."""
    block = random.Random(seed).randbytes(CHUNK)
    out = bytearray()
    i = 0
    while len(out) < size:
        out += i.to_bytes(8, "big") + block[8:]
        i += 1
    return bytes(out[:size])


def encrypt(data: bytes, key: X25519PrivateKey = KEY) -> tuple[bytes, vf.EncryptResult]:
    out = io.BytesIO()
    result = vf.encrypt_stream(io.BytesIO(data), out, key.public_key())
    return out.getvalue(), result


def decrypt(blob: bytes, key: X25519PrivateKey = KEY) -> bytes:
    out = io.BytesIO()
    vf.decrypt_stream(io.BytesIO(blob), out, key)
    return out.getvalue()


def b64u(raw: bytes) -> bytes:
    return base64.b64encode(raw).rstrip(b"=")


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK,
                                  5 * 1024 * 1024 + 123])
def test_round_trip_real_files(tmp_path: Path, size: int) -> None:
    data = pattern(size)
    src, obj, back = tmp_path / "plain", tmp_path / "obj", tmp_path / "back"
    src.write_bytes(data)
    with src.open("rb") as fin, obj.open("wb") as fout:
        result = vf.encrypt_stream(fin, fout, KEY.public_key())
    assert result.plaintext_size == size
    assert result.plaintext_sha256 == hashlib.sha256(data).hexdigest()
    assert result.object_size == obj.stat().st_size == vf.encrypted_size(size)
    assert len(result.file_key) == 32
    with obj.open("rb") as fin, back.open("wb") as fout:
        assert vf.decrypt_stream(fin, fout, KEY) == size
    assert back.read_bytes() == data
    with obj.open("rb") as fin:
        assert vf.verify_object(fin, result.file_key) == (size, result.plaintext_sha256)
    with obj.open("rb") as fin:
        out = io.BytesIO()
        assert vf.decrypt_stream_with_file_key(fin, out, result.file_key) == size
    assert out.getvalue() == data
    chunks = max(1, -(-size // CHUNK))
    assert result.object_size == HEADER + 16 + size + 16 * chunks


def test_each_object_has_fresh_keys_and_nonce() -> None:
    a, ra = encrypt(b"same plaintext")
    b, rb = encrypt(b"same plaintext")
    assert ra.file_key != rb.file_key
    lines_a, lines_b = a[:HEADER].split(b"\n"), b[:HEADER].split(b"\n")
    assert lines_a[1] != lines_b[1]  # ephemeral public key
    assert a[HEADER:PAYLOAD_START] != b[HEADER:PAYLOAD_START]  # payload nonce
    assert a[PAYLOAD_START:] != b[PAYLOAD_START:]


def test_header_layout_is_as_documented() -> None:
    blob, _ = encrypt(b"x")
    lines = blob[:HEADER].split(b"\n")
    assert lines[0] == b"clinivault-object/v1"
    assert re.fullmatch(rb"-> X25519 [A-Za-z0-9+/]{43}", lines[1])
    assert re.fullmatch(rb"[A-Za-z0-9+/]{64}", lines[2])
    assert re.fullmatch(rb"--- [A-Za-z0-9+/]{43}", lines[3])
    assert lines[4] == b""
    assert b"age" not in blob[:HEADER]


def test_seal_unseal() -> None:
    record = json.dumps({"patient_id": "ZZZ0016", "consent": "clinical"}).encode()
    blob = vf.seal(record, KEY.public_key())
    assert record not in blob
    assert vf.unseal(blob, KEY) == record
    assert vf.unseal(vf.seal(b"", KEY.public_key()), KEY) == b""
    with pytest.raises(vf.WrongKeyError):
        vf.unseal(blob, X25519PrivateKey.generate())


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=3000), st.sampled_from([0, CHUNK - 7, CHUNK, 2 * CHUNK]))
def test_round_trip_property(tail: bytes, prefix: int) -> None:
    data = pattern(prefix) + tail
    blob, result = encrypt(data)
    assert decrypt(blob) == data
    assert result.object_size == len(blob)


# -- header tampering -----------------------------------------------------------------------

_FIELDS = {"eph": (31, 74, 32), "body": (75, 139, 48), "mac": (144, 187, 32)}


def _expected_for_flip(header: bytes, pos: int, mutated: bytes, with_file_key: bool) -> type:
    for name, (start, end, size) in _FIELDS.items():
        if start <= pos < end:
            text = mutated[start:end]
            try:
                raw = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
            except ValueError:
                return vf.HeaderError
            if len(raw) != size or b64u(raw) != text:
                return vf.HeaderError
            if name == "mac" or with_file_key:
                return vf.HeaderMacError
            return vf.WrongKeyError
    return vf.HeaderError


@pytest.mark.parametrize("with_file_key", [False, True])
@pytest.mark.parametrize("mask", [0x01, 0x20, 0x80])
def test_every_header_byte_flip_is_rejected_specifically(with_file_key: bool, mask: int) -> None:
    data = pattern(1000)
    blob, result = encrypt(data)
    kinds: set[type] = set()
    for pos in range(HEADER):
        mutated = bytearray(blob)
        mutated[pos] ^= mask
        expected = _expected_for_flip(blob[:HEADER], pos, bytes(mutated[:HEADER]), with_file_key)
        out = io.BytesIO()
        with pytest.raises(vf.ObjectFormatError) as info:
            if with_file_key:
                vf.decrypt_stream_with_file_key(io.BytesIO(bytes(mutated)), out, result.file_key)
            else:
                vf.decrypt_stream(io.BytesIO(bytes(mutated)), out, KEY)
        assert type(info.value) is expected, (pos, mask, info.value)
        assert out.getvalue() == b"", "no plaintext may be released for a bad header"
        kinds.add(type(info.value))
    assert vf.HeaderError in kinds
    assert vf.HeaderMacError in kinds or mask == 0x80


def test_wrong_private_key() -> None:
    blob, _ = encrypt(b"secret")
    with pytest.raises(vf.WrongKeyError, match="does not open with this vault key"):
        decrypt(blob, X25519PrivateKey.generate())


def test_wrong_file_key() -> None:
    blob, result = encrypt(b"secret")
    other = bytes(32)
    with pytest.raises(vf.HeaderMacError):
        vf.verify_object(io.BytesIO(blob), other)
    with pytest.raises(vf.HeaderMacError):
        vf.decrypt_stream_with_file_key(io.BytesIO(blob), io.BytesIO(), other)
    assert vf.verify_object(io.BytesIO(blob), result.file_key)[0] == 6


LOW_ORDER_POINTS = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
]


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_all_zero_shared_secret_is_rejected(point: bytes) -> None:
    blob, _ = encrypt(b"secret")
    forged = blob[:31] + b64u(point) + blob[74:]
    assert len(forged) == len(blob)
    out = io.BytesIO()
    with pytest.raises(vf.HeaderError, match="low-order"):
        vf.decrypt_stream(io.BytesIO(forged), out, KEY)
    assert out.getvalue() == b""


@pytest.mark.parametrize("point", LOW_ORDER_POINTS[:2])
def test_encrypting_to_a_low_order_key_is_refused(point: bytes) -> None:
    with pytest.raises(VaultError, match="low-order"):
        vf.seal(b"x", X25519PublicKey.from_public_bytes(point))


@pytest.mark.parametrize("body_len", [0, 32, 47, 49, 64])
def test_stanza_body_of_wrong_length(body_len: int) -> None:
    blob, _ = encrypt(b"secret")
    forged = blob[:75] + b64u(bytes(range(body_len))) + blob[139:]
    with pytest.raises(vf.HeaderError, match="stanza body"):
        decrypt(forged)


def test_non_canonical_base64_is_rejected() -> None:
    blob, _ = encrypt(b"secret")
    text = blob[31:74]
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    # 43 characters carry 258 bits for 256: the last character's low 2 bits must be zero.
    last = alphabet.index(text[-1:])
    sloppy = text[:-1] + alphabet[last | 1 : (last | 1) + 1]
    assert base64.b64decode(sloppy + b"=") == base64.b64decode(text + b"=")
    with pytest.raises(vf.HeaderError, match="canonical"):
        decrypt(blob[:31] + sloppy + blob[74:])


@pytest.mark.parametrize(("content", "error", "words"), [
    (b"", vf.TruncatedError, "inside its header"),
    (b"clinivault-obj", vf.TruncatedError, "inside its header"),
    (b"\x89PNG\r\n\x1a\n" + bytes(300), vf.HeaderError, "not a clinivault object"),
    (b"age-encryption.org/v1\n" + bytes(300), vf.HeaderError, "not a clinivault object"),
    (b"clinivault-object/v2\n" + bytes(300), vf.HeaderError, "unsupported object version"),
    (b"clinivault-object/v1\n-> scrypt " + bytes(300), vf.HeaderError, "X25519"),
])
def test_not_an_object(content: bytes, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        decrypt(content)


def test_two_stanzas_are_not_v1() -> None:
    blob, _ = encrypt(b"secret")
    stanza = blob[21:140]
    forged = blob[:140] + stanza + blob[140:]
    with pytest.raises(vf.HeaderError, match="MAC line"):
        decrypt(forged)


# -- payload tampering ----------------------------------------------------------------------

SIZE = 3 * CHUNK + 1000  # chunks 0-2 full, chunk 3 short and last
DATA = pattern(SIZE, seed=7)
BLOB, RESULT = encrypt(DATA)


def chunk_span(i: int) -> tuple[int, int]:
    start = PAYLOAD_START + i * SEALED
    return start, min(start + SEALED, len(BLOB))


def test_sampled_payload_byte_flips_name_the_chunk() -> None:
    rng = random.Random(42)
    positions = list(range(HEADER, PAYLOAD_START))  # every byte of the payload nonce
    for i in range(4):
        start, end = chunk_span(i)
        positions += [start, start + 1, end - 17, end - 16, end - 1]  # data edges and tag
    positions += rng.sample(range(PAYLOAD_START, len(BLOB)), 60)
    for pos in positions:
        index = 0 if pos < PAYLOAD_START else (pos - PAYLOAD_START) // SEALED
        mutated = bytearray(BLOB)
        mutated[pos] ^= 1 << rng.randrange(8)
        out = io.BytesIO()
        with pytest.raises(vf.ChunkAuthError) as info:
            vf.decrypt_stream(io.BytesIO(bytes(mutated)), out, KEY)
        assert info.value.chunk_index == index, pos
        assert f"chunk {index}" in str(info.value)
        # only chunks before the damaged one were released, and they are authentic
        assert out.getvalue() == DATA[: index * CHUNK]


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=len(BLOB) - 1), st.integers(1, 255))
def test_any_byte_change_is_rejected(pos: int, mask: int) -> None:
    mutated = bytearray(BLOB)
    mutated[pos] ^= mask
    with pytest.raises(vf.ObjectFormatError) as info:
        decrypt(bytes(mutated))
    assert type(info.value) is not vf.ObjectFormatError


def test_dropping_the_last_chunk() -> None:
    start, _ = chunk_span(3)
    out = io.BytesIO()
    with pytest.raises(vf.TruncatedError, match="after chunk 2"):
        vf.decrypt_stream(io.BytesIO(BLOB[:start]), out, KEY)
    assert out.getvalue() == DATA[: 2 * CHUNK]  # chunk 2 is authentic but never released


def test_dropping_the_last_full_chunk() -> None:
    data = pattern(2 * CHUNK)
    blob, _ = encrypt(data)
    assert len(blob) == PAYLOAD_START + 2 * SEALED
    with pytest.raises(vf.TruncatedError, match="after chunk 0"):
        decrypt(blob[: PAYLOAD_START + SEALED])


@pytest.mark.parametrize("boundary", [1, 2, 3])
def test_truncation_at_each_chunk_boundary(boundary: int) -> None:
    with pytest.raises(vf.TruncatedError):
        decrypt(BLOB[: PAYLOAD_START + boundary * SEALED])


@pytest.mark.parametrize(("cut", "error"), [
    (HEADER - 1, vf.TruncatedError),
    (HEADER, vf.TruncatedError),  # no payload nonce
    (PAYLOAD_START - 1, vf.TruncatedError),
    (PAYLOAD_START, vf.TruncatedError),  # no chunk at all
    (PAYLOAD_START + 15, vf.TruncatedError),  # less than a tag
    (PAYLOAD_START + SEALED + 10, vf.TruncatedError),
    (PAYLOAD_START + 1000, vf.ChunkAuthError),  # inside chunk 0: cannot be told from damage
    (len(BLOB) - 1, vf.ChunkAuthError),
])
def test_truncation_elsewhere(cut: int, error: type) -> None:
    with pytest.raises(error):
        decrypt(BLOB[:cut])


def test_empty_payload_truncated() -> None:
    blob, _ = encrypt(b"")
    assert len(blob) == PAYLOAD_START + 16
    with pytest.raises(vf.TruncatedError):
        decrypt(blob[:-16])


def test_swapped_chunks() -> None:
    (s0, e0), (s1, e1) = chunk_span(0), chunk_span(1)
    swapped = BLOB[:s0] + BLOB[s1:e1] + BLOB[s0:e0] + BLOB[e1:]
    assert len(swapped) == len(BLOB)
    with pytest.raises(vf.ChunkAuthError) as info:
        decrypt(swapped)
    assert info.value.chunk_index == 0


def test_duplicated_middle_chunk() -> None:
    s1, e1 = chunk_span(1)
    with pytest.raises(vf.ChunkAuthError) as info:
        decrypt(BLOB[:e1] + BLOB[s1:e1] + BLOB[e1:])
    assert info.value.chunk_index == 2


def test_extra_chunk_after_full_last_chunk() -> None:
    blob, _ = encrypt(pattern(2 * CHUNK))
    first = blob[PAYLOAD_START : PAYLOAD_START + SEALED]
    with pytest.raises(vf.TrailingDataError, match="after its final chunk"):
        decrypt(blob + first)


def test_extra_chunk_after_short_last_chunk() -> None:
    # The reader cannot know where a short last chunk ended: this reports the last chunk.
    s0, e0 = chunk_span(0)
    with pytest.raises(vf.ChunkAuthError) as info:
        decrypt(BLOB + BLOB[s0:e0])
    assert info.value.chunk_index == 3


@pytest.mark.parametrize("garbage", [b"\x00", b"\n", bytes(SEALED)])
def test_trailing_garbage(garbage: bytes) -> None:
    full, _ = encrypt(pattern(CHUNK))
    with pytest.raises(vf.TrailingDataError):
        decrypt(full + garbage)
    with pytest.raises(vf.ChunkAuthError):
        decrypt(BLOB + garbage)


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def test_empty_final_chunk_after_data_is_refused() -> None:
    # Only a key holder can build this; it is a writer bug, and it has its own error.
    blob, result = encrypt(pattern(CHUNK))
    aead = AESGCM(_hkdf(result.file_key, blob[HEADER:PAYLOAD_START], b"payload"))
    body = aead.encrypt(bytes(11) + b"\x00", pattern(CHUNK), None)
    body += aead.encrypt((1).to_bytes(11, "big") + b"\x01", b"", None)
    with pytest.raises(vf.PayloadFormatError, match="empty final chunk"):
        decrypt(blob[:PAYLOAD_START] + body)


def test_errors_are_integrity_errors_with_hints() -> None:
    with pytest.raises(IntegrityError) as info:
        decrypt(BLOB[:-1])
    assert info.value.exit_code == 1
    assert "backup" in info.value.user_message()


# -- the documented vectors -----------------------------------------------------------------


def _vector_plaintext(v: dict) -> bytes:
    if "plaintext_hex" in v:
        return bytes.fromhex(v["plaintext_hex"])
    if v["plaintext_rule"] == "empty":
        return b""
    assert v["plaintext_rule"] == "bytes(i % 251 for i in range(131072))"
    return bytes(i % 251 for i in range(131072))


def independent_decrypt(obj: bytes, private_raw: bytes) -> bytes:
    """A decoder written from docs/FORMAT.md alone (no clinivault code)."""
    def unb64u(text: bytes, size: int) -> bytes:
        raw = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
        if len(raw) != size or base64.b64encode(raw).rstrip(b"=") != text:
            raise ValueError("bad base64")
        return raw

    def kdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)

    m = re.fullmatch(rb"clinivault-object/v1\n-> X25519 (\S{43})\n(\S{64})\n(--- (\S{43}))\n",
                     obj[:188])
    if not m:
        raise ValueError("header")
    eph, body, mac = unb64u(m[1], 32), unb64u(m[2], 48), unb64u(m[4], 32)
    me = X25519PrivateKey.from_private_bytes(private_raw)
    shared = me.exchange(X25519PublicKey.from_public_bytes(eph))
    if shared == bytes(32):
        raise ValueError("low order")
    wrap = kdf(shared, eph + me.public_key().public_bytes_raw(), b"clinivault-object/v1/X25519")
    file_key = AESGCM(wrap).decrypt(b"\x00" * 12, body, None)
    mac_ok = hmac.new(kdf(file_key, b"", b"header"), obj[: m.start(3) + 3], "sha256").digest()
    if not hmac.compare_digest(mac_ok, mac):
        raise ValueError("header MAC")
    aead = AESGCM(kdf(file_key, obj[188:204], b"payload"))
    rest, plain, i = obj[204:], [], 0
    while True:
        piece, rest = rest[:65552], rest[65552:]
        last = not rest
        plain.append(aead.decrypt(i.to_bytes(11, "big") + (b"\x01" if last else b"\x00"),
                                  piece, None))
        if last:
            break
        i += 1
    if i > 0 and not plain[-1]:
        raise ValueError("empty last chunk after data")
    return b"".join(plain)


def test_independent_decoder_uses_no_clinivault_code() -> None:
    source = inspect.getsource(independent_decrypt)
    assert "vf." not in source and "core" not in source


@pytest.mark.parametrize("vector", VECTORS["objects"], ids=lambda v: v["name"])
def test_vector_with_independent_decoder(vector: dict) -> None:
    obj = base64.b64decode(vector["object_base64"])
    assert len(obj) == vector["object_size"]
    private = bytes.fromhex(VECTORS["recipient_private_key_hex"])
    plain = independent_decrypt(obj, private)
    assert plain == _vector_plaintext(vector)
    assert hashlib.sha256(plain).hexdigest() == vector["plaintext_sha256"]
    with pytest.raises(InvalidTag):
        independent_decrypt(obj[:-1], private)


@pytest.mark.parametrize("vector", VECTORS["objects"], ids=lambda v: v["name"])
def test_vector_with_clinivault_and_byte_exact_reencryption(vector: dict) -> None:
    obj = base64.b64decode(vector["object_base64"])
    key = X25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["recipient_private_key_hex"]))
    assert key.public_key().public_bytes_raw().hex() == VECTORS["recipient_public_key_hex"]
    assert decrypt(obj, key) == _vector_plaintext(vector)
    out = io.BytesIO()
    result = vf._encrypt(
        io.BytesIO(_vector_plaintext(vector)), out, key.public_key(),
        file_key=bytes.fromhex(vector["file_key_hex"]),
        ephemeral=X25519PrivateKey.from_private_bytes(
            bytes.fromhex(vector["ephemeral_private_key_hex"])),
        nonce=bytes.fromhex(vector["payload_nonce_hex"]))
    assert out.getvalue() == obj
    assert result.plaintext_sha256 == vector["plaintext_sha256"]


def test_vector_intermediates_follow_the_spec() -> None:
    v = next(o for o in VECTORS["objects"] if o["name"] == "short")
    rec = X25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["recipient_private_key_hex"]))
    eph = X25519PrivateKey.from_private_bytes(bytes.fromhex(v["ephemeral_private_key_hex"]))
    eph_pub, rec_pub = eph.public_key().public_bytes_raw(), rec.public_key().public_bytes_raw()
    shared = eph.exchange(rec.public_key())
    assert shared == rec.exchange(eph.public_key())
    assert shared.hex() == v["shared_secret_hex"]
    wrap = _hkdf(shared, eph_pub + rec_pub, b"clinivault-object/v1/X25519")
    assert wrap.hex() == v["wrap_key_hex"]
    file_key = bytes.fromhex(v["file_key_hex"])
    assert _hkdf(file_key, b"", b"header").hex() == v["header_mac_key_hex"]
    assert _hkdf(file_key, bytes.fromhex(v["payload_nonce_hex"]), b"payload").hex() == \
        v["payload_key_hex"]


def code_blocks(markdown: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block, in order."""
    blocks, lang, body = [], None, []
    for line in markdown.splitlines(keepends=True):
        if line.startswith("```"):
            if lang is None:
                lang, body = line[3:].strip(), []
            else:
                blocks.append((lang, "".join(body)))
                lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, "unclosed code block"
    return blocks


def test_vector_in_format_md_matches_vector_file() -> None:
    doc = (ROOT / "docs" / "FORMAT.md").read_text()
    short = next(o for o in VECTORS["objects"] if o["name"] == "short")
    blocks = [body for _, body in code_blocks(doc)]
    b64_block = next(b for b in blocks if b.startswith("Y2xpbml2"))
    obj = base64.b64decode(short["object_base64"])
    assert obj[:HEADER].decode() in blocks
    json_blocks = [json.loads(body) for lang, body in code_blocks(doc) if lang == "json"]
    assert VECTORS["vault_json"]["file"] in json_blocks
    assert "".join(b64_block.split()) == short["object_base64"]
    assert VECTORS["recipient_private_key_hex"] in doc
    assert short["plaintext_sha256"] in doc
    assert bytes.fromhex(short["plaintext_hex"]).decode().rstrip("\n") in doc


def _format_md_decoder() -> dict:
    doc = (ROOT / "docs" / "FORMAT.md").read_text()
    section = doc.split("## 6. Reference decoder", 1)[1]
    code = next(body for lang, body in code_blocks(section) if lang == "python")
    namespace: dict = {"__name__": "format_md_decoder"}
    exec(compile(code, "FORMAT.md", "exec"), namespace)
    return namespace


def test_format_md_reference_decoder_runs_on_vectors_and_fresh_objects() -> None:
    ns = _format_md_decoder()
    vault = VECTORS["vault_json"]
    private = ns["unlock_vault"](json.dumps(vault["file"]).encode(),
                                 vault["passphrase_utf8"].encode())
    assert private.hex() == VECTORS["recipient_private_key_hex"]
    with pytest.raises(ValueError, match="opens no slot"):
        ns["unlock_vault"](json.dumps(vault["file"]).encode(), b"wrong passphrase")
    for v in VECTORS["objects"]:
        assert ns["decrypt_object"](base64.b64decode(v["object_base64"]), private) == \
            _vector_plaintext(v)
    raw = KEY.private_bytes_raw()
    for size in (0, 5, CHUNK, CHUNK + 1, 2 * CHUNK):
        data = pattern(size)
        blob, _ = encrypt(data)
        assert ns["decrypt_object"](blob, raw) == data
        assert independent_decrypt(blob, raw) == data
        with pytest.raises((ValueError, InvalidTag)):
            ns["decrypt_object"](blob + b"\x00", raw)
        with pytest.raises((ValueError, InvalidTag)):
            ns["decrypt_object"](blob[: PAYLOAD_START + SEALED * max(0, (size - 1) // CHUNK)], raw)


# -- bounded memory -------------------------------------------------------------------------


class GeneratedInput(io.RawIOBase):
    """A 256 MB (or any size) readable stream made on the fly, never held in memory."""

    def __init__(self, size: int) -> None:
        self.remaining = size
        self.block = random.Random(3).randbytes(1 << 20)
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: memoryview) -> int:  # type: ignore[override]
        n = min(len(buf), self.remaining, len(self.block) - self.pos % len(self.block))
        start = self.pos % len(self.block)
        buf[:n] = self.block[start : start + n]
        self.pos += n
        self.remaining -= n
        return n


class HashSink(io.RawIOBase):
    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.digest.update(data)
        self.size += len(data)
        return len(data)


@pytest.mark.slow
def test_memory_stays_bounded_for_256_mb(tmp_path: Path) -> None:
    size = 256 * 1024 * 1024
    obj = tmp_path / "big.obj"
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        with obj.open("wb") as out:
            result = vf.encrypt_stream(GeneratedInput(size), out, KEY.public_key())  # type: ignore[arg-type]
        t1 = time.perf_counter()
        _, enc_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        sink = HashSink()
        with obj.open("rb") as src:
            assert vf.decrypt_stream(src, sink, KEY) == size  # type: ignore[arg-type]
        t2 = time.perf_counter()
        _, dec_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.plaintext_size == size == sink.size
    assert obj.stat().st_size == result.object_size == vf.encrypted_size(size)
    assert sink.digest.hexdigest() == result.plaintext_sha256
    mb = 1024 * 1024
    print(f"\n256 MB: encrypt peak {enc_peak / mb:.2f} MB, {size / mb / (t1 - t0):.0f} MB/s; "
          f"decrypt peak {dec_peak / mb:.2f} MB, {size / mb / (t2 - t1):.0f} MB/s")
    assert enc_peak < 16 * mb
    assert dec_peak < 16 * mb
