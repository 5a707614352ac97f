#!/usr/bin/env python3
"""Independent check of Ward's protocol v2 vectors, written from SECURITY.md, the .proto files and
vectors/README.md alone (no Rust read). Every value is read from vectors/*.json at run time.

Primitives come from libraries (cryptography: X25519, ML-KEM-768, HKDF, ChaCha20-Poly1305;
PyNaCl/libsodium: Ed25519 and XChaCha20-Poly1305; kyber-py: ML-KEM-768 Encaps_internal, the
derandomised encapsulation that `cryptography` does not expose; hashlib: SHA-2, SHA-3, SHAKE).
This file composes them as the spec says: framing, labels, protobuf encoding, X-Wing's combiner,
the HPKE key schedule, the envelope key schedule, padding, and the chain and handshake rules.

Ends with a line `N passed, M failed`; exits 1 on any failure.
"""
import hashlib
import hmac
import json
import os
import sys
import traceback
import unicodedata

import nacl.bindings as sodium
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from kyber_py.ml_kem import ML_KEM_768

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.environ.get("WARD_VECTORS_DIR", os.path.dirname(HERE))

# ---------------------------------------------------------------- constants (SECURITY.md §1.1, §3.4, §7.5)
PROTOCOL_VERSION = 2  # §1.1
LABELS = {  # §3.4; §1.1: every label begins with ward/v2/
    "SIG_INVITE": "ward/v2/sig/invite",
    "SIG_STATEMENT": "ward/v2/sig/statement",
    "SIG_DEVICE_POSSESSION": "ward/v2/sig/device-possession",
    "SIG_ENVELOPE": "ward/v2/sig/envelope",
    "HASH_CIPHERTEXT": "ward/v2/hash/envelope-ciphertext",
    "ENVELOPE_AEAD_KEY": "ward/v2/envelope/aead-key",
    "ENVELOPE_KEY_COMMITMENT": "ward/v2/envelope/key-commitment",
    "SIG_AUTH": "ward/v2/sig/auth",
    "SIG_RELAY_LINK": "ward/v2/sig/relay-link",
    "SIG_ENROL_AUTH": "ward/v2/sig/enrol-auth",
    "HASH_INVITE": "ward/v2/hash/invite",
    "HASH_ENTRY": "ward/v2/hash/entry",
    "WRAP_INFO": "ward/v2/wrap/resource-key",
    "GRANT_INFO": "ward/v2/wrap/device-grant",
    "HASH_KEY_ID": "ward/v2/hash/key-id",
}
L = {k: v.encode() for k, v in LABELS.items()}
MAX_USER_ID_BYTES = 128
MAX_INVITE_BYTES = 1024
MAX_STATEMENT_BYTES = int(os.environ.get("WARD_MAX_STATEMENT_BYTES", "8192"))  # §4.2 / §7.5 (X-Wing keys)
MAX_LOG_ENTRIES = 4096
MAX_CONTENT_BYTES = 16 * 1024 * 1024
MAX_RECIPIENTS = 256
MAX_HEADER_BYTES = 40 * 1024
MAX_ENVELOPE_BYTES = 20 * 1024 * 1024
MIN_PADDED_LEN = 256
AUTH_NONCE_BYTES = 32
MAX_CHALLENGE_BYTES = 1024  # §3.1 table


class WardError(Exception):
    """An error of the spec: `name` is `Enum::Variant`, fields the struct fields, reason the string payload."""

    def __init__(self, name, fields=None, reason=None):
        super().__init__(name, fields, reason)
        self.name, self.fields, self.reason = name, fields or {}, reason

    def __str__(self):
        return f"{self.name} {self.fields or ''} {self.reason if self.reason is not None else ''}".strip()


class DecodeError(Exception):
    def __init__(self, kind):  # TooLarge | Malformed | NonCanonical
        super().__init__(kind)
        self.kind = kind


# ---------------------------------------------------------------- §1.2, §3.3 framing
def u32(x):
    return x.to_bytes(4, "big")


def frame(label, *parts):
    out = bytearray(label + b"\x00")
    for p in parts:
        out += u32(len(p)) + p
    return bytes(out)


def H(label, *parts):
    return hashlib.sha256(frame(label, *parts)).digest()


# ---------------------------------------------------------------- §3.1 protobuf (hand-written, proto3)
def read_varint(b, i):
    x, shift = 0, 0
    while True:
        if i >= len(b):
            raise DecodeError("Malformed")
        c = b[i]
        i += 1
        if shift == 63 and c > 1:
            raise DecodeError("Malformed")
        x |= (c & 0x7F) << shift
        if c < 0x80:
            return x, i
        shift += 7
        if shift > 63:
            raise DecodeError("Malformed")


def varint(x):
    out = bytearray()
    while True:
        c = x & 0x7F
        x >>= 7
        if x:
            out.append(c | 0x80)
        else:
            out.append(c)
            return bytes(out)


def parse_fields(b):
    """[(field, wire_type, value)]: value an int (varint, fixed) or bytes (length-delimited)."""
    out, i = [], 0
    while i < len(b):
        key, i = read_varint(b, i)
        fno, wt = key >> 3, key & 7
        if fno == 0 or fno > (1 << 29) - 1:
            raise DecodeError("Malformed")
        if wt == 0:
            v, i = read_varint(b, i)
        elif wt == 1:
            if i + 8 > len(b):
                raise DecodeError("Malformed")
            v, i = int.from_bytes(b[i:i + 8], "little"), i + 8
        elif wt == 5:
            if i + 4 > len(b):
                raise DecodeError("Malformed")
            v, i = int.from_bytes(b[i:i + 4], "little"), i + 4
        elif wt == 2:
            n, i = read_varint(b, i)
            if n > len(b) - i:
                raise DecodeError("Malformed")
            v, i = bytes(b[i:i + n]), i + n
        # wire types 3 and 4 (groups, even in an unknown field), 6 and 7: §3.1 says Malformed
        else:
            raise DecodeError("Malformed")
        out.append((fno, wt, v))
    return out


SCALARS = {"uint32", "uint64", "enum", "bool"}


def is_scalar(typ):
    return isinstance(typ, str) and typ in SCALARS


def F(name, typ, repeated=False, oneof=None):
    return (name, typ, repeated, oneof)


def msg(*fields_with_numbers):
    return dict(fields_with_numbers)


# §4.1, §4.2, §7.1, §6, §8 and the .proto files
INVITE = msg((1, F("version", "uint32")), (2, F("user_id", "string")), (3, F("display_name", "string")),
             (4, F("profession", "string")), (5, F("registry_number", "string")),
             (6, F("delegation_public_key", "bytes")), (7, F("expires_at", "uint64")))
SIGNED_INVITE = msg((1, F("invite", "bytes")), (2, F("signature", "bytes")))
DEVICE_KEYS = msg((1, F("signing_public_key", "bytes")), (2, F("encryption_public_key", "bytes")))
USER_CREATION = msg((1, F("invite", SIGNED_INVITE)), (2, F("user_encryption_public_key", "bytes")),
                    (3, F("device", DEVICE_KEYS)))
DEVICE_ADDITION = msg((1, F("device", DEVICE_KEYS)), (2, F("device_signature", "bytes")))
DEVICE_REVOCATION = msg((1, F("device_id", "bytes")), (2, F("new_user_encryption_public_key", "bytes")))
KEY_ROTATION = msg((1, F("new_user_encryption_public_key", "bytes")))
STATEMENT = msg((1, F("version", "uint32")), (2, F("user_id", "string")), (3, F("seq", "uint64")),
                (4, F("prev_hash", "bytes")), (5, F("timestamp", "uint64")), (6, F("author", "bytes")),
                (10, F("user_creation", USER_CREATION, oneof="body")),
                (11, F("device_addition", DEVICE_ADDITION, oneof="body")),
                (12, F("device_revocation", DEVICE_REVOCATION, oneof="body")),
                (13, F("key_rotation", KEY_ROTATION, oneof="body")))
SIGNED_STATEMENT = msg((1, F("statement", "bytes")), (2, F("signature", "bytes")))
USER_LOG = msg((1, F("entries", SIGNED_STATEMENT, repeated=True)))
ENVELOPE_HEADER = msg((1, F("version", "uint32")), (2, F("resource_id", "bytes")), (3, F("conversation_id", "bytes")),
                      (4, F("sender_user_id", "string")), (5, F("sender_device_id", "bytes")),
                      (6, F("timestamp_ms", "uint64")), (7, F("content_type", "enum")), (8, F("nonce", "bytes")),
                      (9, F("recipient_user_ids", "string", repeated=True)), (10, F("key_commitment", "bytes")))
ENVELOPE = msg((1, F("header", "bytes")), (2, F("ciphertext", "bytes")), (3, F("signature", "bytes")))
WRAPPED_KEY = msg((1, F("resource_id", "bytes")), (2, F("recipient_key", "bytes")), (3, F("enc", "bytes")),
                  (4, F("ciphertext", "bytes")))
DEVICE_GRANT = msg((1, F("user_key", "bytes")), (2, F("device_key", "bytes")), (3, F("enc", "bytes")),
                   (4, F("ciphertext", "bytes")))
AUTH_CHALLENGE = msg((1, F("version", "uint32")), (2, F("service", "string")), (3, F("nonce", "bytes")),
                     (4, F("instance", "string")))
AUTH_RESPONSE = msg((1, F("user_id", "string")), (2, F("device_id", "bytes")), (3, F("signature", "bytes")),
                    (4, F("log", SIGNED_STATEMENT, repeated=True)), (5, F("version", "uint32")),
                    (6, F("invite", "bytes")), (7, F("invite_signature", "bytes")))


def default(typ, repeated):
    if repeated:
        return []
    if is_scalar(typ):
        return 0
    if typ == "bytes":
        return b""
    if typ == "string":
        return ""
    return None  # sub-message: absent


