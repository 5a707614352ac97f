//! Criterion benches for Ward's protocol core, each beside the raw primitive
//! it is built on so that the protocol's overhead reads as a ratio.
//! BENCHMARKS.md records the figures and how to reproduce them.
//!
//! | Ward operation | raw primitive |
//! |---|---|
//! | `envelope/seal/{1KiB,64KiB,10MiB}` | `envelope/aead_encrypt/…` (bare XChaCha20-Poly1305, same group) |
//! | `envelope/open/…` (parse + open in place, as the SDK) | `envelope/aead_decrypt/…` |
//! | `envelope/seal/1KiB` | the sum of `seal_1KiB_parts/{resource_keygen, wrap_resource_key, hkdf, aead_encrypt, ed25519_sign}` |
//! | `paired/seal/{1KiB,10MiB}` | the same references, interleaved in one loop; prints the ratio |
//! | `wrap/wrap_resource_key`, `wrap/unwrap_resource_key` (X-Wing) | `primitive/xwing/{encapsulate,decapsulate}`; the v1 X25519-only wrap it replaces, `wrap/v1_x25519_{wrap,unwrap}` |
//! | `auth/respond` ("sign"), `auth/verify_response` ("verify") | `primitive/ed25519/sign`, `…/verify_strict` |
//! | `chain/verify_log_1_entry` | two `primitive/ed25519/verify_strict` |
//!
//! More primitives are there to explain the overhead: `primitive/sha256/…`
//! (the one pass over the ciphertext that the v2 signature covers, §7.3 S7)
//! and `primitive/sha512/…` (what v1's pure Ed25519 over the ciphertext
//! cost: twice to sign, once to verify), `primitive/alloc_copy/…` (one fresh
//! buffer and copy of the content, as padding, signature framing, protobuf
//! encode/decode and unpadding each make), `primitive/zeroize_vec/…` (the
//! wipe of a `Zeroizing<Vec<u8>>` plaintext buffer on drop) and
//! `primitive/ed25519/decompress_public_key` (Ward keeps public keys as 32
//! bytes and decompresses the point again at each verification).
//!
//! `wrap/v1_x25519_*` is protocol v1's DHKEM(X25519) wrap, rebuilt here
//! from the same primitives (it is no longer in the core: one suite), so that
//! the hybrid wrap's cost reads against what it replaced, in the same run.
//!
//! Run with: `cargo bench -p ward-core --bench core -- --warm-up-time 1 --measurement-time 3`

use std::fmt::Debug;
use std::hint::black_box;

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use sha2::{Digest, Sha256, Sha512};
use ward_core::envelope::{self, ContentType, ReceivedEnvelope, SealRequest};
use ward_core::keys::ResourceKey;
use ward_core::proto::Message;
use ward_core::proto::v1::Envelope;
use ward_core::testkit::Org;
use ward_core::{ConversationId, ResourceId, auth, chain, labels, padding, wrap};
use zeroize::Zeroize;

/// Content sizes for the envelope and AEAD benches.
const SIZES: [(&str, usize); 3] = [("1KiB", 1 << 10), ("64KiB", 64 << 10), ("10MiB", 10 << 20)];

/// Length of the message the raw Ed25519 benches sign: about the length of
/// the auth transcript `auth::respond` signs (label, version, service, nonce,
/// user id, device id, each length-prefixed).
const RAW_SIG_MSG_BYTES: usize = 128;

/// Unwraps a result in a bench. A bench has no caller to hand an error to:
/// a failure here (in setup or in a timed call) is a bug, and aborting the
/// run with the error is the intended outcome.
#[allow(clippy::panic)]
fn must<T, E: Debug>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("bench operation failed: {e:?}"),
    }
}

