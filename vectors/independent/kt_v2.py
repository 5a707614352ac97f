#!/usr/bin/env python3
"""An independent check of vectors/ward-v2-kt.json, written from
SECURITY.md §18 alone (no Rust read), and from RFC 9162 §2.1 for the tree.

    python3 vectors/independent/kt_v2.py

Needs Python 3 and `cryptography` (Ed25519). It recomputes every leaf's data
and hash, the root of every tree size (the RFC's MTH), every inclusion path
and consistency proof (PATH, SUBPROOF) and verifies each with the RFC's
verification algorithms (§2.1.3.2, §2.1.4.2), together with one-node
alterations of each that must fail; derives the keys from their seeds,
checks the directory key certificate, both epoch signatures and the witness
countersignature, runs the epoch-view rules of §18.3 over the two epochs,
and expects every negative case to fail with the named error.
"""

import hashlib
import json
import os
import struct
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

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


def framed(label, parts):
    # §3.1: label || 0x00 || (u32_be(len) || part)*.
    out = label + b"\x00"
    for p in parts:
        out += struct.pack(">I", len(p)) + p
    return out


def u64(n):
    return struct.pack(">Q", n)


def sha256(b):
    return hashlib.sha256(b).digest()


# ---- RFC 9162 §2.1, from its definitions ----


def leaf_hash(data):
    return sha256(b"\x00" + data)


def node_hash(left, right):
    return sha256(b"\x01" + left + right)


def largest_pow2_below(n):
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d):
    if len(d) == 0:
        return sha256(b"")
    if len(d) == 1:
        return leaf_hash(d[0])
    k = largest_pow2_below(len(d))
    return node_hash(mth(d[:k]), mth(d[k:]))


def path(m, d):
    if len(d) <= 1:
        return []
    k = largest_pow2_below(len(d))
    if m < k:
        return path(m, d[:k]) + [mth(d[k:])]
    return path(m - k, d[k:]) + [mth(d[:k])]


def subproof(m, d, b):
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = largest_pow2_below(n)
    if m <= k:
        return subproof(m, d[:k], b) + [mth(d[k:])]
    return subproof(m - k, d[k:], False) + [mth(d[:k])]


def proof(m, d):
    if m == 0 or m == len(d):
        return []
    return subproof(m, d, True)


class Refused(Exception):
    def __init__(self, error, reason=None):
        super().__init__(error)
        self.error = error
        self.reason = reason


MAX_PROOF_NODES = 128


def verify_inclusion(leaf, index, size, nodes, root):
    # §18.2 / RFC 9162 §2.1.3.2.
    if index >= size:
        raise Refused("KtError::OutOfRange", "leaf index past the tree")
    if len(nodes) > MAX_PROOF_NODES:
        raise Refused("KtError::BadProofLength")
    fn, sn, r = index, size - 1, leaf
    for p in nodes:
        if sn == 0:
            raise Refused("KtError::BadProofLength")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise Refused("KtError::BadProofLength")
    if r != root:
        raise Refused("KtError::RootMismatch")


def verify_consistency(old, new, old_root, new_root, nodes):
    # §18.2 / RFC 9162 §2.1.4.2, with §18.2's rules for equal sizes and 0.
    if old > new:
        raise Refused("KtError::OutOfRange", "old tree larger than the new one")
    if len(nodes) > MAX_PROOF_NODES:
        raise Refused("KtError::BadProofLength")
    if old == new:
        if nodes:
            raise Refused("KtError::BadProofLength")
        if old_root != new_root:
            raise Refused("KtError::RootMismatch")
        return
    if old == 0:
        if nodes:
            raise Refused("KtError::BadProofLength")
        return
    if not nodes:
        raise Refused("KtError::BadProofLength")
    nodes = list(nodes)
    if old & (old - 1) == 0:
        nodes = [old_root] + nodes
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = nodes[0]
    for c in nodes[1:]:
        if sn == 0:
            raise Refused("KtError::BadProofLength")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise Refused("KtError::BadProofLength")
    if fr != old_root or sr != new_root:
        raise Refused("KtError::RootMismatch")