def decode(schema, b):
    """proto3 decoding (§3.1): unknown fields skipped; a known field with the wrong wire type is Malformed;
    a repeated non-repeated field replaces (scalars) or merges (messages); another oneof member discards the
    value held so far. Returns a dict; sub-messages are dicts or None."""
    res = {name: default(typ, rep) for (name, typ, rep, _) in schema.values()}
    chunks = {}
    oneof_set = {}
    for fno, wt, v in parse_fields(b):
        if fno not in schema:
            continue
        name, typ, rep, oneof = schema[fno]
        want = 0 if is_scalar(typ) else 2
        if wt != want:
            raise DecodeError("Malformed")
        if typ == "uint32":
            v &= 0xFFFFFFFF
        elif typ == "enum":
            v &= 0xFFFFFFFF
            if v >= 1 << 31:
                v -= 1 << 32
        elif typ == "bool":
            v = v != 0
        elif typ == "string":
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                raise DecodeError("Malformed")
        elif isinstance(typ, dict):
            decode(typ, v)  # validated eagerly, even if later discarded
        if oneof is not None:
            prev = oneof_set.get(oneof)
            if prev is not None and prev != name:
                res[prev] = None
                chunks.pop(prev, None)
            oneof_set[oneof] = name
        if isinstance(typ, dict):
            if rep:
                res[name].append(decode(typ, v))
            else:
                chunks[name] = chunks.get(name, b"") + v  # merge = parse of the concatenation
        elif rep:
            res[name].append(v)
        else:
            res[name] = v
    for name, raw in chunks.items():
        res[name] = decode(next(t for (n, t, _, _) in schema.values() if n == name), raw)
    return res


def encode(schema, m):
    """Canonical form (§3.1), the encoding the vectors reproduce."""
    out = bytearray()
    for fno in sorted(schema):
        name, typ, rep, oneof = schema[fno]
        v = m.get(name, default(typ, rep))
        values = v if rep else [v]
        for x in values:
            if is_scalar(typ):
                if rep or x:
                    out += varint(fno << 3) + varint(x & 0xFFFFFFFFFFFFFFFF if x < 0 else int(x))
            elif isinstance(typ, str):
                raw = x.encode() if typ == "string" else x
                if rep or raw:
                    out += varint(fno << 3 | 2) + varint(len(raw)) + raw
            else:
                if x is not None:
                    raw = encode(typ, x)
                    out += varint(fno << 3 | 2) + varint(len(raw)) + raw
    return bytes(out)


def decode_bounded(schema, b, mx):
    if len(b) > mx:
        raise DecodeError("TooLarge")
    return decode(schema, b)


def decode_canonical(schema, b, mx):
    m = decode_bounded(schema, b, mx)
    if encode(schema, m) != b:
        raise DecodeError("NonCanonical")
    return m


# ---------------------------------------------------------------- §3.5 keys and signatures
ED_IDENTITY = b"\x01" + bytes(31)


def valid_ed25519_public(pk):
    """§3.5: 32 bytes; decompresses; not of small order; canonical. Built from libsodium's point addition
    (decompression + curve check); canonical = re-encoding gives the same bytes; small order = [8]P is the
    identity."""
    if len(pk) != 32:
        return False
    try:
        p = sodium.crypto_core_ed25519_add(pk, ED_IDENTITY)
    except Exception:
        return False
    if p != pk:
        return False
    p2 = sodium.crypto_core_ed25519_add(p, p)
    p4 = sodium.crypto_core_ed25519_add(p2, p2)
    p8 = sodium.crypto_core_ed25519_add(p4, p4)
    return p8 != ED_IDENTITY


def ed_verify(pk, m, sig):
    """§3.5 strict verification: libsodium's (S < L, R and A not of small order, A canonical, cofactorless,
    R compared as bytes)."""
    if len(sig) != 64 or len(pk) != 32:
        return False
    try:
        sodium.crypto_sign_open(sig + m, pk)
        return True
    except Exception:
        return False


def ed_public(seed):
    return sodium.crypto_sign_seed_keypair(seed)[0]


def ed_sign(seed, m):
    pk, sk = sodium.crypto_sign_seed_keypair(seed)
    return sodium.crypto_sign(m, sk)[:64]


def valid_user_id(s):
    if isinstance(s, bytes):
        try:
            s = s.decode("utf-8")
        except UnicodeDecodeError:
            return False
    b = s.encode("utf-8")
    return 1 <= len(b) <= MAX_USER_ID_BYTES and not any(unicodedata.category(c) == "Cc" for c in s)


XWING_PK = 1216
XWING_CT = 1120
MLKEM_PK = 1184
MLKEM_CT = 1088
XWING_LABEL = bytes.fromhex("5c2e2f2f5e5c")


def x25519(k, u):
    """X25519(k, u), or None for the all-zero output (cryptography refuses to return it)."""
    try:
        return X25519PrivateKey.from_private_bytes(k).exchange(X25519PublicKey.from_public_bytes(u))
    except ValueError:
        return None


def x25519_base(k):
    return X25519PrivateKey.from_private_bytes(k).public_key().public_bytes_raw()


def parse_encryption_key(pk):
    """§3.5: 1216 bytes; ML-KEM modulus check; X25519 part not of low order."""
    if len(pk) != XWING_PK:
        raise WardError("KeyError::InvalidLength")
    try:
        MLKEM768PublicKey.from_public_bytes(pk[:MLKEM_PK])  # FIPS 203 §7.2 type and modulus checks
    except ValueError:
        raise WardError("KeyError::InvalidPublicKey")
    if x25519(b"\x01" * 32, pk[MLKEM_PK:]) is None:
        raise WardError("KeyError::InvalidPublicKey")
    return pk


def xwing_expand(sk):
    """§5: expanded = SHAKE256(sk, 96); ML-KEM KeyGen_internal(d, z); sk_X; pk_X."""
    e = hashlib.shake_256(sk).digest(96)
    mk = MLKEM768PrivateKey.from_seed_bytes(e[0:64])  # FIPS 203 seed d || z
    sk_x = e[64:96]
    return mk, mk.public_key().public_bytes_raw(), sk_x, x25519_base(sk_x)


def xwing_public(sk):
    _, pk_m, _, pk_x = xwing_expand(sk)
    return pk_m + pk_x


def xwing_combiner(ss_m, ss_x, ct_x, pk_x):
    return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + XWING_LABEL).digest()


def xwing_encaps_derand(pk, eseed):
    """§6.2 / draft-06 §5.4.1 EncapsulateDerand; returns (shared_secret, enc)."""
    pk_m, pk_x = pk[:MLKEM_PK], pk[MLKEM_PK:]
    ss_m, ct_m = ML_KEM_768._encaps_internal(pk_m, eseed[0:32])
    ek_x = eseed[32:64]
    ct_x = x25519_base(ek_x)
    ss_x = x25519(ek_x, pk_x)
    if ss_x is None:
        raise WardError("WrapError::NonContributory")
    return xwing_combiner(ss_m, ss_x, ct_x, pk_x), ct_m + ct_x


def xwing_decaps(sk, enc):
    mk, _, sk_x, pk_x = xwing_expand(sk)
    ct_m, ct_x = enc[:MLKEM_CT], enc[MLKEM_CT:]
    ss_m = mk.decapsulate(ct_m)
    ss_x = x25519(sk_x, ct_x)
    if ss_x is None:
        raise WardError("WrapError::NonContributory")
    return xwing_combiner(ss_m, ss_x, ct_x, pk_x)


def key_id(pk):
    return H(L["HASH_KEY_ID"], pk)


# ---------------------------------------------------------------- §6.2 HPKE key schedule
def hkdf_extract(salt, ikm):
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand(prk, info, n):
    return HKDFExpand(hashes.SHA256(), n, info).derive(prk)


def suite_hpke(kem_id, kdf_id=1, aead_id=3):
    return b"HPKE" + kem_id.to_bytes(2, "big") + kdf_id.to_bytes(2, "big") + aead_id.to_bytes(2, "big")


def labeled_extract(suite, salt, label, ikm):
    return hkdf_extract(salt, b"HPKE-v1" + suite + label + ikm)


def labeled_expand(suite, prk, label, info, n):
    return hkdf_expand(prk, n.to_bytes(2, "big") + b"HPKE-v1" + suite + label + info, n)


def key_schedule(suite, shared_secret, info):
    psk_id_hash = labeled_extract(suite, b"", b"psk_id_hash", b"")
    info_hash = labeled_extract(suite, b"", b"info_hash", info)
    ctx = b"\x00" + psk_id_hash + info_hash
    secret = labeled_extract(suite, shared_secret, b"secret", b"")
    return {
        "key_schedule_context": ctx,
        "secret": secret,
        "key": labeled_expand(suite, secret, b"key", ctx, 32),
        "base_nonce": labeled_expand(suite, secret, b"base_nonce", ctx, 12),
        "exporter_secret": labeled_expand(suite, secret, b"exp", ctx, 32),
    }


SUITE_XWING = suite_hpke(0x647A)


def hpke_seal(pk, info, aad, pt, eseed):
    ss, enc = xwing_encaps_derand(parse_encryption_key(pk), eseed)
    ks = key_schedule(SUITE_XWING, ss, info)
    return enc, ChaCha20Poly1305(ks["key"]).encrypt(ks["base_nonce"], pt, aad), ss, ks


def hpke_open(sk, enc, info, aad, ct):
    if len(enc) != XWING_CT:
        raise WardError("WrapError::Malformed")
    ss = xwing_decaps(sk, enc)
    ks = key_schedule(SUITE_XWING, ss, info)
    try:
        return ChaCha20Poly1305(ks["key"]).decrypt(ks["base_nonce"], ct, aad)
    except InvalidTag:
        raise WardError("WrapError::Undecryptable")


# ---------------------------------------------------------------- §6.3–§6.5 wrap and grant
def wrap_resource_key(k, rid, pk, eseed):
    kid = key_id(pk)
    enc, ct, ss, ks = hpke_seal(pk, L["WRAP_INFO"], rid + kid, k, eseed)
    w = {"resource_id": rid, "recipient_key": kid, "enc": enc, "ciphertext": ct}
    return encode(WRAPPED_KEY, w), ss, ks


def unwrap_resource_key(wbytes, rid, sk):
    try:
        w = decode_bounded(WRAPPED_KEY, wbytes, 1 << 20)
    except DecodeError:
        raise WardError("WrapError::Malformed")
    pk = xwing_public(sk)
    if len(w["resource_id"]) != 16 or len(w["recipient_key"]) != 32:  # W1
        raise WardError("WrapError::Malformed")
    if w["resource_id"] != rid:  # W2
        raise WardError("WrapError::WrongResource")
    if w["recipient_key"] != key_id(pk):  # W3
        raise WardError("WrapError::WrongRecipient")
    if len(w["enc"]) != XWING_CT or len(w["ciphertext"]) != 48:  # W4
        raise WardError("WrapError::Malformed")
    return hpke_open(sk, w["enc"], L["WRAP_INFO"], rid + key_id(pk), w["ciphertext"])  # W5


