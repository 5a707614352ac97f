//! Criterion benches for Ward's protocol core, each beside the raw primitive
//! it is built on so that the protocol's overhead reads as a ratio.
//! BENCHMARKS.md records the figures and how to reproduce them.
//!
//! | Ward operation | raw primitive |
//! |---|---|
//! | `envelope/seal/{1KiB,64KiB,10MiB}` | `primitive/xchacha20poly1305_encrypt/…` |
//! | `envelope/open/…` (parse + open) | `primitive/xchacha20poly1305_decrypt/…` |
//! | `wrap/wrap_resource_key`, `wrap/unwrap_resource_key` (X-Wing) | `primitive/xwing/{encapsulate,decapsulate}`; the v1 X25519-only wrap it replaces, `wrap/v1_x25519_{wrap,unwrap}` |
//! | `auth/respond` ("sign"), `auth/verify_response` ("verify") | `primitive/ed25519/sign`, `…/verify_strict` |
//! | `chain/verify_log_1_entry` | two `primitive/ed25519/verify_strict` |
//!
//! Three more primitives are there to explain the overhead: `primitive/sha512/…`
//! (the device's Ed25519 signature hashes header and ciphertext with SHA-512,
//! twice to sign and once to verify), `primitive/alloc_copy/…` (one fresh
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
use sha2::{Digest, Sha512};
use ward_core::envelope::{self, ContentType, ReceivedEnvelope, SealRequest};
use ward_core::proto::v1::AuthChallenge;
use ward_core::testkit::Org;
use ward_core::{ConversationId, ResourceId, auth, chain, wrap};
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

        let sealed = must(envelope::seal(&mut rng, &alice.device, &alice.chain, &req));
        g.bench_function(BenchmarkId::new("open", name), |b| {
            b.iter(|| {
                let received = must(ReceivedEnvelope::parse(black_box(&sealed.envelope)));
                black_box(must(received.open(
                    &alice.chain,
                    "bob",
                    &sealed.resource_key,
                )))
            })
        });
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
    let challenge = AuthChallenge {
        version: 1,
        service: "ward-relay".into(),
        nonce: content(&mut rng, auth::AUTH_NONCE_BYTES),
    };
    let response = must(auth::respond(
        &alice.device,
        "alice",
        "ward-relay",
        &challenge,
    ));

    let mut g = c.benchmark_group("auth");
    g.bench_function("respond", |b| {
        b.iter(|| {
            black_box(auth::respond(
                &alice.device,
                "alice",
                "ward-relay",
                black_box(&challenge),
            ))
        })
    });
    g.bench_function("verify_response", |b| {
        b.iter(|| {
            black_box(must(auth::verify_response(
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
    bench_wrap,
    bench_auth_and_chain,
    bench_primitives
);
criterion_main!(benches);
