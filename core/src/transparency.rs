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

use ward_proto::v1 as pb;

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
    /// A message from the keyserver is not well formed (a hash that is not
    /// 32 bytes, a signature that is not 64, a missing head, …).
    #[error("malformed key-transparency message: {0}")]
    Malformed(&'static str),
    /// The directory key certificate is not the pinned organisation root's.
    #[error("directory key certificate does not verify")]
    BadCertificate,
    /// The epoch head is not signed by the certified directory key.
    #[error("epoch signature does not verify")]
    BadSignature,
    /// A required witness's countersignature is present but does not verify.
    #[error("witness countersignature does not verify")]
    BadWitness,
    /// Fewer required witnesses countersigned the epoch than the threshold.
    #[error("{have} of the {need} required witness countersignatures")]
    NotEnoughWitnesses {
        /// Valid countersignatures by distinct required witnesses.
        have: usize,
        /// The threshold.
        need: usize,
    },
    /// An epoch older than the one held: a smaller epoch number, tree size
    /// or timestamp.
    #[error("epoch goes backwards: {0}")]
    Rollback(&'static str),
    /// A later epoch whose tree does not extend the held one's: the
    /// consistency proof fails.
    #[error("epoch's tree does not extend the held one (fork)")]
    Fork,
    /// The same epoch number as the held epoch, with a different head.
    #[error("two different heads for the same epoch (equivocation)")]
    Equivocation,
    /// An inclusion proof against an epoch the view has not verified.
    #[error("epoch not verified by this view")]
    UnknownEpoch,
    /// The leaf is not in the epoch's tree (the inclusion proof fails).
    #[error("leaf not included in the epoch's tree")]
    NotIncluded,
    /// The leaves served do not hash to the signed root (an auditor's
    /// check, [`crate::kt_audit`]): the keyserver shows leaves other than
    /// the ones its epochs commit to.
    #[error("the served leaves do not hash to the epoch's root")]
    LeavesMismatch,
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

/// The roots of the perfect subtrees covering the first `size` leaves,
/// largest first: enough to append leaves and compute the RFC 9162 root
/// without keeping the leaves (at most 64 hashes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// An empty frontier (no leaf).
    pub fn new() -> Self {
        Self::default()
    }

    /// Leaves covered.
    pub fn len(&self) -> u64 {
        self.size
    }

    /// Whether no leaf is covered.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = leaf;
        let mut size = self.size;
        // Each trailing one bit of the size is a subtree of the new leaf's
        // height: merge it in.
        while size & 1 == 1 {
            let Some(left) = self.nodes.pop() else { break };
            node = node_hash(&left, &node);
            size >>= 1;
        }
        self.nodes.push(node);
        self.size += 1;
    }

    /// MTH(D[0:size]): the subtrees folded from the right, as RFC 9162's
    /// split at the largest power of two gives.
    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        match it.next() {
            None => empty_root(),
            Some(last) => it.fold(*last, |acc, left| node_hash(left, &acc)),
        }
    }

    /// The nodes, concatenated (32 bytes each, largest subtree first).
    pub fn encode(&self) -> Vec<u8> {
        self.nodes.concat()
    }

    /// A frontier of `size` leaves from [`Self::encode`]'s bytes; `None`
    /// unless they hold exactly one node per set bit of `size`.
    pub fn decode(size: u64, bytes: &[u8]) -> Option<Self> {
        if bytes.len() != size.count_ones() as usize * 32 {
            return None;
        }
        let nodes = bytes
            .chunks_exact(32)
            .map(|c| c.try_into().ok())
            .collect::<Option<Vec<Hash>>>()?;
        Some(Self { size, nodes })
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

/// Most witness countersignatures parsed from one epoch: more than any
/// deployment configures, few enough that checking them all is cheap.
pub const MAX_WITNESSES: usize = 16;

fn hash32(bytes: &[u8], what: &'static str) -> Result<Hash, KtError> {
    bytes.try_into().map_err(|_| KtError::Malformed(what))
}

fn sig64(bytes: &[u8], what: &'static str) -> Result<[u8; 64], KtError> {
    bytes.try_into().map_err(|_| KtError::Malformed(what))
}

/// Parses the nodes of an inclusion or consistency proof: at most
/// [`MAX_PROOF_NODES`], 32 bytes each.
pub fn proof_nodes(nodes: &[Vec<u8>]) -> Result<Vec<Hash>, KtError> {
    if nodes.len() > MAX_PROOF_NODES {
        return Err(KtError::BadProofLength);
    }
    nodes
        .iter()
        .map(|n| hash32(n, "proof node is not 32 bytes"))
        .collect()
}

impl Epoch {
    /// Parses an `EpochHead`: the root must be 32 bytes and the epoch
    /// number at least 1.
    pub fn from_proto(head: &pb::EpochHead) -> Result<Self, KtError> {
        if head.epoch == 0 {
            return Err(KtError::Malformed("epoch number 0"));
        }
        Ok(Self {
            epoch: head.epoch,
            tree_size: head.tree_size,
            root: hash32(&head.root, "root is not 32 bytes")?,
            timestamp: head.timestamp,
        })
    }

    /// The `EpochHead` message.
    pub fn to_proto(&self) -> pb::EpochHead {
        pb::EpochHead {
            epoch: self.epoch,
            tree_size: self.tree_size,
            root: self.root.to_vec(),
            timestamp: self.timestamp,
        }
    }
}

/// A witness's countersignature, parsed (not yet verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessSignature {
    /// The witness's public key.
    pub key: SigningPublicKey,
    /// Its signature over [`witness_message`].
    pub signature: [u8; 64],
}

