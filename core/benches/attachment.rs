//! Attachment throughput against the raw AEAD, in one binary and one run
//! (issue 11, done-when 2; BENCHMARKS.md "Attachments").
//!
//! | Ward operation (64 MiB of file) | raw reference, same bytes |
//! |---|---|
//! | `attachment/stream_seal_in_place` (STREAM chunks sealed in place, as a sender reading 64 KiB at a time into one buffer does) | `attachment/raw_encrypt_in_place` (one ChaCha20-Poly1305 call over all 64 MiB) |
//! | `attachment/stream_open_to` (STREAM chunks opened from the ciphertext into an output buffer) | `attachment/raw_decrypt_to` (one call, the same buffers) |
//! | `attachment/encrypt` (`Encryptor::push` + `finish`: header, padding, STREAM, the blob hash, output appended to a Vec) | both of the above, plus `attachment/sha256` |
//! | `attachment/decrypt` (`Decryptor::push` + `finish`: header and commitment, STREAM, padding check, blob hash) | |
//!
//! `paired/*` interleaves a Ward operation with its raw reference, iteration
//! by iteration, so both see the same load on a shared machine, and prints
//! the throughput ratio (Ward / raw; 1.0 = as fast as the raw AEAD).
//!
//! `gib/*` (issue 11's figure, 1 GiB of file; `WARD_BENCH_MIB` sets another
//! size) pairs the reader-to-writer pipeline, `attachment::seal_stream` and
//! `open_stream` (blob hash on a second thread), with one raw
//! ChaCha20-Poly1305 call over the same bytes, from the same input buffer
//! into the same output buffer; and the sans-IO `Encryptor` (hash on the
//! same thread) with the same raw call, for what the thread changes.
//!
//! Run with: `cargo bench -p ward-core --bench attachment -- --warm-up-time 1 --measurement-time 5`
//! (`'gib'` for the 1 GiB pairs only: about 4 GiB of buffers, two minutes).

use std::cell::Cell;

#[path = "common/cpu.rs"]
mod cpu;
use cpu::Cost;
use std::fmt::Debug;
use std::hint::black_box;
use std::time::{Duration, Instant};

use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use sha2::{Digest, Sha256};
use ward_core::attachment::{Decryptor, Descriptor, Encryptor, open_stream, seal_stream};
use ward_core::stream::{CHUNK_SIZE, StreamDecryptor, StreamEncryptor, TAG_SIZE};

/// 64 MiB: a multiple of the chunk size (PADME leaves it unpadded), large
/// enough that per-call costs vanish and small enough for a shared box.
const LEN: usize = 64 << 20;
const KEY: [u8; 32] = [7; 32];

/// A bench has no caller to hand an error to: a failure is a bug.
#[allow(clippy::panic)]
fn must<T, E: Debug>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("bench operation failed: {e:?}"),
    }
}

fn data() -> Vec<u8> {
    (0..LEN).map(|i| (i as u8).wrapping_mul(31)).collect()
}

/// The raw AEAD over the whole buffer in place: the ceiling.
fn raw_encrypt(cipher: &ChaCha20Poly1305, buf: &mut [u8]) {
    black_box(must(cipher.encrypt_inout_detached(
        &[0u8; 12].into(),
        &[],
        buf.into(),
    )));
}

/// STREAM over the same buffer, in place, one chunk at a time; the tags go
/// to their own buffer (a sender writes chunk then tag).
fn stream_encrypt(buf: &mut [u8], tags: &mut Vec<[u8; TAG_SIZE]>) {
    tags.clear();
    let mut enc = StreamEncryptor::new(&KEY);
    let n = buf.len() / CHUNK_SIZE;
    for (i, chunk) in buf.chunks_mut(CHUNK_SIZE).enumerate() {
        tags.push(must(enc.seal_chunk(chunk, i + 1 == n)));
    }
}

fn attachment_encrypt(input: &[u8], out: &mut Vec<u8>) -> Descriptor {
    out.clear();
    let mut enc = must(Encryptor::new(&mut rand::rng(), input.len() as u64));
    must(enc.push(input, out));
    let sealed = must(enc.finish(out));
    must(sealed.describe("application/octet-stream", "bench.bin", None))
}