def grant_user_key(sk_u, pk_d, eseed):
    pk_u = xwing_public(sk_u)
    aad = key_id(pk_u) + key_id(pk_d)
    enc, ct, ss, ks = hpke_seal(pk_d, L["GRANT_INFO"], aad, sk_u, eseed)
    g = {"user_key": key_id(pk_u), "device_key": key_id(pk_d), "enc": enc, "ciphertext": ct}
    return encode(DEVICE_GRANT, g), ss, ks


def accept_grant(gbytes, sk_d, pk_u):
    try:
        g = decode_bounded(DEVICE_GRANT, gbytes, 1 << 20)
    except DecodeError:
        raise WardError("WrapError::Malformed")
    pk_d = xwing_public(sk_d)
    if len(g["user_key"]) != 32 or len(g["device_key"]) != 32:  # G1
        raise WardError("WrapError::Malformed")
    if g["device_key"] != key_id(pk_d):  # G2
        raise WardError("WrapError::WrongRecipient")
    if g["user_key"] != key_id(pk_u):  # G3
        raise WardError("WrapError::WrongUserKey")
    if len(g["enc"]) != XWING_CT or len(g["ciphertext"]) != 48:  # G4
        raise WardError("WrapError::Malformed")
    sk_u = hpke_open(sk_d, g["enc"], L["GRANT_INFO"], key_id(pk_u) + key_id(pk_d), g["ciphertext"])  # G5
    if xwing_public(sk_u) != pk_u:  # G6
        raise WardError("WrapError::Undecryptable")
    return sk_u


# ---------------------------------------------------------------- §4 identity chain
def CE(variant, reason=None, **fields):
    return WardError("ChainError::" + variant, fields, reason)


def chain_decode(e):
    return CE("Decode", e.kind)


def verify_invite(root, signed):
    inv_b, sig = signed["invite"], signed["signature"]
    if len(inv_b) > MAX_INVITE_BYTES:  # V1
        raise CE("Malformed", "invite too large")
    if not ed_verify(root, frame(L["SIG_INVITE"], inv_b), sig):  # V2
        raise CE("ForgedInvite")
    try:
        inv = decode_canonical(INVITE, inv_b, MAX_INVITE_BYTES)  # V3
    except DecodeError as e:
        raise chain_decode(e)
    if inv["version"] != PROTOCOL_VERSION:  # V4
        raise CE("UnsupportedVersion", str(inv["version"]))
    if not valid_ed25519_public(inv["delegation_public_key"]):  # V5
        raise CE("Malformed", "invite delegation key")
    if not valid_user_id(inv["user_id"]):  # V6
        raise CE("Malformed", "invite user id")
    if (len(inv["display_name"].encode()) > 256 or len(inv["profession"].encode()) > 128
            or len(inv["registry_number"].encode()) > 64):
        raise CE("Malformed", "invite field too long")
    inv["invite_hash"] = H(L["HASH_INVITE"], inv_b)
    return inv


def enc_key_ok(pk):
    try:
        parse_encryption_key(pk)
        return True
    except WardError:
        return False


def entry_hash(e):
    return H(L["HASH_ENTRY"], e["statement"], e["signature"])  # §4.2 v2: statement and signature


class Device:
    def __init__(self, enc, added_at):
        self.enc, self.added_at, self.revoked_at = enc, added_at, None


class State:
    def copy(self):
        s = State()
        s.__dict__.update(self.__dict__)
        s.past = list(self.past)
        s.devices = {k: Device(d.enc, d.added_at) for k, d in self.devices.items()}
        for k, d in self.devices.items():
            s.devices[k].revoked_at = d.revoked_at
        return s

    def active(self, k):
        d = self.devices.get(k)
        return d is not None and d.revoked_at is None


def open_statement(e):
    st_b = e["statement"]
    if len(st_b) > MAX_STATEMENT_BYTES:  # O1
        raise CE("Malformed", "statement too large")
    try:
        st = decode_canonical(STATEMENT, st_b, MAX_STATEMENT_BYTES)  # O2
    except DecodeError as ex:
        raise chain_decode(ex)
    if st["version"] != PROTOCOL_VERSION:  # O3
        raise CE("UnsupportedVersion", str(st["version"]))
    return st


def check_device_keys(dk):
    if dk is None:
        raise CE("Malformed", "missing device keys")
    if not valid_ed25519_public(dk["signing_public_key"]):
        raise CE("Malformed", "device signing key")
    if not enc_key_ok(dk["encryption_public_key"]):
        raise CE("Malformed", "device encryption key")


def verify_entry0(root, user_id, e):
    st = open_statement(e)  # C1
    if st["seq"] != 0:  # C2
        raise CE("BadSequence", expected=0, found=st["seq"])
    uc = st["user_creation"]
    if uc is None:  # C3
        raise CE("Malformed", "entry 0 must be a user creation")
    if uc["invite"] is None:  # C4
        raise CE("Malformed", "missing invite")
    inv = verify_invite(root, uc["invite"])  # C5
    if st["user_id"] != user_id or st["user_id"] != inv["user_id"]:  # C6
        raise CE("WrongUser", seq=0)
    if not valid_ed25519_public(st["author"]):  # C7
        raise CE("Malformed", "author")
    if st["author"] != inv["delegation_public_key"]:  # C8
        raise CE("UnauthorizedAuthor", seq=0)
    if not ed_verify(st["author"], frame(L["SIG_STATEMENT"], e["statement"]), e["signature"]):  # C9
        raise CE("BadSignature", seq=0)
    if st["prev_hash"] != inv["invite_hash"]:  # C10
        raise CE("BrokenChain", seq=0)
    if st["timestamp"] > inv["expires_at"]:  # C11
        raise CE("InviteExpired")
    if not enc_key_ok(uc["user_encryption_public_key"]):  # C12
        raise CE("Malformed", "user encryption key")
    dk = uc["device"]
    check_device_keys(dk)  # C13
    if dk["signing_public_key"] == root:
        raise CE("KeyInUse", "device key is the organisation root", seq=0)
    if dk["signing_public_key"] == inv["delegation_public_key"]:
        raise CE("KeyInUse", "device key is the invite's delegation key", seq=0)
    s = State()
    s.root, s.user_id, s.invite = root, user_id, inv
    s.current, s.past = uc["user_encryption_public_key"], []
    s.devices = {dk["signing_public_key"]: Device(dk["encryption_public_key"], 0)}
    s.len, s.head, s.last_timestamp, s.rotation_pending = 1, entry_hash(e), st["timestamp"], False
    return s


def apply_entry(s0, e):
    """A1–A9: returns a new state; s0 is unchanged on error."""
    s = s0.copy()
    seq = s.len
    st = open_statement(e)  # A1
    if st["seq"] != seq:  # A2
        raise CE("BadSequence", expected=seq, found=st["seq"])
    if st["user_id"] != s.user_id:  # A3
        raise CE("WrongUser", seq=seq)
    if st["prev_hash"] != s.head:  # A4
        raise CE("BrokenChain", seq=seq)
    if st["timestamp"] < s.last_timestamp:  # A5
        raise CE("TimeWentBackwards", seq=seq)
    author = st["author"]
    if not valid_ed25519_public(author):  # A6
        raise CE("Malformed", "author")

    def sig_ok():
        return ed_verify(author, frame(L["SIG_STATEMENT"], e["statement"]), e["signature"])

    def new_key_ok(k):
        if not enc_key_ok(k):
            raise CE("Malformed", "user encryption key")
        if k == s.current or k in s.past:
            raise CE("InvalidTransition", "user key not rotated", seq=seq)

    if st["user_creation"] is not None:  # A7
        uc = st["user_creation"]
        if uc["invite"] is None:
            raise CE("Malformed", "missing invite")
        inv = verify_invite(s.root, uc["invite"])
        if author != inv["delegation_public_key"]:
            raise CE("UnauthorizedAuthor", seq=seq)
        if not sig_ok():
            raise CE("BadSignature", seq=seq)
        raise CE("InviteReused")
    elif st["device_addition"] is not None:
        da = st["device_addition"]
        if not s.active(author):
            raise CE("UnauthorizedAuthor", seq=seq)
        if not sig_ok():
            raise CE("BadSignature", seq=seq)
        dk = da["device"]
        check_device_keys(dk)
        spk, epk = dk["signing_public_key"], dk["encryption_public_key"]
        if spk == s.root:
            raise CE("KeyInUse", "device key is the organisation root", seq=seq)
        if spk == s.invite["delegation_public_key"]:
            raise CE("KeyInUse", "device key is the invite's delegation key", seq=seq)
        if spk in s.devices:
            raise CE("KeyInUse", "device already in the log", seq=seq)
        if any(d.enc == epk for d in s.devices.values()):
            raise CE("KeyInUse", "device encryption key already in the log", seq=seq)
        proof_in = frame(L["SIG_DEVICE_POSSESSION"], s.root, s.user_id.encode(), spk, epk)
        if not ed_verify(spk, proof_in, da["device_signature"]):
            raise CE("MissingPossessionProof", seq=seq)
        s.devices[spk] = Device(epk, seq)
    elif st["device_revocation"] is not None:
        dr = st["device_revocation"]
        by_device = s.active(author)
        if not by_device and author != s.root:
            raise CE("UnauthorizedAuthor", seq=seq)
        if not sig_ok():
            raise CE("BadSignature", seq=seq)
        target = dr["device_id"]
        if not valid_ed25519_public(target):
            raise CE("Malformed", "device id")
        if target in s.devices and s.devices[target].revoked_at is not None:
            raise CE("InvalidTransition", "device already revoked", seq=seq)
        if target not in s.devices:
            raise CE("InvalidTransition", "unknown device", seq=seq)
        k = dr["new_user_encryption_public_key"]
        rotates = False
        if not by_device:  # the root
            if k:
                raise CE("InvalidTransition", "the root may not choose a user key", seq=seq)
        elif author == target:
            if k:
                raise CE("InvalidTransition", "a revoked device may not choose a user key", seq=seq)
        else:
            new_key_ok(k)
            rotates = True
        s.devices[target].revoked_at = seq
        if rotates:
            s.past.append(s.current)
            s.current, s.rotation_pending = k, False
        else:
            s.rotation_pending = True
    elif st["key_rotation"] is not None:
        if not s.active(author):
            raise CE("UnauthorizedAuthor", seq=seq)
        if not sig_ok():
            raise CE("BadSignature", seq=seq)
        k = st["key_rotation"]["new_user_encryption_public_key"]
        new_key_ok(k)
        s.past.append(s.current)
        s.current, s.rotation_pending = k, False
    else:
        raise CE("Malformed", "statement without body")
    s.len, s.head, s.last_timestamp = s.len + 1, entry_hash(e), st["timestamp"]  # A8
    return s