/// An epoch head with the directory key's signature and any witness
/// countersignatures, parsed (not yet verified: [`EpochView::advance`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEpoch {
    /// The head.
    pub head: Epoch,
    /// The directory key's signature over [`Epoch::message`].
    pub signature: [u8; 64],
    /// Countersignatures, in the order received.
    pub witnesses: Vec<WitnessSignature>,
}

impl SignedEpoch {
    /// Signs `head` with the directory key (the keyserver's side).
    pub fn sign(head: Epoch, key: &DirectoryKey) -> Self {
        Self {
            signature: head.sign(key),
            head,
            witnesses: Vec::new(),
        }
    }

    /// Parses a `SignedEpoch`, with its length checks.
    pub fn from_proto(m: &pb::SignedEpoch) -> Result<Self, KtError> {
        let head = m.head.as_ref().ok_or(KtError::Malformed("no epoch head"))?;
        if m.witnesses.len() > MAX_WITNESSES {
            return Err(KtError::Malformed("too many witness signatures"));
        }
        let witnesses = m
            .witnesses
            .iter()
            .map(|w| {
                Ok(WitnessSignature {
                    key: SigningPublicKey::from_bytes(&w.witness_key)
                        .map_err(|_| KtError::Malformed("witness key"))?,
                    signature: sig64(&w.signature, "witness signature is not 64 bytes")?,
                })
            })
            .collect::<Result<_, KtError>>()?;
        Ok(Self {
            head: Epoch::from_proto(head)?,
            signature: sig64(&m.signature, "epoch signature is not 64 bytes")?,
            witnesses,
        })
    }

    /// The `SignedEpoch` message.
    pub fn to_proto(&self) -> pb::SignedEpoch {
        pb::SignedEpoch {
            head: Some(self.head.to_proto()),
            signature: self.signature.to_vec(),
            witnesses: self
                .witnesses
                .iter()
                .map(|w| pb::WitnessSignature {
                    witness_key: w.key.as_bytes().to_vec(),
                    signature: w.signature.to_vec(),
                })
                .collect(),
        }
    }
}

/// The organisation root's certificate of a directory key, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryCertificate {
    /// The certified directory key.
    pub directory_key: SigningPublicKey,
    /// The root's signature over [`key_certificate_message`].
    pub root_signature: [u8; 64],
}

impl DirectoryCertificate {
    /// Certifies `directory` with the organisation root (an admin's side).
    pub fn issue(root: &OrgRootKey, directory: &SigningPublicKey) -> Self {
        Self {
            directory_key: *directory,
            root_signature: certify_directory_key(root, directory),
        }
    }

