#!/usr/bin/env python3
"""An independent check of Ward's v2 identity-chain and handshake vectors,
written from SECURITY.md (§3, §4, §8) alone, without the Rust code.

Run from the repository root:

    python3 vectors/independent/chain_v2.py

Needs Python 3.10+ and the `cryptography` package (Ed25519, X25519). It
replays ward-v2-signatures.json, ward-v2-chain.json and every case of
ward-v2-chain-negative.json, and the chain cases (verify_log, update_log,
verify_invite) of ward-v2-negative.json, expecting each named error.
"""

import hashlib
import json
import os
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VERSION = 2
SIG_INVITE = b"ward/v2/sig/invite"
SIG_STATEMENT = b"ward/v2/sig/statement"
SIG_POSSESSION = b"ward/v2/sig/device-possession"
SIG_AUTH = b"ward/v2/sig/auth"
SIG_RELAY_LINK = b"ward/v2/sig/relay-link"
HASH_INVITE = b"ward/v2/hash/invite"
HASH_ENTRY = b"ward/v2/hash/entry"
MAX_INVITE, MAX_SIGNED_INVITE = 1024, 1152
MAX_STATEMENT, MAX_SIGNED_STATEMENT, MAX_ENTRIES = 8192, 8320, 4096
ED25519_L = 2**252 + 27742317777372353535851937790883648493


class Err(Exception):
    """An expected failure: `kind` is `Enum::Variant`, `fields` and `reason` as in the vectors."""

    def __init__(self, kind, reason=None, **fields):
        super().__init__(kind)
        self.kind, self.reason, self.fields = kind, reason, fields


def frame(label, *parts):
    out = label + b"\x00"
    for p in parts:
        out += len(p).to_bytes(4, "big") + p
    return out


def H(label, *parts):
    return hashlib.sha256(frame(label, *parts)).digest()


# --- protobuf (§3.1): decode, and canonical form by re-encoding ---------------

def varint(buf, i):
    shift = value = 0
    while True:
        if i >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            if value >> 64:  # §3.1: a varint over 64 bits is Malformed
                raise ValueError("varint over 64 bits")
            return value, i


def enc_varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


# Schemas: field number -> (name, kind); kind is "u32", "u64", "bytes",
# "string", or a nested schema name. ONEOF lists the oneof members.
SCHEMAS = {
    "Invite": {1: ("version", "u32"), 2: ("user_id", "string"), 3: ("display_name", "string"),
               4: ("profession", "string"), 5: ("registry_number", "string"),
               6: ("delegation_public_key", "bytes"), 7: ("expires_at", "u64")},
    "SignedInvite": {1: ("invite", "bytes"), 2: ("signature", "bytes")},
    "DeviceKeys": {1: ("signing_public_key", "bytes"), 2: ("encryption_public_key", "bytes")},
    "UserCreation": {1: ("invite", "SignedInvite"), 2: ("user_encryption_public_key", "bytes"),
                     3: ("device", "DeviceKeys")},
    "DeviceAddition": {1: ("device", "DeviceKeys"), 2: ("device_signature", "bytes")},
    "DeviceRevocation": {1: ("device_id", "bytes"), 2: ("new_user_encryption_public_key", "bytes")},
    "KeyRotation": {1: ("new_user_encryption_public_key", "bytes")},
    "Statement": {1: ("version", "u32"), 2: ("user_id", "string"), 3: ("seq", "u64"),
                  4: ("prev_hash", "bytes"), 5: ("timestamp", "u64"), 6: ("author", "bytes"),
                  10: ("user_creation", "UserCreation"), 11: ("device_addition", "DeviceAddition"),
                  12: ("device_revocation", "DeviceRevocation"), 13: ("key_rotation", "KeyRotation")},
    "SignedStatement": {1: ("statement", "bytes"), 2: ("signature", "bytes")},
    "AuthChallenge": {1: ("version", "u32"), 2: ("service", "string"), 3: ("nonce", "bytes"),
                      4: ("instance", "string")},
    "AuthResponse": {1: ("user_id", "string"), 2: ("device_id", "bytes"), 3: ("signature", "bytes"),
                     5: ("version", "u32")},  # 4: repeated log, not needed here
}
ONEOF = {"Statement": {10, 11, 12, 13}}
DEFAULTS = {"u32": 0, "u64": 0, "bytes": b"", "string": ""}