fn attachment_decrypt(d: &Descriptor, blob: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut dec = Decryptor::new(d);
    must(dec.push(blob, out));
    must(dec.finish());
}

fn bench_attachment(c: &mut Criterion) {
    let plain = data();
    let cipher = ChaCha20Poly1305::new(&KEY.into());
    let mut g = c.benchmark_group("attachment");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(LEN as u64));

    let mut buf = plain.clone();
    g.bench_function("raw_encrypt_in_place", |b| {
        b.iter(|| raw_encrypt(&cipher, black_box(&mut buf)))
    });
    let mut tags = Vec::with_capacity(LEN / CHUNK_SIZE);
    g.bench_function("stream_seal_in_place", |b| {
        b.iter(|| stream_encrypt(black_box(&mut buf), &mut tags))
    });

    // Decryption needs intact ciphertext each time: both open from one
    // ciphertext buffer into another (the download buffer to the file's).
    let mut ct = plain.clone();
    let raw_tag = must(cipher.encrypt_inout_detached(&[0u8; 12].into(), &[], (&mut ct[..]).into()));
    let mut out = vec![0u8; LEN];
    g.bench_function("raw_decrypt_to", |b| {
        b.iter(|| {
            let io = must(InOutBuf::new(black_box(&ct[..]), &mut out[..]));
            must(cipher.decrypt_inout_detached(&[0u8; 12].into(), &[], io, &raw_tag));
        })
    });
    let mut sct = plain.clone();
    stream_encrypt(&mut sct, &mut tags);
    g.bench_function("stream_open_to", |b| {
        b.iter(|| {
            let mut dec = StreamDecryptor::new(&KEY);
            let n = LEN / CHUNK_SIZE;
            for (i, (c, o)) in sct
                .chunks(CHUNK_SIZE)
                .zip(out.chunks_mut(CHUNK_SIZE))
                .enumerate()
            {
                must(dec.open_chunk_to(black_box(c), o, &tags[i], i + 1 == n));
            }
        })
    });

    let mut blob = Vec::with_capacity(LEN + LEN / 1000 + 1024);
    g.bench_function("encrypt", |b| {
        b.iter(|| black_box(attachment_encrypt(black_box(&plain), &mut blob)))
    });
    let d = attachment_encrypt(&plain, &mut blob);
    let mut file = Vec::with_capacity(LEN);
    g.bench_function("decrypt", |b| {
        b.iter(|| attachment_decrypt(&d, black_box(&blob), &mut file))
    });
    g.bench_function("sha256", |b| {
        b.iter(|| black_box(Sha256::digest(black_box(&blob[..]))))
    });
    g.bench_function("copy", |b| {
        b.iter(|| {
            file.clear();
            file.extend_from_slice(black_box(&plain));
        })
    });
    g.finish();
}

/// Times `ward` and `raw` alternately, `iters` times each, adding to the
/// totals; returns the time of `ward`.
fn interleave(
    iters: u64,
    totals: (&Cell<Duration>, &Cell<Duration>),
    mut ward: impl FnMut(),
    mut raw: impl FnMut(),
) -> Duration {
    let mut timed = Duration::ZERO;
    for _ in 0..iters {
        let t = Instant::now();
        ward();
        timed += t.elapsed();
        let t = Instant::now();
        raw();
        totals.1.set(totals.1.get() + t.elapsed());
    }
    totals.0.set(totals.0.get() + timed);
    timed
}

fn report(name: &str, reference: &str, totals: (&Cell<Duration>, &Cell<Duration>)) {
    let (w, r) = (totals.0.get().as_secs_f64(), totals.1.get().as_secs_f64());
    println!(
        "paired/{name}: throughput ratio vs {reference} = {:.3} (ward {:?}, raw {:?}, interleaved)",
        r / w,
        totals.0.get(),
        totals.1.get()
    );
}