def verify_log(root, user_id, entries):
    if len(entries) > MAX_LOG_ENTRIES:
        raise CE("Malformed", "log too long")
    if not entries:
        raise CE("EmptyLog")
    s = verify_entry0(root, user_id, entries[0])
    for e in entries[1:]:
        s = apply_entry(s, e)
    return s


def update_log(s, served):
    if len(served) > MAX_LOG_ENTRIES:  # U1
        raise CE("Malformed", "log too long")
    if len(served) < s.len:  # U2
        raise CE("Rollback", known=s.len, served=len(served))
    fork = CE("Fork", seq=s.len - 1)  # U3
    if entry_hash(served[s.len - 1]) != s.head:
        raise fork
    for i in range(1, s.len):
        try:
            st = decode_bounded(STATEMENT, served[i]["statement"], MAX_STATEMENT_BYTES)
        except DecodeError:
            raise fork
        if st["prev_hash"] != entry_hash(served[i - 1]):
            raise fork
    for e in served[s.len:]:  # U4
        s = apply_entry(s, e)
    return s


def decode_signed_invite(b):
    try:
        return decode_bounded(SIGNED_INVITE, b, MAX_INVITE_BYTES + 128)
    except DecodeError as e:
        raise chain_decode(e)


MAX_WRAPPED_KEY_BYTES = 2048  # §6.5, standalone WrappedKey and DeviceGrant


def decode_wrapped_key(b):
    try:
        return decode_bounded(WRAPPED_KEY, b, MAX_WRAPPED_KEY_BYTES)
    except DecodeError:
        raise WardError("WrapError::Malformed")


def decode_device_grant(b):
    try:
        return decode_bounded(DEVICE_GRANT, b, MAX_WRAPPED_KEY_BYTES)
    except DecodeError:
        raise WardError("WrapError::Malformed")


def decode_signed_statement(b):
    try:
        return decode_bounded(SIGNED_STATEMENT, b, MAX_STATEMENT_BYTES + 128)
    except DecodeError as e:
        raise chain_decode(e)


# ---------------------------------------------------------------- §7 envelope
def OE(variant, reason=None, **fields):
    return WardError("OpenError::" + variant, fields, reason)


def padme(n):
    if n < 2:
        return n
    e = n.bit_length() - 1
    s = e.bit_length()  # floor(log2 E) + 1
    m = (1 << (e - s)) - 1
    return (n + m) & ~m


def padded_len(n):
    return max(MIN_PADDED_LEN, padme(4 + n))


def pad(c):  # §7.2 v2: length last
    return c + bytes(padded_len(len(c)) - 4 - len(c)) + u32(len(c))


def unpad(p):
    if len(p) < 4:
        raise OE("Undecryptable")
    n = int.from_bytes(p[-4:], "big")
    if n > len(p) - 4 or len(p) != padded_len(n) or any(p[n:len(p) - 4]):
        raise OE("Undecryptable")
    return p[:n]


def envelope_keys(k, rid):  # §7.3 S4
    prk = hkdf_extract(rid, k)
    return hkdf_expand(prk, L["ENVELOPE_AEAD_KEY"], 32), hkdf_expand(prk, L["ENVELOPE_KEY_COMMITMENT"], 32)


def parse_envelope(b):
    try:
        env = decode_bounded(ENVELOPE, b, MAX_ENVELOPE_BYTES)  # P1
    except DecodeError as e:
        raise OE("Decode", e.kind)
    if len(env["header"]) > MAX_HEADER_BYTES:  # P2
        raise OE("Malformed", "header too large")
    try:
        h = decode_canonical(ENVELOPE_HEADER, env["header"], MAX_HEADER_BYTES)  # P3
    except DecodeError as e:
        raise OE("Decode", e.kind)
    if h["version"] != PROTOCOL_VERSION:  # P4
        raise OE("UnsupportedVersion", str(h["version"]))
    if len(h["resource_id"]) != 16:  # P5
        raise OE("Malformed", "resource id")
    if len(h["conversation_id"]) != 16:  # P6
        raise OE("Malformed", "conversation id")
    if not valid_user_id(h["sender_user_id"]):  # P7
        raise OE("Malformed", "sender user id")
    if not valid_ed25519_public(h["sender_device_id"]):  # P8
        raise OE("Malformed", "sender device")
    if h["content_type"] not in (1, 2):  # P9
        raise OE("Malformed", "content type")
    if len(h["nonce"]) != 24:  # P10
        raise OE("Malformed", "nonce")
    r = h["recipient_user_ids"]
    if not r or len(r) > MAX_RECIPIENTS or not all(valid_user_id(x) for x in r):  # P11
        raise OE("Malformed", "recipients")
    if len(set(x.encode() for x in r)) != len(r):
        raise OE("Malformed", "duplicate recipient")
    if len(h["key_commitment"]) != 32:  # P12
        raise OE("Malformed", "key commitment")
    if len(env["signature"]) != 64:  # P13
        raise OE("Malformed", "signature length")
    if len(env["ciphertext"]) < MIN_PADDED_LEN + 16:  # P14
        raise OE("Malformed", "ciphertext too short")
    env["h"] = h
    return env


def open_envelope(env, sender, me, k):
    h = env["h"]
    if sender.user_id != h["sender_user_id"]:  # R1
        raise OE("SenderMismatch")
    dev = sender.devices.get(h["sender_device_id"])
    if dev is None:  # R2
        raise OE("UnknownSenderDevice")
    if dev.revoked_at is not None:  # R3
        raise OE("SenderDeviceRevoked")
    d = H(L["HASH_CIPHERTEXT"], env["ciphertext"])
    if not ed_verify(h["sender_device_id"], frame(L["SIG_ENVELOPE"], env["header"], d), env["signature"]):  # R4
        raise OE("BadSignature")
    if me not in h["recipient_user_ids"]:  # R5
        raise OE("NotARecipient")
    aead_key, kc = envelope_keys(k, h["resource_id"])
    if not hmac.compare_digest(kc, h["key_commitment"]):  # R6
        raise OE("KeyCommitmentMismatch")
    try:  # R7
        p = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(env["ciphertext"], env["header"], h["nonce"], aead_key)
    except Exception:
        raise OE("Undecryptable")
    c = unpad(p)  # R8
    if h["content_type"] == 1:  # R9
        try:
            c.decode("utf-8")
        except UnicodeDecodeError:
            raise OE("Malformed", "text content is not UTF-8")
    return c


class NoRng:
    def draw(self, n):
        raise AssertionError("the RNG was drawn from")


def SE(variant, reason=None):
    return WardError("SealError::" + variant, {}, reason)


CONTENT_TYPES = {"text": 1, "file": 2}


def seal_checks(sender_user_id, device_seed, sender_chain_fn, conv, recipients, ctype, content):
    """S1–S3, before any randomness."""
    if len(content) > MAX_CONTENT_BYTES:  # S1
        raise SE("TooLarge", str(len(content)))
    if ctype == 1:
        try:
            content.decode("utf-8")
        except UnicodeDecodeError:
            raise SE("InvalidText")
    if len(conv) != 16:  # S2
        raise SE("InvalidConversation")
    if not recipients:  # S3
        raise SE("NoRecipients")
    if len(recipients) > MAX_RECIPIENTS:
        raise SE("TooManyRecipients", str(len(recipients)))
    if not valid_user_id(sender_user_id) or not all(valid_user_id(r) for r in recipients):
        raise SE("InvalidUserId")
    seen = set()
    for r in recipients:
        if r in seen:
            raise SE("DuplicateRecipient", r)
        seen.add(r)
    if not sender_chain_fn().active(ed_public(device_seed)):
        raise SE("DeviceNotActive")


def seal(sender_user_id, device_seed, sender_chain, conv, recipient_chains, ctype, content, ts, k, rid, nonce,
         eseeds):
    """S4–S10 with the drawn values given."""
    aead_key, kc = envelope_keys(k, rid)
    hdr = encode(ENVELOPE_HEADER, {
        "version": PROTOCOL_VERSION, "resource_id": rid, "conversation_id": conv,
        "sender_user_id": sender_user_id, "sender_device_id": ed_public(device_seed), "timestamp_ms": ts,
        "content_type": ctype, "nonce": nonce, "recipient_user_ids": [c.user_id for c in recipient_chains],
        "key_commitment": kc})
    padded = pad(content)
    ct = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(padded, hdr, nonce, aead_key)
    d = H(L["HASH_CIPHERTEXT"], ct)
    sig_in = frame(L["SIG_ENVELOPE"], hdr, d)
    sig = ed_sign(device_seed, sig_in)
    env = encode(ENVELOPE, {"header": hdr, "ciphertext": ct, "signature": sig})
    wraps = [wrap_resource_key(k, rid, c.current, es)[0] for c, es in zip(recipient_chains, eseeds)]
    return dict(aead_key=aead_key, key_commitment=kc, header=hdr, padded_plaintext=padded, ciphertext=ct,
                ciphertext_digest=d, signature_input=sig_in, signature=sig, envelope=env, wrapped_keys=wraps)


# ---------------------------------------------------------------- §8 handshake
def AE(variant, reason=None):
    return WardError("AuthError::" + variant, {}, reason)


def auth_transcript(version, service, instance, root, nonce, user_id, device_id):
    return frame(L["SIG_AUTH"], u32(version), service.encode(), instance.encode(), root, nonce, user_id.encode(),
                 device_id)


def enrol_transcript(version, service, instance, root, nonce, user_id, device_id):
    # §8: the same seven parts as the device's transcript, under SIG_ENROL_AUTH.
    return frame(L["SIG_ENROL_AUTH"], u32(version), service.encode(), instance.encode(), root, nonce,
                 user_id.encode(), device_id)


