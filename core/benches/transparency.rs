//! Criterion benches for the key-transparency tree (SECURITY.md §18.2):
//! pushing 100,000 leaves, and generating and verifying inclusion and
//! consistency proofs in trees of 10,000 and 100,000 leaves. Proof sizes
//! (nodes, bytes) are printed once per case on stderr.
//!
//! The proven leaf and the old size are in the middle of the tree, away
//! from the powers of two where proofs are shortest.
//!
//! Run with: `cargo bench -p ward-core --bench transparency -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use ward_core::keys::{DirectoryKey, OrgRootKey};
use ward_core::kt_audit::{Audit, ServedLeaf};
use ward_core::transparency::{
    DirectoryCertificate, Epoch, EpochView, Hash, MerkleTree, SignedEpoch, leaf_data, leaf_hash,
    verify_consistency, verify_inclusion,
};

fn leaves(n: u64) -> Vec<Hash> {
    (0..n)
        .map(|i| {
            leaf_hash(&leaf_data(
                &format!("clinician-{i:06}@chu-example"),
                1 + i % 7,
                &leaf_hash(&i.to_be_bytes()),
            ))
        })
        .collect()
}

fn tree(leaves: &[Hash]) -> MerkleTree {
    let mut t = MerkleTree::new();
    for l in leaves {
        t.push(*l);
    }
    t
}

/// A failure is a bug in the bench setup; aborting the run is intended.
#[allow(clippy::panic)]
fn must<T, E: std::fmt::Debug>(r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("bench setup failed: {e:?}"),
    }
}

fn bench(c: &mut Criterion) {
    let all = leaves(100_000);
    c.bench_function("kt/push/100000", |b| b.iter(|| black_box(tree(&all))));

    for n in [10_000u64, 100_000] {
        let t = tree(&all[..n as usize]);
        let root = must(t.root_at(n));
        let index = n / 2 + 1234;
        let old = n / 2 + 777;
        let old_root = must(t.root_at(old));
        let path = must(t.inclusion_proof(index, n));
        let cons = must(t.consistency_proof(old, n));
        eprintln!(
            "proof sizes at {n} leaves: inclusion {} nodes ({} bytes), consistency from {old}: {} nodes ({} bytes)",
            path.len(),
            path.len() * 32,
            cons.len(),
            cons.len() * 32
        );
        let leaf = all[index as usize];
        let mut g = c.benchmark_group("kt");
        g.bench_with_input(BenchmarkId::new("inclusion_proof", n), &n, |b, &n| {
            b.iter(|| black_box(t.inclusion_proof(index, n)))
        });
        g.bench_with_input(BenchmarkId::new("verify_inclusion", n), &n, |b, &n| {
            b.iter(|| black_box(verify_inclusion(&leaf, index, n, &path, &root)))
        });
        g.bench_with_input(BenchmarkId::new("consistency_proof", n), &n, |b, &n| {
            b.iter(|| black_box(t.consistency_proof(old, n)))
        });
        g.bench_with_input(BenchmarkId::new("verify_consistency", n), &n, |b, &n| {
            b.iter(|| black_box(verify_consistency(old, n, &old_root, &root, &cons)))
        });
        g.finish();
    }
}

/// The auditor's work for one epoch (`ward audit`, SECURITY.md §18.5), past
/// the network: `new` leaves hashed into its tree, the epoch's signature,
/// the consistency proof and the root recomputed, on a directory of `n`
/// leaves. Each iteration starts from a copy of the audit at the previous
/// epoch, made outside the measurement (its drop is inside).
fn audit_epoch(c: &mut Criterion) {
    let root = must(OrgRootKey::import_secret(&[1; 32]));
    let key = must(DirectoryKey::import_secret(&[2; 32]));
    let cert = DirectoryCertificate::issue(&root, &key.public_key());
    let mut g = c.benchmark_group("kt/audit_epoch");
    for (n, new) in [(10_000u64, 100u64), (100_000, 1_000), (100_000, 0)] {
        let served: Vec<ServedLeaf> = (0..n + new)
            .map(|i| ServedLeaf {
                user_id: format!("clinician-{i:06}@chu-example"),
                log_len: 1 + i % 7,
                head_hash: leaf_hash(&i.to_be_bytes()),
            })
            .collect();
        let hashes: Vec<Hash> = served
            .iter()
            .map(|l| leaf_hash(&leaf_data(&l.user_id, l.log_len, &l.head_hash)))
            .collect();
        let full = tree(&hashes);
        let epoch = |number: u64, size: u64| {
            SignedEpoch::sign(
                Epoch {
                    epoch: number,
                    tree_size: size,
                    root: must(full.root_at(size)),
                    timestamp: 1_800_000_000 + number,
                },
                &key,
            )
        };
        let first = epoch(1, n);
        let next = epoch(2, n + new);
        let proof = must(full.consistency_proof(n, n + new));
        let mut before = Audit::new(must(EpochView::new(&root.public_key(), &cert)));
        must(before.add_leaves(0, &served[..n as usize]));
        must(before.advance(&first, &[]));
        g.bench_with_input(
            BenchmarkId::new(format!("{new}_new_leaves"), n),
            &n,
            |b, _| {
                b.iter_batched(
                    || before.clone(),
                    |mut a| {
                        must(a.add_leaves(n, &served[n as usize..]));
                        black_box(must(a.advance(&next, &proof)));
                        a
                    },
                    BatchSize::LargeInput,
                )
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench, audit_epoch);
criterion_main!(benches);
