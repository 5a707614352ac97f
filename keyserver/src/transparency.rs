//! Key transparency (SECURITY.md §18.4): the keyserver publishes every
//! user's log head in epochs, an append-only RFC 9162 Merkle tree whose
//! roots its directory key signs, and answers epoch, inclusion and leaf
//! requests, on device sessions and on the public `/v2/kt` path.
//!
//! * [`Directory::load`] rebuilds the tree from `kt_leaves` at start and
//!   refuses a database whose last epoch's root is not that tree's.
//! * [`publish`] (the publisher task's step) writes the new leaves and the
//!   epoch in one transaction: a reader never sees an epoch without its
//!   leaves, nor leaves no epoch covers.
//! * [`Directory::answer`] serves a request from the in-memory tree (proofs)
//!   and the database (leaf positions, old epochs).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::watch;
use ward_core::ids::valid_user_id;
use ward_core::keys::{DirectoryKey, SigningPublicKey};
use ward_core::transparency::{
    Epoch, Hash, MerkleTree, leaf_data, leaf_hash, verify_directory_key,
};
use ward_proto::v1::{
    DirectoryKeyCertificate, DirectoryLeaf, EpochHead, EpochProof, ErrorCode, GetEpoch,
    GetInclusion, GetLeaves, InclusionProof, Leaves, SignedEpoch,
};

use crate::config::{Clock, KtConfig};
use crate::error::{KeyserverError, RequestError, StorageError};
use crate::metrics::KtMetrics;
use crate::storage::Db;

/// Most leaves one `GetLeaves` may ask for.
pub const MAX_LEAVES_PER_REQUEST: u32 = 1024;

/// An epoch as published: its head and the directory key's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The signed head.
    pub epoch: Epoch,
    /// The directory key's signature over [`Epoch::message`].
    pub signature: [u8; 64],
}

impl Published {
    fn to_proto(self) -> SignedEpoch {
        SignedEpoch {
            head: Some(EpochHead {
                epoch: self.epoch.epoch,
                tree_size: self.epoch.tree_size,
                root: self.epoch.root.to_vec(),
                timestamp: self.epoch.timestamp,
            }),
            signature: self.signature.to_vec(),
            witnesses: Vec::new(),
        }
    }
}

/// What requests read: the tree (it may hold leaves past the latest epoch
/// while a publication commits; every proof is cut at an epoch's size) and
/// the latest epoch.
struct Shared {
    tree: MerkleTree,
    latest: Option<Published>,
}

/// The publisher's own bookkeeping, touched by publications only.
struct Cursor {
    /// Each user's log length in its latest leaf.
    published_len: HashMap<String, u64>,
    /// Highest `log_entries` rowid already looked at: entries are never
    /// deleted and SQLite has one writer, so a later append has a higher one.
    rowid: i64,
}

/// The published directory of one keyserver.
pub struct Directory {
    key: Arc<DirectoryKey>,
    public: SigningPublicKey,
    certificate: Option<[u8; 64]>,
    shared: RwLock<Shared>,
    cursor: Mutex<Cursor>,
    metrics: Option<KtMetrics>,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("public", &self.public)
            .field("certified", &self.certificate.is_some())
            .finish_non_exhaustive()
    }
}

fn corrupt(what: impl Into<String>) -> StorageError {
    StorageError::Corrupt(format!("key transparency: {}", what.into()))
}

fn hash32(bytes: &[u8], what: &str) -> Result<Hash, StorageError> {
    bytes
        .try_into()
        .map_err(|_| corrupt(format!("{what} of {} bytes", bytes.len())))
}

fn to_u64(v: i64, what: &str) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| corrupt(format!("negative {what}")))
}