fn bench_paired(c: &mut Criterion) {
    let plain = data();
    let cipher = ChaCha20Poly1305::new(&KEY.into());
    let mut g = c.benchmark_group("paired");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(LEN as u64));

    let mut a = plain.clone();
    let mut b_buf = plain.clone();
    let mut tags = Vec::with_capacity(LEN / CHUNK_SIZE);
    let t = (Cell::new(Duration::ZERO), Cell::new(Duration::ZERO));
    g.bench_function("stream_seal_in_place", |b| {
        b.iter_custom(|iters| {
            interleave(
                iters,
                (&t.0, &t.1),
                || stream_encrypt(black_box(&mut a), &mut tags),
                || raw_encrypt(&cipher, black_box(&mut b_buf)),
            )
        })
    });
    report("stream_seal_in_place", "raw encrypt in place", (&t.0, &t.1));

    let mut blob = Vec::with_capacity(LEN + LEN / 1000 + 1024);
    let t = (Cell::new(Duration::ZERO), Cell::new(Duration::ZERO));
    g.bench_function("encrypt", |b| {
        b.iter_custom(|iters| {
            interleave(
                iters,
                (&t.0, &t.1),
                || {
                    black_box(attachment_encrypt(black_box(&plain), &mut blob));
                },
                || raw_encrypt(&cipher, black_box(&mut b_buf)),
            )
        })
    });
    report("encrypt", "raw encrypt in place", (&t.0, &t.1));

    let d = attachment_encrypt(&plain, &mut blob);
    let mut ct = plain.clone();
    let raw_tag = must(cipher.encrypt_inout_detached(&[0u8; 12].into(), &[], (&mut ct[..]).into()));
    let mut out = vec![0u8; LEN];
    let mut out2 = vec![0u8; LEN];
    let mut sct = plain.clone();
    stream_encrypt(&mut sct, &mut tags);
    let t = (Cell::new(Duration::ZERO), Cell::new(Duration::ZERO));
    g.bench_function("stream_open_to", |b| {
        b.iter_custom(|iters| {
            interleave(
                iters,
                (&t.0, &t.1),
                || {
                    let mut dec = StreamDecryptor::new(&KEY);
                    let n = LEN / CHUNK_SIZE;
                    for (i, (c, o)) in sct
                        .chunks(CHUNK_SIZE)
                        .zip(out2.chunks_mut(CHUNK_SIZE))
                        .enumerate()
                    {
                        must(dec.open_chunk_to(black_box(c), o, &tags[i], i + 1 == n));
                    }
                },
                || {
                    let io = must(InOutBuf::new(black_box(&ct[..]), &mut out[..]));
                    must(cipher.decrypt_inout_detached(&[0u8; 12].into(), &[], io, &raw_tag));
                },
            )
        })
    });
    report("stream_open_to", "raw decrypt", (&t.0, &t.1));

    // The blob hash (§16.4) alone against the AEAD: what encrypt and decrypt
    // add to STREAM.
    let t = (Cell::new(Duration::ZERO), Cell::new(Duration::ZERO));
    g.bench_function("sha256", |b| {
        b.iter_custom(|iters| {
            interleave(
                iters,
                (&t.0, &t.1),
                || {
                    black_box(Sha256::digest(black_box(&blob[..])));
                },
                || raw_encrypt(&cipher, black_box(&mut b_buf)),
            )
        })
    });
    report("sha256", "raw encrypt in place", (&t.0, &t.1));

    let mut file = Vec::with_capacity(LEN);
    let t = (Cell::new(Duration::ZERO), Cell::new(Duration::ZERO));
    g.bench_function("decrypt", |b| {
        b.iter_custom(|iters| {
            interleave(
                iters,
                (&t.0, &t.1),
                || attachment_decrypt(&d, black_box(&blob), &mut file),
                || {
                    let io = must(InOutBuf::new(black_box(&ct[..]), &mut out[..]));
                    must(cipher.decrypt_inout_detached(&[0u8; 12].into(), &[], io, &raw_tag));
                },
            )
        })
    });
    report("decrypt", "raw decrypt", (&t.0, &t.1));
    g.finish();
}

/// [`interleave`], also counting CPU time (common/cpu.rs): on a loaded
/// machine the wall clock of the two-thread pipeline measures the load.
fn interleave_cost(
    iters: u64,
    totals: (&Cell<Cost>, &Cell<Cost>),
    mut ward: impl FnMut(),
    mut raw: impl FnMut(),
) -> Duration {
    let (mut w, mut r) = (totals.0.get(), totals.1.get());
    let mut timed = Duration::ZERO;
    for _ in 0..iters {
        timed += w.measure(&mut ward);
        r.measure(&mut raw);
    }
    totals.0.set(w);
    totals.1.set(r);
    timed
}

