#!/usr/bin/env python3
"""An independent check of Ward's v2 envelope vectors, written from
SECURITY.md §3.3, §7.1-§7.4 alone (no Rust read).

    python3 vectors/independent/envelope_v2.py

Needs only Python 3 and `cryptography` (HKDF, ChaCha20, ChaCha20-Poly1305,
Ed25519). It checks, for every envelope of ward-v2-envelope.json: the key
schedule (S4), the header's fields and canonical layout (§7.1), the padding
(§7.2), the XChaCha20-Poly1305 ciphertext (S6), the ciphertext digest (S7),
the signature input and signature (S8), the envelope encoding (S9); and it
opens every envelope-open negative case of the negative file whose
verdict lies in R4-R8, expecting exactly the named error.
"""

import hashlib
import json
import os
import struct
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives import hmac
from cryptography.exceptions import InvalidSignature, InvalidTag

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.path.dirname(HERE)

SIG_ENVELOPE = b"ward/v2/sig/envelope"
HASH_CIPHERTEXT = b"ward/v2/hash/envelope-ciphertext"
ENVELOPE_AEAD_KEY = b"ward/v2/envelope/aead-key"
ENVELOPE_KEY_COMMITMENT = b"ward/v2/envelope/key-commitment"


def frame(label, *parts):
    """§3.3: label || 0x00 || (u32_be(len(p)) || p)*."""
    out = label + b"\x00"
    for p in parts:
        out += struct.pack(">I", len(p)) + p
    return out


def H(label, *parts):
    return hashlib.sha256(frame(label, *parts)).digest()


def envelope_keys(k, rid):
    """§7.3 S4: prk = HKDF-Extract(salt = rid, IKM = K), then two expands."""
    h = hmac.HMAC(rid, hashes.SHA256())
    h.update(k)
    prk = h.finalize()
    expand = lambda info: HKDFExpand(hashes.SHA256(), 32, info).derive(prk)
    return expand(ENVELOPE_AEAD_KEY), expand(ENVELOPE_KEY_COMMITMENT)


def padme(n):
    if n < 2:
        return n
    e = n.bit_length() - 1
    s = e.bit_length()
    mask = (1 << (e - s)) - 1
    return (n + mask) & ~mask


def padded_len(n):
    return max(256, padme(4 + n))


def pad(c):
    """§7.2 (v2): content || zeros || u32_be(len)."""
    return c + b"\x00" * (padded_len(len(c)) - 4 - len(c)) + struct.pack(">I", len(c))


def unpad(p):
    if len(p) < 4:
        return None
    n = struct.unpack(">I", p[-4:])[0]
    if n > len(p) - 4 or len(p) != padded_len(n) or any(p[n:-4]):
        return None
    return p[:n]


def hchacha20(key, n16):
    """HChaCha20 from the ChaCha20 block function: the block for (key,
    counter||nonce = n16) is rounds(state) + state; subtracting the known
    initial state leaves rounds(state), whose words 0-3 and 12-15 are the
    subkey (draft-irtf-cfrg-xchacha §2.2)."""
    block = Cipher(algorithms.ChaCha20(key, n16), mode=None).encryptor().update(b"\x00" * 64)
    out_words = struct.unpack("<16I", block)
    init = struct.unpack("<4I", b"expand 32-byte k") + struct.unpack("<8I", key) + struct.unpack("<4I", n16)
    rounds = [(o - i) & 0xFFFFFFFF for o, i in zip(out_words, init)]
    return struct.pack("<8I", *(rounds[0:4] + rounds[12:16]))


def xchacha_seal(key, nonce24, aad, pt):
    sub = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(sub).encrypt(b"\x00" * 4 + nonce24[16:], pt, aad)


def xchacha_open(key, nonce24, aad, ct):
    sub = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(sub).decrypt(b"\x00" * 4 + nonce24[16:], ct, aad)


def varint(b, i):
    shift = v = 0
    while True:
        x = b[i]
        i += 1
        v |= (x & 0x7F) << shift
        shift += 7
        if x < 0x80:
            return v, i


def fields(b):
    """A minimal protobuf reader: [(field number, wire type, value)]."""
    out, i = [], 0
    while i < len(b):
        key, i = varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = varint(b, i)
        elif wt == 2:
            n, i = varint(b, i)
            v, i = b[i : i + n], i + n
        else:
            raise ValueError("unexpected wire type")
        out.append((num, wt, v))
    return out


def last(fs, num, default=b""):
    vals = [v for (n, _, v) in fs if n == num]
    return vals[-1] if vals else default


