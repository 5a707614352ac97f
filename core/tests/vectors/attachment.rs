//! `ward-v2-attachment.json` (SECURITY.md §16): its generator and replay,
//! a module of `vectors.rs` so that it shares the deterministic inputs, the
//! JSON writer and the write-or-compare test.
//!
//! Draws of `attachment::Encryptor::new`, in order: 32 file key, 32 salt,
//! 32 blob id, each `SHA-256(label)`. A file's content of `n` bytes is
//! `SHA-256(label + " 0") || SHA-256(label + " 1") || ...` truncated to `n`.

use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::AeadInOut;
use ward_core::AttachmentError;
use ward_core::attachment::{
    self, Decryptor, Descriptor, Encryptor, HEADER_SIZE, Layout, RangedDecryptor,
};
use ward_core::proto::v1::AttachmentRef;
use ward_core::stream::{CHUNK_SIZE, TAG_SIZE};

use super::*;

/// The chunk size every file here uses: the protocol's, not a reduced one.
const C: usize = CHUNK_SIZE;

struct Spec {
    name: &'static str,
    description: &'static str,
    size: usize,
    media_type: &'static str,
    file_name: &'static str,
    thumbnail: bool,
}

const FILES: [Spec; 5] = [
    Spec {
        name: "multi_chunk",
        description: "2.46 chunks: two full chunks, then 30000 bytes of file and 2768 of padding (PADME(161072) = 163840)",
        size: 2 * C + 30_000,
        media_type: "application/pdf",
        file_name: "discharge-letter.pdf",
        thumbnail: false,
    },
    Spec {
        name: "empty",
        description: "an empty file: one empty final chunk, i.e. only its tag",
        size: 0,
        media_type: "text/plain",
        file_name: "empty.txt",
        thumbnail: false,
    },
    Spec {
        name: "one_chunk",
        description: "exactly one chunk (65536 bytes, unpadded): the final chunk is full",
        size: C,
        media_type: "application/dicom",
        file_name: "ct-slice.dcm",
        thumbnail: false,
    },
    Spec {
        name: "two_chunks",
        description: "an exact multiple of the chunk size (131072 bytes): no empty chunk after it",
        size: 2 * C,
        media_type: "application/octet-stream",
        file_name: "ecg-export.bin",
        thumbnail: false,
    },
    Spec {
        name: "small_with_thumbnail",
        description: "1000 bytes padded to 1024 in one chunk; the descriptor carries a 100-byte inline thumbnail",
        size: 1000,
        media_type: "image/jpeg",
        file_name: "wound day 3.jpg",
        thumbnail: true,
    },
];

fn label(file: &str, what: &str) -> String {
    format!("ward vector attachment {file} {what}")
}

struct Made {
    spec: &'static Spec,
    content: Vec<u8>,
    blob: Vec<u8>,
    descriptor: Descriptor,
}

fn make(spec: &'static Spec) -> Made {
    let content = stream(&label(spec.name, "content"), spec.size);
    let key = seed(&label(spec.name, "file key"));
    let salt = seed(&label(spec.name, "salt"));
    let blob_id = seed(&label(spec.name, "blob id"));
    let mut rng = ScriptRng::new(&[&key, &salt, &blob_id]);
    let mut enc = Encryptor::new(&mut rng, spec.size as u64).unwrap();
    rng.done();
    let mut blob = Vec::new();
    // Pushed in uneven pieces: the bytes must not depend on how.
    for piece in content.chunks(10_007) {
        enc.push(piece, &mut blob).unwrap();
    }
    let sealed = enc.finish(&mut blob).unwrap();
    let thumb = stream(&label(spec.name, "thumbnail"), 100);
    let descriptor = sealed
        .describe(
            spec.media_type,
            spec.file_name,
            spec.thumbnail.then_some(("image/jpeg", &thumb[..])),
        )
        .unwrap();
    Made {
        spec,
        content,
        blob,
        descriptor,
    }
}

