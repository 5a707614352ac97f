#!/usr/bin/env python3
"""An independent check of vectors/ward-v2-link.json, written from
SECURITY.md §4.9 alone (no Rust read).

    python3 vectors/independent/link_v2.py

Needs Python 3 and `cryptography` (HKDF, ChaCha20-Poly1305, Ed25519). It
re-derives the rendezvous id and both direction keys from the secret, parses
the link code, checks the new device's proof of possession, opens every
sealed message of the transcript at its index and compares its plaintext,
re-seals it (byte-exact), recomputes the nonce commitment and the SAS, and
expects every negative case to fail as named.
"""

import hashlib
import json
import os
import struct
import sys

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
from cryptography.hazmat.primitives import hmac

HERE = os.path.dirname(os.path.abspath(__file__))
PASSED = 0
FAILED = 0


def check(name, ok):
    global PASSED, FAILED
    if ok:
        PASSED += 1
    else:
        FAILED += 1
        print("FAIL", name)


def framed_hash(label, parts):
    # §3.1: label || 0x00 || (u32_be(len) || part)*, then SHA-256.
    h = hashlib.sha256(label + b"\x00")
    for p in parts:
        h.update(struct.pack(">I", len(p)) + p)
    return h.digest()


def framed(label, parts):
    out = label + b"\x00"
    for p in parts:
        out += struct.pack(">I", len(p)) + p
    return out


def schedule(secret, labels):
    h = hmac.HMAC(labels["salt"].encode(), hashes.SHA256())
    h.update(secret)
    prk = h.finalize()

    def expand(info):
        return HKDFExpand(algorithm=hashes.SHA256(), length=32, info=info.encode()).derive(prk)

    return expand(labels["rendezvous"]), expand(labels["key_to_existing"]), expand(labels["key_to_new"])


def nonce(i):
    return b"\x00" * 4 + struct.pack(">Q", i)


def main():
    path = os.environ.get("WARD_VECTORS_DIR", os.path.dirname(HERE))
    with open(os.path.join(path, "ward-v2-link.json")) as f:
        v = json.load(f)
    b = bytes.fromhex
    labels = v["labels"]
    secret = b(v["secret"])
    check("secret is SHA-256 of its label", secret == hashlib.sha256(v["secret_label"].encode()).digest())
    rdv, k_existing, k_new = schedule(secret, labels)
    check("rendezvous", rdv == b(v["rendezvous"]))
    check("key_to_existing", k_existing == b(v["key_to_existing"]))
    check("key_to_new", k_new == b(v["key_to_new"]))

    # The code: "ward-link:1:" || hex(secret) || ":" || user id.
    code = v["code"]
    check("code prefix", code.startswith("ward-link:1:"))
    rest = code[len("ward-link:1:"):]
    check("code secret", b(rest[:64]) == secret)
    check("code user id", rest[64] == ":" and rest[65:] == v["user_id"])

    # Proof of possession (§4.4).
    root = b(v["root_public_key"])
    signing = b(v["device_signing_key"])
    encryption = b(v["device_encryption_key"])
    msg = framed(b"ward/v2/sig/device-possession", [root, v["user_id"].encode(), signing, encryption])
    try:
        Ed25519PublicKey.from_public_bytes(signing).verify(b(v["possession_proof"]), msg)
        check("possession proof", True)
    except InvalidSignature:
        check("possession proof", False)

    n_new, n_existing = b(v["nonce_new"]), b(v["nonce_existing"])
    check("nonce_new label", n_new == hashlib.sha256(v["nonce_new_label"].encode()).digest())
    check("nonce_existing label", n_existing == hashlib.sha256(v["nonce_existing_label"].encode()).digest())
    commitment = framed_hash(labels["hash_nonce"].encode(), [n_new])
    check("nonce commitment", commitment == b(v["nonce_commitment"]))

    hello = b(v["hello_plaintext"])
    # LinkMessage{hello = 1: LinkHello{1: signing, 2: encryption, 3: proof, 4: commitment}}.
    def field(n, data):
        out = bytes([n << 3 | 2])
        ln = len(data)
        while ln >= 0x80:
            out += bytes([ln & 0x7F | 0x80])
            ln >>= 7
        return out + bytes([ln]) + data
    inner = field(1, signing) + field(2, encryption) + field(3, b(v["possession_proof"])) + field(4, commitment)
    check("hello plaintext encodes the offer", hello == field(1, inner))

    h = framed_hash(labels["hash_sas"].encode(), [rdv, hello, n_existing, n_new])
    n = struct.unpack(">I", h[:4])[0] % 1_000_000
    check("sas", "%03d %03d" % (n // 1000, n % 1000) == v["sas"])

    for i, m in enumerate(v["transcript"]):
        key = k_existing if m["from"] == "new" else k_new
        aead = ChaCha20Poly1305(key)
        try:
            plain = aead.decrypt(nonce(m["index"]), b(m["sealed"]), rdv)
            check("transcript %d opens" % i, plain == b(m["plaintext"]))
        except InvalidTag:
            check("transcript %d opens" % i, False)
        check("transcript %d reseals" % i, aead.encrypt(nonce(m["index"]), b(m["plaintext"]), rdv) == b(m["sealed"]))
    check("the hello is the first message", b(v["transcript"][0]["plaintext"]) == hello)

    for case in v["negative"]:
        key = k_existing if case["to"] == "existing" else k_new
        try:
            plain = ChaCha20Poly1305(key).decrypt(nonce(case["index"]), b(case["sealed"]), rdv)
            opened = True
        except InvalidTag:
            opened = False
        if case["error"] == "LinkError::Tampered":
            check(case["name"], not opened)
        elif case["error"] == "LinkError::CommitmentMismatch":
            # LinkMessage{reveal = 3: LinkReveal{nonce = 1}}: the nonce does not open the commitment.
            ok = opened and plain[0] == (3 << 3 | 2) and plain[2] == 0x0A
            revealed = plain[4:4 + plain[3]] if ok else b""
            check(case["name"], ok and framed_hash(labels["hash_nonce"].encode(), [revealed]) != commitment)
        else:
            check(case["name"] + " (unknown error)", False)

    print("%d passed, %d failed" % (PASSED, FAILED))
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