def enc_len_field(num, data):
    out = bytes([num << 3 | 2])
    n = len(data)
    while n >= 0x80:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n]) + data


def check_envelope(e):
    inp = e["seal_inputs"]
    x = bytes.fromhex
    rk, rid, nonce = x(inp["resource_key"]), x(inp["resource_id"]), x(inp["nonce"])
    aead_key, kc = envelope_keys(rk, rid)
    assert aead_key == x(e["aead_key"]) and kc == x(e["key_commitment"]), "key schedule"

    header = x(e["header"])
    hf = fields(header)
    assert [n for (n, _, _) in hf] == sorted(n for (n, _, _) in hf), "field order"
    assert last(hf, 2) == rid and last(hf, 3) == x(inp["conversation_id"])
    assert last(hf, 4).decode() == inp["sender_user_id"]
    assert last(hf, 5) == x(inp["sender_device_id"])
    assert last(hf, 6, 0) == inp["timestamp_ms"] and last(hf, 7, 0) == inp["content_type_wire"]
    assert last(hf, 8) == nonce and last(hf, 10) == kc
    assert [v.decode() for (n, _, v) in hf if n == 9] == inp["recipient_user_ids"]

    content = x(inp["content"])
    padded = pad(content)
    assert padded == x(e["padded_plaintext"]), "padding"
    ct = xchacha_seal(aead_key, nonce, header, padded)
    assert ct == x(e["ciphertext"]), "ciphertext"
    d = H(HASH_CIPHERTEXT, ct)
    assert d == x(e["ciphertext_digest"]), "digest"
    sig_input = frame(SIG_ENVELOPE, header, d)
    assert sig_input == x(e["signature_input"]), "signature input"
    sk = Ed25519PrivateKey.from_private_bytes(x(inp["sender_device_secret"]))
    assert sk.sign(sig_input) == x(e["signature"]), "signature"
    env = enc_len_field(1, header) + enc_len_field(2, ct) + enc_len_field(3, x(e["signature"]))
    assert env == x(e["envelope"]), "envelope encoding"
    assert unpad(xchacha_open(aead_key, nonce, header, ct)) == content


def open_envelope(env_bytes, me, k):
    """R4-R8 (the sender's log is the vectors' business; R1-R3 are not
    re-checked here). Returns the content or the error name."""
    ef = fields(env_bytes)
    header, ct, sig = last(ef, 1), last(ef, 2), last(ef, 3)
    hf = fields(header)
    device = last(hf, 5)
    try:
        Ed25519PublicKey.from_public_bytes(device).verify(sig, frame(SIG_ENVELOPE, header, H(HASH_CIPHERTEXT, ct)))
    except InvalidSignature:
        return "OpenError::BadSignature"
    if me not in [v.decode() for (n, _, v) in hf if n == 9]:
        return "OpenError::NotARecipient"
    aead_key, kc = envelope_keys(k, last(hf, 2))
    if not hmac_compare(kc, last(hf, 10)):
        return "OpenError::KeyCommitmentMismatch"
    try:
        p = xchacha_open(aead_key, last(hf, 8), header, ct)
    except InvalidTag:
        return "OpenError::Undecryptable"
    c = unpad(p)
    return "OpenError::Undecryptable" if c is None else c


def hmac_compare(a, b):
    import hmac as std_hmac

    return std_hmac.compare_digest(a, b)


def main():
    env = json.load(open(os.path.join(VECTORS, "ward-v2-envelope.json")))
    for e in env["envelopes"]:
        check_envelope(e)
        print(f"ok envelope {e['name']}")
    # The negative file's name follows the protocol version of its other cases.
    (neg_name,) = sorted(n for n in os.listdir(VECTORS) if n.endswith("-negative.json"))[-1:]
    neg = json.load(open(os.path.join(VECTORS, neg_name)))
    checked = 0
    for c in neg["cases"]:
        if c["operation"] != "open_envelope" or c["error"] not in (
            "OpenError::BadSignature",
            "OpenError::NotARecipient",
            "OpenError::KeyCommitmentMismatch",
            "OpenError::Undecryptable",
        ):
            continue
        inp = c["inputs"]
        got = open_envelope(bytes.fromhex(inp["envelope"]), inp["me"], bytes.fromhex(inp["resource_key"]))
        assert got == c["error"], f"{c['name']}: got {got!r}, want {c['error']}"
        print(f"ok negative {c['name']}: {got}")
        checked += 1
    assert checked >= 7, checked
    print(f"all envelope v2 checks passed ({len(env['envelopes'])} envelopes, {checked} negative cases)")


if __name__ == "__main__":
    sys.exit(main())
