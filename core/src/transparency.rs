//! Key transparency (SECURITY.md §18): the sans-IO core of the keyserver's
//! append-only directory of log heads, its signed epochs, and the proofs
//! every client and auditor checks.
//!
//! The directory is a Merkle log in the shapes of RFC 9162 §2.1 (Certificate
//! Transparency 2.0) over SHA-256: each leaf is one user's log head as an
//! epoch published it ([`leaf_hash`] of [`leaf_data`]); an epoch signs the
//! tree's size and root ([`epoch_message`]) with the keyserver's directory
//! key, which the organisation root certifies ([`key_certificate_message`]).
//! An inclusion proof shows that a head is in an epoch's tree; a consistency
//! proof, that a later epoch's tree extends an earlier one's (nothing
//! removed or rewritten). A witness countersigns epochs it verified
//! ([`witness_message`]).
//!
//! Why not the `akd` crate: see SECURITY.md §18.1 (a second generation of
//! the curve and hash crates in the build, and a VRF-private map where an
//! append-only log of heads, checked by every device against its own user,
//! already gives what §18 needs).

use sha2::{Digest, Sha256};

use crate::keys::{DirectoryKey, OrgRootKey, SigningPublicKey, WitnessKey};
use crate::labels::{KT_LEAF, SIG_KT_EPOCH, SIG_KT_KEY, SIG_KT_WITNESS, framed};

/// A SHA-256 output: a leaf hash, a node, a root.
pub type Hash = [u8; 32];

/// Longest proof accepted: a tree of at most 2^63 leaves has paths of at
/// most 63 nodes, and consistency proofs at most twice that.
pub const MAX_PROOF_NODES: usize = 128;

/// Why a proof or an epoch does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KtError {
    /// An index or size out of range (a leaf past the tree, an old size
    /// larger than the new one, an empty tree where one is needed).
    #[error("proof out of range: {0}")]
    OutOfRange(&'static str),
    /// A proof of the wrong length for its sizes.
    #[error("proof has the wrong length")]
    BadProofLength,
    /// The proof does not lead to the root it should.
    #[error("proof does not match the root")]
    RootMismatch,
}

/// RFC 9162 §2.1.1: the hash of a leaf, `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// RFC 9162 §2.1.1: an interior node, `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The data of a directory leaf (§18.2): `frame(KT_LEAF, user_id,
/// u64_be(log_len), head_hash)`.
pub fn leaf_data(user_id: &str, log_len: u64, head_hash: &Hash) -> Vec<u8> {
    framed(
        KT_LEAF,
        &[user_id.as_bytes(), &log_len.to_be_bytes(), head_hash],
    )
}