def verify_enrolment(root, service, instance, challenge_bytes, r):
    """E1–E5 of §8, for a response `r` that passed S1–S3; returns the verified invite."""
    ch = decode_bounded(AUTH_CHALLENGE, challenge_bytes, MAX_CHALLENGE_BYTES)
    if not r["invite"]:  # E1
        raise AE("NoInvite")
    try:
        inv = verify_invite(root, decode_signed_invite(r["invite"]))  # E2, E3
    except WardError as e:
        raise AE("Invite", str(e))
    if inv["user_id"] != r["user_id"]:  # E4
        raise AE("Invite", "invite for another user")
    t = enrol_transcript(ch["version"], service, instance, root, ch["nonce"], r["user_id"], r["device_id"])
    if not ed_verify(inv["delegation_public_key"], t, r["invite_signature"]):  # E5
        raise AE("BadInviteSignature")
    return inv


def respond(device_seed, user_id, root, service, instance, challenge_bytes):
    try:
        ch = decode_bounded(AUTH_CHALLENGE, challenge_bytes, MAX_CHALLENGE_BYTES)
    except DecodeError:
        raise WardError("NetError::Malformed")
    if ch["version"] != PROTOCOL_VERSION:  # D1
        raise AE("UnsupportedVersion", str(ch["version"]))
    if (ch["service"] != service or ch["instance"] != instance or len(ch["nonce"]) != AUTH_NONCE_BYTES
            or not valid_user_id(user_id)):  # D2
        raise AE("UnexpectedChallenge")
    dev = ed_public(device_seed)
    t = auth_transcript(ch["version"], service, instance, root, ch["nonce"], user_id, dev)
    return t, ed_sign(device_seed, t), dev


def verify_response(root, service, instance, challenge_bytes, response_bytes, max_frame=1 << 22):
    ch = decode_bounded(AUTH_CHALLENGE, challenge_bytes, MAX_CHALLENGE_BYTES)  # the server's own challenge
    try:
        r = decode_bounded(AUTH_RESPONSE, response_bytes, max_frame)
    except DecodeError:
        raise AE("Malformed")
    if len(ch["nonce"]) != AUTH_NONCE_BYTES or not valid_user_id(r["user_id"]):  # S1
        raise AE("Malformed")
    if not valid_ed25519_public(r["device_id"]):  # S2
        raise AE("Malformed")
    if r["version"] != PROTOCOL_VERSION:  # S2a
        raise AE("UnsupportedVersion", str(r["version"]))
    t = auth_transcript(ch["version"], service, instance, root, ch["nonce"], r["user_id"], r["device_id"])
    if not ed_verify(r["device_id"], t, r["signature"]):  # S3
        raise AE("BadSignature")
    return r


# ================================================================ the checks
PASSED, FAILED, SKIPPED = [], [], []


def check(name, fn):
    """fn returns True (pass), or raises / returns a string describing the mismatch."""
    try:
        r = fn()
        ok = r is True or r is None
        msg_ = "" if ok else str(r)
    except Exception as e:  # noqa: BLE001 - any exception is a failed check, reported
        ok, msg_ = False, f"{type(e).__name__}: {e}"
        if os.environ.get("WARD_PY_TRACE"):
            traceback.print_exc()
    (PASSED if ok else FAILED).append(name)
    if not ok:
        print(f"FAIL {name}: {msg_}")
    elif os.environ.get("WARD_PY_VERBOSE"):
        print(f"ok   {name}")


def eq(a, b, what=""):
    if a == b:
        return True
    ah = a.hex() if isinstance(a, (bytes, bytearray)) else a
    bh = b.hex() if isinstance(b, (bytes, bytearray)) else b
    return f"{what} got {str(ah)[:80]} want {str(bh)[:80]}"


def X(h):
    return bytes.fromhex(h)


def load(name):
    p = os.path.join(VECTORS, name)
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def expect_error(fn, case):
    """The case's error: `error` (Enum::Variant), `error_fields` and `error_reason` when given."""
    try:
        fn()
    except WardError as e:
        want = case["error"]
        if e.name != want:
            return f"got {e} want {want} {case.get('error_fields', '')} {case.get('error_reason', '')}"
        wf = case.get("error_fields") or {}
        if wf and e.fields != wf:
            return f"fields {e.fields} want {wf}"
        wr = case.get("error_reason")
        if wr is not None and str(e.reason) != str(wr):
            return f"reason {e.reason!r} want {wr!r}"
        return True
    return f"no error, want {case['error']}"


def log_entries(lst):
    return [{"statement": X(e["statement"]), "signature": X(e["signature"])} for e in lst]


# ---------------------------------------------------------------- labels, framing, padding, keys
def check_keys():
    d = load("ward-v2-keys.json")
    if d is None:
        return
    for lab in d.get("labels", []):
        check(f"label {lab['name']}", lambda lab=lab: (
            eq(lab["ascii"], LABELS.get(lab["name"]), "spec label") if lab["name"] in LABELS else
            f"label {lab['name']} not in SECURITY.md §3.4 as read"))
        check(f"label hex {lab['name']}", lambda lab=lab: eq(X(lab["hex"]), lab["ascii"].encode()))
    for name in LABELS:
        if name not in {x["name"] for x in d.get("labels", [])}:
            print(f"note: label {name} of §3.4 has no vector in ward-v2-keys.json")
    for i, fr in enumerate(d.get("framing", [])):
        def f(fr=fr):
            b = frame(fr["label"].encode(), *[X(p) for p in fr["parts"]])
            return eq(b, X(fr["framed"]), "framed") if b != X(fr["framed"]) else eq(
                hashlib.sha256(b).digest(), X(fr["sha256"]), "sha256")
        check(f"framing {i} {fr['label']}", f)
    for p in d.get("padding", []):
        check(f"padded_len({p['content_len']})", lambda p=p: eq(padded_len(p["content_len"]), p["padded_len"]))
    for k in d.get("keys", []):
        def f(k=k):
            sec = X(k["secret"])
            r = eq(sec, hashlib.sha256(k["label"].encode()).digest(), "secret = SHA-256(label)")
            if r is not True:
                return r
            if k["algorithm"] == "Ed25519":
                return eq(ed_public(sec), X(k["public"]), "Ed25519 public")
            pk = xwing_public(sec)
            if pk != X(k["public"]):
                return eq(pk, X(k["public"]), "X-Wing public")
            parse_encryption_key(pk)
            return eq(key_id(pk), X(k["key_id"]), "key id")
        check(f"key {k['type']} {k['label']}", f)
    # §7.2 examples in the text
    for n, want in [(0, 256), (252, 256), (253, 272), (1000, 1024), (4096, 4352), (65536, 67584),
                    (1 << 20, 1081344), (16 << 20, 17301504)]:
        check(f"§7.2 example padded_len({n})", lambda n=n, want=want: eq(padded_len(n), want))


def check_pad_roundtrip():
    for n in (0, 1, 252, 253, 1000):
        c = bytes(range(256)) * 4
        c = c[:n]

        def f(c=c):
            p = pad(c)
            if len(p) != padded_len(len(c)):
                return "pad length"
            return eq(unpad(p), c)
        check(f"pad/unpad {n}", f)
    # unpad refusals of §7.2
    good = pad(b"hello")
    bad = {"short": b"\x00\x00\x00", "n too large": good[:-4] + u32(len(good)),
           "wrong padded length": pad(b"hello") + bytes(16), "nonzero padding": b"hello\x01" + good[6:]}
    for name, p in bad.items():
        def f(p=p):
            try:
                unpad(p)
            except WardError as e:
                return eq(e.name, "OpenError::Undecryptable")
            return "accepted"
        check(f"unpad refuses {name}", f)


# ---------------------------------------------------------------- X-Wing, HPKE
def check_rfc9180():
    d = load("rfc9180-a2-x25519-sha256-chacha20poly1305-base.json")
    if d is None:
        return
    suite = suite_hpke(d["kem_id"], d["kdf_id"], d["aead_id"])
    kem_suite = b"KEM" + d["kem_id"].to_bytes(2, "big")

    def derive(ikm):  # RFC 9180 §7.1.3 DeriveKeyPair for X25519
        prk = hkdf_extract(b"", b"HPKE-v1" + kem_suite + b"dkp_prk" + ikm)
        return hkdf_expand(prk, (32).to_bytes(2, "big") + b"HPKE-v1" + kem_suite + b"sk", 32)

    check("rfc9180 skEm", lambda: eq(derive(X(d["ikmE"])), X(d["skEm"])))
    check("rfc9180 skRm", lambda: eq(derive(X(d["ikmR"])), X(d["skRm"])))
    check("rfc9180 pkEm", lambda: eq(x25519_base(X(d["skEm"])), X(d["pkEm"])))
    check("rfc9180 pkRm", lambda: eq(x25519_base(X(d["skRm"])), X(d["pkRm"])))

    def ss():
        dh = x25519(X(d["skEm"]), X(d["pkRm"]))
        kem_context = X(d["enc"]) + X(d["pkRm"])
        eae = hkdf_extract(b"", b"HPKE-v1" + kem_suite + b"eae_prk" + dh)
        return eq(hkdf_expand(eae, (32).to_bytes(2, "big") + b"HPKE-v1" + kem_suite + b"shared_secret" + kem_context,
                              32), X(d["shared_secret"]))
    check("rfc9180 shared_secret (DHKEM)", ss)
    ks = key_schedule(suite, X(d["shared_secret"]), X(d["info"]))
    for f in ("key_schedule_context", "secret", "key", "base_nonce", "exporter_secret"):
        check(f"rfc9180 {f}", lambda f=f: eq(ks[f], X(d[f])))
    for e in d.get("encryptions", []):
        def f(e=e):
            seqn = e["sequence_number"]
            nonce = bytes(a ^ b for a, b in zip(ks["base_nonce"], seqn.to_bytes(12, "big")))
            r = eq(nonce, X(e["nonce"]), "nonce")
            if r is not True:
                return r
            return eq(ChaCha20Poly1305(ks["key"]).encrypt(nonce, X(e["pt"]), X(e["aad"])), X(e["ct"]))
        check(f"rfc9180 encryption {e['sequence_number']}", f)
    for e in d.get("exports", []):
        check(f"rfc9180 export {e['exporter_context']}", lambda e=e: eq(
            labeled_expand(suite, ks["exporter_secret"], b"sec", X(e["exporter_context"]), e["L"]),
            X(e["exported_value"])))


