use super::*;

// A naive RFC 9162 §2.1 reference, straight from the recursive definitions
// over slices of leaf hashes: the cached tree must agree with it everywhere.

fn k_of(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

fn mth(d: &[Hash]) -> Hash {
    match d.len() {
        0 => empty_root(),
        1 => d[0],
        n => {
            let k = k_of(n);
            node_hash(&mth(&d[..k]), &mth(&d[k..]))
        }
    }
}

fn ref_path(m: usize, d: &[Hash]) -> Vec<Hash> {
    let n = d.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = k_of(n);
    if m < k {
        let mut p = ref_path(m, &d[..k]);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = ref_path(m - k, &d[k..]);
        p.push(mth(&d[..k]));
        p
    }
}

fn ref_subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
    let n = d.len();
    if m == n {
        return if b { Vec::new() } else { vec![mth(d)] };
    }
    let k = k_of(n);
    if m <= k {
        let mut p = ref_subproof(m, &d[..k], b);
        p.push(mth(&d[k..]));
        p
    } else {
        let mut p = ref_subproof(m - k, &d[k..], false);
        p.push(mth(&d[..k]));
        p
    }
}

fn ref_proof(m: usize, d: &[Hash]) -> Vec<Hash> {
    if m == 0 || m == d.len() {
        Vec::new()
    } else {
        ref_subproof(m, d, true)
    }
}

fn leaves(n: usize) -> Vec<Hash> {
    (0..n)
        .map(|i| leaf_hash(format!("leaf {i}").as_bytes()))
        .collect()
}

fn tree(d: &[Hash]) -> MerkleTree {
    let mut t = MerkleTree::new();
    for l in d {
        t.push(*l);
    }
    t
}

/// The error a proof of the wrong shape or contents gets: the length is
/// checked by running out of (or having too many) nodes, so a proof of the
/// right length for the claimed sizes fails on the root instead.
fn expected(proof_len: usize, right_len: usize) -> KtError {
    if proof_len == right_len {
        KtError::RootMismatch
    } else {
        KtError::BadProofLength
    }
}

const N: usize = 64;

#[test]
fn roots_match_the_reference_for_every_size() {
    let d = leaves(N);
    let t = tree(&d);
    assert_eq!(t.len(), N as u64);
    assert_eq!(t.root_at(0).unwrap(), empty_root());
    for n in 1..=N {
        assert_eq!(t.root_at(n as u64).unwrap(), mth(&d[..n]), "size {n}");
        // A tree grown only to n agrees with the larger one's past root.
        assert_eq!(tree(&d[..n]).root_at(n as u64).unwrap(), mth(&d[..n]));
        assert_eq!(t.leaf(n as u64 - 1), Some(d[n - 1]));
    }
    assert_eq!(
        t.root_at(N as u64 + 1),
        Err(KtError::OutOfRange("tree size past the tree"))
    );
    assert_eq!(t.leaf(N as u64), None);
}

#[test]
fn every_inclusion_proof_matches_and_verifies() {
    let d = leaves(N);
    let t = tree(&d);
    for n in 1..=N {
        let root = mth(&d[..n]);
        let size = n as u64;
        for m in 0..n {
            let idx = m as u64;
            let proof = t.inclusion_proof(idx, size).unwrap();
            assert_eq!(proof, ref_path(m, &d[..n]), "size {n} index {m}");
            verify_inclusion(&d[m], idx, size, &proof, &root).unwrap();

            // Wrong root, wrong leaf.
            let mut bad_root = root;
            bad_root[0] ^= 1;
            assert_eq!(
                verify_inclusion(&d[m], idx, size, &proof, &bad_root),
                Err(KtError::RootMismatch)
            );
            let other = leaf_hash(b"not a leaf");
            assert_eq!(
                verify_inclusion(&other, idx, size, &proof, &root),
                Err(KtError::RootMismatch)
            );
            for i in 0..proof.len() {
                // One node flipped.
                let mut p = proof.clone();
                p[i][31] ^= 0x80;
                assert_eq!(
                    verify_inclusion(&d[m], idx, size, &p, &root),
                    Err(KtError::RootMismatch),
                    "flip {i} size {n} index {m}"
                );
                // One node dropped.
                let mut p = proof.clone();
                p.remove(i);
                assert_eq!(
                    verify_inclusion(&d[m], idx, size, &p, &root),
                    Err(KtError::BadProofLength)
                );
            }
            // One node extra, at the end and at the front.
            let mut p = proof.clone();
            p.push(d[0]);
            assert_eq!(
                verify_inclusion(&d[m], idx, size, &p, &root),
                Err(KtError::BadProofLength)
            );
            let mut p = proof.clone();
            p.insert(0, d[0]);
            assert_eq!(
                verify_inclusion(&d[m], idx, size, &p, &root),
                Err(KtError::BadProofLength)
            );
            // A wrong index inside the tree.
            for wrong in 0..n {
                if wrong == m || d[wrong] == d[m] {
                    continue;
                }
                let right_len = ref_path(wrong, &d[..n]).len();
                assert_eq!(
                    verify_inclusion(&d[m], wrong as u64, size, &proof, &root),
                    Err(expected(proof.len(), right_len)),
                    "index {wrong} for {m} in {n}"
                );
            }
            // A wrong size: the proof for size n, against the real root of
            // another size. (Against size n's own root a proof may verify
            // for another size, e.g. index 0 of 3 as of 4: the proof does
            // not bind the size, the signed epoch does, §18.3.)
            for wrong in (m + 1)..=N {
                let right = ref_path(m, &d[..wrong]);
                if right == proof {
                    continue;
                }
                assert_eq!(
                    verify_inclusion(&d[m], idx, wrong as u64, &proof, &mth(&d[..wrong])),
                    Err(expected(proof.len(), right.len())),
                    "size {wrong} for {m} in {n}"
                );
            }
            // Index past the tree.
            assert_eq!(
                verify_inclusion(&d[m], size, size, &proof, &root),
                Err(KtError::OutOfRange("leaf index past the tree"))
            );
        }
        // An empty proof where one is needed.
        if n > 1 {
            assert_eq!(
                verify_inclusion(&d[0], 0, size, &[], &root),
                Err(KtError::BadProofLength)
            );
        }
        assert_eq!(
            t.inclusion_proof(size, size),
            Err(KtError::OutOfRange("leaf index past the tree"))
        );
    }
    assert_eq!(
        t.inclusion_proof(0, N as u64 + 1),
        Err(KtError::OutOfRange("tree size past the tree"))
    );
    assert_eq!(
        verify_inclusion(&d[0], 0, 0, &[], &empty_root()),
        Err(KtError::OutOfRange("leaf index past the tree"))
    );
    let long = vec![d[0]; MAX_PROOF_NODES + 1];
    assert_eq!(
        verify_inclusion(&d[0], 0, u64::MAX, &long, &d[0]),
        Err(KtError::BadProofLength)
    );
}