/// The payload key and commitment, by HKDF written out here (§16.3).
fn keys(key: &[u8], salt: &[u8]) -> ([u8; 32], [u8; 32]) {
    let hk = Hkdf::<Sha256>::new(Some(salt), key);
    let (mut p, mut c) = ([0u8; 32], [0u8; 32]);
    hk.expand(labels::ATTACHMENT_PAYLOAD_KEY, &mut p).unwrap();
    hk.expand(labels::ATTACHMENT_KEY_COMMITMENT, &mut c)
        .unwrap();
    (p, c)
}

fn nonce(index: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    n
}

/// The sealed chunks of a blob (after its header), split by the layout.
fn sealed_chunks(layout: &Layout, blob: &[u8]) -> Vec<Vec<u8>> {
    (0..layout.chunks)
        .map(|i| {
            let (off, len) = layout.chunk_range(i).unwrap();
            blob[off as usize..(off + len) as usize].to_vec()
        })
        .collect()
}

fn file_json(m: &Made) -> J {
    let d = &m.descriptor;
    let l = d.layout();
    let key = d.key().export_secret();
    let salt = &m.blob[..32];
    let (payload, commitment) = keys(&*key, salt);
    assert_eq!(&m.blob[32..64], &commitment);
    let chunks = sealed_chunks(l, &m.blob)
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let i = i as u64;
            let last = i + 1 == l.chunks;
            o(vec![
                ("index", J::N(i)),
                ("last", J::B(last)),
                ("nonce", h(nonce(i, last))),
                ("plaintext_len", J::N(l.chunk_len(i) as u64)),
                ("content_len", J::N(l.content_len(i) as u64)),
                ("sealed", h(c)),
            ])
        })
        .collect();
    let r: AttachmentRef = AttachmentRef::decode(d.encode().as_slice()).unwrap();
    o(vec![
        ("name", s(m.spec.name)),
        ("description", s(m.spec.description)),
        ("content_label", s(&label(m.spec.name, "content"))),
        ("plaintext_size", J::N(l.plaintext)),
        ("plaintext_sha256", h(sha256(&m.content))),
        ("file_key_label", s(&label(m.spec.name, "file key"))),
        ("file_key", h(*key)),
        ("salt_label", s(&label(m.spec.name, "salt"))),
        ("salt", h(salt)),
        ("blob_id_label", s(&label(m.spec.name, "blob id"))),
        ("blob_id", h(d.blob_id())),
        ("payload_key", h(payload)),
        ("key_commitment", h(commitment)),
        ("padded_size", J::N(l.padded)),
        ("chunk_count", J::N(l.chunks)),
        ("blob_size", J::N(l.blob)),
        ("header", h(&m.blob[..HEADER_SIZE])),
        ("chunks", J::A(chunks)),
        ("blob_hash", h(d.blob_hash())),
        (
            "descriptor",
            o(vec![
                ("media_type", s(&r.media_type)),
                ("file_name", s(&r.file_name)),
                ("thumbnail", h(&r.thumbnail)),
                (
                    "thumbnail_label",
                    if r.thumbnail.is_empty() {
                        J::Null
                    } else {
                        s(&label(m.spec.name, "thumbnail"))
                    },
                ),
                ("thumbnail_media_type", s(&r.thumbnail_media_type)),
                ("encoded", h(&*d.encode())),
            ]),
        ),
    ])
}

/// One part of a negative blob: the header or a chunk of a named file, or
/// literal bytes.
enum Part {
    Header(&'static str),
    Chunk(&'static str, u64),
    Bytes(Vec<u8>),
}

struct Neg {
    name: &'static str,
    description: &'static str,
    descriptor: &'static str,
    /// A descriptor edit (the blob hash replaced), else the file's own.
    other_hash: Option<&'static str>,
    blob: Vec<Part>,
    error: AttachmentError,
}

fn made<'a>(all: &'a [Made], name: &str) -> &'a Made {
    all.iter().find(|m| m.spec.name == name).unwrap()
}