def check_xwing():
    d = load("xwing-draft06-kem.json")
    if d is None:
        return
    for i, v in enumerate(d):
        check(f"xwing[{i}] sk = seed", lambda v=v: eq(X(v["sk"]), X(v["seed"])))
        check(f"xwing[{i}] keygen pk", lambda v=v: eq(xwing_public(X(v["seed"])), X(v["pk"])))
        check(f"xwing[{i}] pk parses (§3.5)", lambda v=v: parse_encryption_key(X(v["pk"])) and True)
        check(f"xwing[{i}] encaps ct", lambda v=v: eq(xwing_encaps_derand(X(v["pk"]), X(v["eseed"]))[1], X(v["ct"])))
        check(f"xwing[{i}] encaps ss", lambda v=v: eq(xwing_encaps_derand(X(v["pk"]), X(v["eseed"]))[0], X(v["ss"])))
        check(f"xwing[{i}] decaps ss", lambda v=v: eq(xwing_decaps(X(v["seed"]), X(v["ct"])), X(v["ss"])))


def check_wrap():
    d = load("ward-v2-wrap.json")
    if d is None:
        return
    w = d["resource_key_wrap"]
    lbl = {"resource_id": 16, "resource_key": 32}
    for f, n in lbl.items():
        check(f"wrap {f} from label", lambda f=f, n=n: eq(X(w[f]), hashlib.sha256(w[f + "_label"].encode())
                                                         .digest()[:n]))
    check("wrap eseed from label (README)", lambda: eq(X(w["eseed"]), hashlib.sha256(
        (w["eseed_label"] + " 0").encode()).digest() + hashlib.sha256((w["eseed_label"] + " 1").encode()).digest()))
    check("wrap recipient public", lambda: eq(xwing_public(X(w["recipient_secret"])), X(w["recipient_public"])))
    check("wrap recipient key id", lambda: eq(key_id(X(w["recipient_public"])), X(w["recipient_key_id"])))
    check("wrap info", lambda: eq(X(w["info"]), L["WRAP_INFO"]))
    check("wrap aad", lambda: eq(X(w["aad"]), X(w["resource_id"]) + X(w["recipient_key_id"])))
    enc_b, ss, ks = wrap_resource_key(X(w["resource_key"]), X(w["resource_id"]), X(w["recipient_public"]),
                                      X(w["eseed"]))
    check("wrap shared_secret", lambda: eq(ss, X(w["shared_secret"])))
    check("wrap key", lambda: eq(ks["key"], X(w["key"])))
    check("wrap base_nonce", lambda: eq(ks["base_nonce"], X(w["base_nonce"])))
    wk = decode(WRAPPED_KEY, enc_b)
    for f in ("resource_id", "recipient_key", "enc", "ciphertext"):
        check(f"wrap field {f}", lambda f=f: eq(wk[f], X(w["wrapped_key"][f])))
    check("wrap encoded", lambda: eq(enc_b, X(w["encoded"])))
    check("wrap encoded layout (§6.3)", lambda: eq(
        enc_b, X("0a10") + X(w["resource_id"]) + X("1220") + X(w["recipient_key_id"]) + X("1ae008")
        + wk["enc"] + X("2230") + wk["ciphertext"]) if len(enc_b) == 1225 else f"length {len(enc_b)} != 1225")
    check("unwrap", lambda: eq(unwrap_resource_key(X(w["encoded"]), X(w["resource_id"]), X(w["recipient_secret"])),
                               X(w["resource_key"])))
    g = d["device_grant"]
    check("grant user public", lambda: eq(xwing_public(X(g["user_secret"])), X(g["user_public"])))
    check("grant device public", lambda: eq(xwing_public(X(g["device_secret"])), X(g["device_public"])))
    check("grant key ids", lambda: eq(key_id(X(g["user_public"])) + key_id(X(g["device_public"])),
                                      X(g["user_key_id"]) + X(g["device_key_id"])))
    check("grant info", lambda: eq(X(g["info"]), L["GRANT_INFO"]))
    check("grant aad", lambda: eq(X(g["aad"]), X(g["user_key_id"]) + X(g["device_key_id"])))
    gb, ss, ks = grant_user_key(X(g["user_secret"]), X(g["device_public"]), X(g["eseed"]))
    check("grant shared_secret", lambda: eq(ss, X(g["shared_secret"])))
    check("grant key", lambda: eq(ks["key"], X(g["key"])))
    check("grant base_nonce", lambda: eq(ks["base_nonce"], X(g["base_nonce"])))
    gd = decode(DEVICE_GRANT, gb)
    for f in ("user_key", "device_key", "enc", "ciphertext"):
        check(f"grant field {f}", lambda f=f: eq(gd[f], X(g["grant"][f])))
    check("grant encoded", lambda: eq(gb, X(g["encoded"])))
    check("grant encoded layout (§6.4)", lambda: eq(
        gb, X("0a20") + X(g["user_key_id"]) + X("1220") + X(g["device_key_id"]) + X("1ae008") + gd["enc"]
        + X("2230") + gd["ciphertext"]) if len(gb) == 1241 else f"length {len(gb)} != 1241")
    check("accept grant", lambda: eq(accept_grant(X(g["encoded"]), X(g["device_secret"]), X(g["user_public"])),
                                     X(g["user_secret"])))
    run_cases("ward-v2-wrap.json", d.get("negative", []))


# ---------------------------------------------------------------- negative cases, by operation
def chain_of(root, uid, entries):
    return verify_log(root, uid, log_entries(entries))


def op_open_envelope(i):
    env = parse_envelope(X(i["envelope"]))
    s = chain_of(X(i["org_root_public"]), i["sender_user_id"], i["sender_log"])
    return open_envelope(env, s, i["me"], X(i["resource_key"]))


def op_seal_envelope(i):
    root = X(i["org_root_public"])
    content = X(i["content"]) if "content" in i else bytes(i["content_zeros"])
    chains = {}

    def chain(uid):
        if uid not in chains:
            chains[uid] = chain_of(root, uid, i["logs"][uid])
        return chains[uid]

    for uid in i["logs"]:  # "verify every log in logs"
        chain(uid)
    seal_checks(i["sender_user_id"], X(i["sender_device_secret"]), lambda: chain(i["sender_user_id"]),
                X(i["conversation_id"]), i["recipient_user_ids"], CONTENT_TYPES[i["content_type"]], content)
    raise AssertionError("seal would draw randomness: the request passed S1–S3")


def op_update_log(i):
    root = X(i["org_root_public"])
    s = chain_of(root, i["user_id"], i["known_log"])
    return update_log(s, log_entries(i["served_log"]))


def op_respond(i):
    return respond(X(i["device_secret"]), i["user_id"], X(i["org_root_public"]), i["service"], i["instance"],
                   X(i["challenge"]))


OPS = {
    "unwrap_resource_key": lambda i: unwrap_resource_key(X(i["wrapped_key"]), X(i["resource_id"]), X(i["user_secret"])),
    "accept_grant": lambda i: accept_grant(X(i["grant"]), X(i["device_secret"]), X(i["expected_user_public"])),
    "parse_encryption_key": lambda i: parse_encryption_key(X(i["public"])),
    "wrap_resource_key": lambda i: wrap_resource_key(X(i["resource_key"]), X(i["resource_id"]),
                                                     X(i["recipient_public"]), X(i["eseed"])),
    "parse_envelope": lambda i: parse_envelope(X(i["envelope"])),
    "open_envelope": op_open_envelope,
    "seal_envelope": op_seal_envelope,
    "verify_log": lambda i: chain_of(X(i["org_root_public"]), i["user_id"], i["log"]),
    "update_log": op_update_log,
    "verify_invite": lambda i: verify_invite(X(i["org_root_public"]), decode(SIGNED_INVITE, X(i["signed_invite"]))),
    "decode_signed_invite": lambda i: decode_signed_invite(X(i["bytes"])),
    "decode_signed_statement": lambda i: decode_signed_statement(X(i["bytes"])),
    "decode_wrapped_key": lambda i: decode_wrapped_key(X(i["bytes"])),
    "decode_device_grant": lambda i: decode_device_grant(X(i["bytes"])),
    "verify_response": lambda i: verify_response(X(i["org_root_public"]), i["service"], i["instance"],
                                                 X(i["challenge"]), X(i["response"])),
    "respond": op_respond,
}


def run_cases(fname, cases):
    for c in cases:
        op = OPS.get(c.get("operation"))
        name = f"{fname} {c.get('name')}"
        if op is None:
            SKIPPED.append(f"{name} (operation {c.get('operation')} not implemented)")
            continue
        check(name, lambda c=c, op=op: expect_error(lambda: op(c["inputs"]), c))


