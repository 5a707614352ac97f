#!/usr/bin/env python3
"""Independent check of the room vectors (vectors/ward-v2-room.json), written from SECURITY.md §17 alone, on top
of check.py's primitives, protobuf codec and user-log verifier (§3–§7). Run by check.py (`check_rooms`), or alone:

    python3 vectors/independent/room_v2.py

It re-verifies the user logs, then the room log entry by entry (M1–M12, C1–C4, E1–E6), reproduces every epoch
public key from its seed, every epoch-key wrap from its eseed (§17.4, EK1–EK7 on acceptance), every metadata key,
aad and sealed metadata (§17.5), the room message's single wrapped key and its RM1–RM3 checks (§17.6), the final
state, and every `room_cases` entry with its exact error (MU1–MU4 for updates).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

C = None  # check.py, as the module that runs (so results land in its PASSED/FAILED)

# §17.1
LR = {
    "SIG_ROOM_STATEMENT": b"ward/v2/sig/room-statement",
    "HASH_ROOM_ENTRY": b"ward/v2/hash/room-entry",
    "HASH_ROOM_GENESIS": b"ward/v2/hash/room-genesis",
    "ROOM_EPOCH_WRAP_INFO": b"ward/v2/wrap/room-epoch-key",
    "ROOM_METADATA_KEY": b"ward/v2/room/metadata-key",
    "ROOM_METADATA_AAD": b"ward/v2/room/metadata",
}
MAX_ROOM_STATEMENT_BYTES = 262144
MAX_ROOM_LOG_ENTRIES = 4096
MAX_ROOM_MEMBERS = 1024
MAX_NAME, MAX_CASE, MAX_TOPIC = 256, 128, 1024
MIN_META_CT, MAX_META_CT = 272, 2048
FROM_JOIN, WHOLE_HISTORY = 1, 2


def schemas():
    F, msg = C.F, C.msg
    member = msg((1, F("user_id", "string")), (2, F("user_key", "bytes")))
    sealed = msg((1, F("nonce", "bytes")), (2, F("ciphertext", "bytes")))
    metadata = msg((1, F("name", "string")), (2, F("case_reference", "string")), (3, F("topic", "string")))
    epoch = msg((1, F("number", "uint64")), (2, F("public_key", "bytes")), (3, F("members", member, repeated=True)),
                (4, F("metadata", sealed)))
    one_user = msg((1, F("user_id", "string")))
    bodies = {
        10: ("creation", msg((1, F("history", "enum")), (2, F("epoch", epoch)))),
        11: ("add", msg((1, F("members", member, repeated=True)), (2, F("epoch", epoch)))),
        12: ("remove", msg((1, F("user_id", "string")), (2, F("epoch", epoch)))),
        13: ("grant_admin", one_user),
        14: ("revoke_admin", one_user),
        15: ("leave", msg((1, F("successor", "string")))),
        16: ("metadata_update", msg((1, F("metadata", sealed)))),
        17: ("rotation", msg((1, F("epoch", epoch)))),
    }
    statement = msg((1, F("version", "uint32")), (2, F("room_id", "bytes")), (3, F("seq", "uint64")),
                    (4, F("prev_hash", "bytes")), (5, F("timestamp", "uint64")), (6, F("author_user_id", "string")),
                    (7, F("author_device", "bytes")), (8, F("author_chain_len", "uint64")),
                    *[(n, F(name, s, oneof="body")) for n, (name, s) in bodies.items()])
    wrap = msg((1, F("room_id", "bytes")), (2, F("epoch", "uint64")), (3, F("epoch_key", "bytes")),
               (4, F("recipient_key", "bytes")), (5, F("enc", "bytes")), (6, F("ciphertext", "bytes")))
    recipient = msg((1, F("room_id", "bytes")), (2, F("epoch", "uint64")), (3, F("epoch_key", "bytes")))
    header = dict(C.ENVELOPE_HEADER)
    header[11] = F("room", recipient)
    return dict(statement=statement, wrap=wrap, metadata=metadata, header=header,
                bodies=[name for name, _ in bodies.values()])


S = {}


def RE(variant, reason=None, **fields):
    return C.WardError("RoomError::" + variant, fields, reason)


def entry_hash(e):
    return C.H(LR["HASH_ROOM_ENTRY"], e["statement"], e["signature"])


def genesis(room_id):
    return C.H(LR["HASH_ROOM_GENESIS"], room_id)


class Room:
    def copy(self):
        r = Room()
        r.__dict__.update(self.__dict__)
        r.members = {u: dict(m) for u, m in self.members.items()}
        r.stints = {u: list(s) for u, s in self.stints.items()}
        r.epochs = list(self.epochs)
        r.cites = dict(self.cites)
        return r

    def current(self):
        return len(self.epochs) - 1

    def admins(self):
        return sum(1 for m in self.members.values() if m["admin"])


def open_statement(e):  # M1
    if len(e["statement"]) > MAX_ROOM_STATEMENT_BYTES:
        raise RE("Malformed", "room statement too large")
    try:
        st = C.decode_canonical(S["statement"], e["statement"], MAX_ROOM_STATEMENT_BYTES)
    except C.DecodeError as d:
        raise RE("Decode", d.kind)
    if st["version"] != 2:
        raise RE("UnsupportedVersion", version=st["version"])
    return st


def body_of(st):
    for name in S["bodies"]:
        if st[name] is not None:
            return name, st[name]
    return None, None


def check_author(st, e, users, previous, seq):  # M6–M8
    if not C.valid_user_id(st["author_user_id"]):
        raise RE("Malformed", "author user id")
    if not C.valid_ed25519_public(st["author_device"]):
        raise RE("Malformed", "author device")
    cited = st["author_chain_len"]
    if cited == 0:
        raise RE("Malformed", "author chain length")
    chain = users.get(st["author_user_id"])
    if chain is None:
        raise RE("UnknownAuthor", seq=seq)
    if chain.len < cited:
        raise RE("AuthorChainBehind", seq=seq)
    if previous is not None and cited < previous:
        raise RE("AuthorChainRolledBack", seq=seq)
    d = chain.devices.get(st["author_device"])
    if d is None or not (d.added_at < cited and (d.revoked_at is None or d.revoked_at >= cited)):
        raise RE("UnauthorizedDevice", seq=seq)
    if not C.ed_verify(st["author_device"], C.frame(LR["SIG_ROOM_STATEMENT"], e["statement"]), e["signature"]):
        raise RE("BadSignature", seq=seq)


def parse_members(lst):  # E4 (and add.members)
    if len(lst) > MAX_ROOM_MEMBERS:
        raise RE("Malformed", "too many members")
    out, prev = [], None
    for m in lst:
        if not C.valid_user_id(m["user_id"]):
            raise RE("Malformed", "member user id")
        if len(m["user_key"]) != 32:
            raise RE("Malformed", "member key")
        b = m["user_id"].encode()
        if prev is not None and not (b > prev):
            raise RE("Malformed", "members not in order")
        prev = b
        out.append((m["user_id"], m["user_key"]))
    return out


def parse_meta(m):  # E6
    if m is None or len(m["nonce"]) != 24 or not (MIN_META_CT <= len(m["ciphertext"]) <= MAX_META_CT):
        raise RE("Malformed", "room metadata")
    return (m["nonce"], m["ciphertext"])


def check_epoch(r, ep, expected, seq):  # E1–E6
    if ep is None:
        raise RE("InvalidTransition", "epoch required", seq=seq)
    if ep["number"] != len(r.epochs):
        raise RE("InvalidTransition", "wrong epoch number", seq=seq)
    try:
        pk = C.parse_encryption_key(ep["public_key"])
    except C.WardError:
        raise RE("Malformed", "epoch public key")
    if any(e["pk"] == pk for e in r.epochs):
        raise RE("InvalidTransition", "epoch key reused", seq=seq)
    members = parse_members(ep["members"])
    if not members:
        raise RE("Malformed", "no members")
    if expected is not None and {u for u, _ in members} != set(expected):
        raise RE("InvalidTransition", "epoch members differ", seq=seq)
    meta = parse_meta(ep["metadata"])
    return pk, members, meta


def start_epoch(r, epoch, seq):
    pk, members, meta = epoch
    number = len(r.epochs)
    r.epochs.append({"pk": pk, "started_at": seq})
    for u, k in members:
        if u in r.members:
            r.members[u]["key"] = k
        else:
            r.members[u] = {"key": k, "admin": False, "joined": number}
    r.meta = (number,) + meta
    r.pending = False


def end_stint(r, u):
    m = r.members.pop(u)
    r.stints.setdefault(u, []).append((m["joined"], r.current()))


def finish(r, e, st):
    r.cites[st["author_user_id"]] = st["author_chain_len"]
    r.len, r.head, r.last_ts = r.len + 1, entry_hash(e), st["timestamp"]


def from_creation(e, users):
    st = open_statement(e)
    if st["seq"] != 0:  # M2
        raise RE("BadSequence", expected=0, found=st["seq"])
    if len(st["room_id"]) != 32:  # M3
        raise RE("Malformed", "room id")
    if st["prev_hash"] != genesis(st["room_id"]):  # M4
        raise RE("BrokenChain", seq=0)
    check_author(st, e, users, None, 0)
    name, b = body_of(st)
    if name != "creation":  # C1
        raise RE("Malformed", "entry 0 must be a room creation")
    if b["history"] not in (FROM_JOIN, WHOLE_HISTORY):  # C2
        raise RE("Malformed", "history policy")
    r = Room()
    r.id, r.policy, r.members, r.stints, r.epochs, r.cites = st["room_id"], b["history"], {}, {}, [], {}
    r.pending, r.len, r.head, r.last_ts, r.meta = False, 0, genesis(st["room_id"]), st["timestamp"], None
    ep = check_epoch(r, b["epoch"], None, 0)  # C3
    if st["author_user_id"] not in {u for u, _ in ep[1]}:  # C4
        raise RE("InvalidTransition", "creator not a member", seq=0)
    start_epoch(r, ep, 0)
    r.members[st["author_user_id"]]["admin"] = True
    finish(r, e, st)
    return r


def apply(r0, e, users):
    r = r0.copy()
    seq = r.len
    st = open_statement(e)
    if st["seq"] != seq:
        raise RE("BadSequence", expected=seq, found=st["seq"])
    if st["room_id"] != r.id:
        raise RE("WrongRoom", seq=seq)
    if st["prev_hash"] != r.head:
        raise RE("BrokenChain", seq=seq)
    if st["timestamp"] < r.last_ts:
        raise RE("TimeWentBackwards", seq=seq)
    check_author(st, e, users, r.cites.get(st["author_user_id"]), seq)
    name, b = body_of(st)
    if name is None:  # M9
        raise RE("Malformed", "statement without body")
    if name == "creation":
        raise RE("InvalidTransition", "room already created", seq=seq)
    author = st["author_user_id"]
    if author not in r.members:  # M10
        raise RE("NotAMember", seq=seq)
    is_admin = r.members[author]["admin"]
    if name in ("add", "remove", "grant_admin", "revoke_admin", "metadata_update") and not is_admin:  # M11
        raise RE("NotAdmin", seq=seq)

    def invalid(reason):
        return RE("InvalidTransition", reason, seq=seq)

    if name == "add":
        new = parse_members(b["members"])
        if not new:
            raise RE("Malformed", "no members")
        if any(u in r.members for u, _ in new):
            raise invalid("already a member")
        if len(r.members) + len(new) > MAX_ROOM_MEMBERS:
            raise invalid("room full")
        if r.policy == FROM_JOIN:
            ep = check_epoch(r, b["epoch"], set(r.members) | {u for u, _ in new}, seq)
            listed = dict(ep[1])
            if any(listed.get(u) != k for u, k in new):
                raise invalid("member key differs")
            start_epoch(r, ep, seq)
        else:
            if b["epoch"] is not None:
                raise invalid("epoch not allowed")
            for u, k in new:
                r.members[u] = {"key": k, "admin": False, "joined": r.current()}
    elif name == "remove":
        t = b["user_id"]
        if t not in r.members:
            raise invalid("not a member")
        if t == author:
            raise invalid("remove yourself with a leave")
        ep = check_epoch(r, b["epoch"], set(r.members) - {t}, seq)
        end_stint(r, t)
        start_epoch(r, ep, seq)
    elif name == "grant_admin":
        t = b["user_id"]
        if t not in r.members:
            raise invalid("not a member")
        if r.members[t]["admin"]:
            raise invalid("already an admin")
        r.members[t]["admin"] = True
    elif name == "revoke_admin":
        t = b["user_id"]
        if t not in r.members:
            raise invalid("not a member")
        if not r.members[t]["admin"]:
            raise invalid("not an admin")
        if r.admins() == 1:
            raise RE("LastAdmin", seq=seq)
        r.members[t]["admin"] = False
    elif name == "leave":
        succ = b["successor"]
        if succ == "":
            if is_admin and r.admins() == 1 and len(r.members) > 1:
                raise RE("LastAdmin", seq=seq)
        else:
            if not is_admin:
                raise RE("NotAdmin", seq=seq)
            if succ == author or succ not in r.members:
                raise invalid("successor not a member")
            if r.members[succ]["admin"]:
                raise invalid("already an admin")
            r.members[succ]["admin"] = True
        end_stint(r, author)
        r.pending = True
    elif name == "metadata_update":
        if r.pending:
            raise invalid("rotation pending")
        r.meta = (r.current(),) + parse_meta(b["metadata"])
    elif name == "rotation":
        start_epoch(r, check_epoch(r, b["epoch"], set(r.members), seq), seq)
    finish(r, e, st)
    return r


def verify_room_log(entries, users):
    if len(entries) > MAX_ROOM_LOG_ENTRIES:
        raise RE("Malformed", "log too long")
    if not entries:
        raise RE("EmptyLog")
    r = from_creation(entries[0], users)
    for e in entries[1:]:
        r = apply(r, e, users)
    return r


def update(r, served, users):  # MU1–MU4
    if len(served) > MAX_ROOM_LOG_ENTRIES:
        raise RE("Malformed", "log too long")
    if len(served) < r.len:
        raise RE("Rollback", known=r.len, served=len(served))
    last = r.len - 1
    ok = entry_hash(served[last]) == r.head
    for i in range(1, last + 1):
        try:
            st = C.decode_bounded(S["statement"], served[i]["statement"], MAX_ROOM_STATEMENT_BYTES)
            ok = ok and st["prev_hash"] == entry_hash(served[i - 1])
        except C.DecodeError:
            ok = False
    if not ok:
        raise RE("Fork", seq=last)
    for e in served[r.len:]:
        r = apply(r, e, users)
    return r


def wrap_aad(room_id, epoch, epoch_kid, member_kid):  # §17.4
    return room_id + epoch.to_bytes(8, "big") + epoch_kid + member_kid


def accept_wrap(r, wbytes, sk_u):  # EK1–EK7
    w = C.decode_bounded(S["wrap"], wbytes, 1 << 20)
    if len(w["room_id"]) != 32 or len(w["epoch_key"]) != 32 or len(w["recipient_key"]) != 32:
        raise RE("Wrap", "Malformed")
    if w["room_id"] != r.id:
        raise RE("Wrap", "WrongResource")
    if w["epoch"] >= len(r.epochs) or C.key_id(r.epochs[w["epoch"]]["pk"]) != w["epoch_key"]:
        raise RE("EpochKeyMismatch")
    pk_u = C.xwing_public(sk_u)
    if w["recipient_key"] != C.key_id(pk_u):
        raise RE("Wrap", "WrongRecipient")
    if len(w["enc"]) != 1120 or len(w["ciphertext"]) != 48:
        raise RE("Wrap", "Malformed")
    committed = r.epochs[w["epoch"]]["pk"]
    try:
        seed = C.hpke_open(sk_u, w["enc"], LR["ROOM_EPOCH_WRAP_INFO"],
                           wrap_aad(r.id, w["epoch"], C.key_id(committed), C.key_id(pk_u)), w["ciphertext"])
    except C.WardError as e:
        raise RE("Wrap", e.name.split("::")[1])
    if C.xwing_public(seed) != committed:
        raise RE("Wrap", "Undecryptable")
    return w["epoch"], seed


def metadata_key(room_id, seed):  # §17.5
    return C.hkdf_expand(C.hkdf_extract(room_id, seed), LR["ROOM_METADATA_KEY"], 32)


def metadata_aad(room_id, epoch):
    return C.frame(LR["ROOM_METADATA_AAD"], room_id, epoch.to_bytes(8, "big"))


def open_metadata(r, seeds):
    epoch, nonce, ct = r.meta
    key = metadata_key(r.id, seeds[epoch])
    p = C.sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(ct, metadata_aad(r.id, epoch), nonce, key)
    m = C.decode(S["metadata"], C.unpad(p))
    if len(m["name"].encode()) > MAX_NAME or len(m["case_reference"].encode()) > MAX_CASE \
            or len(m["topic"].encode()) > MAX_TOPIC:
        raise RE("Malformed", "room metadata too long")
    return m


def was_member_during(r, u, epoch):  # RM3
    if epoch > r.current():
        return False
    m = r.members.get(u)
    if m is not None and m["joined"] <= epoch:
        return True
    return any(a <= epoch <= b for a, b in r.stints.get(u, []))


def state_json(r):
    return {
        "room_id": r.id.hex(),
        "policy": "FROM_JOIN" if r.policy == FROM_JOIN else "WHOLE_HISTORY",
        "len": r.len, "head": r.head.hex(), "last_timestamp": r.last_ts, "rotation_pending": r.pending,
        "current_epoch": r.current(), "metadata_epoch": r.meta[0],
        "members": [{"user_id": u, "admin": m["admin"], "user_key": m["key"].hex(), "joined_epoch": m["joined"]}
                    for u, m in sorted(r.members.items(), key=lambda x: x[0].encode())],
        "epochs": [{"key_id": C.key_id(e["pk"]).hex(), "started_at": e["started_at"]} for e in r.epochs],
    }


def entries_of(lst):
    return [{"statement": C.X(e["statement"]), "signature": C.X(e["signature"])} for e in lst]


def run(module):
    global C
    C = module
    S.update(schemas())
    check, eq, X = C.check, C.eq, C.X
    d = C.load("ward-v2-room.json")
    if d is None:
        C.SKIPPED.append("ward-v2-room.json (absent)")
        return
    root = X(d["org_root_public"])
    users, secrets = {}, {}
    for u in d["users"]:
        users[u["user_id"]] = C.chain_of(root, u["user_id"], u["log"])
        secrets[u["user_id"]] = X(u["user_key_secret"])
        check(f"room user key secret of {u['user_id']} (§11)",
              lambda u=u: eq(X(u["user_key_secret"]), C.hashlib.sha256(u["user_key_label"].encode()).digest()))
    log = d["log"]
    entries = [{"statement": X(l["entry"]["statement"]), "signature": X(l["entry"]["signature"])} for l in log]
    states = []
    for i, l in enumerate(log):
        n = f"room entry {i} ({l['operation']})"
        check(n + " entry hash (§17.2)", lambda i=i, l=l: eq(entry_hash(entries[i]), X(l["entry_hash"])))
        for dr in l["draws"]:
            want = C.hashlib.sha256(dr["label"].encode()).digest()
            b = X(dr["bytes"])
            if len(b) == 64:
                want = want_stream(dr["label"])
            check(n + f" draw {dr['label']!r}", lambda b=b, want=want: eq(b, want[:len(b)]))
        try:
            states.append(verify_room_log(entries[:i + 1], users))
            check(n + " verifies (§17.3)", lambda: True)
        except Exception as e:  # noqa: BLE001
            check(n + " verifies (§17.3)", lambda e=e: f"{e}")
            return
    fin = states[-1]
    check("room genesis hash (§17.2)", lambda: eq(genesis(fin.id), X(d["genesis_hash"])))
    check("room final state (§17.3)", lambda: eq(state_json(fin), d["final_state"]))
    # MU: each prefix updates to the final state.
    check("room update from a prefix (MU1–MU4)", lambda: eq(state_json(update(states[1], entries, users)),
                                                            d["final_state"]))
    # Epochs: public key and key id from the seed; committed by the log.
    seeds = {}
    for ep in d["epochs"]:
        seed = X(ep["seed"])
        seeds[ep["number"]] = seed
        check(f"room epoch {ep['number']} seed label", lambda ep=ep, seed=seed:
              eq(seed, C.hashlib.sha256(ep["seed_label"].encode()).digest()))
        check(f"room epoch {ep['number']} public key (§5)", lambda ep=ep, seed=seed:
              eq(C.xwing_public(seed), X(ep["public_key"])))
        check(f"room epoch {ep['number']} committed (§17.3)", lambda ep=ep:
              eq(fin.epochs[ep["number"]]["pk"], X(ep["public_key"])))
    # Wraps: reproduced from the eseed, then accepted by their member.
    for w in d["wraps"]:
        n = f"room wrap entry {w['entry']} epoch {w['epoch']} to {w['user_id']}"

        def redo(w=w):
            pk_u = C.xwing_public(secrets[w["user_id"]])
            epk = fin.epochs[w["epoch"]]["pk"]
            aad = wrap_aad(fin.id, w["epoch"], C.key_id(epk), C.key_id(pk_u))
            enc, ct, _, _ = C.hpke_seal(pk_u, LR["ROOM_EPOCH_WRAP_INFO"], aad, seeds[w["epoch"]], X(w["eseed"]))
            wire = C.encode(S["wrap"], {"room_id": fin.id, "epoch": w["epoch"], "epoch_key": C.key_id(epk),
                                        "recipient_key": C.key_id(pk_u), "enc": enc, "ciphertext": ct})
            return eq(wire, X(w["encoded"]))

        check(n + " reproduced (§17.4)", redo)
        check(n + " eseed", lambda w=w: eq(X(w["eseed"]), want_stream(w["eseed_label"])))
        check(n + " accepted (EK1–EK7)", lambda w=w: eq(accept_wrap(fin, X(w["encoded"]), secrets[w["user_id"]]),
                                                         (w["epoch"], seeds[w["epoch"]])))
    # Metadata: key, aad; the current one opens.
    for m in d["metadata"]:
        n = f"room metadata of entry {m['entry']} (§17.5)"
        check(n + " key", lambda m=m: eq(metadata_key(fin.id, seeds[m["epoch"]]), X(m["metadata_key"])))
        check(n + " aad", lambda m=m: eq(metadata_aad(fin.id, m["epoch"]), X(m["aad"])))
        st = C.decode(S["statement"], entries[m["entry"]]["statement"])
        name, b = body_of(st)
        sealed = b["metadata"] if name == "metadata_update" else b["epoch"]["metadata"]

        def opens(m=m, sealed=sealed):
            key = X(m["metadata_key"])
            p = C.sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(sealed["ciphertext"], X(m["aad"]),
                                                                    sealed["nonce"], key)
            got = C.decode(S["metadata"], C.unpad(p))
            return eq([got["name"], got["case_reference"], got["topic"]],
                      [m["name"], m["case_reference"], m["topic"]])

        check(n + " opens", opens)
    last = d["metadata"][-1]
    check("room current metadata (§17.5)", lambda: eq(open_metadata(fin, seeds)["name"], last["name"]))
    # The room message (§17.6): header, one wrap to the epoch key, RM1–RM3, decryption.
    msg = d["message"]

    def message():
        env = C.decode_bounded(C.ENVELOPE, X(msg["envelope"]), 20 << 20)
        h = C.decode_canonical(S["header"], env["header"], 40 << 10)
        room = h["room"]
        if h["recipient_user_ids"] or room is None or len(room["room_id"]) != 32 or len(room["epoch_key"]) != 32:
            return "P11a"
        if h["conversation_id"] != fin.id[:16]:
            return "conversation id is not room_id[0..16]"
        sender = users[h["sender_user_id"]]
        if not sender.active(h["sender_device_id"]):
            return "R2/R3"
        digest = C.H(C.L["HASH_CIPHERTEXT"], env["ciphertext"])
        if not C.ed_verify(h["sender_device_id"], C.frame(C.L["SIG_ENVELOPE"], env["header"], digest),
                           env["signature"]):
            return "R4"
        if room["room_id"] != fin.id:  # RM1
            return "RM1"
        e = room["epoch"]
        if e >= len(fin.epochs) or C.key_id(fin.epochs[e]["pk"]) != room["epoch_key"]:  # RM2
            return "RM2"
        if not was_member_during(fin, h["sender_user_id"], e):  # RM3
            return "RM3"
        k = C.unwrap_resource_key(X(msg["wrapped_key"]), h["resource_id"], seeds[e])  # §6.3 to the epoch key
        aead_key, kc = C.envelope_keys(k, h["resource_id"])
        if kc != h["key_commitment"]:
            return "R6"
        p = C.sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(env["ciphertext"], env["header"], h["nonce"],
                                                                aead_key)
        return eq(C.unpad(p).decode(), msg["content"])

    check("room message opens (§17.6)", message)
    # Cases.
    for c in d["room_cases"]:
        def go(c=c):
            p = c["prefix"]
            if c["operation"] == "apply":
                e = {"statement": X(c["entry"]["statement"]), "signature": X(c["entry"]["signature"])}
                return apply(states[p - 1], e, users)
            if c["operation"] == "update":
                return update(states[p - 1], entries_of(c["entries"]), users)
            if c["operation"] == "verify":
                return verify_room_log(entries_of(c["entries"]), users)
            if c["operation"] == "accept_wrap":
                return accept_wrap(states[p - 1], X(c["wrap"]), secrets[c["user_id"]])
            raise ValueError(c["operation"])

        check(f"room case {c['name']}", lambda c=c, go=go: C.expect_error(go, c))


def want_stream(label):
    h = C.hashlib.sha256
    return h((label + " 0").encode()).digest() + h((label + " 1").encode()).digest()


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    import check as _check

    run(_check)
    for s_ in _check.SKIPPED:
        print(f"skipped: {s_}")
    print(f"{len(_check.PASSED)} passed, {len(_check.FAILED)} failed")
    sys.exit(1 if _check.FAILED else 0)