fn assemble(all: &[Made], parts: &[Part]) -> Vec<u8> {
    let mut b = Vec::new();
    for p in parts {
        match p {
            Part::Header(f) => b.extend_from_slice(&made(all, f).blob[..HEADER_SIZE]),
            Part::Chunk(f, i) => {
                let m = made(all, f);
                b.extend_from_slice(&sealed_chunks(m.descriptor.layout(), &m.blob)[*i as usize]);
            }
            Part::Bytes(x) => b.extend_from_slice(x),
        }
    }
    b
}

fn negatives(all: &[Made]) -> Vec<Neg> {
    use Part::*;
    let m = "multi_chunk";
    let mut flipped = made(all, m).blob[..HEADER_SIZE].to_vec();
    flipped[32] ^= 0x01;
    let neg = |name, description, blob, error| Neg {
        name,
        description,
        descriptor: m,
        other_hash: None,
        blob,
        error,
    };
    vec![
        neg(
            "truncated_last_chunk_dropped",
            "multi_chunk without its final chunk: chunks 0 and 1 open, then the blob ends short (B5)",
            vec![Header(m), Chunk(m, 0), Chunk(m, 1)],
            AttachmentError::Truncated,
        ),
        neg(
            "truncated_inside_header",
            "only the first 40 bytes of the header (B5)",
            vec![Bytes(made(all, m).blob[..40].to_vec())],
            AttachmentError::Truncated,
        ),
        neg(
            "reordered",
            "chunks 1, 0, 2: chunk 1 does not authenticate as chunk 0 (its nonce differs) (B4)",
            vec![Header(m), Chunk(m, 1), Chunk(m, 0), Chunk(m, 2)],
            AttachmentError::ChunkAuthFailed { index: 0 },
        ),
        neg(
            "middle_chunk_dropped",
            "chunks 0 and 2: the short final chunk sits where a full chunk must be, and the blob is short (B5)",
            vec![Header(m), Chunk(m, 0), Chunk(m, 2)],
            AttachmentError::Truncated,
        ),
        neg(
            "chunk_duplicated",
            "chunks 0, 0, 2: chunk 0 again at position 1 (B4)",
            vec![Header(m), Chunk(m, 0), Chunk(m, 0), Chunk(m, 2)],
            AttachmentError::ChunkAuthFailed { index: 1 },
        ),
        neg(
            "chunk_swapped_from_another_file",
            "chunk 1 of two_chunks (another key and salt, same position, same length) in place of multi_chunk's chunk 1 (B4)",
            vec![Header(m), Chunk(m, 0), Chunk("two_chunks", 1), Chunk(m, 2)],
            AttachmentError::ChunkAuthFailed { index: 1 },
        ),
        neg(
            "header_of_this_file_on_chunks_of_another",
            "multi_chunk's header (so the commitment passes) followed by two_chunks' chunks 0 and 1 and multi_chunk's chunk 2 (B4)",
            vec![
                Header(m),
                Chunk("two_chunks", 0),
                Chunk("two_chunks", 1),
                Chunk(m, 2),
            ],
            AttachmentError::ChunkAuthFailed { index: 0 },
        ),
        neg(
            "flipped_commitment",
            "the low bit of the commitment's first byte flipped (header byte 32) (B2)",
            vec![Bytes(flipped), Chunk(m, 0), Chunk(m, 1), Chunk(m, 2)],
            AttachmentError::KeyCommitmentMismatch,
        ),
        neg(
            "trailing_byte",
            "the whole blob then one 0x00 byte: longer than blob_size (B3)",
            vec![
                Header(m),
                Chunk(m, 0),
                Chunk(m, 1),
                Chunk(m, 2),
                Bytes(vec![0]),
            ],
            AttachmentError::TrailingData,
        ),
        neg(
            "trailing_chunk",
            "the whole blob then chunk 0 again (B3)",
            vec![
                Header(m),
                Chunk(m, 0),
                Chunk(m, 1),
                Chunk(m, 2),
                Chunk(m, 0),
            ],
            AttachmentError::TrailingData,
        ),
        Neg {
            name: "blob_of_another_message",
            description: "two_chunks' whole blob given for multi_chunk's descriptor: the header commits to another key (B2)",
            descriptor: m,
            other_hash: None,
            blob: vec![
                Header("two_chunks"),
                Chunk("two_chunks", 0),
                Chunk("two_chunks", 1),
            ],
            error: AttachmentError::KeyCommitmentMismatch,
        },
        Neg {
            name: "empty_file_without_its_chunk",
            description: "the empty file's header alone: its one (empty) final chunk is missing (B5)",
            descriptor: "empty",
            other_hash: None,
            blob: vec![Header("empty")],
            error: AttachmentError::Truncated,
        },
        Neg {
            name: "hash_of_another_blob",
            description: "multi_chunk's descriptor with blob_hash replaced by two_chunks': every chunk opens, the hash does not match (B6)",
            descriptor: m,
            other_hash: Some("two_chunks"),
            blob: vec![Header(m), Chunk(m, 0), Chunk(m, 1), Chunk(m, 2)],
            error: AttachmentError::HashMismatch,
        },
    ]
}

