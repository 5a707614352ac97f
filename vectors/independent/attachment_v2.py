#!/usr/bin/env python3
"""An independent check of Ward's attachment vectors (vectors/ward-v2-attachment.json), written from
SECURITY.md §16 (and §7.2's PADME) alone, no Rust read.

    python3 vectors/independent/attachment_v2.py       # standalone
    python3 vectors/independent/check.py               # runs it too, in its count

Needs `cryptography` (HKDF-Expand, HMAC, ChaCha20-Poly1305). For every file it re-derives the key schedule
(§16.3), the padding and chunking (§16.1, §16.2), every sealed chunk and nonce, the header, the blob hash (§16.4)
and the encoded descriptor (§16.5), then opens the blob as a receiver (D1-D9, B1-B6). Every negative blob and
descriptor is refused with exactly the error named.
"""
import hashlib
import hmac
import json
import os
import sys

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

HERE = os.path.dirname(os.path.abspath(__file__))
VECTORS = os.environ.get("WARD_VECTORS_DIR", os.path.dirname(HERE))

CHUNK = 65536
TAG = 16
HEADER = 64
MAX_ATTACHMENT = 1 << 40
MAX_DESCRIPTOR = 72 * 1024
MAX_THUMBNAIL = 65536
PAYLOAD_KEY = b"ward/v2/attachment/payload-key"
KEY_COMMITMENT = b"ward/v2/attachment/key-commitment"
HASH_BLOB = b"ward/v2/hash/attachment-blob"


class AttError(Exception):
    """AttachmentError::<name>, with its fields and reason."""

    def __init__(self, name, reason=None, **fields):
        super().__init__(name, reason, fields)
        self.name, self.reason, self.fields = name, reason, fields


# ------------------------------------------------------------------ §7.2 PADME, §16.2 layout
def padme(n):
    if n < 2:
        return n
    e = n.bit_length() - 1
    s = e.bit_length()
    m = (1 << (e - s)) - 1
    return (n + m) & ~m