fn content(rng: &mut impl rand::Rng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// Fewer samples for the 10 MiB cases, which take tens of milliseconds each.
fn samples_for(len: usize) -> usize {
    if len >= 1 << 20 { 10 } else { 20 }
}

fn bench_envelope(c: &mut Criterion) {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let bob = org.enroll(&mut rng, "bob");
    let recipients = [&bob.chain];
    // The bare AEAD, measured in the same group and run as the envelope.
    let cipher = XChaCha20Poly1305::new(&[0u8; 32].into());

    let mut g = c.benchmark_group("envelope");
    for (name, len) in SIZES {
        let data = content(&mut rng, len);
        let req = SealRequest {
            conversation_id: ConversationId([7; 16]),
            recipients: &recipients,
            content_type: ContentType::File,
            content: &data,
            timestamp_ms: 1_795_910_400_000,
        };
        g.throughput(Throughput::Bytes(len as u64));
        g.sample_size(samples_for(len));

        g.bench_function(BenchmarkId::new("seal", name), |b| {
            b.iter(|| {
                black_box(must(envelope::seal(
                    &mut rng,
                    &alice.device,
                    &alice.chain,
                    black_box(&req),
                )))
            })
        });
        g.bench_function(BenchmarkId::new("aead_encrypt", name), |b| {
            b.iter(|| {
                black_box(must(
                    cipher.encrypt(&[0u8; 24].into(), black_box(&data[..])),
                ))
            })
        });

        // What the SDK does: parse the delivered bytes, open in place.
        let sealed = must(envelope::seal(&mut rng, &alice.device, &alice.chain, &req));
        g.bench_function(BenchmarkId::new("open", name), |b| {
            b.iter(|| {
                let received = must(ReceivedEnvelope::parse(black_box(&sealed.envelope)));
                black_box(must(received.open_in_place(
                    &alice.chain,
                    "bob",
                    &sealed.resource_key,
                )))
            })
        });
        let ct = must(cipher.encrypt(&[0u8; 24].into(), &data[..]));
        g.bench_function(BenchmarkId::new("aead_decrypt", name), |b| {
            b.iter(|| black_box(must(cipher.decrypt(&[0u8; 24].into(), black_box(&ct[..])))))
        });
    }
    g.finish();

    // The 1 KiB seal's primitives, one call each, to sum: resource key
    // generation, one wrap (the crate's own, so the figure follows the KEM),
    // the HKDF of the key schedule, the AEAD of the padded content, and one
    // Ed25519 signature over a transcript of the real length. The ciphertext
    // digest (SHA-256) is measured beside them: it is the price of item 4.
    let data = content(&mut rng, 1 << 10);
    let sealed = must(envelope::seal(
        &mut rng,
        &alice.device,
        &alice.chain,
        &SealRequest {
            conversation_id: ConversationId([7; 16]),
            recipients: &recipients,
            content_type: ContentType::File,
            content: &data,
            timestamp_ms: 1_795_910_400_000,
        },
    ));
    let env = must(Envelope::decode(sealed.envelope.as_slice()));
    let rid = ResourceId::random(&mut rng);
    let key = ResourceKey::generate(&mut rng);
    let padded = vec![0u8; padding::padded_len(data.len())];
    let transcript = vec![0u8; labels::SIG_ENVELOPE.len() + 1 + 4 + env.header.len() + 4 + 32];
    let signing = SigningKey::from_bytes(&alice.device.export_secret());

    let mut g = c.benchmark_group("seal_1KiB_parts");
    g.sample_size(20);
    g.bench_function("resource_keygen", |b| {
        b.iter(|| black_box(ResourceKey::generate(&mut rng)))
    });
    g.bench_function("wrap_resource_key", |b| {
        b.iter(|| {
            black_box(must(wrap::wrap_resource_key(
                &mut rng,
                black_box(&key),
                &rid,
                bob.chain.encryption_key(),
            )))
        })
    });
    g.bench_function("hkdf", |b| {
        b.iter(|| {
            let hk = Hkdf::<Sha256>::new(Some(rid.as_bytes()), black_box(&[1u8; 32]));
            let (mut k, mut c) = ([0u8; 32], [0u8; 32]);
            must(hk.expand(labels::ENVELOPE_AEAD_KEY, &mut k));
            must(hk.expand(labels::ENVELOPE_KEY_COMMITMENT, &mut c));
            black_box((k, c))
        })
    });
    g.bench_function("aead_encrypt", |b| {
        b.iter(|| {
            black_box(must(
                cipher.encrypt(&[0u8; 24].into(), black_box(&padded[..])),
            ))
        })
    });
    g.bench_function("ed25519_sign", |b| {
        b.iter(|| black_box(signing.sign(black_box(&transcript))))
    });
    g.bench_function("sha256_ciphertext", |b| {
        b.iter(|| black_box(Sha256::digest(black_box(&env.ciphertext))))
    });
    g.finish();
}

/// Criterion measures one bench after the other, and on a shared machine
/// the load moves between them. These benches interleave the operations
/// being compared, iteration by iteration, so both see the same load: each
/// times the seal and, beside it in the same loop, its reference (the bare
/// AEAD; the sum of the 1 KiB parts), and prints the ratio of the totals
/// when the group ends.
fn bench_paired(c: &mut Criterion) {
    use std::cell::Cell;
    use std::time::{Duration, Instant};

    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let bob = org.enroll(&mut rng, "bob");
    let recipients = [&bob.chain];
    let cipher = XChaCha20Poly1305::new(&[0u8; 32].into());
    let signing = SigningKey::from_bytes(&alice.device.export_secret());
    let rid = ResourceId::random(&mut rng);
    let key = ResourceKey::generate(&mut rng);

    let mut g = c.benchmark_group("paired");
    g.sample_size(10);
    for (name, len) in [("1KiB", 1usize << 10), ("10MiB", 10 << 20)] {
        let data = content(&mut rng, len);
        let req = SealRequest {
            conversation_id: ConversationId([7; 16]),
            recipients: &recipients,
            content_type: ContentType::File,
            content: &data,
            timestamp_ms: 1_795_910_400_000,
        };
        let padded = vec![0u8; padding::padded_len(len)];
        let transcript = vec![0u8; 300];
        let (seal_total, ref_total) = (Cell::new(Duration::ZERO), Cell::new(Duration::ZERO));
        g.bench_function(BenchmarkId::new("seal", name), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    black_box(must(envelope::seal(
                        &mut rng,
                        &alice.device,
                        &alice.chain,
                        black_box(&req),
                    )));
                    timed += t.elapsed();
                    let t = Instant::now();
                    if len > 1 << 10 {
                        // The bare AEAD of the same content.
                        black_box(must(
                            cipher.encrypt(&[0u8; 24].into(), black_box(&data[..])),
                        ));
                    } else {
                        // The sum of the primitives, one call each.
                        black_box(ResourceKey::generate(&mut rng));
                        black_box(must(wrap::wrap_resource_key(
                            &mut rng,
                            &key,
                            &rid,
                            bob.chain.encryption_key(),
                        )));
                        let hk = Hkdf::<Sha256>::new(Some(rid.as_bytes()), black_box(&[1u8; 32]));
                        let (mut k, mut c) = ([0u8; 32], [0u8; 32]);
                        must(hk.expand(labels::ENVELOPE_AEAD_KEY, &mut k));
                        must(hk.expand(labels::ENVELOPE_KEY_COMMITMENT, &mut c));
                        black_box((k, c));
                        black_box(must(
                            cipher.encrypt(&[0u8; 24].into(), black_box(&padded[..])),
                        ));
                        black_box(signing.sign(black_box(&transcript)));
                    }
                    ref_total.set(ref_total.get() + t.elapsed());
                }
                seal_total.set(seal_total.get() + timed);
                timed
            })
        });
        let reference = if len > 1 << 10 {
            "bare AEAD"
        } else {
            "sum of primitives"
        };
        println!(
            "paired/seal/{name}: seal / {reference} = {:.2} (totals {:?} / {:?}, interleaved)",
            seal_total.get().as_secs_f64() / ref_total.get().as_secs_f64(),
            seal_total.get(),
            ref_total.get()
        );
    }
    g.finish();
}