def decode(schema, buf):
    """proto3 decoding: unknown fields skipped, last value wins, repeated
    messages merge, a oneof member replaces another (§3.1)."""
    fields = SCHEMAS[schema]
    msg = {name: DEFAULTS.get(kind) for name, kind in fields.values()}
    i = 0
    while i < len(buf):
        key, i = varint(buf, i)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise ValueError("field 0")
        if wt == 0:
            value, i = varint(buf, i)
        elif wt == 2:
            n, i = varint(buf, i)
            if i + n > len(buf):
                raise ValueError("truncated")
            value, i = buf[i:i + n], i + n
        elif wt == 1:
            value, i = buf[i:i + 8], i + 8
        elif wt == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError("wire type")
        if i > len(buf):
            raise ValueError("truncated")
        if num not in fields:
            continue
        name, kind = fields[num]
        want = 0 if kind in ("u32", "u64") else 2
        if wt != want:
            raise ValueError("known field with the wrong wire type")
        if kind == "u32":
            msg[name] = value & 0xFFFFFFFF
        elif kind == "u64":
            msg[name] = value
        elif kind == "bytes":
            msg[name] = bytes(value)
        elif kind == "string":
            msg[name] = bytes(value).decode("utf-8")
        else:
            if num in ONEOF.get(schema, ()):
                for other in ONEOF[schema] - {num}:
                    msg[fields[other][0]] = None
            prev = msg[name]
            msg[name] = decode(kind, (prev["_raw"] if prev else b"") + bytes(value))
    msg["_raw"] = bytes(buf)
    return msg


def encode(schema, msg):
    out = b""
    for num in sorted(SCHEMAS[schema]):
        name, kind = SCHEMAS[schema][num]
        v = msg.get(name)
        if kind in ("u32", "u64"):
            if v:
                out += enc_varint(num << 3) + enc_varint(v)
        elif kind in ("bytes", "string"):
            b = v.encode() if kind == "string" else v
            if b:
                out += enc_varint(num << 3 | 2) + enc_varint(len(b)) + b
        elif v is not None:
            b = encode(kind, v)
            out += enc_varint(num << 3 | 2) + enc_varint(len(b)) + b
    return out


def decode_bounded(schema, buf, limit, enum):
    if len(buf) > limit:
        raise Err(enum + "::Decode", "TooLarge")
    try:
        return decode(schema, buf)
    except (ValueError, UnicodeDecodeError):
        raise Err(enum + "::Decode", "Malformed") from None


def decode_canonical(schema, buf, limit, enum):
    msg = decode_bounded(schema, buf, limit, enum)
    if encode(schema, msg) != buf:
        raise Err(enum + "::Decode", "NonCanonical")
    return msg


# --- keys (§3.5) ---------------------------------------------------------------

P = 2**255 - 19