fn error_json(e: &AttachmentError) -> Vec<(&'static str, J)> {
    let (name, fields, reason) = match e {
        AttachmentError::Truncated => ("Truncated", vec![], None),
        AttachmentError::TrailingData => ("TrailingData", vec![], None),
        AttachmentError::KeyCommitmentMismatch => ("KeyCommitmentMismatch", vec![], None),
        AttachmentError::HashMismatch => ("HashMismatch", vec![], None),
        AttachmentError::BadPadding => ("BadPadding", vec![], None),
        AttachmentError::ChunkAuthFailed { index } => {
            ("ChunkAuthFailed", vec![("index", J::N(*index))], None)
        }
        AttachmentError::Malformed(r) => ("Malformed", vec![], Some(*r)),
        AttachmentError::Decode(d) => ("Decode", vec![], Some(decode_name(d))),
        AttachmentError::TooLarge(n) => ("TooLarge", vec![("0", J::N(*n))], None),
        other => panic!("no vector form for {other:?}"),
    };
    let mut out = vec![
        ("error", s(&format!("AttachmentError::{name}"))),
        ("error_fields", o(fields)),
    ];
    if let Some(r) = reason {
        out.push(("error_reason", s(r)));
    }
    out
}

fn decode_name(d: &ward_core::proto::DecodeError) -> &'static str {
    match d {
        ward_core::proto::DecodeError::NonCanonical => "NonCanonical",
        ward_core::proto::DecodeError::Malformed => "Malformed",
        ward_core::proto::DecodeError::TooLarge { .. } => "TooLarge",
        _ => "Other",
    }
}

fn part_json(p: &Part) -> J {
    match p {
        Part::Header(f) => J::A(vec![s("header"), s(f)]),
        Part::Chunk(f, i) => J::A(vec![s("chunk"), s(f), J::N(*i)]),
        Part::Bytes(b) => J::A(vec![s("bytes"), h(b)]),
    }
}

fn descriptor_for(all: &[Made], n: &Neg) -> Vec<u8> {
    let base = made(all, n.descriptor).descriptor.encode();
    match n.other_hash {
        None => base.to_vec(),
        Some(other) => {
            let mut r = AttachmentRef::decode(base.as_slice()).unwrap();
            r.blob_hash = made(all, other).descriptor.blob_hash().to_vec();
            r.encode_to_vec()
        }
    }
}

