//! The professional directory (SECURITY.md §10.9): search the
//! organisation's clinicians by name, profession and registry number.
//!
//! Every user's log entry 0 carries the root-signed invite that names them
//! (display name, profession, registry number). The keyserver keeps a
//! search index of those three fields, normalised ([`normalise`]): a row in
//! `directory_index` per user and a row in `directory_words` per word of the
//! display name. The index is written in the transaction that stores the
//! user creation ([`index_user`]), and filled at startup for users stored
//! before it existed ([`backfill`]). A result carries the invite exactly as
//! entry 0 holds it: the searching device verifies it against the pinned
//! root and against the user's verified log before showing it, so the index
//! is a convenience the keyserver could lie about, never a trust anchor.
//!
//! Searching is for full sessions of active devices, and is rate limited per
//! device apart from other requests ([`Limiter`]): pages are small, so
//! harvesting the directory takes time, and a search costs a few index
//! range scans, not a table scan.

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use ward_core::chain::MAX_STATEMENT_BYTES;
use ward_core::ids::valid_user_id;
use ward_core::invite::MAX_SIGNED_INVITE_BYTES;
use ward_core::keys::SigningPublicKey;
use ward_proto::v1::{
    DirectoryEntry, DirectoryPage, ErrorCode, Invite, SearchDirectory, SignedInvite,
    SignedStatement, Statement, statement::Body,
};
use ward_proto::{Message as _, decode_bounded};

use crate::error::{RequestError, StorageError};

/// Longest query text, in bytes.
pub const MAX_QUERY_BYTES: usize = 256;
/// Most words in a query (after normalisation).
pub const MAX_QUERY_WORDS: usize = 8;
/// Longest profession filter, in bytes (an invite's profession is at most 128).
pub const MAX_PROFESSION_BYTES: usize = 128;
/// Page size when the request says 0.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest page served; a request for more gets this many.
pub const MAX_PAGE_SIZE: u32 = 50;

/// What the Latin-1 Supplement and Latin Extended-A letters (U+00C0 to
/// U+017F) fold to: lower case, without diacritics; ligatures and `ß` spelled
/// out; `×` and `÷` are separators. Generated from Unicode's canonical
/// decompositions (the letters without one, such as `ø`, `ł`, `đ`, by hand).
const LATIN_FOLD: [&str; 192] = [
    "a", "a", "a", "a", "a", "a", "ae", "c", "e", "e", "e", "e", "i", "i", "i", "i", // U+00C0
    "d", "n", "o", "o", "o", "o", "o", " ", "o", "u", "u", "u", "u", "y", "th",
    "ss", // U+00D0
    "a", "a", "a", "a", "a", "a", "ae", "c", "e", "e", "e", "e", "i", "i", "i", "i", // U+00E0
    "d", "n", "o", "o", "o", "o", "o", " ", "o", "u", "u", "u", "u", "y", "th", "y", // U+00F0
    "a", "a", "a", "a", "a", "a", "c", "c", "c", "c", "c", "c", "c", "c", "d", "d", // U+0100
    "d", "d", "e", "e", "e", "e", "e", "e", "e", "e", "e", "e", "g", "g", "g", "g", // U+0110
    "g", "g", "g", "g", "h", "h", "h", "h", "i", "i", "i", "i", "i", "i", "i", "i", // U+0120
    "i", "i", "ij", "ij", "j", "j", "k", "k", "k", "l", "l", "l", "l", "l", "l",
    "l", // U+0130
    "l", "l", "l", "n", "n", "n", "n", "n", "n", "n", "n", "n", "o", "o", "o", "o", // U+0140
    "o", "o", "oe", "oe", "r", "r", "r", "r", "r", "r", "s", "s", "s", "s", "s",
    "s", // U+0150
    "s", "s", "t", "t", "t", "t", "t", "t", "u", "u", "u", "u", "u", "u", "u", "u", // U+0160
    "u", "u", "u", "u", "w", "w", "y", "y", "y", "z", "z", "z", "z", "z", "z", "s", // U+0170
];