def layout(n):
    padded = padme(n)
    chunks = max(1, -(-padded // CHUNK))
    return padded, chunks, HEADER + padded + TAG * chunks


def chunk_len(padded, chunks, i):
    return CHUNK if i < chunks - 1 else padded - (chunks - 1) * CHUNK


# ------------------------------------------------------------------ §16.3, §16.1, §16.4
def keys(k, salt):
    prk = hmac.new(salt, k, hashlib.sha256).digest()
    ex = lambda info: HKDFExpand(hashes.SHA256(), 32, info).derive(prk)
    return ex(PAYLOAD_KEY), ex(KEY_COMMITMENT)


def nonce(i, last):
    return i.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def blob_hash(blob):
    return hashlib.sha256(HASH_BLOB + b"\x00" + blob).digest()


def seal_blob(content, k, salt):
    """The whole blob for `content` (§16.2): header || STREAM(file || zeros)."""
    padded, chunks, _ = layout(len(content))
    p = content + bytes(padded - len(content))
    pk, kc = keys(k, salt)
    aead = ChaCha20Poly1305(pk)
    sealed = []
    for i in range(chunks):
        part = p[i * CHUNK:i * CHUNK + chunk_len(padded, chunks, i)]
        sealed.append(aead.encrypt(nonce(i, i == chunks - 1), part, b""))
    return salt + kc, sealed


# ------------------------------------------------------------------ protobuf, just what AttachmentRef needs
FIELDS = [(1, "blob_id", "bytes"), (2, "key", "bytes"), (3, "plaintext_size", "u64"), (4, "blob_size", "u64"),
          (5, "blob_hash", "bytes"), (6, "media_type", "string"), (7, "file_name", "string"),
          (8, "thumbnail", "bytes"), (9, "thumbnail_media_type", "string")]


def varint(x):
    out = b""
    while True:
        b = x & 0x7F
        x >>= 7
        if x:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def read_varint(b, i):
    x, shift = 0, 0
    while True:
        if i >= len(b) or shift > 63:
            raise AttError("Decode", "Malformed")
        c = b[i]
        i += 1
        x |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return x, i


def encode(d):
    out = b""
    for num, name, typ in FIELDS:
        v = d.get(name)
        if typ == "u64":
            if v:
                out += varint(num << 3) + varint(v)
        else:
            v = v.encode() if typ == "string" else v
            if v:
                out += varint(num << 3 | 2) + varint(len(v)) + v
    return out


def decode_canonical(b):
    """§3.1/§3.2: decode_bounded then reject unless re-encoding gives the same bytes (D1)."""
    if len(b) > MAX_DESCRIPTOR:
        raise AttError("Decode", "TooLarge")
    types = {num: (name, typ) for num, name, typ in FIELDS}
    d = {name: (0 if typ == "u64" else "" if typ == "string" else b"") for _, name, typ in FIELDS}
    i = 0
    while i < len(b):
        key, i = read_varint(b, i)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise AttError("Decode", "Malformed")
        f = types.get(num)
        if wt == 0:
            v, i = read_varint(b, i)
            if f and f[1] != "u64":
                raise AttError("Decode", "Malformed")
            if f:
                d[f[0]] = v
        elif wt == 2:
            n, i = read_varint(b, i)
            if i + n > len(b):
                raise AttError("Decode", "Malformed")
            v = b[i:i + n]
            i += n
            if f and f[1] == "u64":
                raise AttError("Decode", "Malformed")
            if f:
                if f[1] == "string":
                    try:
                        v = v.decode()
                    except UnicodeDecodeError:
                        raise AttError("Decode", "Malformed") from None
                d[f[0]] = v
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        else:
            raise AttError("Decode", "Malformed")
        if i > len(b):
            raise AttError("Decode", "Malformed")
    if encode(d) != b:
        raise AttError("Decode", "NonCanonical")
    return d


# ------------------------------------------------------------------ §16.5 D1-D9
RESTRICTED = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$&-^_.+")


def restricted_name(s):
    return bool(s) and s[0].isascii() and s[0].isalnum() and all(c in RESTRICTED for c in s)


def valid_media_type(s):
    if len(s.encode()) > 127 or "/" not in s:
        return False
    t, sub = s.split("/", 1)
    return restricted_name(t) and restricted_name(sub)


def is_cc(c):  # Unicode category Cc: C0, DEL, C1
    o = ord(c)
    return o < 0x20 or 0x7F <= o <= 0x9F


def valid_file_name(s):
    return (0 < len(s.encode()) <= 255 and s not in (".", "..")
            and not any(c in "/\\" or is_cc(c) for c in s))


def parse_descriptor(b):
    d = decode_canonical(b)  # D1
    if len(d["blob_id"]) != 32:
        raise AttError("Malformed", "blob id")  # D2
    if len(d["key"]) != 32:
        raise AttError("Malformed", "key")  # D3
    if d["plaintext_size"] > MAX_ATTACHMENT:
        raise AttError("TooLarge", None, **{"0": d["plaintext_size"]})  # D4
    if d["blob_size"] != layout(d["plaintext_size"])[2]:
        raise AttError("Malformed", "blob size")  # D5
    if len(d["blob_hash"]) != 32:
        raise AttError("Malformed", "blob hash")  # D6
    if not valid_media_type(d["media_type"]):
        raise AttError("Malformed", "media type")  # D7
    if not valid_file_name(d["file_name"]):
        raise AttError("Malformed", "file name")  # D8
    t, tm = d["thumbnail"], d["thumbnail_media_type"]
    ok = (tm == "") if not t else (len(t) <= MAX_THUMBNAIL and valid_media_type(tm) and tm.startswith("image/"))
    if not ok:
        raise AttError("Malformed", "thumbnail")  # D9
    return d


# ------------------------------------------------------------------ §16.6 B1-B6, the blob given whole
def open_blob(desc_bytes, blob):
    d = parse_descriptor(desc_bytes)
    n = d["plaintext_size"]
    padded, chunks, size = layout(n)
    if len(blob) > size:
        raise AttError("TrailingData")  # B3 (the whole blob arrives at once: checked on arrival)
    if len(blob) < HEADER:
        raise AttError("Truncated")  # B1 never completes; B5
    salt, kc = blob[:32], blob[32:HEADER]
    pk, want = keys(d["key"], salt)
    if not hmac.compare_digest(want, kc):
        raise AttError("KeyCommitmentMismatch")  # B2
    aead = ChaCha20Poly1305(pk)
    out, pos = b"", HEADER
    for i in range(chunks):
        ln = chunk_len(padded, chunks, i) + TAG
        if pos + ln > len(blob):
            raise AttError("Truncated")  # B5: the chunk never completes
        try:
            pt = aead.decrypt(nonce(i, i == chunks - 1), blob[pos:pos + ln], b"")
        except InvalidTag:
            raise AttError("ChunkAuthFailed", None, index=i) from None  # B4
        keep = max(0, min(len(pt), n - i * CHUNK))
        if any(pt[keep:]):
            raise AttError("BadPadding")  # B4
        out += pt[:keep]
        pos += ln
    if not hmac.compare_digest(blob_hash(blob), d["blob_hash"]):
        raise AttError("HashMismatch")  # B6
    return out


# ------------------------------------------------------------------ the checks
def stream_bytes(label, n):
    out, i = b"", 0
    while len(out) < n:
        out += hashlib.sha256(f"{label} {i}".encode()).digest()
        i += 1
    return out[:n]


def expect(case, fn):
    try:
        fn()
    except AttError as e:
        got = (f"AttachmentError::{e.name}", {k: v for k, v in e.fields.items()}, e.reason)
        want = (case["error"], case.get("error_fields", {}), case.get("error_reason"))
        return True if got == want else f"got {got} want {want}"
    return f"accepted; want {case['error']}"


def run(check, eq, load):
    """Adds this file's checks through check.py's `check` and `eq` (or the standalone ones below)."""
    v = load("ward-v2-attachment.json")
    if v is None:
        return
    X = bytes.fromhex
    check("attachment constants (§16.1, §16.2)", lambda: eq(
        (v["chunk_size"], v["tag_size"], v["header_size"]), (CHUNK, TAG, HEADER)))
    check("attachment labels (§3.4, §16.3, §16.4)", lambda: eq(
        [x.encode() for x in v["labels"].values()], [PAYLOAD_KEY, KEY_COMMITMENT, HASH_BLOB]))
    blobs = {}
    for f in v["files"]:
        n = f"attachment {f['name']}"
        content = stream_bytes(f["content_label"], f["plaintext_size"])
        k, salt = X(f["file_key"]), X(f["salt"])
        check(n + " inputs from labels", lambda f=f: eq(
            (X(f["file_key"]), X(f["salt"]), X(f["blob_id"])),
            tuple(hashlib.sha256(f[x].encode()).digest() for x in ("file_key_label", "salt_label", "blob_id_label"))))
        check(n + " content", lambda f=f, c=content: eq(hashlib.sha256(c).digest(), X(f["plaintext_sha256"])))
        pk, kc = keys(k, salt)
        check(n + " payload key", lambda f=f, pk=pk: eq(pk, X(f["payload_key"])))
        check(n + " key commitment", lambda f=f, kc=kc: eq(kc, X(f["key_commitment"])))
        padded, chunks, size = layout(len(content))
        check(n + " layout (§16.2)", lambda f=f, l=(padded, chunks, size): eq(
            l, (f["padded_size"], f["chunk_count"], f["blob_size"])))
        header, sealed = seal_blob(content, k, salt)
        check(n + " header", lambda f=f, h=header: eq(h, X(f["header"])))
        check(n + " chunk count", lambda f=f, s=sealed: eq(len(s), len(f["chunks"])))
        for i, c in enumerate(f["chunks"]):
            cn = f"{n} chunk {i}"
            last = i == chunks - 1
            check(cn + " nonce and role", lambda c=c, i=i, last=last: eq(
                (X(c["nonce"]), c["last"], c["index"]), (nonce(i, last), last, i)))
            check(cn + " lengths", lambda c=c, i=i: eq(
                (c["plaintext_len"], c["content_len"]),
                (chunk_len(padded, chunks, i), max(0, min(chunk_len(padded, chunks, i), len(content) - i * CHUNK)))))
            if i < len(sealed):
                check(cn + " sealed", lambda c=c, s=sealed[i]: eq(s, X(c["sealed"])))
        blob = header + b"".join(sealed)
        check(n + " blob hash", lambda f=f, b=blob: eq(blob_hash(b), X(f["blob_hash"])))
        dd = f["descriptor"]
        mine = encode({"blob_id": X(f["blob_id"]), "key": k, "plaintext_size": len(content), "blob_size": size,
                       "blob_hash": blob_hash(blob), "media_type": dd["media_type"], "file_name": dd["file_name"],
                       "thumbnail": X(dd["thumbnail"]), "thumbnail_media_type": dd["thumbnail_media_type"]})
        check(n + " descriptor encoding (§16.5)", lambda dd=dd, m=mine: eq(m, X(dd["encoded"])))
        if dd.get("thumbnail_label"):
            check(n + " thumbnail from label", lambda dd=dd: eq(X(dd["thumbnail"]),
                                                                stream_bytes(dd["thumbnail_label"], 100)))
        check(n + " opens (D1-D9, B1-B6)", lambda dd=dd, b=blob, c=content: eq(open_blob(X(dd["encoded"]), b), c))
        blobs[f["name"]] = (header, sealed)
    for c in v["blob_cases"]:
        def build(c=c):
            b = b""
            for p in c["blob"]:
                if p[0] == "header":
                    b += blobs[p[1]][0]
                elif p[0] == "chunk":
                    b += blobs[p[1]][1][p[2]]
                else:
                    b += X(p[1])
            return b
        check(f"attachment blob {c['name']} assembled", lambda c=c, b=build: eq(
            (len(b()), hashlib.sha256(b()).digest()), (c["blob_len"], X(c["blob_sha256"]))))
        check(f"attachment blob {c['name']} refused", lambda c=c, b=build: expect(
            c, lambda: open_blob(X(c["descriptor"]), b())))
    for c in v["descriptor_cases"]:
        check(f"attachment descriptor {c['name']} refused", lambda c=c: expect(
            c, lambda: parse_descriptor(X(c["descriptor"]))))


def main():
    passed, failed = [], []

    def check(name, fn):
        try:
            r = fn()
            ok, why = (r is True or r is None), r
        except Exception as e:  # noqa: BLE001 - a crash is a failed check
            ok, why = False, f"{type(e).__name__}: {e}"
        (passed if ok else failed).append(name)
        if not ok:
            print(f"FAIL {name}: {why}")

    def eq(a, b, what=""):
        return True if a == b else f"{what} got {str(a)[:80]} want {str(b)[:80]}"

    def load(name):
        p = os.path.join(VECTORS, name)
        if not os.path.exists(p):
            return None
        with open(p) as f:
            return json.load(f)

    run(check, eq, load)
    print(f"{len(passed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
