//! Writes the seed corpora: `cargo run --bin seeds` (from fuzz/) fills
//! `corpus/<target>/` with inputs built from the fixture (valid for its
//! keys, so they pass the signature checks) and the encoded structures of
//! `../vectors/*.json` (valid for the vectors' keys: they exercise the
//! parsers, and the mutations around the fixture's checks). Each file is
//! `<mode byte><bytes>`, as the targets read them (core/src/fuzzing.rs).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;

use serde_json::Value;
use ward_core::proto::Message;
use ward_core::proto::v1::{SignedStatement, UserLog};

const MAX_SEED: usize = 64 << 10;

fn write(target: &str, data: &[u8]) {
    if data.len() > MAX_SEED {
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let mut h = DefaultHasher::new();
    data.hash(&mut h);
    std::fs::write(dir.join(format!("seed-{:016x}", h.finish())), data).expect("write seed");
}

fn with(mode: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(bytes);
    v
}

fn hexv(v: &Value) -> Option<Vec<u8>> {
    hex::decode(v.as_str()?).ok()
}

fn log_of(v: &Value) -> Option<Vec<u8>> {
    let entries = v
        .as_array()?
        .iter()
        .map(|e| {
            Some(SignedStatement {
                statement: hexv(&e["statement"])?,
                signature: hexv(&e["signature"])?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(UserLog { entries }.encode_to_vec())
}

fn vector(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../vectors")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&p).expect("vector file")).expect("vector json")
}

fn main() {
    for (target, data) in ward_core::fuzzing::seeds() {
        write(target, &data);
    }
    for data in ward_sdk::fuzzing::seeds() {
        write("store_header", &data);
    }

    // Positive vectors.
    let chain = vector("ward-v2-chain.json");
    if let Some(b) = hexv(&chain["signed_invite"]) {
        write("invite", &with(0, &b));
        write("frames", &with(15, &b));
    }
    let mut log = Vec::new();
    for e in chain["entries"].as_array().into_iter().flatten() {
        if let Some(b) = hexv(&e["signed_statement"]) {
            write("statement", &with(0, &b));
            write("frames", &with(8, &b));
        }
        if let Some(b) = hexv(&e["statement"]) {
            write("statement", &with(3, &b));
            write("frames", &with(9, &b));
        }
        log.push(e.clone());
    }
    if let Some(b) = log_of(&Value::Array(log)) {
        write("log", &with(0, &b));
        write("frames", &with(7, &b));
    }
    let env = vector("ward-v2-envelope.json");
    for e in env["envelopes"].as_array().into_iter().flatten() {
        if let Some(b) = hexv(&e["envelope"]) {
            write("envelope", &with(0, &b));
            write("envelope", &with(1, &b));
            write("frames", &with(10, &b));
        }
        if let Some(b) = hexv(&e["header"]) {
            write("frames", &with(11, &b));
        }
        if let Some(b) = hexv(&e["padded_plaintext"]) {
            write("envelope", &with(3, &b));
        }
    }
    let wrap = vector("ward-v2-wrap.json");
    if let Some(b) = hexv(&wrap["resource_key_wrap"]["encoded"]) {
        write("wrap", &with(0, &b));
        write("wrap", &with(1, &b));
        write("frames", &with(12, &b));
    }
    if let Some(b) = hexv(&wrap["device_grant"]["encoded"]) {
        write("wrap", &with(2, &b));
        write("wrap", &with(3, &b));
        write("frames", &with(13, &b));
    }
    let sigs = vector("ward-v2-signatures.json");
    if let Some(b) = hexv(&sigs["auth"]["response"]) {
        write("auth", &with(0, &b));
        write("frames", &with(5, &b));
    }
    if let Some(b) = hexv(&sigs["auth"]["challenge"]["encoded"]) {
        write("auth", &with(1, &b));
        write("frames", &with(4, &b));
    }
    if let Some(b) = hexv(&sigs["invite"]["invite"]) {
        write("invite", &with(1, &b));
        write("frames", &with(14, &b));
    }
    let keys = vector("ward-v2-keys.json");
    for k in keys["keys"].as_array().into_iter().flatten() {
        if let Some(b) = hexv(&k["public"]) {
            write("keys", &with(if b.len() == 32 { 1 } else { 0 }, &b));
        }
        if let Some(b) = hexv(&k["secret"]) {
            write("keys", &with(2, &b));
            write("keys", &with(3, &b));
        }
    }
    for k in vector("xwing-draft06-kem.json")
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(b) = hexv(&k["pk"]) {
            write("keys", &with(0, &b));
        }
    }

    // Negative vectors: what must be refused, by operation.
    for file in ["ward-v2-chain-negative.json", "ward-v2-negative.json"] {
        for c in vector(file)["cases"].as_array().into_iter().flatten() {
            let i = &c["inputs"];
            match c["operation"].as_str().unwrap_or("") {
                "verify_log" => {
                    if let Some(b) = log_of(&i["log"]) {
                        write("log", &with(0, &b));
                    }
                }
                "update_log" => {
                    if let Some(b) = log_of(&i["served_log"]) {
                        write("log", &with(1, &b));
                    }
                }
                "decode_signed_invite" => {
                    if let Some(b) = hexv(&i["bytes"]) {
                        write("invite", &with(0, &b));
                    }
                }
                "verify_invite" => {
                    if let Some(b) = hexv(&i["signed_invite"]) {
                        write("invite", &with(0, &b));
                    }
                }
                "decode_signed_statement" => {
                    if let Some(b) = hexv(&i["bytes"]) {
                        write("statement", &with(0, &b));
                    }
                }
                "verify_response" => {
                    if let Some(b) = hexv(&i["response"]) {
                        write("auth", &with(0, &b));
                    }
                }
                "respond" => {
                    if let Some(b) = hexv(&i["challenge"]) {
                        write("auth", &with(1, &b));
                    }
                }
                "unwrap_resource_key" => {
                    if let Some(b) = hexv(&i["wrapped_key"]) {
                        write("wrap", &with(0, &b));
                    }
                }
                "parse_envelope" | "open_envelope" => {
                    if let Some(b) = hexv(&i["envelope"]) {
                        write("envelope", &with(0, &b));
                    }
                }
                _ => {}
            }
        }
    }
}
