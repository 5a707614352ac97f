// Caps on repeated fields, checked by the wire walker (`bounded.rs`) before
// prost allocates anything. Shared with `build.rs` (which bakes them into the
// generated schema tables), so this file holds plain constants only.
//
// A cap is an allocation bound, not a protocol rule: the services check their
// own (usually lower, configurable) item limits after decoding, with a typed
// error. These only keep a frame of `22 00` repeated from turning into
// millions of entries.

/// Most entries of any repeated field not listed in [`REPEATED_CAPS`].
pub const DEFAULT_REPEATED_CAP: u32 = 4096;

/// Per-field caps, by full field name (`package.Message.field`).
pub const REPEATED_CAPS: &[(&str, u32)] = &[
    // ward_core::chain::MAX_LOG_ENTRIES
    ("ward.v1.AuthResponse.log", 4096),
    ("ward.v1.UserLog.entries", 4096),
    ("ward.v1.PublishLog.entries", 4096),
    ("ward.v1.LinkNotice.entries", 4096),
    // The relay's max_recipients (default 1024) is checked after decoding.
    ("ward.v1.Send.recipients", 4096),
    // The relay takes at most MAX_SEND_BLOBS (16) after decoding.
    ("ward.v1.Send.blob_ids", 64),
    // ward_core::envelope::MAX_RECIPIENTS is 256.
    ("ward.v1.EnvelopeHeader.recipient_user_ids", 1024),
    // ward_core::room::MAX_ROOM_MEMBERS (1024) and MAX_ROOM_LOG_ENTRIES (4096):
    // every member is listed in an epoch; an addition lists its new members.
    ("ward.v1.RoomEpoch.members", 1024),
    ("ward.v1.RoomAdd.members", 1024),
    ("ward.v1.RoomLog.entries", 4096),
    // keyserver/src/rooms.rs: MAX_ENTRIES_PER_APPEND and MAX_WRAPS_PER_APPEND.
    ("ward.v1.AppendRoom.entries", 16),
    ("ward.v1.AppendRoom.wraps", 1024),
    // The keyserver serves at most 50 directory results a page (SECURITY.md §10.9).
    ("ward.v1.DirectoryPage.entries", 64),
    // Key transparency (SECURITY.md §18): ward_core::transparency::MAX_PROOF_NODES
    // (128) per proof; the keyserver serves at most 1024 leaves a page.
    ("ward.v1.EpochProof.consistency", 128),
    ("ward.v1.InclusionProof.path", 128),
    ("ward.v1.Leaves.leaves", 1024),
    ("ward.v1.SignedEpoch.witnesses", 64),
    // `ward.v1.AdminSubmit` has no repeated field (one `SignedStatement`):
    // its size is bounded by the frame and by MAX_STATEMENT_BYTES.
];

/// Most repeated-field entries in one decoded message, all fields and
/// nesting levels together (a map of logs of entries multiplies caps).
pub const MAX_TOTAL_ENTRIES: u32 = 1 << 16;

/// Deepest nesting of messages the walker follows.
pub const MAX_DEPTH: u32 = 32;