# ---------------------------------------------------------------- chain, signatures, envelope
def check_signatures():
    d = load("ward-v2-signatures.json")
    if d is None:
        return
    a = d["auth"]
    root = X(a["org_root_public"])
    check("auth device id", lambda: eq(ed_public(X(a["device_secret"])), X(a["device_id"])))
    ch = a["challenge"]
    check("auth challenge encoded", lambda: eq(encode(AUTH_CHALLENGE, {
        "version": ch["version"], "service": ch["service"], "nonce": X(ch["nonce"]),
        "instance": ch["instance"]}), X(ch["encoded"])))
    t, sig, dev = respond(X(a["device_secret"]), a["user_id"], root, ch["service"], ch["instance"], X(ch["encoded"]))
    check("auth transcript", lambda: eq(t, X(a["transcript"])))
    check("auth transcript prefix (§8)", lambda: eq(t[:17 + 8 + 4 + len(ch["service"])], L["SIG_AUTH"] + X(
        "00" "00000004" "00000002") + u32(len(ch["service"])) + ch["service"].encode()))
    check("auth signature", lambda: eq(sig, X(a["signature"])))
    if "response" in a:
        def f():
            r = decode(AUTH_RESPONSE, X(a["response"]))
            mine = encode(AUTH_RESPONSE, {"user_id": a["user_id"], "device_id": dev, "signature": sig,
                                          "log": r["log"], "version": PROTOCOL_VERSION})
            return eq(mine, X(a["response"]), "response")
        check("auth response encoded", f)
        check("auth response verifies (S1–S3)", lambda: verify_response(
            root, ch["service"], ch["instance"], X(ch["encoded"]), X(a["response"])) and True)
    e = d.get("enrol_auth")
    if e:
        ch = e["challenge"]
        root = X(e["org_root_public"])
        t, sig, dev = respond(X(e["device_secret"]), e["user_id"], root, ch["service"], ch["instance"],
                              X(ch["encoded"]))
        check("enrol device transcript", lambda: eq(t, X(e["device_transcript"])))
        check("enrol device signature", lambda: eq(sig, X(e["device_signature"])))
        et = enrol_transcript(ch["version"], ch["service"], ch["instance"], root, X(ch["nonce"]), e["user_id"], dev)
        check("enrol transcript (§8)", lambda: eq(et, X(e["enrol_transcript"])))
        check("enrol transcript prefix (§8)", lambda: eq(et[:22 + 1 + 8], L["SIG_ENROL_AUTH"] + X(
            "00" "00000004" "00000002")))
        isig = ed_sign(X(e["delegation_seed"]), et)
        check("enrol invite signature", lambda: eq(isig, X(e["invite_signature"])))

        def mine():
            return encode(AUTH_RESPONSE, {"user_id": e["user_id"], "device_id": dev, "signature": sig, "log": [],
                                          "version": PROTOCOL_VERSION, "invite": X(e["signed_invite"]),
                                          "invite_signature": isig})
        check("enrol response encoded", lambda: eq(mine(), X(e["response"]), "response"))

        def verified():
            r = verify_response(root, ch["service"], ch["instance"], X(ch["encoded"]), X(e["response"]))
            inv = verify_enrolment(root, ch["service"], ch["instance"], X(ch["encoded"]), r)
            return eq(inv["delegation_public_key"], ed_public(X(e["delegation_seed"])))
        check("enrol response verifies (S1–S3, E1–E5)", verified)

        def refused(kind, **change):
            r = decode(AUTH_RESPONSE, X(e["response"]))
            r.update(change)
            try:
                verify_enrolment(root, ch["service"], ch["instance"], X(ch["encoded"]), r)
            except WardError as err:
                return eq(err.name, kind)
            return "accepted"
        check("enrol E1 no invite", lambda: refused("AuthError::NoInvite", invite=b""))
        check("enrol E2 not an invite", lambda: refused("AuthError::Invite", invite=b"\xff" * 40))
        check("enrol E5 device signature in its place",
              lambda: refused("AuthError::BadInviteSignature", invite_signature=sig))
        check("enrol E4 another user", lambda: refused("AuthError::Invite", user_id="mallory"))
    inv = d.get("invite")
    if inv:
        root_sk = X(inv["org_root_secret"])
        check("invite root public", lambda: eq(ed_public(root_sk), X(inv["org_root_public"])))
        check("invite delegation public", lambda: eq(ed_public(X(inv["delegation_seed"])), X(inv["delegation_public"])))
        ib = encode(INVITE, {"version": PROTOCOL_VERSION, "user_id": inv["user_id"], "display_name": inv["display_name"],
                             "profession": inv["profession"], "registry_number": inv["registry_number"],
                             "delegation_public_key": X(inv["delegation_public"]), "expires_at": inv["expires_at"]})
        check("invite encoded", lambda: eq(ib, X(inv["invite"])))
        check("invite signature input", lambda: eq(frame(L["SIG_INVITE"], ib), X(inv["signature_input"])))
        check("invite signature", lambda: eq(ed_sign(root_sk, frame(L["SIG_INVITE"], ib)), X(inv["signature"])))
        check("invite hash", lambda: eq(H(L["HASH_INVITE"], ib), X(inv["invite_hash"])))
        check("signed invite encoded", lambda: eq(encode(SIGNED_INVITE, {"invite": ib, "signature": X(inv["signature"])}),
                                                  X(inv["signed_invite"])))
        check("invite verifies (V1–V6)", lambda: verify_invite(root, decode(SIGNED_INVITE, X(inv["signed_invite"])))
              and True)


def check_chain():
    d = load("ward-v2-chain.json")
    if d is None:
        return
    root = X(d["org_root_public"])
    entries = []
    for e in d["entries"]:
        n = f"chain entry {e['seq']} ({e['kind']})"
        st, sig = X(e["statement"]), X(e["signature"])
        entries.append({"statement": st, "signature": sig})
        check(n + " signature input", lambda st=st, e=e: eq(frame(L["SIG_STATEMENT"], st), X(e["signature_input"])))
        check(n + " statement canonical", lambda st=st: decode_canonical(STATEMENT, st, MAX_STATEMENT_BYTES) and True)
        check(n + " signature verifies", lambda st=st, sig=sig, e=e: ed_verify(
            X(e["author"]), frame(L["SIG_STATEMENT"], st), sig) or "bad signature")
        if "signer_label" in e:
            check(n + " signature reproduced", lambda st=st, sig=sig, e=e: eq(
                ed_sign(hashlib.sha256(e["signer_label"].encode()).digest(), frame(L["SIG_STATEMENT"], st)), sig))
        check(n + " signed statement", lambda st=st, sig=sig, e=e: eq(
            encode(SIGNED_STATEMENT, {"statement": st, "signature": sig}), X(e["signed_statement"])))
        check(n + " entry hash", lambda st=st, sig=sig, e=e: eq(
            entry_hash({"statement": st, "signature": sig}), X(e["entry_hash"])))
        check(n + " fields", lambda st=st, e=e: (lambda m: eq(
            (m["seq"], m["timestamp"], m["prev_hash"], m["author"]),
            (e["seq"], e["timestamp"], X(e["prev_hash"]), X(e["author"]))))(decode(STATEMENT, st)))
        if "device_signature" in e:
            def f(st=st, e=e):
                da = decode(STATEMENT, st)["device_addition"]
                dk = da["device"]
                pin = frame(L["SIG_DEVICE_POSSESSION"], root, d["user_id"].encode(), dk["signing_public_key"],
                            dk["encryption_public_key"])
                r = eq(pin, X(e["possession_input"]), "possession input")
                if r is not True:
                    return r
                r = eq(ed_sign(hashlib.sha256(e["possession_signer_label"].encode()).digest(), pin),
                       X(e["device_signature"]), "possession signature")
                return r if r is not True else eq(da["device_signature"], X(e["device_signature"]))
            check(n + " possession proof", f)
    if "invite_hash" in d:
        check("chain invite hash", lambda: eq(H(L["HASH_INVITE"], decode(SIGNED_INVITE, X(d["signed_invite"]))["invite"]),
                                              X(d["invite_hash"])))
    fs = d["final_state"]

    def final():
        s = verify_log(root, d["user_id"], entries)
        got = {"len": s.len, "head": s.head.hex(), "last_timestamp": s.last_timestamp,
               "rotation_pending": s.rotation_pending, "encryption_key": s.current.hex(),
               "past_encryption_keys": [k.hex() for k in s.past],
               "devices": sorted([{"signing_key": k.hex(), "encryption_key": v.enc.hex(), "added_at": v.added_at,
                                   "revoked_at": v.revoked_at} for k, v in s.devices.items()],
                                 key=lambda x: x["added_at"]),
               "active_devices": sorted(k.hex() for k, v in s.devices.items() if v.revoked_at is None),
               "revoked_devices": sorted(k.hex() for k, v in s.devices.items() if v.revoked_at is not None)}
        want = dict(fs)
        for k in ("devices",):
            if k in want:
                want[k] = sorted(want[k], key=lambda x: x["added_at"])
        for k in ("active_devices", "revoked_devices"):
            if k in want:
                want[k] = sorted(want[k])
        diffs = [k for k in want if got.get(k) != want[k]]
        unknown = [k for k in want if k not in got]
        return True if not diffs else f"final_state differs in {diffs} (unknown keys {unknown})"
    check("chain verifies, final_state", final)

    def incremental():
        s = verify_log(root, d["user_id"], entries[:2])
        s = update_log(s, entries)
        return eq(s.head, X(fs["head"]))
    check("chain incremental update (§4.7)", incremental)