/// A 1000-byte file whose padding bytes are not zero, sealed by hand with
/// the right key, salt and commitment: the chunk authenticates (B4 padding).
fn bad_padding_case() -> (Vec<u8>, Vec<u8>) {
    let key = seed(&label("bad_padding", "file key"));
    let salt = seed(&label("bad_padding", "salt"));
    let (payload, commitment) = keys(&key, &salt);
    let mut chunk = stream(&label("bad_padding", "content"), 1024);
    let tag = ChaCha20Poly1305::new(&payload.into())
        .encrypt_inout_detached(&nonce(0, true).into(), &[], (&mut chunk[..]).into())
        .unwrap();
    let mut blob = salt.to_vec();
    blob.extend_from_slice(&commitment);
    blob.extend_from_slice(&chunk);
    blob.extend_from_slice(&tag);
    let r = AttachmentRef {
        blob_id: seed(&label("bad_padding", "blob id")).to_vec(),
        key: key.to_vec(),
        plaintext_size: 1000,
        blob_size: blob.len() as u64,
        blob_hash: attachment::blob_hash(&blob).to_vec(),
        media_type: "text/plain".into(),
        file_name: "a.txt".into(),
        ..Default::default()
    };
    (r.encode_to_vec(), blob)
}

fn descriptor_cases(all: &[Made]) -> Vec<(&'static str, &'static str, Vec<u8>, AttachmentError)> {
    let good =
        AttachmentRef::decode(made(all, "multi_chunk").descriptor.encode().as_slice()).unwrap();
    let edit = |f: &dyn Fn(&mut AttachmentRef)| {
        let mut r = good.clone();
        f(&mut r);
        r.encode_to_vec()
    };
    let mut extra = good.encode_to_vec();
    extra.extend_from_slice(&[0x98, 0x06, 0x01]);
    vec![
        (
            "non_canonical",
            "an unknown field (99, varint 1) appended (D1)",
            extra,
            AttachmentError::Decode(ward_core::proto::DecodeError::NonCanonical),
        ),
        (
            "blob_id_31_bytes",
            "blob_id one byte short (D2)",
            edit(&|r| {
                r.blob_id.pop();
            }),
            AttachmentError::Malformed("blob id"),
        ),
        (
            "key_33_bytes",
            "key one byte long (D3)",
            edit(&|r| r.key.push(0)),
            AttachmentError::Malformed("key"),
        ),
        (
            "too_large",
            "plaintext_size 2^40 + 1 (D4)",
            edit(&|r| r.plaintext_size = (1 << 40) + 1),
            AttachmentError::TooLarge((1 << 40) + 1),
        ),
        (
            "blob_size_off_by_one",
            "blob_size one more than blob_size(plaintext_size) (D5)",
            edit(&|r| r.blob_size += 1),
            AttachmentError::Malformed("blob size"),
        ),
        (
            "blob_hash_empty",
            "no blob_hash (D6)",
            edit(&|r| r.blob_hash.clear()),
            AttachmentError::Malformed("blob hash"),
        ),
        (
            "media_type_with_parameter",
            "media_type \"text/plain; charset=utf-8\" (D7)",
            edit(&|r| r.media_type = "text/plain; charset=utf-8".into()),
            AttachmentError::Malformed("media type"),
        ),
        (
            "file_name_path",
            "file_name \"../../etc/passwd\" (D8)",
            edit(&|r| r.file_name = "../../etc/passwd".into()),
            AttachmentError::Malformed("file name"),
        ),
        (
            "file_name_dot_dot",
            "file_name \"..\" (D8)",
            edit(&|r| r.file_name = "..".into()),
            AttachmentError::Malformed("file name"),
        ),
        (
            "thumbnail_without_type",
            "a thumbnail and no thumbnail_media_type (D9)",
            edit(&|r| r.thumbnail = vec![1, 2, 3]),
            AttachmentError::Malformed("thumbnail"),
        ),
        (
            "thumbnail_not_an_image",
            "thumbnail_media_type \"application/pdf\" (D9)",
            edit(&|r| {
                r.thumbnail = vec![1, 2, 3];
                r.thumbnail_media_type = "application/pdf".into();
            }),
            AttachmentError::Malformed("thumbnail"),
        ),
    ]
}