/// Protocol v1's resource-key wrap (HPKE base mode, DHKEM(X25519,
/// HKDF-SHA256), HKDF-SHA256, ChaCha20Poly1305; SECURITY.md v1 §6.2), for the
/// comparison only.
mod v1 {
    use chacha20poly1305::ChaCha20Poly1305;
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use hkdf::Hkdf;
    use sha2::Sha256;
    use x25519_dalek::{PublicKey, StaticSecret};

    const KEM: &[u8] = b"KEM\x00\x20";
    const HPKE: &[u8] = b"HPKE\x00\x20\x00\x01\x00\x03";
    pub const INFO: &[u8] = b"ward/v1/wrap/resource-key";

    fn extract(suite: &[u8], salt: &[u8], label: &[u8], ikm: &[u8]) -> [u8; 32] {
        let input = [b"HPKE-v1".as_slice(), suite, label, ikm].concat();
        Hkdf::<Sha256>::extract(Some(salt), &input).0.into()
    }

    fn expand(suite: &[u8], prk: &[u8; 32], label: &[u8], info: &[u8], out: &mut [u8]) {
        let len = u16::try_from(out.len()).unwrap_or(0).to_be_bytes();
        if let Ok(hk) = Hkdf::<Sha256>::from_prk(prk) {
            let _ = hk.expand_multi_info(&[&len, b"HPKE-v1", suite, label, info], out);
        }
    }

