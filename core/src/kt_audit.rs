//! The key-transparency auditor's core (SECURITY.md §18.5), sans-IO: an
//! [`EpochView`] that follows every epoch, plus its own copy of the whole
//! tree rebuilt from the leaves the keyserver serves, so that the auditor
//! checks not only that each epoch extends the last (the keyserver's
//! consistency proofs) but that the leaves it hands out are the ones its
//! roots commit to. `ward audit` is the network shell around it.

use crate::transparency::{
    Advance, Epoch, EpochView, Hash, KtError, MerkleTree, SignedEpoch, leaf_data, leaf_hash,
};

/// One leaf as the keyserver serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedLeaf {
    /// The user.
    pub user_id: String,
    /// Entries in that user's log.
    pub log_len: u64,
    /// The entry hash of its last entry.
    pub head_hash: Hash,
}

/// The auditor's state: the view and its tree of every leaf seen.
#[derive(Debug, Clone)]
pub struct Audit {
    view: EpochView,
    tree: MerkleTree,
}

impl Audit {
    /// An audit from nothing (the first run): `view` holds no epoch yet.
    pub fn new(view: EpochView) -> Self {
        Self {
            view,
            tree: MerkleTree::new(),
        }
    }

    /// An audit resumed from its saved leaf hashes, checked against the
    /// epoch `view` holds (a saved state that does not match it is refused).
    pub fn resume(view: EpochView, leaves: &[Hash]) -> Result<Self, KtError> {
        let mut tree = MerkleTree::new();
        for l in leaves {
            tree.push(*l);
        }
        if let Some(e) = view.latest()
            && (tree.len() < e.tree_size || tree.root_at(e.tree_size)? != e.root)
        {
            return Err(KtError::LeavesMismatch);
        }
        Ok(Self { view, tree })
    }

    /// The latest epoch verified.
    pub fn latest(&self) -> Option<&Epoch> {
        self.view.latest()
    }

    /// The view (for witness requirements, the directory key).
    pub fn view_mut(&mut self) -> &mut EpochView {
        &mut self.view
    }

    /// Leaves in the auditor's tree (fetch the next ones from here).
    pub fn leaves_held(&self) -> u64 {
        self.tree.len()
    }

    /// Every leaf hash held, in order (to save the state).
    pub fn leaf_hashes(&self) -> Vec<Hash> {
        (0..self.tree.len())
            .filter_map(|i| self.tree.leaf(i))
            .collect()
    }

    /// Appends leaves served from index `from`, which must be the next one
    /// the auditor lacks (a page that overlaps or skips is refused).
    pub fn add_leaves(&mut self, from: u64, leaves: &[ServedLeaf]) -> Result<(), KtError> {
        if from != self.tree.len() {
            return Err(KtError::OutOfRange("leaves not at the end of the tree"));
        }
        for l in leaves {
            if l.log_len == 0 {
                return Err(KtError::Malformed("log length 0"));
            }
            self.tree
                .push(leaf_hash(&leaf_data(&l.user_id, l.log_len, &l.head_hash)));
        }
        Ok(())
    }