pub(super) fn gen_attachment() -> J {
    let all: Vec<Made> = FILES.iter().map(make).collect();
    let files = all.iter().map(file_json).collect();
    let mut blob_cases: Vec<J> = negatives(&all)
        .into_iter()
        .map(|n| {
            let blob = assemble(&all, &n.blob);
            let descriptor = descriptor_for(&all, &n);
            let mut pairs = vec![
                ("name", s(n.name)),
                ("description", s(n.description)),
                ("descriptor", h(&descriptor)),
                ("blob", J::A(n.blob.iter().map(part_json).collect())),
                ("blob_len", J::N(blob.len() as u64)),
                ("blob_sha256", h(sha256(&blob))),
            ];
            pairs.extend(error_json(&n.error));
            o(pairs)
        })
        .collect();
    let (d, blob) = bad_padding_case();
    let mut pairs = vec![
        ("name", s("non_zero_padding")),
        (
            "description",
            s(
                "a 1000-byte file padded to 1024 with non-zero bytes, sealed with the right key: the chunk \
               authenticates, the padding check refuses it (B4); the blob is given whole as bytes",
            ),
        ),
        ("descriptor", h(&d)),
        ("blob", J::A(vec![J::A(vec![s("bytes"), h(&blob)])])),
        ("blob_len", J::N(blob.len() as u64)),
        ("blob_sha256", h(sha256(&blob))),
    ];
    pairs.extend(error_json(&AttachmentError::BadPadding));
    blob_cases.push(o(pairs));
    let desc_cases = descriptor_cases(&all)
        .into_iter()
        .map(|(name, description, bytes, e)| {
            let mut pairs = vec![
                ("name", s(name)),
                ("description", s(description)),
                ("descriptor", h(bytes)),
            ];
            pairs.extend(error_json(&e));
            o(pairs)
        })
        .collect();
    file(
        "Attachments (SECURITY.md §16): the blob format (header = salt || key commitment; STREAM over \
         ChaCha20-Poly1305 in 65536-byte chunks, nonce = u88_be(index) || last flag; PADME padding inside \
         the stream), the key schedule, the blob hash and the descriptor (AttachmentRef), for five files; \
         then blobs a receiver MUST refuse (open: decode the descriptor, push the whole blob at once, \
         finish; the first failure in the order B1-B6 of §16.6), and descriptors it MUST refuse (D1-D9). \
         A negative blob is the concatenation of its parts: [\"header\", file], [\"chunk\", file, index] \
         (the sealed chunk, tag included) or [\"bytes\", hex].",
        vec![
            ("chunk_size", J::N(C as u64)),
            ("tag_size", J::N(TAG_SIZE as u64)),
            ("header_size", J::N(HEADER_SIZE as u64)),
            (
                "labels",
                o(vec![
                    (
                        "ATTACHMENT_PAYLOAD_KEY",
                        s("ward/v2/attachment/payload-key"),
                    ),
                    (
                        "ATTACHMENT_KEY_COMMITMENT",
                        s("ward/v2/attachment/key-commitment"),
                    ),
                    ("HASH_ATTACHMENT_BLOB", s("ward/v2/hash/attachment-blob")),
                ]),
            ),
            ("files", J::A(files)),
            ("blob_cases", J::A(blob_cases)),
            ("descriptor_cases", J::A(desc_cases)),
        ],
    )
}

/// Opens `blob` as a receiver does (§16.6): parse the descriptor, push the
/// blob whole, finish.
fn open(descriptor: &[u8], blob: &[u8]) -> Result<Vec<u8>, AttachmentError> {
    let d = Descriptor::parse(descriptor)?;
    let mut dec = Decryptor::new(&d);
    let mut out = Vec::new();
    dec.push(blob, &mut out)?;
    dec.finish()?;
    Ok(out)
}

fn expect(name: &str, got: Result<Vec<u8>, AttachmentError>, case: &Value) {
    let e = got.err().unwrap_or_else(|| panic!("{name}: accepted"));
    let want: Vec<(String, String)> = error_json(&e)
        .into_iter()
        .map(|(k, v)| (k.to_owned(), to_text(&v)))
        .collect();
    for (k, v) in want {
        let committed = to_text(&json_to_j(&case[&k]));
        assert_eq!(committed, v, "{name}: {k}");
    }
}