    /// Parses a `DirectoryKeyCertificate`, with its length checks. A
    /// directory key that is not a valid point is a bad certificate.
    pub fn from_proto(m: &pb::DirectoryKeyCertificate) -> Result<Self, KtError> {
        Ok(Self {
            directory_key: SigningPublicKey::from_bytes(&m.directory_key)
                .map_err(|_| KtError::BadCertificate)?,
            root_signature: sig64(&m.root_signature, "root signature is not 64 bytes")?,
        })
    }

    /// The `DirectoryKeyCertificate` message.
    pub fn to_proto(&self) -> pb::DirectoryKeyCertificate {
        pb::DirectoryKeyCertificate {
            directory_key: self.directory_key.as_bytes().to_vec(),
            root_signature: self.root_signature.to_vec(),
        }
    }

    /// The directory key, if the pinned `org_root` certified it.
    pub fn verify(&self, org_root: &SigningPublicKey) -> Result<SigningPublicKey, KtError> {
        if verify_directory_key(org_root, &self.directory_key, &self.root_signature) {
            Ok(self.directory_key)
        } else {
            Err(KtError::BadCertificate)
        }
    }
}

/// An `InclusionProof` response, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedInclusion {
    /// The epoch the proof is against (advance the view to it first).
    pub epoch: SignedEpoch,
    /// The leaf's index in the epoch's tree.
    pub leaf_index: u64,
    /// The inclusion path.
    pub path: Vec<Hash>,
    /// The leaf's head hash.
    pub head_hash: Hash,
}

impl ParsedInclusion {
    /// Parses an `InclusionProof`, with its length checks.
    pub fn from_proto(m: &pb::InclusionProof) -> Result<Self, KtError> {
        let epoch = m.epoch.as_ref().ok_or(KtError::Malformed("no epoch"))?;
        Ok(Self {
            epoch: SignedEpoch::from_proto(epoch)?,
            leaf_index: m.leaf_index,
            path: proof_nodes(&m.path)?,
            head_hash: hash32(&m.head_hash, "head hash is not 32 bytes")?,
        })
    }
}

/// What [`EpochView::advance`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advance {
    /// The view held no epoch; it now holds this one (trusted on its
    /// signature alone: nothing earlier to be consistent with).
    First,
    /// The same epoch as held, again.
    Unchanged,
    /// A later epoch that extends the held one; it replaces it.
    Extended {
        /// The epoch held before.
        from: Epoch,
    },
}

/// The sans-IO verifier of epochs that clients and auditors share
/// (SECURITY.md §18.3): it holds the directory key the pinned
/// organisation root certified and the latest epoch it verified, and only
/// ever moves forward to epochs that extend it.
#[derive(Debug, Clone)]
pub struct EpochView {
    directory: SigningPublicKey,
    witnesses: Vec<SigningPublicKey>,
    threshold: usize,
    latest: Option<Epoch>,
}

impl EpochView {
    /// A view with no epoch yet, trusting the directory key `certificate`
    /// certifies if the pinned `org_root` signed it.
    pub fn new(
        org_root: &SigningPublicKey,
        certificate: &DirectoryCertificate,
    ) -> Result<Self, KtError> {
        Ok(Self {
            directory: certificate.verify(org_root)?,
            witnesses: Vec::new(),
            threshold: 0,
            latest: None,
        })
    }

    /// A view resumed from an epoch this device verified earlier and
    /// stored (the store is trusted: it is the device's own).
    pub fn resume(
        org_root: &SigningPublicKey,
        certificate: &DirectoryCertificate,
        latest: Epoch,
    ) -> Result<Self, KtError> {
        let mut view = Self::new(org_root, certificate)?;
        view.latest = Some(latest);
        Ok(view)
    }

    /// Requires, from now on, valid countersignatures by at least
    /// `threshold` distinct keys of `keys` on every epoch `advance` accepts.
    /// A threshold of 0 removes the requirement.
    pub fn require_witness(
        &mut self,
        keys: &[SigningPublicKey],
        threshold: usize,
    ) -> Result<(), KtError> {
        let mut keys = keys.to_vec();
        keys.sort();
        keys.dedup();
        if threshold > keys.len() {
            return Err(KtError::OutOfRange("witness threshold above the witnesses"));
        }
        self.witnesses = keys;
        self.threshold = threshold;
        Ok(())
    }