/// The words of `text`, normalised for matching (SECURITY.md §10.9):
/// every character lower-cased (Unicode's `to_lowercase`), then combining
/// diacritical marks (U+0300 to U+036F) dropped and the Latin letters of
/// [`LATIN_FOLD`] folded; then the text is split on every character that
/// is not alphanumeric. "Dr Hélène LE GOFF-Ørsted" gives `dr`, `helene`,
/// `le`, `goff`, `orsted`. Lower-casing first makes it idempotent: a
/// character whose lower case is a Latin letter (U+212B ANGSTROM SIGN is
/// `å`) folds as that letter does.
pub fn normalise(text: &str) -> Vec<String> {
    let mut folded = String::with_capacity(text.len());
    for c in text.chars().flat_map(char::to_lowercase) {
        let cp = u32::from(c);
        if (0x300..=0x36f).contains(&cp) {
            continue;
        }
        match cp
            .checked_sub(0xc0)
            .and_then(|i| LATIN_FOLD.get(i as usize))
        {
            Some(f) => folded.push_str(f),
            None => folded.push(c),
        }
    }
    folded
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A registry number as compared: its normalised words run together, so
/// that "10 10 123-4567" and "101012345 67" are the same number.
pub fn registry_key(text: &str) -> String {
    normalise(text).concat()
}

/// The upper bound of the strings starting with `prefix` (exclusive), for an
/// index range scan: no normalised word contains U+10FFFF, which is not
/// alphanumeric.
fn prefix_end(prefix: &str) -> String {
    let mut end = prefix.to_owned();
    end.push(char::MAX);
    end
}

/// A search request, checked and normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Every one must start a word of the display name.
    pub words: Vec<String>,
    /// The query as a registry-number prefix (empty: none).
    pub registry: String,
    /// Only this (normalised) profession; empty: any.
    pub profession: String,
    /// Results to return.
    pub page_size: u32,
    /// The last user of the previous page.
    pub after: Option<String>,
}

impl Query {
    /// Checks `req` (sizes, cursor form) and normalises it. Pure.
    pub fn parse(req: &SearchDirectory) -> Result<Self, RequestError> {
        if req.query.len() > MAX_QUERY_BYTES {
            return Err(RequestError::new(
                ErrorCode::TooLarge,
                format!("query over {MAX_QUERY_BYTES} bytes"),
            ));
        }
        if req.profession.len() > MAX_PROFESSION_BYTES {
            return Err(RequestError::new(
                ErrorCode::TooLarge,
                format!("profession over {MAX_PROFESSION_BYTES} bytes"),
            ));
        }
        let words = normalise(&req.query);
        if words.len() > MAX_QUERY_WORDS {
            return Err(RequestError::new(
                ErrorCode::TooLarge,
                format!("query of more than {MAX_QUERY_WORDS} words"),
            ));
        }
        let profession = normalise(&req.profession).join(" ");
        if words.is_empty() && profession.is_empty() {
            return Err(RequestError::malformed(
                "empty query: give a name, a registry number or a profession",
            ));
        }
        // The cursor is the last user id of the previous page (SECURITY.md
        // §10.9): opaque to clients, checked here like any user id.
        let after = if req.cursor.is_empty() {
            None
        } else {
            match String::from_utf8(req.cursor.clone()) {
                Ok(u) if valid_user_id(&u) => Some(u),
                _ => return Err(RequestError::malformed("invalid cursor")),
            }
        };
        let page_size = match req.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        Ok(Self {
            registry: words.concat(),
            words,
            profession,
            page_size,
            after,
        })
    }
}

/// Per-device search budgets, shared by all of a device's connections and
/// apart from the general request budget (a search is dearer than a log
/// fetch, and a burst of them is how a directory is harvested).
pub struct Limiter(ward_net::rate::SharedBuckets<[u8; 32]>);

impl Limiter {
    /// `per_minute` searches sustained, bursts of `burst`.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self(ward_net::rate::SharedBuckets::new(
            f64::from(per_minute.max(1)) / 60.0,
            burst.max(1),
        ))
    }

    /// Takes one search from `device`'s budget; false when it is spent.
    pub fn allow(&self, device: &SigningPublicKey) -> bool {
        self.0.allow(device.as_bytes())
    }
}

/// The invite of a user creation, and the fields the index keeps.
struct Indexed {
    invite: SignedInvite,
    sort_key: String,
    words: Vec<String>,
    profession: String,
    registry: String,
}