    /// Takes the next epoch: the view's checks ([`EpochView::advance`]:
    /// signature, witnesses, no rollback, the consistency proof), then the
    /// root recomputed from the leaves held, which must cover the epoch's
    /// tree (add the leaves first). Nothing changes on an error.
    pub fn advance(
        &mut self,
        signed: &SignedEpoch,
        consistency: &[Hash],
    ) -> Result<Advance, KtError> {
        let head = &signed.head;
        if self.tree.len() < head.tree_size {
            return Err(KtError::OutOfRange("leaves missing for the epoch's tree"));
        }
        let mut view = self.view.clone();
        let step = view.advance(signed, consistency)?;
        if self.tree.root_at(head.tree_size)? != head.root {
            return Err(KtError::LeavesMismatch);
        }
        self.view = view;
        Ok(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{DirectoryKey, OrgRootKey};
    use crate::transparency::DirectoryCertificate;

    fn leaf(i: u64) -> ServedLeaf {
        ServedLeaf {
            user_id: format!("user{i}@chu"),
            log_len: 1 + i % 3,
            head_hash: [i as u8; 32],
        }
    }

    struct Ks {
        key: DirectoryKey,
        tree: MerkleTree,
        leaves: Vec<ServedLeaf>,
        epoch: u64,
    }

    impl Ks {
        fn publish(&mut self, more: u64) -> SignedEpoch {
            for _ in 0..more {
                let l = leaf(self.leaves.len() as u64);
                self.tree
                    .push(leaf_hash(&leaf_data(&l.user_id, l.log_len, &l.head_hash)));
                self.leaves.push(l);
            }
            self.epoch += 1;
            let head = Epoch {
                epoch: self.epoch,
                tree_size: self.tree.len(),
                root: self.tree.root_at(self.tree.len()).unwrap(),
                timestamp: 1_800_000_000 + self.epoch,
            };
            SignedEpoch::sign(head, &self.key)
        }
    }

    fn setup() -> (Ks, Audit) {
        let root = OrgRootKey::import_secret(&[1; 32]).unwrap();
        let key = DirectoryKey::import_secret(&[2; 32]).unwrap();
        let cert = DirectoryCertificate::issue(&root, &key.public_key());
        let view = EpochView::new(&root.public_key(), &cert).unwrap();
        (
            Ks {
                key,
                tree: MerkleTree::new(),
                leaves: Vec::new(),
                epoch: 0,
            },
            Audit::new(view),
        )
    }

    #[test]
    fn follows_epochs_and_their_leaves_and_resumes() {
        let (mut ks, mut audit) = setup();
        let e1 = ks.publish(5);
        audit.add_leaves(0, &ks.leaves[..5]).unwrap();
        assert_eq!(audit.advance(&e1, &[]).unwrap(), Advance::First);
        let e2 = ks.publish(4);
        audit.add_leaves(5, &ks.leaves[5..]).unwrap();
        let proof = ks.tree.consistency_proof(5, 9).unwrap();
        assert!(matches!(
            audit.advance(&e2, &proof).unwrap(),
            Advance::Extended { .. }
        ));
        let again = Audit::resume(audit.view.clone(), &audit.leaf_hashes()).unwrap();
        assert_eq!(again.latest(), Some(&e2.head));
        // A saved state whose leaves were altered does not resume.
        let mut bad = audit.leaf_hashes();
        bad[2][0] ^= 1;
        assert_eq!(
            Audit::resume(audit.view.clone(), &bad).unwrap_err(),
            KtError::LeavesMismatch
        );
    }

    #[test]
    fn leaves_that_are_not_the_ones_the_root_commits_to_are_caught() {
        let (mut ks, mut audit) = setup();
        let e1 = ks.publish(6);
        let mut served = ks.leaves.clone();
        // The keyserver hides a device it added for one user: it serves
        // that user's older head, while the signed root has the new one.
        served[3].log_len += 1;
        audit.add_leaves(0, &served).unwrap();
        assert_eq!(
            audit.advance(&e1, &[]).unwrap_err(),
            KtError::LeavesMismatch
        );
        assert_eq!(audit.latest(), None, "nothing changes on an error");
    }

    #[test]
    fn a_rewritten_old_epoch_is_a_fork_or_an_equivocation() {
        let (mut ks, mut audit) = setup();
        let e1 = ks.publish(4);
        audit.add_leaves(0, &ks.leaves).unwrap();
        audit.advance(&e1, &[]).unwrap();
        // The keyserver rewrites its history: the same epoch number with
        // another tree, then a later epoch built on the rewritten tree.
        let (mut evil, _) = setup();
        evil.leaves.push(ServedLeaf {
            user_id: "user0@chu".into(),
            log_len: 9,
            head_hash: [0xee; 32],
        });
        let l = evil.leaves[0].clone();
        evil.tree
            .push(leaf_hash(&leaf_data(&l.user_id, l.log_len, &l.head_hash)));
        let rewritten = evil.publish(3);
        assert_eq!(
            audit.advance(&rewritten, &[]).unwrap_err(),
            KtError::Equivocation
        );
        let later = evil.publish(2);
        audit.add_leaves(4, &evil.leaves[4..]).unwrap();
        let proof = evil.tree.consistency_proof(4, 6).unwrap();
        assert_eq!(audit.advance(&later, &proof).unwrap_err(), KtError::Fork);
    }
}