def ed25519_valid(pk):
    """32 bytes, canonical y < p, decodes to a point, not of small order."""
    if len(pk) != 32:
        return False
    y = int.from_bytes(pk, "little") & ((1 << 255) - 1)
    if y >= P:
        return False
    d = -121665 * pow(121666, P - 2, P) % P
    u, v = (y * y - 1) % P, (d * y * y + 1) % P
    x2 = u * pow(v, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * pow(2, (P - 1) // 4, P) % P
    if (x * x - x2) % P:
        return False
    if x == 0 and pk[31] >> 7:
        return False
    # Small order: 8 * point is the identity. Edwards addition in extended coordinates.
    if x & 1 != pk[31] >> 7:
        x = P - x
    pt = (x, y, 1, x * y % P)
    for _ in range(3):
        X, Y, Z, T = pt
        A, B, C = X * X % P, Y * Y % P, 2 * Z * Z % P
        D = -A % P
        E = ((X + Y) * (X + Y) - A - B) % P
        G = (D + B) % P
        F = (G - C) % P
        Hh = (D - B) % P
        pt = (E * F % P, G * Hh % P, F * G % P, E * Hh % P)
    X, Y, Z, _ = pt
    return not (X % P == 0 and (Y - Z) % P == 0)


def verify(pk, msg, sig):
    """Strict enough for these vectors: S < L, R and A not of small order."""
    if len(sig) != 64 or not ed25519_valid(pk) or int.from_bytes(sig[32:], "little") >= ED25519_L:
        return False
    if not ed25519_valid(sig[:32]):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(pk).verify(sig, msg)
        return True
    except (InvalidSignature, ValueError):
        return False


def low_order_x25519(u):
    """§3.5: X25519(01 01 ... 01, u) == 0^32."""
    try:
        X25519PrivateKey.from_private_bytes(b"\x01" * 32).exchange(X25519PublicKey.from_public_bytes(u))
        return False
    except ValueError:
        return True


def mlkem_modulus_ok(ek):
    """FIPS 203 §7.2: the 384*k = 1152 bytes before rho decode to 12-bit
    coefficients that are all below q = 3329."""
    for i in range(0, 1152, 3):
        b0, b1, b2 = ek[i], ek[i + 1], ek[i + 2]
        if (b0 | (b1 & 0x0F) << 8) >= 3329 or (b1 >> 4 | b2 << 4) >= 3329:
            return False
    return True


def x25519_key(b, what):
    """An X-Wing encryption key (§3.5): 1216 bytes, the ML-KEM-768 key (1184)
    then the X25519 part (32), which must not be of low order."""
    if len(b) != 1216 or not mlkem_modulus_ok(b[:1184]) or low_order_x25519(b[1184:]):
        raise Err("ChainError::Malformed", what)
    return b


def valid_user_id(u):
    return 1 <= len(u.encode()) <= 128 and not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in u)


# --- invites (§4.1) ----------------------------------------------------------

def verify_invite(root, signed):
    inv = signed["invite"]
    if len(inv) > MAX_INVITE:
        raise Err("ChainError::Malformed", "invite too large")
    if not verify(root, frame(SIG_INVITE, inv), signed["signature"]):
        raise Err("ChainError::ForgedInvite")
    i = decode_canonical("Invite", inv, MAX_INVITE, "ChainError")
    if i["version"] != VERSION:
        raise Err("ChainError::UnsupportedVersion", str(i["version"]))
    if not ed25519_valid(i["delegation_public_key"]):
        raise Err("ChainError::Malformed", "invite delegation key")
    if not valid_user_id(i["user_id"]):
        raise Err("ChainError::Malformed", "invite user id")
    if len(i["display_name"].encode()) > 256 or len(i["profession"].encode()) > 128 \
            or len(i["registry_number"].encode()) > 64:
        raise Err("ChainError::Malformed", "invite field too long")
    i["hash"] = H(HASH_INVITE, inv)
    return i


# --- logs (§4.6, §4.7) -------------------------------------------------------

def entry_hash(e):
    return H(HASH_ENTRY, e["statement"], e["signature"])


def open_entry(e):
    if len(e["statement"]) > MAX_STATEMENT:
        raise Err("ChainError::Malformed", "statement too large")
    st = decode_canonical("Statement", e["statement"], MAX_STATEMENT, "ChainError")
    if st["version"] != VERSION:
        raise Err("ChainError::UnsupportedVersion", str(st["version"]))
    return st


def device_keys(d):
    if d is None:
        raise Err("ChainError::Malformed", "missing device keys")
    if not ed25519_valid(d["signing_public_key"]):
        raise Err("ChainError::Malformed", "device signing key")
    x25519_key(d["encryption_public_key"], "device encryption key")
    return d["signing_public_key"], d["encryption_public_key"]


def check_sig(e, author, seq):
    if not verify(author, frame(SIG_STATEMENT, e["statement"]), e["signature"]):
        raise Err("ChainError::BadSignature", seq=seq)


def from_creation(root, user_id, e):
    st = open_entry(e)
    if st["seq"] != 0:
        raise Err("ChainError::BadSequence", expected=0, found=st["seq"])
    c = st["user_creation"]
    if c is None:
        raise Err("ChainError::Malformed", "entry 0 must be a user creation")
    if c["invite"] is None:
        raise Err("ChainError::Malformed", "missing invite")
    inv = verify_invite(root, c["invite"])
    if st["user_id"] != user_id or inv["user_id"] != st["user_id"]:
        raise Err("ChainError::WrongUser", seq=0)
    if not ed25519_valid(st["author"]):
        raise Err("ChainError::Malformed", "author")
    if st["author"] != inv["delegation_public_key"]:
        raise Err("ChainError::UnauthorizedAuthor", seq=0)
    check_sig(e, st["author"], 0)
    if st["prev_hash"] != inv["hash"]:
        raise Err("ChainError::BrokenChain", seq=0)
    if st["timestamp"] > inv["expires_at"]:
        raise Err("ChainError::InviteExpired")
    key = x25519_key(c["user_encryption_public_key"], "user encryption key")
    sk, ek = device_keys(c["device"])
    if sk == root:
        raise Err("ChainError::KeyInUse", "device key is the organisation root", seq=0)
    if sk == inv["delegation_public_key"]:
        raise Err("ChainError::KeyInUse", "device key is the invite's delegation key", seq=0)
    return {"root": root, "invite": inv, "key": key, "past": [], "devices": {sk: [ek, 0, None]},
            "len": 1, "head": entry_hash(e), "last_timestamp": st["timestamp"], "pending": False}


def new_key(s, b, seq):
    k = x25519_key(b, "user encryption key")
    if k == s["key"] or k in s["past"]:
        raise Err("ChainError::InvalidTransition", "user key not rotated", seq=seq)
    return k


def apply(s, root, e):
    seq = s["len"]
    st = open_entry(e)
    if st["seq"] != seq:
        raise Err("ChainError::BadSequence", expected=seq, found=st["seq"])
    if st["user_id"] != s["invite"]["user_id"]:
        raise Err("ChainError::WrongUser", seq=seq)
    if st["prev_hash"] != s["head"]:
        raise Err("ChainError::BrokenChain", seq=seq)
    if st["timestamp"] < s["last_timestamp"]:
        raise Err("ChainError::TimeWentBackwards", seq=seq)
    author = st["author"]
    if not ed25519_valid(author):
        raise Err("ChainError::Malformed", "author")
    active = author in s["devices"] and s["devices"][author][2] is None
    s = {**s, "devices": {k: list(v) for k, v in s["devices"].items()}, "past": list(s["past"])}
    if st["user_creation"] is not None:
        c = st["user_creation"]
        if c["invite"] is None:
            raise Err("ChainError::Malformed", "missing invite")
        inv = verify_invite(root, c["invite"])
        if author != inv["delegation_public_key"]:
            raise Err("ChainError::UnauthorizedAuthor", seq=seq)
        check_sig(e, author, seq)
        raise Err("ChainError::InviteReused")
    elif st["device_addition"] is not None:
        a = st["device_addition"]
        if not active:
            raise Err("ChainError::UnauthorizedAuthor", seq=seq)
        check_sig(e, author, seq)
        sk, ek = device_keys(a["device"])
        for bad, reason in [(sk == root, "device key is the organisation root"),
                            (sk == s["invite"]["delegation_public_key"], "device key is the invite's delegation key"),
                            (sk in s["devices"], "device already in the log"),
                            (any(v[0] == ek for v in s["devices"].values()),
                             "device encryption key already in the log")]:
            if bad:
                raise Err("ChainError::KeyInUse", reason, seq=seq)
        msg = frame(SIG_POSSESSION, root, s["invite"]["user_id"].encode(), sk, ek)
        if not verify(sk, msg, a["device_signature"]):
            raise Err("ChainError::MissingPossessionProof", seq=seq)
        s["devices"][sk] = [ek, seq, None]
    elif st["device_revocation"] is not None:
        r = st["device_revocation"]
        by_root = not active and author == root
        if not active and not by_root:
            raise Err("ChainError::UnauthorizedAuthor", seq=seq)
        check_sig(e, author, seq)
        target = r["device_id"]
        if not ed25519_valid(target):
            raise Err("ChainError::Malformed", "device id")
        if target not in s["devices"]:
            raise Err("ChainError::InvalidTransition", "unknown device", seq=seq)
        if s["devices"][target][2] is not None:
            raise Err("ChainError::InvalidTransition", "device already revoked", seq=seq)
        k = r["new_user_encryption_public_key"]
        if by_root and k:
            raise Err("ChainError::InvalidTransition", "the root may not choose a user key", seq=seq)
        if not by_root and target == author and k:
            raise Err("ChainError::InvalidTransition", "a revoked device may not choose a user key", seq=seq)
        rotate = None if by_root or target == author else new_key(s, k, seq)
        s["devices"][target][2] = seq
        if rotate is None:
            s["pending"] = True
        else:
            s["past"].append(s["key"])
            s["key"], s["pending"] = rotate, False
    elif st["key_rotation"] is not None:
        if not active:
            raise Err("ChainError::UnauthorizedAuthor", seq=seq)
        check_sig(e, author, seq)
        k = new_key(s, st["key_rotation"]["new_user_encryption_public_key"], seq)
        s["past"].append(s["key"])
        s["key"], s["pending"] = k, False
    else:
        raise Err("ChainError::Malformed", "statement without body")
    s["len"], s["head"], s["last_timestamp"] = seq + 1, entry_hash(e), st["timestamp"]
    return s


def verify_log(root, user_id, entries):
    if len(entries) > MAX_ENTRIES:
        raise Err("ChainError::Malformed", "log too long")
    if not entries:
        raise Err("ChainError::EmptyLog")
    s = from_creation(root, user_id, entries[0])
    for e in entries[1:]:
        s = apply(s, root, e)
    return s


def update(s, root, served):
    if len(served) > MAX_ENTRIES:
        raise Err("ChainError::Malformed", "log too long")
    n = s["len"]
    if len(served) < n:
        raise Err("ChainError::Rollback", known=n, served=len(served))
    ok = entry_hash(served[n - 1]) == s["head"]
    for i in range(1, n):
        try:
            st = decode("Statement", served[i]["statement"])
        except (ValueError, UnicodeDecodeError):
            ok = False
            break
        ok = ok and st["prev_hash"] == entry_hash(served[i - 1])
    if not ok:
        raise Err("ChainError::Fork", seq=n - 1)
    for e in served[n:]:
        s = apply(s, root, e)
    return s


# --- the handshake (§8) -------------------------------------------------------

def transcript(root, ch, user_id, device_id):
    return frame(SIG_AUTH, ch["version"].to_bytes(4, "big"), ch["service"].encode(),
                 ch["instance"].encode(), root, ch["nonce"], user_id.encode(), device_id)


def verify_response(root, service, instance, ch, resp):
    if len(ch["nonce"]) != 32 or not valid_user_id(resp["user_id"]):
        raise Err("AuthError::Malformed")
    if not ed25519_valid(resp["device_id"]):
        raise Err("AuthError::Malformed")
    if resp["version"] != VERSION:
        raise Err("AuthError::UnsupportedVersion", str(resp["version"]))
    if not verify(resp["device_id"], transcript(root, ch, resp["user_id"], resp["device_id"]), resp["signature"]):
        raise Err("AuthError::BadSignature")
    return resp["user_id"]


def link_transcript(root, ch, service_key):
    # SECURITY.md §10.8: the keyserver's challenge, the root, the relay's service key.
    return frame(SIG_RELAY_LINK, ch["version"].to_bytes(4, "big"), ch["service"].encode(),
                 ch["instance"].encode(), root, ch["nonce"], service_key)


def verify_link_response(root, ch, resp):
    # L1-L3 of §10.8 (L4, the allowed keys, is the keyserver's configuration).
    # The log field (4) is not decoded here; the vector's response has none.
    if len(ch["nonce"]) != 32 or resp["user_id"] != "":
        raise Err("AuthError::Malformed")
    if not ed25519_valid(resp["device_id"]):
        raise Err("AuthError::Malformed")
    if resp["version"] != VERSION:
        raise Err("AuthError::UnsupportedVersion", str(resp["version"]))
    if not verify(resp["device_id"], link_transcript(root, ch, resp["device_id"]), resp["signature"]):
        raise Err("AuthError::BadSignature")
    return resp["device_id"]


def respond_checks(service, instance, ch, user_id):
    if ch["version"] != VERSION:
        raise Err("AuthError::UnsupportedVersion", str(ch["version"]))
    if ch["service"] != service or ch["instance"] != instance or len(ch["nonce"]) != 32 \
            or not valid_user_id(user_id):
        raise Err("AuthError::UnexpectedChallenge")


# --- replay -------------------------------------------------------------------

def x(h):
    return bytes.fromhex(h)


def log_of(v):
    return [{"statement": x(e["statement"]), "signature": x(e["signature"])} for e in v]


def load(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return json.load(f)


def run_case(c):
    op, i = c["operation"], c["inputs"]
    root = x(i["org_root_public"]) if "org_root_public" in i else None
    if op == "verify_log":
        verify_log(root, i["user_id"], log_of(i["log"]))
    elif op == "update_log":
        update(verify_log(root, i["user_id"], log_of(i["known_log"])), root, log_of(i["served_log"]))
    elif op == "verify_invite":
        verify_invite(root, decode("SignedInvite", x(i["signed_invite"])))
    elif op == "decode_signed_invite":
        decode_bounded("SignedInvite", x(i["bytes"]), MAX_SIGNED_INVITE, "ChainError")
    elif op == "decode_signed_statement":
        decode_bounded("SignedStatement", x(i["bytes"]), MAX_SIGNED_STATEMENT, "ChainError")
    elif op == "verify_response":
        verify_response(root, i["service"], i["instance"], decode("AuthChallenge", x(i["challenge"])),
                        decode("AuthResponse", x(i["response"])))
    elif op == "respond":
        respond_checks(i["service"], i["instance"], decode("AuthChallenge", x(i["challenge"])), i["user_id"])
    else:
        return False
    raise AssertionError(f"{c['name']}: succeeded, expected {c['error']}")


def check_case(c):
    try:
        ran = run_case(c)
    except Err as e:
        assert e.kind == c["error"], f"{c['name']}: got {e.kind} {e.reason}, expected {c['error']}"
        for k, v in c["error_fields"].items():
            assert e.fields.get(k) == v, f"{c['name']}: {k} = {e.fields.get(k)}, expected {v}"
        if "error_reason" in c:
            assert e.reason == c["error_reason"], f"{c['name']}: reason {e.reason!r}, expected {c['error_reason']!r}"
        return True
    return ran


def main():
    checked = 0
    sig = load("ward-v2-signatures.json")
    a = sig["auth"]
    ch = decode("AuthChallenge", x(a["challenge"]["encoded"]))
    resp = decode("AuthResponse", x(a["response"]))
    root = x(a["org_root_public"])
    t = transcript(root, ch, a["user_id"], x(a["device_id"]))
    assert t == x(a["transcript"]), "auth transcript"
    assert verify_response(root, ch["service"], ch["instance"], ch, resp) == a["user_id"]
    lk = sig["relay_link"]
    ch = decode("AuthChallenge", x(lk["challenge"]["encoded"]))
    resp = decode("AuthResponse", x(lk["response"]))
    root = x(lk["org_root_public"])
    assert ch["service"] == "ward-keyserver", "relay link challenge is the keyserver's"
    assert link_transcript(root, ch, x(lk["service_key"])) == x(lk["transcript"]), "relay link transcript"
    assert verify_link_response(root, ch, resp) == x(lk["service_key"])
    # The same signature is no device handshake signature (distinct labels).
    as_device = dict(resp, user_id="relay")
    try:
        verify_response(root, ch["service"], ch["instance"], ch, as_device)
        raise AssertionError("a relay-link signature verified as a device one")
    except Err as e:
        assert e.kind == "AuthError::BadSignature", e.kind
    checked += 1
    inv = sig["invite"]
    signed = decode("SignedInvite", x(inv["signed_invite"]))
    assert frame(SIG_INVITE, signed["invite"]) == x(inv["signature_input"])
    assert verify_invite(x(inv["org_root_public"]), signed)["hash"] == x(inv["invite_hash"])
    checked += 2

    chain = load("ward-v2-chain.json")
    root = x(chain["org_root_public"])
    entries = []
    for e in chain["entries"]:
        se = decode("SignedStatement", x(e["signed_statement"]))
        entry = {"statement": se["statement"], "signature": se["signature"]}
        assert frame(SIG_STATEMENT, entry["statement"]) == x(e["signature_input"])
        assert entry_hash(entry) == x(e["entry_hash"]), f"entry {e['seq']} hash"
        if "possession_input" in e:
            st = decode("Statement", entry["statement"])
            d = st["device_addition"]["device"]
            msg = frame(SIG_POSSESSION, root, chain["user_id"].encode(), d["signing_public_key"],
                        d["encryption_public_key"])
            assert msg == x(e["possession_input"])
        entries.append(entry)
    s = verify_log(root, chain["user_id"], entries)
    f = chain["final_state"]
    assert s["len"] == f["len"] and s["head"] == x(f["head"]) and s["key"] == x(f["encryption_key"])
    assert s["past"] == [x(k) for k in f["past_encryption_keys"]]
    assert s["last_timestamp"] == f["last_timestamp"] and s["pending"] == f["rotation_pending"]
    for n in range(1, len(entries)):
        assert update(verify_log(root, chain["user_id"], entries[:n]), root, entries)["head"] == s["head"]
    checked += 1

    for c in load("ward-v2-chain-negative.json")["cases"]:
        if c["operation"] in ("decode_wrapped_key", "decode_device_grant"):
            continue  # §6.5, outside this script's §3/§4/§8 (check.py runs them)
        assert check_case(c), c["name"]
        checked += 1
    for c in load("ward-v2-negative.json")["cases"]:
        if c["operation"] in ("verify_log", "update_log", "verify_invite"):
            assert check_case(c), c["name"]
            checked += 1
    print(f"ok: {checked} chain and handshake vector checks")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