/// Reads the invite out of a stored (hence verified) entry 0.
fn indexed(entry: &SignedStatement) -> Result<Indexed, StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt(format!("entry 0: {what}"));
    let st: Statement = decode_bounded(&entry.statement, MAX_STATEMENT_BYTES)
        .map_err(|_| corrupt("statement does not decode"))?;
    let Some(Body::UserCreation(creation)) = st.body else {
        return Err(corrupt("not a user creation"));
    };
    let invite = creation.invite.ok_or_else(|| corrupt("no invite"))?;
    let details: Invite = decode_bounded(&invite.invite, MAX_SIGNED_INVITE_BYTES)
        .map_err(|_| corrupt("invite does not decode"))?;
    let words = normalise(&details.display_name);
    Ok(Indexed {
        invite,
        sort_key: words.join(" "),
        words,
        profession: normalise(&details.profession).join(" "),
        registry: registry_key(&details.registry_number),
    })
}

/// Indexes `user_id` from its entry 0, inside the transaction that stores
/// it (or that backfills it).
pub fn index_user(
    tx: &Connection,
    user_id: &str,
    entry0: &SignedStatement,
) -> Result<(), StorageError> {
    let ix = indexed(entry0)?;
    tx.execute(
        "INSERT INTO directory_index (user_id, sort_key, profession, registry, invite)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            user_id,
            ix.sort_key,
            ix.profession,
            ix.registry,
            ix.invite.encode_to_vec()
        ],
    )?;
    let mut insert =
        tx.prepare_cached("INSERT OR IGNORE INTO directory_words (word, user_id) VALUES (?1, ?2)")?;
    for w in &ix.words {
        insert.execute(params![w, user_id])?;
    }
    Ok(())
}

/// Indexes every stored user that has no index row yet (a database written
/// before the index existed), in one transaction. Returns how many.
pub fn backfill(conn: &mut Connection) -> Result<usize, StorageError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let missing: Vec<(String, SignedStatement)> = {
        let mut stmt = tx.prepare(
            "SELECT e.user_id, e.statement, e.signature FROM log_entries e
             WHERE e.seq = 0
               AND NOT EXISTS (SELECT 1 FROM directory_index d WHERE d.user_id = e.user_id)",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                SignedStatement {
                    statement: r.get(1)?,
                    signature: r.get(2)?,
                },
            ))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    for (user_id, entry) in &missing {
        index_user(&tx, user_id, entry)?;
    }
    tx.commit()?;
    Ok(missing.len())
}

/// The SQL of a search and its parameters.
fn statement(q: &Query, after_key: String, after_user: String) -> (String, Vec<Value>) {
    // ?1 ?2 cursor, ?3 profession, ?4 limit; then, with words, ?5 ?6 the
    // registry range and ?7.. a range per word.
    let mut args: Vec<Value> = vec![
        after_key.into(),
        after_user.into(),
        q.profession.clone().into(),
        i64::from(q.page_size + 1).into(),
    ];
    // An equality the planner can see (not `?3 = '' OR ...`): a profession
    // alone is then one range of `directory_index_profession`, in order.
    let profession = if q.profession.is_empty() {
        "1"
    } else {
        "d.profession = ?3"
    };
    let common = format!(
        "(d.sort_key > ?1 OR (d.sort_key = ?1 AND d.user_id > ?2))
           AND {profession}
           AND EXISTS (SELECT 1 FROM devices v WHERE v.user_id = d.user_id AND v.active = 1)"
    );
    let sql = if q.words.is_empty() {
        format!(
            "SELECT d.user_id, d.invite, u.log_len FROM directory_index d
             JOIN users u ON u.user_id = d.user_id
             WHERE {common}
             ORDER BY d.sort_key, d.user_id LIMIT ?4"
        )
    } else {
        args.push(q.registry.clone().into());
        args.push(prefix_end(&q.registry).into());
        let mut all_words = Vec::with_capacity(q.words.len());
        for w in &q.words {
            let (lo, hi) = (args.len() + 1, args.len() + 2);
            all_words.push(format!(
                "EXISTS (SELECT 1 FROM directory_words w WHERE w.user_id = d.user_id
                         AND w.word >= ?{lo} AND w.word < ?{hi})"
            ));
            args.push(w.clone().into());
            args.push(prefix_end(w).into());
        }
        // Candidates come from two index range scans: the longest word
        // (the most selective) and the registry prefix.
        let longest = q
            .words
            .iter()
            .enumerate()
            .max_by_key(|(_, w)| w.len())
            .map_or(0, |(i, _)| i);
        let (lo, hi) = (7 + 2 * longest, 8 + 2 * longest);
        format!(
            "WITH cand(user_id) AS (
                 SELECT user_id FROM directory_words WHERE word >= ?{lo} AND word < ?{hi}
                 UNION
                 SELECT user_id FROM directory_index WHERE registry >= ?5 AND registry < ?6
             )
             SELECT d.user_id, d.invite, u.log_len FROM cand
             JOIN directory_index d ON d.user_id = cand.user_id
             JOIN users u ON u.user_id = d.user_id
             WHERE {common}
               AND ((d.registry >= ?5 AND d.registry < ?6) OR ({}))
             ORDER BY d.sort_key, d.user_id LIMIT ?4",
            all_words.join(" AND ")
        )
    };
    (sql, args)
}

