#!/usr/bin/env python3
"""An independent check of vectors/ward-v2-root-store.json, written from
SECURITY.md §10.7.1 alone (no Rust read).

    python3 vectors/independent/root_store_v2.py

Needs Python 3 and `cryptography` >= 44 (Argon2id, HKDF, ChaCha20,
ChaCha20-Poly1305, Ed25519). It re-derives the Argon2id output, the AEAD key,
the header and the whole file from the inputs, opens the file, and opens
every negative file expecting exactly the named error. XChaCha20 is built
from HChaCha20 as in envelope_v2.py (draft-irtf-cfrg-xchacha §2.2).
"""

import hashlib
import json
import os
import struct
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

HERE = os.path.dirname(os.path.abspath(__file__))
INFO = b"ward/v2/root-store/aead-key"


def hchacha20(key, n16):
    block = Cipher(algorithms.ChaCha20(key, n16), mode=None).encryptor().update(b"\x00" * 64)
    out_words = struct.unpack("<16I", block)
    init = struct.unpack("<4I", b"expand 32-byte k") + struct.unpack("<8I", key) + struct.unpack("<4I", n16)
    rounds = [(o - i) & 0xFFFFFFFF for o, i in zip(out_words, init)]
    return struct.pack("<8I", *(rounds[0:4] + rounds[12:16]))


def xchacha(key, nonce24):
    return ChaCha20Poly1305(hchacha20(key, nonce24[:16])), b"\x00" * 4 + nonce24[16:]


def argon2id(passphrase, salt, m, t, p):
    return Argon2id(salt=salt, length=32, iterations=t, lanes=p, memory_cost=m).derive(passphrase)


def aead_key(a):
    # HKDF-SHA256 with no salt (RFC 5869: a string of HashLen zeros).
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=INFO).derive(a)


def public_of(seed):
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class Refused(Exception):
    pass


def open_file(f, passphrase):
    """SECURITY.md §10.7.1 "Opening", in its order."""
    if len(f) < 8 or f[:8] != b"WARDROOT":
        raise Refused("NotARootFile")
    if len(f) != 144:
        raise Refused("NotARootFile")
    if struct.unpack(">H", f[8:10])[0] != 1 or f[10] != 1 or f[11] != 1:
        raise Refused("Unsupported")
    m, t, p = struct.unpack(">III", f[12:24])
    if not (8 * 1024 <= m <= 1024 * 1024 and 1 <= t <= 64 and 1 <= p <= 16 and m >= 8 * p):
        raise Refused("BadParams")
    salt, nonce, pub = f[24:40], f[40:64], f[64:96]
    try:
        Ed25519PublicKey.from_public_bytes(pub)
    except ValueError:
        raise Refused("NotARootFile")
    key = aead_key(argon2id(passphrase, salt, m, t, p))
    cipher, n12 = xchacha(key, nonce)
    try:
        seed = cipher.decrypt(n12, f[96:], f[:96])
    except InvalidTag:
        raise Refused("WrongPassphrase")
    if public_of(seed) != pub:
        raise Refused("Mismatch")
    return seed


def main():
    with open(os.path.join(HERE, "..", "ward-v2-root-store.json")) as fh:
        v = json.load(fh)
    h = bytes.fromhex
    seed = hashlib.sha256(v["root_seed_label"].encode()).digest()
    assert seed == h(v["root_seed"])
    assert public_of(seed) == h(v["root_public_key"])
    salt = hashlib.sha256(v["salt_label"].encode()).digest()[:16]
    nonce = hashlib.sha256(v["nonce_label"].encode()).digest()[:24]
    assert salt == h(v["salt"]) and nonce == h(v["nonce"])
    k = v["argon2id"]
    pw = v["passphrase"].encode()
    a = argon2id(pw, salt, k["m_cost_kib"], k["t_cost"], k["p_cost"])
    assert a == h(v["argon2id_output"]), "argon2id output"
    key = aead_key(a)
    assert key == h(v["aead_key"]), "aead key"
    header = (
        b"WARDROOT" + struct.pack(">HBB", 1, 1, 1)
        + struct.pack(">III", k["m_cost_kib"], k["t_cost"], k["p_cost"])
        + salt + nonce + public_of(seed)
    )
    assert header == h(v["header"]), "header"
    cipher, n12 = xchacha(key, nonce)
    f = header + cipher.encrypt(n12, seed, header)
    assert f == h(v["file"]), "file"
    assert open_file(f, pw) == seed
    for case in v["negative"]:
        try:
            open_file(h(case["file"]), case["passphrase"].encode())
        except Refused as e:
            want = case["error"].split("::")[-1]
            assert str(e) == want, f'{case["name"]}: {e} != {want}'
        else:
            raise AssertionError(f'{case["name"]}: opened')
    print(f"ward-v2-root-store.json: file and {len(v['negative'])} negative cases check out")
    return 0


if __name__ == "__main__":
    sys.exit(main())