fn json_to_j(v: &Value) -> J {
    match v {
        Value::String(x) => J::S(x.clone()),
        Value::Number(n) => J::N(n.as_u64().unwrap()),
        Value::Bool(b) => J::B(*b),
        Value::Null => J::Null,
        Value::Array(a) => J::A(a.iter().map(json_to_j).collect()),
        Value::Object(m) => J::O(m.iter().map(|(k, v)| (k.clone(), json_to_j(v))).collect()),
    }
}

/// Replays the committed file through the public API only.
pub(super) fn replay_attachment(v: &Value) {
    assert_eq!(num(&v["chunk_size"]), C as u64);
    let files = v["files"].as_array().unwrap();
    let mut blobs: Vec<(String, Vec<u8>, Vec<Vec<u8>>)> = Vec::new();
    for f in files {
        let name = st(&f["name"]);
        let chunks: Vec<Vec<u8>> = f["chunks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| hx(&c["sealed"]))
            .collect();
        let header = hx(&f["header"]);
        let mut blob = header.clone();
        for c in &chunks {
            blob.extend_from_slice(c);
        }
        assert_eq!(blob.len() as u64, num(&f["blob_size"]), "{name}");
        assert_eq!(
            attachment::blob_hash(&blob).to_vec(),
            hx(&f["blob_hash"]),
            "{name}"
        );
        let content = stream(st(&f["content_label"]), num(&f["plaintext_size"]) as usize);
        assert_eq!(
            sha256(&content).to_vec(),
            hx(&f["plaintext_sha256"]),
            "{name}"
        );
        let desc = hx(&f["descriptor"]["encoded"]);
        assert_eq!(open(&desc, &blob).unwrap(), content, "{name}");
        // The key schedule and every chunk, one by one (the ranged path).
        let (payload, commitment) = keys(&hx(&f["file_key"]), &hx(&f["salt"]));
        assert_eq!(payload.to_vec(), hx(&f["payload_key"]), "{name}");
        assert_eq!(commitment.to_vec(), hx(&f["key_commitment"]), "{name}");
        assert_eq!(
            [hx(&f["salt"]), commitment.to_vec()].concat(),
            header,
            "{name}"
        );
        let d = Descriptor::parse(&desc).unwrap();
        let ranged = RangedDecryptor::new(&d, &header).unwrap();
        let mut at = 0;
        for (i, c) in f["chunks"].as_array().unwrap().iter().enumerate() {
            let mut buf = hx(&c["sealed"]);
            assert_eq!(
                hx(&c["nonce"]),
                nonce(i as u64, c["last"].as_bool().unwrap()).to_vec()
            );
            ranged.open_chunk(i as u64, &mut buf).unwrap();
            let n = num(&c["content_len"]) as usize;
            assert_eq!(buf, content[at..at + n], "{name} chunk {i}");
            at += n;
        }
        blobs.push((name.to_owned(), header, chunks));
    }
    for c in v["blob_cases"].as_array().unwrap() {
        let name = st(&c["name"]);
        let mut blob = Vec::new();
        for p in c["blob"].as_array().unwrap() {
            let p = p.as_array().unwrap();
            let find = |f: &Value| blobs.iter().find(|(n, _, _)| n == st(f)).unwrap();
            match st(&p[0]) {
                "header" => blob.extend_from_slice(&find(&p[1]).1),
                "chunk" => blob.extend_from_slice(&find(&p[1]).2[num(&p[2]) as usize]),
                "bytes" => blob.extend_from_slice(&hx(&p[1])),
                other => panic!("{name}: part {other}"),
            }
        }
        assert_eq!(blob.len() as u64, num(&c["blob_len"]), "{name}");
        assert_eq!(sha256(&blob).to_vec(), hx(&c["blob_sha256"]), "{name}");
        expect(name, open(&hx(&c["descriptor"]), &blob), c);
    }
    for c in v["descriptor_cases"].as_array().unwrap() {
        let name = st(&c["name"]);
        expect(
            name,
            Descriptor::parse(&hx(&c["descriptor"])).map(|_| Vec::new()),
            c,
        );
    }
}