fn read_epoch(conn: &Connection, epoch: Option<u64>) -> Result<Option<Published>, StorageError> {
    let sql_latest = "SELECT epoch, tree_size, root, timestamp, signature FROM kt_epochs
                      ORDER BY epoch DESC LIMIT 1";
    let sql_one = "SELECT epoch, tree_size, root, timestamp, signature FROM kt_epochs
                   WHERE epoch = ?1";
    let map = |r: &rusqlite::Row<'_>| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Vec<u8>>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, Vec<u8>>(4)?,
        ))
    };
    let row = match epoch {
        None => conn.query_row(sql_latest, [], map).optional()?,
        Some(e) => match i64::try_from(e) {
            Ok(e) => conn.query_row(sql_one, params![e], map).optional()?,
            Err(_) => None,
        },
    };
    let Some((epoch, tree_size, root, timestamp, signature)) = row else {
        return Ok(None);
    };
    let signature: [u8; 64] = signature
        .as_slice()
        .try_into()
        .map_err(|_| corrupt("epoch signature of the wrong length"))?;
    Ok(Some(Published {
        epoch: Epoch {
            epoch: to_u64(epoch, "epoch")?,
            tree_size: to_u64(tree_size, "tree size")?,
            root: hash32(&root, "epoch root")?,
            timestamp: to_u64(timestamp, "timestamp")?,
        },
        signature,
    }))
}