    /// The certified directory key.
    pub fn directory_key(&self) -> &SigningPublicKey {
        &self.directory
    }

    /// The latest verified epoch.
    pub fn latest(&self) -> Option<&Epoch> {
        self.latest.as_ref()
    }

    /// Moves to `signed` if it is signed by the directory key, carries the
    /// required witnesses, and extends the held epoch: a larger epoch
    /// number (any gap: a client does not see every epoch), a tree size and
    /// a timestamp no smaller, and `consistency` proving the held tree a
    /// prefix of the new one. The same epoch again is accepted unchanged
    /// (with an empty proof); the same number with another head is
    /// equivocation. Nothing changes on an error.
    pub fn advance(
        &mut self,
        signed: &SignedEpoch,
        consistency: &[Hash],
    ) -> Result<Advance, KtError> {
        let head = &signed.head;
        if head.epoch == 0 {
            return Err(KtError::Malformed("epoch number 0"));
        }
        // The signature first: nothing about an unsigned head is evidence.
        if !head.verify(&self.directory, &signed.signature) {
            return Err(KtError::BadSignature);
        }
        self.check_witnesses(signed)?;
        let Some(held) = self.latest else {
            if !consistency.is_empty() {
                return Err(KtError::BadProofLength);
            }
            self.latest = Some(*head);
            return Ok(Advance::First);
        };
        if head.epoch == held.epoch {
            if *head != held {
                return Err(KtError::Equivocation);
            }
            if !consistency.is_empty() {
                return Err(KtError::BadProofLength);
            }
            return Ok(Advance::Unchanged);
        }
        if head.epoch < held.epoch {
            return Err(KtError::Rollback("epoch number"));
        }
        if head.tree_size < held.tree_size {
            return Err(KtError::Rollback("tree size"));
        }
        if head.timestamp < held.timestamp {
            return Err(KtError::Rollback("timestamp"));
        }
        verify_consistency(
            held.tree_size,
            head.tree_size,
            &held.root,
            &head.root,
            consistency,
        )
        .map_err(|e| match e {
            KtError::RootMismatch => KtError::Fork,
            other => other,
        })?;
        self.latest = Some(*head);
        Ok(Advance::Extended { from: held })
    }

    fn check_witnesses(&self, signed: &SignedEpoch) -> Result<(), KtError> {
        if self.threshold == 0 {
            return Ok(());
        }
        let mut seen: Vec<SigningPublicKey> = Vec::new();
        for w in &signed.witnesses {
            // Countersignatures by keys not required are ignored: a
            // witness this view does not know proves nothing to it.
            if !self.witnesses.contains(&w.key) || seen.contains(&w.key) {
                continue;
            }
            if !signed.head.verify_witness(&w.key, &w.signature) {
                return Err(KtError::BadWitness);
            }
            seen.push(w.key);
        }
        if seen.len() < self.threshold {
            return Err(KtError::NotEnoughWitnesses {
                have: seen.len(),
                need: self.threshold,
            });
        }
        Ok(())
    }

    /// Checks that `user_id`'s log of `log_len` entries ending in
    /// `head_hash` is leaf `leaf_index` of `epoch`'s tree, `epoch` being
    /// the one this view holds (advance to it first).
    pub fn check_inclusion(
        &self,
        user_id: &str,
        log_len: u64,
        head_hash: &Hash,
        leaf_index: u64,
        path: &[Hash],
        epoch: &Epoch,
    ) -> Result<(), KtError> {
        if self.latest.as_ref() != Some(epoch) {
            return Err(KtError::UnknownEpoch);
        }
        if log_len == 0 {
            return Err(KtError::Malformed("log length 0"));
        }
        let leaf = leaf_hash(&leaf_data(user_id, log_len, head_hash));
        verify_inclusion(&leaf, leaf_index, epoch.tree_size, path, &epoch.root).map_err(|e| match e
        {
            KtError::RootMismatch => KtError::NotIncluded,
            other => other,
        })
    }
}

#[cfg(test)]
#[path = "transparency_tests.rs"]
mod tests;