    fn schedule(shared: &[u8; 32]) -> ([u8; 32], [u8; 12]) {
        let mut ctx = [0u8; 65];
        ctx[1..33].copy_from_slice(&extract(HPKE, b"", b"psk_id_hash", b""));
        ctx[33..].copy_from_slice(&extract(HPKE, b"", b"info_hash", INFO));
        let secret = extract(HPKE, shared, b"secret", b"");
        let (mut key, mut nonce) = ([0u8; 32], [0u8; 12]);
        expand(HPKE, &secret, b"key", &ctx, &mut key);
        expand(HPKE, &secret, b"base_nonce", &ctx, &mut nonce);
        (key, nonce)
    }

    fn shared(dh: &[u8; 32], enc: &[u8; 32], pk_r: &[u8; 32]) -> [u8; 32] {
        let prk = extract(KEM, b"", b"eae_prk", dh);
        let mut out = [0u8; 32];
        expand(
            KEM,
            &prk,
            b"shared_secret",
            &[&enc[..], pk_r].concat(),
            &mut out,
        );
        out
    }

    pub fn wrap(
        ikm_e: &[u8; 32],
        pk_r: &PublicKey,
        aad: &[u8],
        rk: &[u8; 32],
    ) -> ([u8; 32], Vec<u8>) {
        let prk = extract(KEM, b"", b"dkp_prk", ikm_e);
        let mut sk = [0u8; 32];
        expand(KEM, &prk, b"sk", b"", &mut sk);
        let sk_e = StaticSecret::from(sk);
        let enc = PublicKey::from(&sk_e).to_bytes();
        let dh = sk_e.diffie_hellman(pk_r).to_bytes();
        let (key, nonce) = schedule(&shared(&dh, &enc, pk_r.as_bytes()));
        let ct = ChaCha20Poly1305::new(&key.into())
            .encrypt(&nonce.into(), Payload { msg: rk, aad })
            .unwrap_or_default();
        (enc, ct)
    }

    pub fn unwrap(
        sk_r: &StaticSecret,
        pk_r: &[u8; 32],
        enc: &[u8; 32],
        aad: &[u8],
        ct: &[u8],
    ) -> Option<Vec<u8>> {
        let dh = sk_r.diffie_hellman(&PublicKey::from(*enc)).to_bytes();
        let (key, nonce) = schedule(&shared(&dh, enc, pk_r));
        ChaCha20Poly1305::new(&key.into())
            .decrypt(&nonce.into(), Payload { msg: ct, aad })
            .ok()
    }
}