impl Directory {
    /// Rebuilds the directory from `kt_leaves` and `kt_epochs` (blocking).
    /// Fails, with the reason, when the stored leaves do not give the last
    /// epoch's root: serving on would sign a tree that does not extend what
    /// clients and auditors hold.
    pub fn load(
        conn: &Connection,
        key: Arc<DirectoryKey>,
        certificate: Option<[u8; 64]>,
        metrics: Option<KtMetrics>,
    ) -> Result<Self, StorageError> {
        let mut tree = MerkleTree::new();
        let mut published_len = HashMap::new();
        let mut stmt =
            conn.prepare("SELECT idx, user_id, log_len, head_hash FROM kt_leaves ORDER BY idx")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let idx = to_u64(r.get(0)?, "leaf index")?;
            if idx != tree.len() {
                return Err(corrupt(format!(
                    "leaf {idx} stored where leaf {} belongs",
                    tree.len()
                )));
            }
            let user: String = r.get(1)?;
            let len = to_u64(r.get(2)?, "log length")?;
            let head = hash32(&r.get::<_, Vec<u8>>(3)?, "head hash")?;
            tree.push(leaf_hash(&leaf_data(&user, len, &head)));
            published_len.insert(user, len);
        }
        drop(rows);
        drop(stmt);
        let latest = read_epoch(conn, None)?;
        match &latest {
            None if !tree.is_empty() => {
                return Err(corrupt("leaves are stored but no epoch"));
            }
            None => {}
            Some(p) => {
                if p.epoch.tree_size != tree.len() {
                    return Err(corrupt(format!(
                        "epoch {} has {} leaves, kt_leaves holds {}",
                        p.epoch.epoch,
                        p.epoch.tree_size,
                        tree.len()
                    )));
                }
                let root = tree
                    .root_at(p.epoch.tree_size)
                    .map_err(|e| corrupt(e.to_string()))?;
                if root != p.epoch.root {
                    return Err(corrupt(format!(
                        "the stored leaves do not give epoch {}'s root: refusing to publish a \
                         tree that does not extend it",
                        p.epoch.epoch
                    )));
                }
                if !p.epoch.verify(&key.public_key(), &p.signature) {
                    // A replaced directory key: older epochs stay valid
                    // under the old key's certificate, new ones use this one.
                    tracing::warn!(
                        epoch = p.epoch.epoch,
                        "the last epoch was signed by another directory key"
                    );
                }
            }
        }
        let public = key.public_key();
        Ok(Self {
            key,
            public,
            certificate,
            shared: RwLock::new(Shared { tree, latest }),
            cursor: Mutex::new(Cursor {
                published_len,
                rowid: 0,
            }),
            metrics,
        })
    }

    /// The directory key's public half.
    pub fn public_key(&self) -> SigningPublicKey {
        self.public
    }

    /// The latest published epoch.
    pub fn latest(&self) -> Option<Published> {
        self.shared
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .latest
    }

    fn certificate_proto(&self) -> DirectoryKeyCertificate {
        DirectoryKeyCertificate {
            directory_key: self.public.as_bytes().to_vec(),
            // Empty without a certificate: clients refuse such an epoch.
            root_signature: self.certificate.map(|c| c.to_vec()).unwrap_or_default(),
        }
    }

    /// Publishes an epoch if a log grew since its last leaf, or, with
    /// `force`, even if none did (same tree, new timestamp). Blocking: one
    /// `BEGIN IMMEDIATE` transaction holds the reads and both inserts.
    pub fn publish(
        &self,
        conn: &mut Connection,
        now: u64,
        force: bool,
    ) -> Result<Option<Published>, StorageError> {
        let started = Instant::now();
        let mut cursor = self.cursor.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let max_rowid: i64 =
            tx.query_row("SELECT COALESCE(MAX(rowid), 0) FROM log_entries", [], |r| {
                r.get(0)
            })?;
        let mut changed = BTreeSet::new();
        {
            let mut stmt =
                tx.prepare_cached("SELECT DISTINCT user_id FROM log_entries WHERE rowid > ?1")?;
            let mut rows = stmt.query(params![cursor.rowid])?;
            while let Some(r) = rows.next()? {
                changed.insert(r.get::<_, String>(0)?);
            }
        }
        // In user_id order (the BTreeSet's): the leaf order is a function
        // of the database, so an auditor can tell nothing was reordered.
        let mut leaves: Vec<(String, u64, Hash)> = Vec::new();
        {
            let mut len_stmt = tx.prepare_cached("SELECT log_len FROM users WHERE user_id = ?1")?;
            let mut head_stmt = tx.prepare_cached(
                "SELECT entry_hash FROM log_entries WHERE user_id = ?1 AND seq = ?2",
            )?;
            for user in changed {
                let Some(len) = len_stmt
                    .query_row(params![user], |r| r.get::<_, i64>(0))
                    .optional()?
                else {
                    continue;
                };
                let len = to_u64(len, "log length")?;
                if len == 0 || cursor.published_len.get(&user).copied().unwrap_or(0) >= len {
                    continue;
                }
                let head: Vec<u8> =
                    head_stmt.query_row(params![user, (len - 1) as i64], |r| r.get(0))?;
                leaves.push((user, len, hash32(&head, "entry hash")?));
            }
        }
        let latest = self.latest();
        if leaves.is_empty() && !force && latest.is_some() {
            cursor.rowid = max_rowid;
            return Ok(None);
        }
        let number = latest.map_or(1, |p| p.epoch.epoch + 1);
        // Never before the previous epoch, whatever the clock did.
        let timestamp = latest.map_or(now, |p| p.epoch.timestamp.max(now));
        let start = latest.map_or(0, |p| p.epoch.tree_size);
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO kt_leaves (idx, user_id, log_len, head_hash, epoch)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (i, (user, len, head)) in leaves.iter().enumerate() {
                insert.execute(params![
                    (start + i as u64) as i64,
                    user,
                    *len as i64,
                    head.as_slice(),
                    number as i64
                ])?;
            }
        }
        let tree_size = start + leaves.len() as u64;
        let root = {
            let mut shared = self.shared.write().unwrap_or_else(PoisonError::into_inner);
            if shared.tree.len() != start {
                return Err(corrupt("the in-memory tree is not the last epoch's"));
            }
            for (user, len, head) in &leaves {
                shared.tree.push(leaf_hash(&leaf_data(user, *len, head)));
            }
            shared.tree.root_at(tree_size)
        };
        let committed = root.map_err(|e| corrupt(e.to_string())).and_then(|root| {
            let epoch = Epoch {
                epoch: number,
                tree_size,
                root,
                timestamp,
            };
            let signature = epoch.sign(&self.key);
            tx.execute(
                "INSERT INTO kt_epochs (epoch, tree_size, root, timestamp, signature)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    number as i64,
                    tree_size as i64,
                    root.as_slice(),
                    timestamp as i64,
                    signature.as_slice()
                ],
            )?;
            tx.commit()?;
            Ok(Published { epoch, signature })
        });
        let mut shared = self.shared.write().unwrap_or_else(PoisonError::into_inner);
        let published = match committed {
            Ok(p) => p,
            Err(e) => {
                // Not committed: drop the leaves pushed for it.
                let mut tree = MerkleTree::new();
                for i in 0..start {
                    if let Some(h) = shared.tree.leaf(i) {
                        tree.push(h);
                    }
                }
                shared.tree = tree;
                return Err(e);
            }
        };
        shared.latest = Some(published);
        drop(shared);
        for (user, len, _) in leaves {
            cursor.published_len.insert(user, len);
        }
        cursor.rowid = max_rowid;
        if let Some(m) = &self.metrics {
            m.epoch.set(published.epoch.epoch as i64);
            m.tree_size.set(published.epoch.tree_size as i64);
            m.publication_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(Some(published))
    }

    /// Serves one key-transparency request (either path).
    pub async fn answer(self: &Arc<Self>, db: &Arc<Db>, q: Query) -> Result<Answer, RequestError> {
        let latest = self.latest().ok_or_else(|| {
            RequestError::new(
                ErrorCode::Unavailable,
                "no epoch published yet: retry after the next epoch",
            )
        })?;
        match q {
            Query::Epoch(g) => {
                let published = self.epoch(db, g.epoch, latest).await?;
                let size = published.epoch.tree_size;
                if g.known_size > size {
                    return Err(RequestError::malformed(format!(
                        "known_size {} is past epoch {}'s {size} leaves",
                        g.known_size, published.epoch.epoch
                    )));
                }
                let consistency = self
                    .with_tree(|t| t.consistency_proof(g.known_size, size))?
                    .iter()
                    .map(|h| h.to_vec())
                    .collect();
                Ok(Answer::Epoch(EpochProof {
                    epoch: Some(published.to_proto()),
                    consistency,
                    certificate: Some(self.certificate_proto()),
                }))
            }
            Query::Inclusion(g) => {
                if !valid_user_id(&g.user_id) {
                    return Err(RequestError::malformed("invalid user id"));
                }
                if g.log_len == 0 {
                    return Err(RequestError::malformed("log_len must be at least 1"));
                }
                let published = self.epoch(db, g.epoch, latest).await?;
                let (user, len) = (g.user_id.clone(), g.log_len);
                let found = db
                    .call(move |c| find_leaf(c, &user, len).map_err(RequestError::from))
                    .await?;
                let (idx, head) = match found {
                    LeafLookup::Leaf { idx, head } => (idx, head),
                    LeafLookup::Pending => {
                        return Err(RequestError::new(
                            ErrorCode::Unavailable,
                            "this log head is in no epoch yet: retry after the next epoch",
                        ));
                    }
                    LeafLookup::Superseded => {
                        return Err(RequestError::new(
                            ErrorCode::NotFound,
                            "this log head grew before an epoch published it: ask for the \
                             published length (GetLeaves) or the current one",
                        ));
                    }
                    LeafLookup::Unknown => {
                        return Err(RequestError::new(
                            ErrorCode::NotFound,
                            "no such user or log length",
                        ));
                    }
                };
                let size = published.epoch.tree_size;
                if idx >= size {
                    return Err(if g.epoch == 0 {
                        // Committed while this request read the latest epoch.
                        RequestError::new(
                            ErrorCode::Unavailable,
                            "this log head is in no epoch yet: retry after the next epoch",
                        )
                    } else {
                        RequestError::new(
                            ErrorCode::NotFound,
                            format!("this log head was published after epoch {}", g.epoch),
                        )
                    });
                }
                let path = self
                    .with_tree(|t| t.inclusion_proof(idx, size))?
                    .iter()
                    .map(|h| h.to_vec())
                    .collect();
                Ok(Answer::Inclusion(InclusionProof {
                    epoch: Some(published.to_proto()),
                    leaf_index: idx,
                    path,
                    head_hash: head.to_vec(),
                }))
            }
            Query::Leaves(g) => {
                if g.max == 0 {
                    return Err(RequestError::malformed("max must be at least 1"));
                }
                if g.max > MAX_LEAVES_PER_REQUEST {
                    return Err(RequestError::new(
                        ErrorCode::TooLarge,
                        format!(
                            "max {}: at most {MAX_LEAVES_PER_REQUEST} leaves a request",
                            g.max
                        ),
                    ));
                }
                // Only published leaves: the latest epoch's tree.
                let end = latest
                    .epoch
                    .tree_size
                    .min(g.from.saturating_add(u64::from(g.max)));
                let from = g.from;
                let leaves = if from >= end {
                    Vec::new()
                } else {
                    db.call(move |c| read_leaves(c, from, end).map_err(RequestError::from))
                        .await?
                };
                Ok(Answer::Leaves(Leaves { from, leaves }))
            }
        }
    }

    /// Epoch `n` (0: `latest`); NOT_FOUND past the latest.
    async fn epoch(
        &self,
        db: &Arc<Db>,
        n: u64,
        latest: Published,
    ) -> Result<Published, RequestError> {
        if n == 0 || n == latest.epoch.epoch {
            return Ok(latest);
        }
        if n > latest.epoch.epoch {
            return Err(RequestError::new(
                ErrorCode::NotFound,
                format!("no epoch {n}: the latest is {}", latest.epoch.epoch),
            ));
        }
        db.call(move |c| read_epoch(c, Some(n)).map_err(RequestError::from))
            .await?
            .ok_or_else(|| RequestError::new(ErrorCode::NotFound, format!("no epoch {n}")))
    }

    fn with_tree<T>(
        &self,
        f: impl FnOnce(&MerkleTree) -> Result<T, ward_core::transparency::KtError>,
    ) -> Result<T, RequestError> {
        let shared = self.shared.read().unwrap_or_else(PoisonError::into_inner);
        f(&shared.tree).map_err(|e| {
            tracing::error!(error = %e, "key transparency proof failed");
            RequestError::new(ErrorCode::Internal, "internal error")
        })
    }
}