/// Serves one search for an active device of `caller_user`: a page of at
/// most `q.page_size` users, in order of normalised display name then user
/// id, after the cursor's user. Users without an active device are left
/// out (SECURITY.md §10.9).
pub fn search(
    conn: &mut Connection,
    caller_user: &str,
    caller_device: &SigningPublicKey,
    q: &Query,
) -> Result<DirectoryPage, RequestError> {
    let tx = conn.transaction()?;
    crate::storage::require_active(&tx, caller_user, caller_device)?;
    let (after_key, after_user) = match &q.after {
        None => (String::new(), String::new()),
        Some(u) => {
            let key: Option<String> = tx
                .query_row(
                    "SELECT sort_key FROM directory_index WHERE user_id = ?1",
                    params![u],
                    |r| r.get(0),
                )
                .optional()?;
            let key = key.ok_or_else(|| RequestError::malformed("invalid cursor"))?;
            (key, u.clone())
        }
    };
    let (sql, args) = statement(q, after_key, after_user);
    let mut stmt = tx.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut entries = Vec::new();
    let mut more = false;
    for row in rows {
        let (user_id, invite, log_len) = row?;
        if entries.len() == q.page_size as usize {
            more = true;
            break;
        }
        let invite: SignedInvite = decode_bounded(&invite, MAX_SIGNED_INVITE_BYTES)
            .map_err(|_| StorageError::Corrupt(format!("directory invite of {user_id:?}")))?;
        entries.push(DirectoryEntry {
            user_id,
            invite: Some(invite),
            log_len: log_len.max(0) as u64,
        });
    }
    let next_cursor = match entries.last() {
        Some(last) if more => last.user_id.as_bytes().to_vec(),
        _ => Vec::new(),
    };
    Ok(DirectoryPage {
        entries,
        next_cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A character whose lower case is a folded Latin letter folds with
    /// it: "Ångström" matches whichever Å the clinician's keyboard typed.
    #[test]
    fn the_angstrom_sign_folds_as_the_letter() {
        assert_eq!(normalise("\u{212b}ngstr\u{f6}m"), ["angstrom"]);
        assert_eq!(normalise("\u{c5}ngstr\u{f6}m"), ["angstrom"]);
        assert_eq!(normalise("\u{130}stanbul"), ["istanbul"]);
    }

    #[test]
    fn normalisation_folds_case_accents_and_separators() {
        assert_eq!(
            normalise("Dr Hélène LE GOFF-Ørsted"),
            ["dr", "helene", "le", "goff", "orsted"]
        );
        // Decomposed input (e + U+0301) folds like the composed letter.
        assert_eq!(normalise("He\u{301}le\u{300}ne"), normalise("Hélène"));
        assert_eq!(
            normalise("Œdipe Straße Łukasz"),
            ["oedipe", "strasse", "lukasz"]
        );
        assert_eq!(normalise("D'Alembert  "), ["d", "alembert"]);
        // Other scripts are lower-cased, not folded.
        assert_eq!(normalise("ΑΘΗΝΑ Москва"), ["αθηνα", "москва"]);
        assert!(normalise(" -- ,; ").is_empty());
        assert_eq!(registry_key("10 10 123-4567"), "10101234567");
    }

    fn query(q: &str) -> SearchDirectory {
        SearchDirectory {
            query: q.into(),
            ..SearchDirectory::default()
        }
    }

    #[test]
    fn queries_are_bounded_and_normalised() {
        let q = Query::parse(&query("  Hélène le")).unwrap();
        assert_eq!(q.words, ["helene", "le"]);
        assert_eq!(q.registry, "helenele");
        assert_eq!(q.page_size, DEFAULT_PAGE_SIZE);
        let code = |r: &SearchDirectory| Query::parse(r).unwrap_err().code;
        assert_eq!(code(&query("")), ErrorCode::Malformed);
        assert_eq!(code(&query("- ,")), ErrorCode::Malformed);
        assert_eq!(code(&query(&"a".repeat(257))), ErrorCode::TooLarge);
        assert_eq!(code(&query("a b c d e f g h i")), ErrorCode::TooLarge);
        let mut r = query("a");
        r.cursor = vec![0xff];
        assert_eq!(code(&r), ErrorCode::Malformed);
        r.cursor = Vec::new();
        r.page_size = 10_000;
        assert_eq!(Query::parse(&r).unwrap().page_size, MAX_PAGE_SIZE);
        // A profession alone is a query.
        let p = SearchDirectory {
            profession: "Sage-Femme".into(),
            ..SearchDirectory::default()
        };
        assert_eq!(Query::parse(&p).unwrap().profession, "sage femme");
    }

    use std::path::PathBuf;

    use ward_core::invite::InviteDetails;
    use ward_core::testkit::{Clinician, KIT_TIME, Org};

    use crate::storage::{append, migrate, open_connection};

    struct Dir {
        path: PathBuf,
        conn: Connection,
        org: Org,
        caller: Clinician,
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            for ext in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{ext}", self.path.display()));
            }
        }
    }

    fn details(user_id: &str, name: &str, profession: &str, registry: &str) -> InviteDetails {
        InviteDetails {
            user_id: user_id.into(),
            display_name: name.into(),
            profession: profession.into(),
            registry_number: registry.into(),
            expires_at: KIT_TIME + 86_400,
        }
    }

    /// A directory of five clinicians; the caller is "zz.caller".
    fn directory() -> Dir {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).unwrap();
        let path = std::env::temp_dir().join(format!("ward-ks-search-{}.db", hex::encode(bytes)));
        let mut conn = open_connection(&path).unwrap();
        migrate(&mut conn).unwrap();
        let mut rng = rand::rng();
        let org = Org::new(&mut rng);
        let root = org.root_public();
        let people = [
            details("h.legoff", "Dr Hélène Le Goff", "Physician", "10101234567"),
            details("h.lefevre", "Hervé LEFÈVRE", "nurse", "10109999999"),
            details("c.martin", "Claire Martin", "physician", "20200000001"),
            details("m.ostrom", "Mårten Øименов", "Pharmacist", "30300000002"),
            details("zz.caller", "Zoé Caller", "physician", "40400000003"),
        ];
        let mut caller = None;
        for d in &people {
            let c = org.enroll_with(&mut rng, d);
            append(&mut conn, &root, KIT_TIME, &c.log[0]).unwrap();
            if d.user_id == "zz.caller" {
                caller = Some(c);
            }
        }
        Dir {
            path,
            conn,
            org,
            caller: caller.unwrap(),
        }
    }

    fn find(d: &mut Dir, q: &str, profession: &str, size: u32, cursor: &[u8]) -> DirectoryPage {
        let q = Query::parse(&SearchDirectory {
            query: q.into(),
            profession: profession.into(),
            page_size: size,
            cursor: cursor.to_vec(),
        })
        .unwrap();
        search(&mut d.conn, "zz.caller", &d.caller.device.public_key(), &q).unwrap()
    }

    fn ids(p: &DirectoryPage) -> Vec<&str> {
        p.entries.iter().map(|e| e.user_id.as_str()).collect()
    }

    #[test]
    fn searches_are_index_range_scans_not_table_scans() {
        let d = directory();
        let queries = [
            query("helene le"),
            query("1010"),
            SearchDirectory {
                profession: "nurse".into(),
                ..SearchDirectory::default()
            },
            SearchDirectory {
                query: "h".into(),
                profession: "nurse".into(),
                cursor: b"h.legoff".to_vec(),
                ..SearchDirectory::default()
            },
        ];
        for r in &queries {
            let q = Query::parse(r).unwrap();
            let (sql, args) = statement(&q, "k".into(), "u".into());
            let mut stmt = d
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap();
            let plan: Vec<String> = stmt
                .query_map(rusqlite::params_from_iter(args), |r| r.get(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            for step in &plan {
                let table_scan = step.starts_with("SCAN ") && !step.starts_with("SCAN cand");
                assert!(!table_scan, "{r:?}: {plan:?}");
            }
            // Candidates come from the index of what is asked for.
            let driver = if q.words.is_empty() {
                "directory_index_profession (profession=?"
            } else {
                "directory_words USING PRIMARY KEY (word>? AND word<?)"
            };
            assert!(plan.iter().any(|s| s.contains(driver)), "{r:?}: {plan:?}");
        }
    }

    #[test]
    fn names_match_by_word_prefix_case_and_accent_insensitively() {
        let mut d = directory();
        assert_eq!(ids(&find(&mut d, "helene", "", 0, &[])), ["h.legoff"]);
        assert_eq!(ids(&find(&mut d, "HÉL", "", 0, &[])), ["h.legoff"]);
        // Every word must start a word of the name, in any order.
        assert_eq!(ids(&find(&mut d, "goff h", "", 0, &[])), ["h.legoff"]);
        assert!(find(&mut d, "goff claire", "", 0, &[]).entries.is_empty());
        // Ordered by normalised name: "dr helene..." before "herve...".
        assert_eq!(
            ids(&find(&mut d, "he", "", 0, &[])),
            ["h.legoff", "h.lefevre"]
        );
        assert_eq!(ids(&find(&mut d, "lefevre", "", 0, &[])), ["h.lefevre"]);
        assert_eq!(ids(&find(&mut d, "marten", "", 0, &[])), ["m.ostrom"]);
        // Inside a word does not match.
        assert!(find(&mut d, "artin", "", 0, &[]).entries.is_empty());
        let page = find(&mut d, "claire", "", 0, &[]);
        assert_eq!(page.entries[0].log_len, 1);
        assert!(page.next_cursor.is_empty());
        // The result is entry 0's invite, byte for byte.
        let stored = crate::storage::load_log(&d.conn, "c.martin").unwrap();
        assert_eq!(
            Some(indexed(&stored[0]).unwrap().invite),
            page.entries[0].invite
        );
    }

    #[test]
    fn registry_numbers_and_professions() {
        let mut d = directory();
        assert_eq!(ids(&find(&mut d, "10101234567", "", 0, &[])), ["h.legoff"]);
        assert_eq!(
            ids(&find(&mut d, "1010", "", 0, &[])),
            ["h.legoff", "h.lefevre"]
        );
        assert_eq!(ids(&find(&mut d, "10 10 99", "", 0, &[])), ["h.lefevre"]);
        assert_eq!(
            ids(&find(&mut d, "", "PHYSICIAN", 0, &[])),
            ["c.martin", "h.legoff", "zz.caller"]
        );
        assert_eq!(
            ids(&find(&mut d, "1010", "physician", 0, &[])),
            ["h.legoff"]
        );
        assert!(find(&mut d, "", "surgeon", 0, &[]).entries.is_empty());
    }

    #[test]
    fn pages_follow_the_cursor_without_gaps_or_repeats() {
        let mut d = directory();
        let mut seen = Vec::new();
        let mut cursor = Vec::new();
        loop {
            let page = find(&mut d, "", "physician", 2, &cursor);
            assert!(page.entries.len() <= 2);
            seen.extend(ids(&page).into_iter().map(str::to_owned));
            if page.next_cursor.is_empty() {
                break;
            }
            cursor = page.next_cursor;
        }
        assert_eq!(seen, ["c.martin", "h.legoff", "zz.caller"]);
        let bad = Query::parse(&SearchDirectory {
            query: "a".into(),
            cursor: b"nobody".to_vec(),
            ..SearchDirectory::default()
        })
        .unwrap();
        let e = search(
            &mut d.conn,
            "zz.caller",
            &d.caller.device.public_key(),
            &bad,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::Malformed);
    }

    #[test]
    fn users_without_an_active_device_are_left_out_and_callers_must_be_active() {
        let mut d = directory();
        let root = d.org.root_public();
        let stored = crate::storage::load_log(&d.conn, "c.martin").unwrap();
        let user = ward_core::chain::verify_log(&root, "c.martin", &stored).unwrap();
        let device = user.devices().next().unwrap().clone();
        let revoke = user.revoke_device_as_root(&d.org.root, &device.signing_key, KIT_TIME + 1);
        append(&mut d.conn, &root, KIT_TIME + 1, &revoke).unwrap();
        assert!(find(&mut d, "claire", "", 0, &[]).entries.is_empty());

        let q = Query::parse(&SearchDirectory {
            query: "h".into(),
            ..SearchDirectory::default()
        })
        .unwrap();
        let stranger = ward_core::keys::DeviceSigningKey::generate(&mut rand::rng());
        let e = search(&mut d.conn, "zz.caller", &stranger.public_key(), &q).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unauthenticated);
        let e = search(&mut d.conn, "c.martin", &device.signing_key, &q).unwrap_err();
        assert_eq!(e.code, ErrorCode::DeviceRevoked);
    }

    #[test]
    fn a_database_from_before_the_index_is_filled_at_startup() {
        let mut d = directory();
        let before = find(&mut d, "h", "", 0, &[]);
        d.conn
            .execute_batch("DELETE FROM directory_words; DELETE FROM directory_index;")
            .unwrap();
        assert!(find(&mut d, "h", "", 0, &[]).entries.is_empty());
        assert_eq!(backfill(&mut d.conn).unwrap(), 5);
        assert_eq!(backfill(&mut d.conn).unwrap(), 0);
        assert_eq!(find(&mut d, "h", "", 0, &[]), before);
        // Db::open does the same.
        drop(crate::storage::Db::open(&d.path).unwrap());
    }

    /// Schema 5: the index written under schema 4's normaliser (which
    /// folded before lower-casing) is rebuilt at the upgrade, so no stale
    /// word stays findable and every user is found as before.
    #[test]
    fn the_index_is_rebuilt_when_the_normaliser_changed() {
        let mut d = directory();
        let before = find(&mut d, "h", "", 0, &[]);
        let user: String = d
            .conn
            .query_row("SELECT user_id FROM directory_index LIMIT 1", [], |r| {
                r.get(0)
            })
            .unwrap();
        d.conn
            .execute(
                "INSERT INTO directory_words (word, user_id) VALUES ('\u{e5}ngstr\u{f6}m', ?1)",
                [&user],
            )
            .unwrap();
        d.conn.pragma_update(None, "user_version", 4).unwrap();
        drop(crate::storage::Db::open(&d.path).unwrap());
        let stale: i64 = d
            .conn
            .query_row(
                "SELECT count(*) FROM directory_words WHERE word = '\u{e5}ngstr\u{f6}m'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stale, 0);
        assert_eq!(find(&mut d, "h", "", 0, &[]), before);
    }
}

/// Properties of the normaliser and the request check over arbitrary
/// input (any Unicode, any bytes as a cursor): what the index and every
/// query rely on.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Words are never empty, hold only alphanumerics, no combining
        /// mark and no upper-case Latin letter; the registry key is their
        /// concatenation; the words of the words are the words (what an
        /// index of normalised words and a normalised query rely on).
        #[test]
        fn words_are_clean(text in "\\PC{0,64}") {
            let words = normalise(&text);
            for w in &words {
                prop_assert!(!w.is_empty());
                prop_assert!(w.chars().all(char::is_alphanumeric), "{w:?}");
                prop_assert!(!w.chars().any(|c| (0x300..=0x36f).contains(&u32::from(c))));
                prop_assert!(!w.chars().any(|c| c.is_ascii_uppercase()), "{w:?}");
            }
            prop_assert_eq!(registry_key(&text), words.concat());
            prop_assert_eq!(normalise(&words.join(" ")), words);
        }

        /// Any request is either refused with a typed error or parsed
        /// within the limits; never a panic.
        #[test]
        fn any_request_parses_or_is_refused(
            query in "\\PC{0,300}",
            profession in "\\PC{0,140}",
            page_size in any::<u32>(),
            cursor in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let req = SearchDirectory { query, profession, page_size, cursor };
            if let Ok(q) = Query::parse(&req) {
                prop_assert!(q.words.len() <= MAX_QUERY_WORDS);
                prop_assert!((1..=50).contains(&q.page_size));
                prop_assert!(!q.words.is_empty() || !q.profession.is_empty());
            }
        }
    }
}