def refused(f, *args):
    try:
        f(*args)
    except Refused as e:
        return e
    return None


# ---- §18.3: epochs, certificate, witnesses, the view ----

LEAF = b"ward/v2/kt/leaf"
SIG_EPOCH = b"ward/v2/sig/kt-epoch"
SIG_KEY = b"ward/v2/sig/kt-key"
SIG_WITNESS = b"ward/v2/sig/kt-witness"


def leaf_data(user_id, log_len, head_hash):
    return framed(LEAF, [user_id.encode(), u64(log_len), head_hash])


def epoch_message(e):
    return framed(SIG_EPOCH, [u64(e["epoch"]), u64(e["tree_size"]), e["root"], u64(e["timestamp"])])


def witness_message(e):
    return framed(SIG_WITNESS, [epoch_message(e)])


def ed_verify(public, msg, sig):
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(sig, msg)
        return True
    except (InvalidSignature, ValueError):
        return False


def public_of(seed):
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw
    )


def parse_epoch(j):
    return {
        "epoch": j["epoch"],
        "tree_size": j["tree_size"],
        "root": bytes.fromhex(j["root"]),
        "timestamp": j["timestamp"],
        "signature": bytes.fromhex(j["signature"]),
        "witnesses": [
            (bytes.fromhex(w["witness_key"]), bytes.fromhex(w["signature"])) for w in j["witnesses"]
        ],
    }


def head(e):
    return (e["epoch"], e["tree_size"], e["root"], e["timestamp"])


class View:
    """The epoch view of §18.3."""

    def __init__(self, org_root, directory_key, root_signature):
        if not ed_verify(org_root, framed(SIG_KEY, [directory_key]), root_signature):
            raise Refused("KtError::BadCertificate")
        self.directory = directory_key
        self.witnesses = []
        self.threshold = 0
        self.latest = None

    def advance(self, e, consistency):
        if e["epoch"] == 0:
            raise Refused("KtError::Malformed", "epoch number 0")
        if not ed_verify(self.directory, epoch_message(e), e["signature"]):
            raise Refused("KtError::BadSignature")
        if self.threshold:
            seen = []
            for key, sig in e["witnesses"]:
                if key not in self.witnesses or key in seen:
                    continue
                if not ed_verify(key, witness_message(e), sig):
                    raise Refused("KtError::BadWitness")
                seen.append(key)
            if len(seen) < self.threshold:
                raise Refused("KtError::NotEnoughWitnesses")
        held = self.latest
        if held is None:
            if consistency:
                raise Refused("KtError::BadProofLength")
            self.latest = e
            return "first"
        if e["epoch"] == held["epoch"]:
            if head(e) != head(held):
                raise Refused("KtError::Equivocation")
            if consistency:
                raise Refused("KtError::BadProofLength")
            return "unchanged"
        if e["epoch"] < held["epoch"]:
            raise Refused("KtError::Rollback", "epoch number")
        if e["tree_size"] < held["tree_size"]:
            raise Refused("KtError::Rollback", "tree size")
        if e["timestamp"] < held["timestamp"]:
            raise Refused("KtError::Rollback", "timestamp")
        try:
            verify_consistency(held["tree_size"], e["tree_size"], held["root"], e["root"], consistency)
        except Refused as r:
            if r.error == "KtError::RootMismatch":
                raise Refused("KtError::Fork")
            raise
        self.latest = e
        return "extended"