#[test]
fn every_consistency_proof_matches_and_verifies() {
    let d = leaves(N);
    let t = tree(&d);
    for n in 1..=N {
        let new_root = mth(&d[..n]);
        let new = n as u64;
        for m in 0..=n {
            let old = m as u64;
            let old_root = mth(&d[..m]);
            let proof = t.consistency_proof(old, new).unwrap();
            assert_eq!(proof, ref_proof(m, &d[..n]), "{m} -> {n}");
            verify_consistency(old, new, &old_root, &new_root, &proof).unwrap();
            if m == 0 {
                // Anything extends the empty tree, but not with a proof.
                assert_eq!(
                    verify_consistency(0, new, &d[0], &new_root, &[d[0]]),
                    Err(KtError::BadProofLength)
                );
                continue;
            }
            let mut bad = new_root;
            bad[5] ^= 4;
            assert_eq!(
                verify_consistency(old, new, &old_root, &bad, &proof),
                Err(KtError::RootMismatch)
            );
            assert_eq!(
                verify_consistency(old, new, &bad, &new_root, &proof),
                Err(KtError::RootMismatch)
            );
            // The old tree's root over other leaves: a fork.
            if m < n {
                let mut forked = d[..m].to_vec();
                forked[m - 1] = leaf_hash(b"rewritten");
                assert_eq!(
                    verify_consistency(old, new, &mth(&forked), &new_root, &proof),
                    Err(KtError::RootMismatch)
                );
            }
            for i in 0..proof.len() {
                let mut p = proof.clone();
                p[i][0] ^= 1;
                assert_eq!(
                    verify_consistency(old, new, &old_root, &new_root, &p),
                    Err(KtError::RootMismatch),
                    "flip {i} of {m} -> {n}"
                );
                let mut p = proof.clone();
                p.remove(i);
                assert_eq!(
                    verify_consistency(old, new, &old_root, &new_root, &p),
                    Err(KtError::BadProofLength),
                    "drop {i} of {m} -> {n}"
                );
            }
            let mut p = proof.clone();
            p.push(d[1]);
            assert_eq!(
                verify_consistency(old, new, &old_root, &new_root, &p),
                Err(KtError::BadProofLength),
                "extra in {m} -> {n}"
            );
            if m < n {
                // Empty where forbidden.
                assert_eq!(
                    verify_consistency(old, new, &old_root, &new_root, &[]),
                    Err(KtError::BadProofLength)
                );
                // Wrong old size or new size for this proof, with the real
                // roots of those sizes (the sizes are bound by the signed
                // epochs, not by the proof: see the inclusion test).
                for wrong in 1..n {
                    let right = ref_proof(wrong, &d[..n]);
                    if right == proof {
                        continue;
                    }
                    assert_eq!(
                        verify_consistency(wrong as u64, new, &mth(&d[..wrong]), &new_root, &proof),
                        Err(expected(proof.len(), right.len())),
                        "old size {wrong} for {m} -> {n}"
                    );
                }
                for wrong in (m + 1)..=N {
                    let right = ref_proof(m, &d[..wrong]);
                    if right == proof {
                        continue;
                    }
                    assert_eq!(
                        verify_consistency(old, wrong as u64, &old_root, &mth(&d[..wrong]), &proof),
                        Err(expected(proof.len(), right.len())),
                        "new size {wrong} for {m} -> {n}"
                    );
                }
            }
            // Old larger than new.
            if m < n {
                assert_eq!(
                    verify_consistency(new, old, &new_root, &old_root, &proof),
                    Err(KtError::OutOfRange("old tree larger than the new one"))
                );
                assert_eq!(
                    t.consistency_proof(new, old),
                    Err(KtError::OutOfRange("old tree larger than the new one"))
                );
            }
        }
        // Equal sizes: empty proof and equal roots only.
        assert_eq!(
            verify_consistency(new, new, &new_root, &new_root, &[d[0]]),
            Err(KtError::BadProofLength)
        );
        let mut other = new_root;
        other[0] ^= 1;
        assert_eq!(
            verify_consistency(new, new, &new_root, &other, &[]),
            Err(KtError::RootMismatch)
        );
    }
    assert_eq!(
        t.consistency_proof(1, N as u64 + 1),
        Err(KtError::OutOfRange("tree size past the tree"))
    );
    let long = vec![d[0]; MAX_PROOF_NODES + 1];
    assert_eq!(
        verify_consistency(1, u64::MAX, &d[0], &d[0], &long),
        Err(KtError::BadProofLength)
    );
}