fn report_cost(name: &str, reference: &str, totals: (&Cell<Cost>, &Cell<Cost>)) {
    let (w, r) = (totals.0.get(), totals.1.get());
    println!(
        "paired/{name}: throughput ratio vs {reference} = {:.3} (ward {:?}, raw {:?}, interleaved)",
        r.wall.as_secs_f64() / w.wall.as_secs_f64(),
        w.wall,
        r.wall
    );
    cpu::report(name, reference, &w, &r);
}

/// The size of the `gib/*` file: 1 GiB unless `WARD_BENCH_MIB` says
/// otherwise (a multiple of the chunk size, so PADME leaves it unpadded, as
/// 1 GiB is).
fn gib_len() -> usize {
    std::env::var("WARD_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1024)
        << 20
}

fn bench_gib(c: &mut Criterion) {
    let len = gib_len();
    let plain: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31)).collect();
    let cipher = ChaCha20Poly1305::new(&KEY.into());
    let mut g = c.benchmark_group("gib");
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
    g.throughput(Throughput::Bytes(len as u64));
    println!("gib: {} MiB of file", len >> 20);

    // Raw: one call from `plain` into `raw_ct` (and back into `file`).
    let mut raw_ct = vec![0u8; len];
    let raw_encrypt_to = |out: &mut [u8]| {
        let io = must(InOutBuf::new(black_box(&plain[..]), out));
        must(cipher.encrypt_inout_detached(&[0u8; 12].into(), &[], io))
    };
    let raw_tag = raw_encrypt_to(&mut raw_ct);
    let mut blob = vec![0u8; must(ward_core::attachment::Layout::new(len as u64)).blob as usize];
    // Both sides of a pair write the same output buffer, one after the other.
    let file = std::cell::RefCell::new(vec![0u8; len]);

    let t = (Cell::new(Cost::default()), Cell::new(Cost::default()));
    let mut sealed = None;
    g.bench_function("seal_stream", |b| {
        b.iter_custom(|iters| {
            interleave_cost(
                iters,
                (&t.0, &t.1),
                || {
                    let s = must(seal_stream(
                        &mut rand::rng(),
                        len as u64,
                        black_box(&plain[..]),
                        &mut blob[..],
                    ));
                    sealed = Some(s);
                },
                || {
                    black_box(raw_encrypt_to(&mut raw_ct));
                },
            )
        })
    });
    report_cost(
        "gib/seal_stream",
        "raw encrypt, input to output",
        (&t.0, &t.1),
    );
    let Some(sealed) = sealed else { return };
    let d = must(sealed.describe("application/octet-stream", "bench.bin", None));

    let t = (Cell::new(Cost::default()), Cell::new(Cost::default()));
    g.bench_function("open_stream", |b| {
        b.iter_custom(|iters| {
            interleave_cost(
                iters,
                (&t.0, &t.1),
                || {
                    must(open_stream(
                        &d,
                        black_box(&blob[..]),
                        &mut file.borrow_mut()[..],
                    ))
                },
                || {
                    let mut file = file.borrow_mut();
                    let io = must(InOutBuf::new(black_box(&raw_ct[..]), &mut file[..]));
                    must(cipher.decrypt_inout_detached(&[0u8; 12].into(), &[], io, &raw_tag));
                },
            )
        })
    });
    report_cost(
        "gib/open_stream",
        "raw decrypt, input to output",
        (&t.0, &t.1),
    );

    // The sans-IO encryptor (hash on the caller's thread), for comparison.
    let mut out = Vec::with_capacity(blob.len());
    let t = (Cell::new(Cost::default()), Cell::new(Cost::default()));
    g.bench_function("encryptor_one_thread", |b| {
        b.iter_custom(|iters| {
            interleave_cost(
                iters,
                (&t.0, &t.1),
                || {
                    black_box(attachment_encrypt(black_box(&plain), &mut out));
                },
                || {
                    black_box(raw_encrypt_to(&mut raw_ct));
                },
            )
        })
    });
    report_cost(
        "gib/encryptor_one_thread",
        "raw encrypt, input to output",
        (&t.0, &t.1),
    );
    g.finish();
}

criterion_group!(benches, bench_attachment, bench_paired, bench_gib);
criterion_main!(benches);
