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

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ward_core::transparency::{
    Hash, MerkleTree, leaf_data, leaf_hash, verify_consistency, verify_inclusion,
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

criterion_group!(benches, bench);
criterion_main!(benches);