fn bench_wrap(c: &mut Criterion) {
    use rand::Rng as _;
    use x_wing::{Decapsulate, Encapsulate, Generate};
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let bob = org.enroll(&mut rng, "bob");
    let key = ward_core::keys::ResourceKey::generate(&mut rng);
    let rid = ResourceId::random(&mut rng);
    let wrapped = must(wrap::wrap_resource_key(
        &mut rng,
        &key,
        &rid,
        bob.chain.encryption_key(),
    ));

    let mut g = c.benchmark_group("wrap");
    g.sample_size(50);
    g.bench_function("wrap_resource_key", |b| {
        b.iter(|| {
            black_box(must(wrap::wrap_resource_key(
                &mut rng,
                black_box(&key),
                &rid,
                bob.chain.encryption_key(),
            )))
        })
    });
    g.bench_function("unwrap_resource_key", |b| {
        b.iter(|| {
            black_box(must(wrap::unwrap_resource_key(
                black_box(&wrapped),
                &rid,
                &bob.user_key,
            )))
        })
    });

    // v1, same run: an X25519 user key, aad = rid || pk (48 bytes).
    let sk = x25519_dalek::StaticSecret::random_from_rng(&mut rng);
    let pk = x25519_dalek::PublicKey::from(&sk);
    let aad = [&rid.as_bytes()[..], pk.as_bytes()].concat();
    let rk = [7u8; 32];
    let mut ikm = [0u8; 32];
    rng.fill_bytes(&mut ikm);
    let (enc, ct) = v1::wrap(&ikm, &pk, &aad, &rk);
    if v1::unwrap(&sk, pk.as_bytes(), &enc, &aad, &ct).as_deref() != Some(&rk[..]) {
        must::<(), _>(Err("the v1 baseline does not round-trip"));
    }
    g.bench_function("v1_x25519_wrap", |b| {
        b.iter(|| {
            rng.fill_bytes(&mut ikm);
            black_box(v1::wrap(&ikm, &pk, &aad, black_box(&rk)))
        })
    });
    g.bench_function("v1_x25519_unwrap", |b| {
        b.iter(|| black_box(v1::unwrap(&sk, pk.as_bytes(), &enc, &aad, black_box(&ct))))
    });
    g.finish();

    // The KEM alone: what the wrap costs beyond its 32-byte HKDF and AEAD.
    let mut g = c.benchmark_group("primitive");
    g.sample_size(50);
    let dk = x_wing::DecapsulationKey::generate_from_rng(&mut rng);
    let ek = x_wing::Decapsulator::encapsulation_key(&dk).clone();
    let (ct_x, _) = ek.encapsulate_with_rng(&mut rng);
    g.bench_function("xwing/encapsulate", |b| {
        b.iter(|| black_box(black_box(&ek).encapsulate_with_rng(&mut rng)))
    });
    g.bench_function("xwing/decapsulate", |b| {
        b.iter(|| black_box(black_box(&dk).decapsulate(black_box(&ct_x))))
    });
    let pk_bytes = *bob.chain.encryption_key().as_bytes();
    g.bench_function("xwing/parse_encapsulation_key", |b| {
        b.iter(|| {
            black_box(must(ward_core::keys::EncryptionPublicKey::from_bytes(
                black_box(&pk_bytes),
            )))
        })
    });
    g.finish();

    println!(
        "sizes: X-Wing public key {} B (v1 X25519: 32 B); WrappedKey encoded {} B (v1: 136 B), \
         enc {} B, ciphertext {} B",
        pk_bytes.len(),
        ward_core::proto::Message::encode_to_vec(&wrapped).len(),
        wrapped.enc.len(),
        wrapped.ciphertext.len()
    );
}