def check_envelopes():
    d = load("ward-v2-envelope.json")
    if d is None:
        return
    root = X(d["org_root_public"])
    chains = {}
    for uid, lg in d["logs"].items():
        def f(uid=uid, lg=lg):
            chains[uid] = chain_of(root, uid, lg)
        check(f"envelope log {uid} verifies", f)
    for env in d["envelopes"]:
        n = f"envelope {env['name']}"
        si = env["seal_inputs"]
        labels = si.get("draw_labels", [])
        draws = [("resource_key", 32), ("resource_id", 16), ("nonce", 24)]
        for (f, ln), lab in zip(draws, labels):
            check(f"{n} {f} = SHA-256(label) prefix", lambda f=f, ln=ln, lab=lab: eq(
                X(si[f]), hashlib.sha256(lab.encode()).digest()[:ln]))
        ctype = CONTENT_TYPES[si["content_type"]]
        check(f"{n} content type wire", lambda: eq(ctype, si.get("content_type_wire", ctype)))
        dev = X(si["sender_device_secret"])
        check(f"{n} sender device id", lambda: eq(ed_public(dev), X(si["sender_device_id"])))
        wks = env["wrapped_keys"]
        eseeds = [X(w["eseed"]) if "eseed" in w else None for w in wks]
        try:
            sender = chains[si["sender_user_id"]]
            recips = [chains[u] for u in si["recipient_user_ids"]]
        except KeyError as e:
            check(f"{n} logs available", lambda e=e: f"missing log {e}")
            continue
        check(f"{n} S1–S3 pass", lambda: seal_checks(si["sender_user_id"], dev, lambda: sender,
                                                       X(si["conversation_id"]), si["recipient_user_ids"], ctype,
                                                       X(si["content"])))
        try:
            out = seal(si["sender_user_id"], dev, sender, X(si["conversation_id"]), recips, ctype, X(si["content"]),
                       si["timestamp_ms"], X(si["resource_key"]), X(si["resource_id"]), X(si["nonce"]),
                       [e or bytes(64) for e in eseeds])
        except Exception as e:  # noqa: BLE001
            check(f"{n} seal", lambda e=e: f"{type(e).__name__}: {e}")
            continue
        for f in ("aead_key", "key_commitment", "header", "padded_plaintext", "ciphertext", "ciphertext_digest",
                  "signature_input", "signature", "envelope"):
            if f in env:
                check(f"{n} {f}", lambda f=f: eq(out[f], X(env[f])))
        for j, w in enumerate(wks):
            wn = f"{n} wrapped key {j} ({w['user_id']})"
            check(wn + " user public", lambda w=w: eq(xwing_public(X(w["user_secret"])), X(w["user_public"])))
            check(wn + " = recipient's current key", lambda w=w, j=j: eq(recips[j].current, X(w["user_public"])))
            if "eseed_label" in w:
                check(wn + " eseed from label", lambda w=w: eq(X(w["eseed"]), hashlib.sha256(
                    (w["eseed_label"] + " 0").encode()).digest() + hashlib.sha256(
                    (w["eseed_label"] + " 1").encode()).digest()))
            if eseeds[j] is None:
                check(wn + " has an eseed (§7.3 S10, §6.2)", lambda w=w: f"no eseed; keys {sorted(w)}")
            else:
                check(wn + " reproduced", lambda w=w, j=j: eq(out["wrapped_keys"][j], X(w["wrapped_key"])))
            check(wn + " unwraps to K", lambda w=w: eq(unwrap_resource_key(X(w["wrapped_key"]), X(si["resource_id"]),
                                                                           X(w["user_secret"])), X(si["resource_key"])))
        def malleated(env=env, si=si):
            """§7.1: the outer Envelope is not canonical; a re-encoding (fields reversed, an unknown field, the
            signature repeated with the last one counting) still verifies and opens."""
            e = decode(ENVELOPE, X(env["envelope"]))
            raw = (varint(3 << 3 | 2) + varint(64) + bytes(64) + varint(99 << 3) + varint(7)
                   + varint(2 << 3 | 2) + varint(len(e["ciphertext"])) + e["ciphertext"]
                   + varint(1 << 3 | 2) + varint(len(e["header"])) + e["header"]
                   + varint(3 << 3 | 2) + varint(64) + e["signature"])
            return eq(open_envelope(parse_envelope(raw), sender, si["recipient_user_ids"][0],
                                    X(si["resource_key"])), X(si["content"]))
        check(f"{n} re-encoded outer envelope opens identically (§7.1)", malleated)
        for me in si["recipient_user_ids"]:
            check(f"{n} opens for {me}", lambda me=me: eq(open_envelope(parse_envelope(X(env["envelope"])), sender, me,
                                                                        X(si["resource_key"])), X(si["content"])))


def check_store():
    """§14.2: Argon2id v1.3 then HKDF-SHA256."""
    d = load("ward-v1-store.json")
    if d is None:
        return
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    check("store hkdf salt (§14.2)", lambda: eq(d["hkdf_salt"], "ward/v1/store"))
    check("store hkdf info (§14.2)", lambda: eq(d["hkdf_info"], "ward/v1/store/db-key"))
    for i, c in enumerate(d["cases"]):
        n = f"store case {i}"
        a2 = c["argon2id"]
        check(n + " salt from label", lambda c=c: eq(X(c["salt"]), hashlib.sha256(c["salt_label"].encode()).digest()[:16]))
        check(n + " pin utf8", lambda c=c: eq(c["pin"].encode(), X(c["pin_utf8"])))
        check(n + " argon2 parameters (v1.3, 32-byte tag)", lambda a2=a2: eq((a2["version"], a2["output_len"]), (0x13, 32)))

        def argon(c=c, a2=a2):
            a = Argon2id(salt=X(c["salt"]), length=32, iterations=a2["t_cost"], lanes=a2["p_cost"],
                         memory_cost=a2["m_cost_kib"]).derive(c["pin"].encode())
            return eq(a, X(c["argon2id_output"]))
        check(n + " argon2id output", argon)
        ps = X(c["platform_secret"]) if c.get("platform_secret") else b""
        if ps:
            check(n + " platform secret from label", lambda c=c, ps=ps: eq(ps, hashlib.sha256(
                c["platform_secret_label"].encode()).digest()))
        ikm = X(c["argon2id_output"]) + ps
        check(n + " hkdf ikm", lambda c=c, ikm=ikm: eq(ikm, X(c["hkdf_ikm"])))
        key = HKDF(hashes.SHA256(), 32, b"ward/v1/store", b"ward/v1/store/db-key").derive(ikm)
        check(n + " db key", lambda c=c, key=key: eq(key, X(c["db_key"])))
        check(n + " PRAGMA key", lambda c=c, key=key: eq(f'PRAGMA key = "x\'{key.hex()}\'";', c["sqlcipher_key_pragma"]))
    check_store_platform_slot(d)


def check_store_platform_slot(d):
    """§14.3 and §14.10: the platform-unlock slot and the version 2 header, rebuilt from the fields."""
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    v = d.get("platform_slot")
    check("store platform slot vector present (§14.10)", lambda: eq(v is not None, True))
    if v is None:
        return
    c = d["cases"][v["db_key_case"]]
    n = "store platform slot"
    check(n + " db key is the case's", lambda: eq(X(v["db_key"]), X(c["db_key"])))
    check(n + " argon2 salt is the case's", lambda: eq(X(v["argon2_salt"]), X(c["salt"])))
    check(n + " hkdf info", lambda: eq(v["hkdf_info"], "ward/v1/store/platform-slot"))
    secret = X(v["platform_secret"])
    salt = X(v["slot_salt"])
    nonce = X(v["nonce"])
    check(n + " secret from label", lambda: eq(secret, hashlib.sha256(v["platform_secret_label"].encode()).digest()))
    check(n + " salt from label", lambda: eq(salt, hashlib.sha256(v["slot_salt_label"].encode()).digest()[:16]))
    check(n + " nonce from label", lambda: eq(nonce, hashlib.sha256(v["nonce_label"].encode()).digest()[:24]))
    slot_key = HKDF(hashes.SHA256(), 32, salt, b"ward/v1/store/platform-slot").derive(secret)
    check(n + " slot key", lambda: eq(slot_key, X(v["slot_key"])))
    aad = X(c["salt"]) + salt + v["expires_at"].to_bytes(8, "big") + v["max_failures"].to_bytes(4, "big")
    check(n + " aad", lambda: eq(aad, X(v["aad"])))
    wrapped = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(X(c["db_key"]), aad, nonce, slot_key)
    check(n + " wrapped key (XChaCha20-Poly1305)", lambda: eq(wrapped, X(v["wrapped"])))
    check(n + " unwraps", lambda: eq(sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(wrapped, aad, nonce, slot_key),
                                       X(c["db_key"])))

    def refused(key, a):
        try:
            sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(wrapped, a, nonce, key)
        except Exception:  # noqa: BLE001 - libsodium's CryptoError: the tag does not verify
            return True
        return "opened"
    other = HKDF(hashes.SHA256(), 32, salt, b"ward/v1/store/platform-slot").derive(bytes(32))
    check(n + " another secret is refused", lambda: eq(refused(other, aad), True))
    later = aad[:32] + (v["expires_at"] + 1).to_bytes(8, "big") + aad[40:]
    check(n + " a later expiry is refused", lambda: eq(refused(slot_key, later), True))

    a2 = c["argon2id"]
    common = (b"WARDSTOR" + bytes([0, 1, 0, 1]) + u32(a2["m_cost_kib"]) + u32(a2["t_cost"]) + u32(a2["p_cost"])
              + X(c["salt"]) + u32(10) + u32(0) + bytes(28))
    v1 = common + hashlib.sha256(common).digest()
    check(n + " header v1 (108 bytes)", lambda: eq(v1, X(v["header_v1"])))
    body = (common[:8] + bytes([0, 2, 0b100, 1]) + common[12:] + salt + v["expires_at"].to_bytes(8, "big")
            + u32(v["max_failures"]) + u32(0) + nonce + wrapped)
    check(n + " header v2 body is 180 bytes", lambda: eq(len(body), 180))
    v2 = body + hashlib.sha256(body).digest()
    check(n + " header v2 (212 bytes)", lambda: eq(v2, X(v["header"])))
    check(n + " aad is header[24:40] + header[76:104]", lambda: eq(v2[24:40] + v2[76:104], aad))


def check_attachments():
    """§16: attachment blobs and descriptors, in attachment_v2.py (written from §16 alone)."""
    sys.path.insert(0, HERE)
    import attachment_v2
    attachment_v2.run(check, eq, load)


def check_negative_files():
    names = sorted(f for f in os.listdir(VECTORS) if f.endswith(".json"))
    for f in names:
        if f in ("ward-v2-wrap.json", "ward-v1-store.json"):
            continue  # run by check_wrap and check_store
        d = load(f)
        if isinstance(d, dict) and isinstance(d.get("cases"), list):
            run_cases(f, d["cases"])


def check_rooms():
    """§17: room_v2.py, run against this module (its primitives, codec and results)."""
    sys.path.insert(0, HERE)
    import room_v2

    room_v2.run(sys.modules[__name__])


def main():
    print(f"vectors: {VECTORS}")
    for part in (check_keys, check_pad_roundtrip, check_rfc9180, check_xwing, check_wrap, check_signatures,
                 check_chain, check_envelopes, check_store, check_attachments, check_negative_files,
                 check_rooms):
        try:
            part()
        except Exception as e:  # noqa: BLE001 - a broken section is one failure, the rest still runs
            check(f"{part.__name__} ran", lambda e=e: f"{type(e).__name__}: {e}")
            if os.environ.get("WARD_PY_TRACE"):
                traceback.print_exc()
    known = set(os.listdir(VECTORS))
    for f in sorted(known):
        if f.endswith(".json") and f not in {"ward-v2-keys.json", "ward-v2-wrap.json", "xwing-draft06-kem.json",
                                             "rfc9180-a2-x25519-sha256-chacha20poly1305-base.json",
                                             "ward-v2-signatures.json", "ward-v2-chain.json",
                                             "ward-v2-envelope.json", "ward-v1-store.json",
                                             "ward-v2-room.json", "ward-v2-attachment.json"}:
            d = load(f)
            if not (isinstance(d, dict) and "cases" in d):
                SKIPPED.append(f"{f} (not read: no positive checker for this file)")
    for s in SKIPPED:
        print(f"skipped: {s}")
    print(f"{len(PASSED)} passed, {len(FAILED)} failed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