def main():
    with open(os.path.join(HERE, "..", "ward-v2-kt.json")) as f:
        v = json.load(f)
    check("labels", v["labels"] == {
        "leaf": LEAF.decode(), "epoch_signature": SIG_EPOCH.decode(),
        "key_certificate": SIG_KEY.decode(), "witness_signature": SIG_WITNESS.decode()})

    data = []
    for i, l in enumerate(v["leaves"]):
        hh = sha256(l["head_hash_label"].encode())
        check("head hash %d" % i, hh.hex() == l["head_hash"])
        d = leaf_data(l["user_id"], l["log_len"], hh)
        check("leaf data %d" % i, d.hex() == l["leaf_data"])
        check("leaf hash %d" % i, leaf_hash(d).hex() == l["leaf_hash"])
        data.append(d)
    check("7 leaves", len(data) == 7)
    roots = {}
    for r in v["roots"]:
        n = r["tree_size"]
        roots[n] = mth(data[:n])
        check("root %d" % n, roots[n].hex() == r["root"])
    check("roots 0..=7", sorted(roots) == list(range(8)))

    seen = set()
    for c in v["inclusion"]:
        n, i = c["tree_size"], c["leaf_index"]
        seen.add((i, n))
        p = [bytes.fromhex(x) for x in c["path"]]
        name = "inclusion %d in %d" % (i, n)
        check(name + " = PATH", p == path(i, data[:n]))
        leaf = leaf_hash(data[i])
        check(name + " verifies", refused(verify_inclusion, leaf, i, n, p, roots[n]) is None)
        for j in range(len(p)):
            q = list(p)
            q[j] = bytes([q[j][0] ^ 1]) + q[j][1:]
            e = refused(verify_inclusion, leaf, i, n, q, roots[n])
            check(name + " flip %d" % j, e is not None and e.error == "KtError::RootMismatch")
            e = refused(verify_inclusion, leaf, i, n, p[:j] + p[j + 1:], roots[n])
            check(name + " drop %d" % j, e is not None and e.error == "KtError::BadProofLength")
        e = refused(verify_inclusion, leaf, i, n, p + [leaf], roots[n])
        check(name + " extra", e is not None and e.error == "KtError::BadProofLength")
        e = refused(verify_inclusion, leaf, n, n, p, roots[n])
        check(name + " index past", e is not None and e.error == "KtError::OutOfRange")
    check("every inclusion proof", seen == {(i, n) for n in range(1, 8) for i in range(n)})

    seen = set()
    for c in v["consistency"]:
        m, n = c["old_size"], c["new_size"]
        seen.add((m, n))
        p = [bytes.fromhex(x) for x in c["proof"]]
        name = "consistency %d -> %d" % (m, n)
        check(name + " = PROOF", p == proof(m, data[:n]))
        check(name + " verifies", refused(verify_consistency, m, n, roots[m], roots[n], p) is None)
        for j in range(len(p)):
            q = list(p)
            q[j] = q[j][:31] + bytes([q[j][31] ^ 0x80])
            e = refused(verify_consistency, m, n, roots[m], roots[n], q)
            check(name + " flip %d" % j, e is not None and e.error == "KtError::RootMismatch")
            e = refused(verify_consistency, m, n, roots[m], roots[n], p[:j] + p[j + 1:])
            check(name + " drop %d" % j, e is not None and e.error == "KtError::BadProofLength")
        if m < n:
            e = refused(verify_consistency, m, n, roots[m], roots[n], [])
            check(name + " empty", e is not None and e.error == "KtError::BadProofLength")
            e = refused(verify_consistency, n, m, roots[n], roots[m], p)
            check(name + " reversed", e is not None and e.error == "KtError::OutOfRange")
            if m < n - 1:
                e = refused(verify_consistency, m, n, roots[m + 1], roots[n], p)
                check(name + " wrong old root", e is not None)
    check("every consistency proof",
          seen == {(m, n) for n in range(1, 8) for m in range(1, n + 1)})

    keys = {}
    for name in ("org_root", "directory_key", "witness_key"):
        k = v[name]
        seed = sha256(k["seed_label"].encode())
        check(name + " seed", seed.hex() == k["seed"])
        keys[name] = public_of(seed)
        check(name + " public", keys[name].hex() == k["public"])
    cert_msg = framed(SIG_KEY, [keys["directory_key"]])
    check("certificate message", cert_msg.hex() == v["certificate"]["message"])
    root_sig = bytes.fromhex(v["certificate"]["root_signature"])
    check("certificate signature", ed_verify(keys["org_root"], cert_msg, root_sig))

    epochs = [parse_epoch(e) for e in v["epochs"]]
    for j, e in zip(v["epochs"], epochs):
        name = "epoch %d" % e["epoch"]
        check(name + " root", e["root"] == roots[e["tree_size"]])
        check(name + " message", epoch_message(e).hex() == j["message"])
        check(name + " signature", ed_verify(keys["directory_key"], epoch_message(e), e["signature"]))
        for w, wj in zip(e["witnesses"], j["witnesses"]):
            check(name + " witness message", witness_message(e).hex() == wj["message"])
            check(name + " witness key", w[0] == keys["witness_key"])
            check(name + " witness signature", ed_verify(w[0], witness_message(e), w[1]))
    check("a countersigned epoch", any(e["witnesses"] for e in epochs))

    ec = v["epoch_consistency"]
    p47 = [bytes.fromhex(x) for x in ec["proof"]]
    check("epoch consistency = PROOF", p47 == proof(ec["old_size"], data[:ec["new_size"]]))
    view = View(keys["org_root"], keys["directory_key"], root_sig)
    view.witnesses, view.threshold = [keys["witness_key"]], 0
    check("view: first", view.advance(epochs[0], []) == "first")
    check("view: same again", view.advance(epochs[0], []) == "unchanged")
    check("view: extended", view.advance(epochs[1], p47) == "extended")
    # With the witness required, epoch 3 (countersigned) is accepted.
    view = View(keys["org_root"], keys["directory_key"], root_sig)
    view.witnesses, view.threshold = [keys["witness_key"]], 1
    check("view: witnessed", view.advance(epochs[1], []) == "first")

    names = set()
    for c in v["negative"]:
        names.add(c["kind"])
        try:
            if c["kind"] == "inclusion":
                verify_inclusion(bytes.fromhex(c["leaf_hash"]), c["leaf_index"], c["tree_size"],
                                 [bytes.fromhex(x) for x in c["path"]], bytes.fromhex(c["root"]))
            elif c["kind"] == "consistency":
                verify_consistency(c["old_size"], c["new_size"], bytes.fromhex(c["old_root"]),
                                   bytes.fromhex(c["new_root"]), [bytes.fromhex(x) for x in c["proof"]])
            elif c["kind"] == "advance":
                view = View(keys["org_root"], keys["directory_key"], root_sig)
                view.advance(parse_epoch(c["held"]), [])
                offered = parse_epoch(c["epoch"])
                if "fork_leaves" in c:
                    # Rebuild the fork: the first 3 leaves, then the listed ones.
                    fd = data[:3] + [
                        leaf_data(l["user_id"], l["log_len"], sha256(l["head_hash_label"].encode()))
                        for l in c["fork_leaves"]
                    ]
                    check(c["name"] + ": fork root", mth(fd) == offered["root"])
                    check(c["name"] + ": fork proof",
                          [bytes.fromhex(x) for x in c["consistency"]] == proof(4, fd))
                view.advance(offered, [bytes.fromhex(x) for x in c["consistency"]])
            elif c["kind"] == "certificate":
                View(keys["org_root"], bytes.fromhex(c["directory_key"]), bytes.fromhex(c["root_signature"]))
            elif c["kind"] == "witness":
                view = View(keys["org_root"], keys["directory_key"], root_sig)
                view.witnesses = [bytes.fromhex(x) for x in c["witnesses"]]
                view.threshold = c["threshold"]
                view.advance(parse_epoch(c["epoch"]), [])
            else:
                check("known kind " + c["kind"], False)
                continue
            check(c["name"] + " refused", False)
        except Refused as e:
            check(c["name"] + ": " + c["error"], e.error == c["error"] and e.reason == c.get("error_reason"))
    check("negative kinds", names == {"inclusion", "consistency", "advance", "certificate", "witness"})

    print("%d passed, %d failed" % (PASSED, FAILED))
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