fn bench_auth_and_chain(c: &mut Criterion) {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let alice = org.enroll(&mut rng, "alice");
    let audience = auth::Audience::relay(org.root_public(), auth::DEFAULT_INSTANCE);
    let mut nonce = [0u8; auth::AUTH_NONCE_BYTES];
    nonce.copy_from_slice(&content(&mut rng, auth::AUTH_NONCE_BYTES));
    let challenge = audience.challenge(nonce);
    let response = must(auth::respond(&alice.device, "alice", &audience, &challenge));

    let mut g = c.benchmark_group("auth");
    g.bench_function("respond", |b| {
        b.iter(|| {
            black_box(auth::respond(
                &alice.device,
                "alice",
                &audience,
                black_box(&challenge),
            ))
        })
    });
    g.bench_function("verify_response", |b| {
        b.iter(|| {
            black_box(must(auth::verify_response(
                &audience,
                black_box(&challenge),
                black_box(&response),
            )))
        })
    });
    g.finish();

    let root = org.root_public();
    let mut g = c.benchmark_group("chain");
    g.bench_function("verify_log_1_entry", |b| {
        b.iter(|| {
            black_box(must(chain::verify_log(
                &root,
                "alice",
                black_box(&alice.log),
            )))
        })
    });
    g.finish();
}

fn bench_primitives(c: &mut Criterion) {
    let mut rng = rand::rng();

    let mut g = c.benchmark_group("primitive");
    let cipher = XChaCha20Poly1305::new(&[0u8; 32].into());
    for (name, len) in SIZES {
        let data = content(&mut rng, len);
        g.throughput(Throughput::Bytes(len as u64));
        g.sample_size(samples_for(len));
        g.bench_function(BenchmarkId::new("xchacha20poly1305_encrypt", name), |b| {
            b.iter(|| {
                black_box(must(
                    cipher.encrypt(&[0u8; 24].into(), black_box(&data[..])),
                ))
            })
        });
        let ct = must(cipher.encrypt(&[0u8; 24].into(), &data[..]));
        g.bench_function(BenchmarkId::new("xchacha20poly1305_decrypt", name), |b| {
            b.iter(|| black_box(must(cipher.decrypt(&[0u8; 24].into(), black_box(&ct[..])))))
        });
        g.bench_function(BenchmarkId::new("sha512", name), |b| {
            b.iter(|| black_box(Sha512::digest(black_box(&data[..]))))
        });
        g.bench_function(BenchmarkId::new("sha256", name), |b| {
            b.iter(|| black_box(Sha256::digest(black_box(&data[..]))))
        });
        g.bench_function(BenchmarkId::new("alloc_copy", name), |b| {
            b.iter(|| black_box(black_box(&data[..]).to_vec()))
        });
        // What dropping a `Zeroizing<Vec<u8>>` costs (seal zeroizes its
        // padded plaintext; open its padded and its unpadded plaintext).
        g.bench_function(BenchmarkId::new("zeroize_vec", name), |b| {
            b.iter_batched_ref(|| data.clone(), |v| v.zeroize(), BatchSize::LargeInput)
        });
    }

    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    let secret = x25519_dalek::StaticSecret::random_from_rng(&mut rng);
    let peer =
        x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::random_from_rng(&mut rng));
    g.bench_function("x25519/dh", |b| {
        b.iter(|| black_box(black_box(&secret).diffie_hellman(black_box(&peer))))
    });
    g.bench_function("x25519/base_mul", |b| {
        b.iter(|| black_box(x25519_dalek::PublicKey::from(black_box(&secret))))
    });

    let signing = SigningKey::generate(&mut rng);
    let verifying = signing.verifying_key();
    let msg = content(&mut rng, RAW_SIG_MSG_BYTES);
    let sig = signing.sign(&msg);
    g.bench_function("ed25519/sign", |b| {
        b.iter(|| black_box(signing.sign(black_box(&msg))))
    });
    g.bench_function("ed25519/verify_strict", |b| {
        // `must` branches on the result, so the verification cannot be elided.
        b.iter(|| must(verifying.verify_strict(black_box(&msg), black_box(&sig))))
    });
    let verifying_bytes = verifying.to_bytes();
    g.bench_function("ed25519/decompress_public_key", |b| {
        b.iter(|| black_box(must(VerifyingKey::from_bytes(black_box(&verifying_bytes)))))
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_envelope,
    bench_paired,
    bench_wrap,
    bench_auth_and_chain,
    bench_primitives
);
criterion_main!(benches);