/// The largest power of two strictly less than `n` (n >= 2).
fn split(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// `SHA-256("")`: the root of the empty tree (RFC 9162 §2.1.1).
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// An append-only Merkle tree of leaf hashes that keeps every complete
/// subtree's hash (level `l`, index `i`: leaves `i·2^l .. (i+1)·2^l`), so
/// that the root of any past size and any proof cost O(log² n) hashes, not
/// O(n). About twice the leaf hashes in memory.
#[derive(Debug, Clone, Default)]
pub struct MerkleTree {
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Leaves in the tree.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Whether the tree has no leaf.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a leaf hash ([`leaf_hash`]).
    pub fn push(&mut self, leaf: Hash) {
        let mut node = leaf;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(node);
            let n = self.levels[level].len();
            if n % 2 == 1 {
                return;
            }
            node = node_hash(&self.levels[level][n - 2], &self.levels[level][n - 1]);
            level += 1;
        }
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels
            .first()?
            .get(usize::try_from(index).ok()?)
            .copied()
    }

    /// MTH of leaves `start .. start + n`, where `start` is a multiple of
    /// the largest power of two not above `n` (true of every range the
    /// RFC's recursion asks for) and the range is inside the tree.
    fn range(&self, start: u64, n: u64) -> Hash {
        if n == 0 {
            return empty_root();
        }
        if n.is_power_of_two() {
            let level = n.trailing_zeros() as usize;
            return self.levels[level][(start >> level) as usize];
        }
        let k = split(n);
        node_hash(&self.range(start, k), &self.range(start + k, n - k))
    }

    /// The root of the tree's first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, KtError> {
        if size > self.len() {
            return Err(KtError::OutOfRange("tree size past the tree"));
        }
        Ok(self.range(0, size))
    }

    /// RFC 9162 §2.1.3.1: the inclusion proof of leaf `index` in the tree
    /// of the first `size` leaves.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, KtError> {
        if size > self.len() {
            return Err(KtError::OutOfRange("tree size past the tree"));
        }
        if index >= size {
            return Err(KtError::OutOfRange("leaf index past the tree"));
        }
        let mut out = Vec::new();
        self.path(index, 0, size, &mut out);
        Ok(out)
    }

    /// PATH(m, D[start .. start + n]).
    fn path(&self, m: u64, start: u64, n: u64, out: &mut Vec<Hash>) {
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, start, k, out);
            out.push(self.range(start + k, n - k));
        } else {
            self.path(m - k, start + k, n - k, out);
            out.push(self.range(start, k));
        }
    }

    /// RFC 9162 §2.1.4.1: the consistency proof from the tree of the first
    /// `old_size` leaves to that of the first `new_size`.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, KtError> {
        if new_size > self.len() {
            return Err(KtError::OutOfRange("tree size past the tree"));
        }
        if old_size > new_size {
            return Err(KtError::OutOfRange("old tree larger than the new one"));
        }
        let mut out = Vec::new();
        if old_size > 0 && old_size < new_size {
            self.subproof(old_size, 0, new_size, true, &mut out);
        }
        Ok(out)
    }

    /// SUBPROOF(m, D[start .. start + n], b).
    fn subproof(&self, m: u64, start: u64, n: u64, whole: bool, out: &mut Vec<Hash>) {
        if m == n {
            if !whole {
                out.push(self.range(start, n));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, k, whole, out);
            out.push(self.range(start + k, n - k));
        } else {
            self.subproof(m - k, start + k, n - k, false, out);
            out.push(self.range(start, k));
        }
    }
}