/// A key-transparency request, from either path.
#[derive(Debug, Clone)]
pub enum Query {
    /// `GetEpoch`.
    Epoch(GetEpoch),
    /// `GetInclusion`.
    Inclusion(GetInclusion),
    /// `GetLeaves`.
    Leaves(GetLeaves),
}

/// Its answer.
#[derive(Debug, Clone)]
pub enum Answer {
    /// To `GetEpoch`.
    Epoch(EpochProof),
    /// To `GetInclusion`.
    Inclusion(InclusionProof),
    /// To `GetLeaves`.
    Leaves(Leaves),
}

enum LeafLookup {
    Leaf {
        idx: u64,
        head: Hash,
    },
    /// The user's log has this length but no epoch published it yet.
    Pending,
    /// The log has this length, but grew again before an epoch: no leaf
    /// will ever hold it.
    Superseded,
    Unknown,
}

fn find_leaf(conn: &Connection, user: &str, len: u64) -> Result<LeafLookup, StorageError> {
    let Ok(len_i) = i64::try_from(len) else {
        return Ok(LeafLookup::Unknown);
    };
    let leaf = conn
        .query_row(
            "SELECT idx, head_hash FROM kt_leaves WHERE user_id = ?1 AND log_len = ?2",
            params![user, len_i],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
        )
        .optional()?;
    if let Some((idx, head)) = leaf {
        return Ok(LeafLookup::Leaf {
            idx: to_u64(idx, "leaf index")?,
            head: hash32(&head, "head hash")?,
        });
    }
    let current: Option<i64> = conn
        .query_row(
            "SELECT log_len FROM users WHERE user_id = ?1",
            params![user],
            |r| r.get(0),
        )
        .optional()?;
    let Some(current) = current else {
        return Ok(LeafLookup::Unknown);
    };
    if len_i > current {
        return Ok(LeafLookup::Unknown);
    }
    let published: Option<i64> = conn.query_row(
        "SELECT MAX(log_len) FROM kt_leaves WHERE user_id = ?1",
        params![user],
        |r| r.get(0),
    )?;
    Ok(if published.is_some_and(|p| p > len_i) {
        LeafLookup::Superseded
    } else if len_i < current {
        // Grown past it, not published yet either: the next epoch holds
        // the longer head only.
        LeafLookup::Superseded
    } else {
        LeafLookup::Pending
    })
}