/// RFC 9162 §2.1.3.2: checks that `leaf` is leaf `index` of the tree of
/// `tree_size` leaves whose root is `root`.
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    tree_size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), KtError> {
    if index >= tree_size {
        return Err(KtError::OutOfRange("leaf index past the tree"));
    }
    if proof.len() > MAX_PROOF_NODES {
        return Err(KtError::BadProofLength);
    }
    let (mut f_n, mut s_n) = (index, tree_size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return Err(KtError::BadProofLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(KtError::BadProofLength);
    }
    if r != *root {
        return Err(KtError::RootMismatch);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: checks that the tree of `new_size` leaves with root
/// `new_root` extends the tree of `old_size` leaves with root `old_root`.
/// Equal sizes need an empty proof and equal roots; an old size of 0 is
/// consistent with everything (an empty proof).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), KtError> {
    if old_size > new_size {
        return Err(KtError::OutOfRange("old tree larger than the new one"));
    }
    if proof.len() > MAX_PROOF_NODES {
        return Err(KtError::BadProofLength);
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(KtError::BadProofLength);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(KtError::RootMismatch)
        };
    }
    if old_size == 0 {
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(KtError::BadProofLength)
        };
    }
    // RFC 9162 §2.1.4.2 step 1.
    if proof.is_empty() {
        return Err(KtError::BadProofLength);
    }
    // When old_size is a power of two, its root is the first node of the
    // path and is left out of the proof.
    let mut nodes: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        nodes.push(*old_root);
    }
    nodes.extend_from_slice(proof);
    let Some((first, rest)) = nodes.split_first() else {
        return Err(KtError::BadProofLength);
    };
    let (mut f_n, mut s_n) = (old_size - 1, new_size - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut f_r, mut s_r) = (*first, *first);
    for c in rest {
        if s_n == 0 {
            return Err(KtError::BadProofLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            s_r = node_hash(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(KtError::BadProofLength);
    }
    if f_r != *old_root || s_r != *new_root {
        return Err(KtError::RootMismatch);
    }
    Ok(())
}

/// What the directory key signs for an epoch (§18.3):
/// `frame(SIG_KT_EPOCH, u64_be(epoch), u64_be(tree_size), root, u64_be(timestamp))`.
pub fn epoch_message(epoch: u64, tree_size: u64, root: &Hash, timestamp: u64) -> Vec<u8> {
    framed(
        SIG_KT_EPOCH,
        &[
            &epoch.to_be_bytes(),
            &tree_size.to_be_bytes(),
            root,
            &timestamp.to_be_bytes(),
        ],
    )
}

/// What the organisation root signs to certify a directory key (§18.3):
/// `frame(SIG_KT_KEY, directory_key)`.
pub fn key_certificate_message(directory_key: &[u8; 32]) -> Vec<u8> {
    framed(SIG_KT_KEY, &[directory_key])
}

/// What a witness signs for an epoch it verified (§18.5):
/// `frame(SIG_KT_WITNESS, epoch_message(...))`.
pub fn witness_message(epoch: u64, tree_size: u64, root: &Hash, timestamp: u64) -> Vec<u8> {
    framed(
        SIG_KT_WITNESS,
        &[&epoch_message(epoch, tree_size, root, timestamp)],
    )
}

/// An epoch head as signed (§18.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    /// 1, 2, 3, …: one more than the previous epoch.
    pub epoch: u64,
    /// Leaves in the tree; never less than the previous epoch's.
    pub tree_size: u64,
    /// The tree's root (RFC 9162 Merkle Tree Hash).
    pub root: Hash,
    /// Unix seconds; never less than the previous epoch's.
    pub timestamp: u64,
}

impl Epoch {
    /// The bytes the directory key signs.
    pub fn message(&self) -> Vec<u8> {
        epoch_message(self.epoch, self.tree_size, &self.root, self.timestamp)
    }

    /// The directory key's signature over this epoch.
    pub fn sign(&self, key: &DirectoryKey) -> [u8; 64] {
        key.sign(&self.message())
    }

    /// Whether `signature` is `directory`'s over this epoch.
    pub fn verify(&self, directory: &SigningPublicKey, signature: &[u8]) -> bool {
        directory.verify(&self.message(), signature)
    }

    /// A witness's countersignature over this epoch.
    pub fn witness(&self, key: &WitnessKey) -> [u8; 64] {
        key.sign(&witness_message(
            self.epoch,
            self.tree_size,
            &self.root,
            self.timestamp,
        ))
    }

    /// Whether `signature` is `witness`'s countersignature over this epoch.
    pub fn verify_witness(&self, witness: &SigningPublicKey, signature: &[u8]) -> bool {
        witness.verify(
            &witness_message(self.epoch, self.tree_size, &self.root, self.timestamp),
            signature,
        )
    }
}

/// The organisation root's certificate of a directory key (§18.3).
pub fn certify_directory_key(root: &OrgRootKey, directory: &SigningPublicKey) -> [u8; 64] {
    root.sign(&key_certificate_message(directory.as_bytes()))
}

/// Whether `signature` is the pinned `root`'s certificate of `directory`.
pub fn verify_directory_key(
    root: &SigningPublicKey,
    directory: &SigningPublicKey,
    signature: &[u8],
) -> bool {
    root.verify(&key_certificate_message(directory.as_bytes()), signature)
}

#[cfg(test)]
#[path = "transparency_tests.rs"]
mod tests;