fn read_leaves(conn: &Connection, from: u64, end: u64) -> Result<Vec<DirectoryLeaf>, StorageError> {
    let mut stmt = conn.prepare_cached(
        "SELECT user_id, log_len, head_hash FROM kt_leaves WHERE idx >= ?1 AND idx < ?2
         ORDER BY idx",
    )?;
    let rows = stmt.query_map(params![from as i64, end as i64], |r| {
        Ok(DirectoryLeaf {
            user_id: r.get(0)?,
            log_len: r.get::<_, i64>(1)?.max(0) as u64,
            head_hash: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Opens the directory for `run`: the configured key (or a fresh one for
/// this process), its certificate checked against the pinned root.
pub(crate) async fn open(
    db: &Arc<Db>,
    kt: &KtConfig,
    root: &SigningPublicKey,
    metrics: KtMetrics,
) -> Result<Arc<Directory>, KeyserverError> {
    let key = match &kt.directory_key {
        Some(k) => Arc::clone(k),
        None => {
            tracing::warn!(
                "no directory key configured: a fresh one for this process only; clients \
                 cannot verify its epochs"
            );
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed[..]).map_err(|_| KeyserverError::Random)?;
            Arc::new(
                DirectoryKey::import_secret(&seed[..])
                    .map_err(|e| KeyserverError::Config(format!("directory key: {e}")))?,
            )
        }
    };
    let public = key.public_key();
    match &kt.certificate {
        Some(c) if !verify_directory_key(root, &public, c) => {
            return Err(KeyserverError::Config(
                "the directory certificate is not the organisation root's signature over this \
                 directory key"
                    .into(),
            ));
        }
        Some(_) => tracing::info!(
            directory_key = %hex::encode(public.as_bytes()),
            "key transparency: directory key certified by the organisation root"
        ),
        None => tracing::warn!(
            directory_key = %hex::encode(public.as_bytes()),
            "key transparency: no directory certificate; epochs are published with an empty \
             certificate, which clients refuse (the organisation root must sign the directory key)"
        ),
    }
    let certificate = kt.certificate;
    let directory = db
        .call(move |c| Directory::load(c, key, certificate, Some(metrics)))
        .await?;
    Ok(Arc::new(directory))
}

/// The publisher: every `epoch_interval`, an epoch if a log grew, and at
/// least every `max_epoch_age` one anyway; until `stop`.
pub(crate) async fn publisher(
    directory: Arc<Directory>,
    db: Arc<Db>,
    clock: Clock,
    kt: KtConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(kt.epoch_interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Instant::now();
    let mut first = true;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        // The first epoch of a fresh directory at once (even empty).
        let force = last.elapsed() >= kt.max_epoch_age || (first && directory.latest().is_none());
        first = false;
        let d = Arc::clone(&directory);
        let now = clock.now();
        let result = db.call(move |c| d.publish(c, now, force)).await;
        match result {
            Ok(Some(p)) => {
                last = Instant::now();
                tracing::debug!(
                    epoch = p.epoch.epoch,
                    tree_size = p.epoch.tree_size,
                    "key transparency epoch published"
                );
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "key transparency publication failed"),
        }
    }
}

/// The directory key stored at `path` (its 32-byte seed), or a new one
/// written there (0600) when the file is missing; `true` when created.
pub fn load_or_create_key(path: &std::path::Path) -> Result<(DirectoryKey, bool), KeyserverError> {
    let shown = path.display();
    match std::fs::read(path) {
        Ok(seed) => DirectoryKey::import_secret(&seed)
            .map(|k| (k, false))
            .map_err(|e| KeyserverError::Config(format!("{shown}: {e} (expected a 32-byte seed)"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|_| KeyserverError::Random)?;
            let key = DirectoryKey::import_secret(&seed)
                .map_err(|e| KeyserverError::Config(format!("directory key: {e}")))?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            use std::io::Write as _;
            let written = options
                .open(path)
                .and_then(|mut f| f.write_all(&seed).and_then(|()| f.sync_all()));
            // The only copy left is the key's own (zeroized on drop).
            seed.fill(0);
            written.map_err(|e| KeyserverError::Config(format!("{shown}: creating: {e}")))?;
            tracing::info!(
                path = %shown,
                directory_key = %hex::encode(key.public_key().as_bytes()),
                "directory key created: certify it with the organisation root"
            );
            Ok((key, true))
        }
        Err(e) => Err(KeyserverError::Config(format!("{shown}: {e}"))),
    }
}

/// The root's certificate of the directory key: 128 hex digits in `path`.
pub fn read_certificate(path: &std::path::Path) -> Result<[u8; 64], KeyserverError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| KeyserverError::Config(format!("{shown}: {e}")))?;
    let bytes =
        hex::decode(text.trim()).map_err(|e| KeyserverError::Config(format!("{shown}: {e}")))?;
    bytes
        .try_into()
        .map_err(|_| KeyserverError::Config(format!("{shown}: expected 128 hex digits")))
}
