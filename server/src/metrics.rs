//! The relay's Prometheus series (served by the admin listener, see
//! `ward_ops::admin`). Counts only: no user id, device id or size of a
//! particular message ever becomes a label.

use ward_ops::metrics::{
    BATCH_BUCKETS, Counter, CounterVec, Gauge, Histogram, LATENCY_BUCKETS, Registry,
};

/// Every series the relay updates.
#[derive(Clone, Debug)]
pub struct RelayMetrics {
    /// Open connections (TLS and WebSocket accepted, authenticated or not).
    pub connections: Gauge,
    /// Connections accepted since start.
    pub accepted: Counter,
    /// Connections dropped before the WebSocket upgrade (TLS failure,
    /// plain text on a TLS listener, timeout).
    pub handshake_failures: Counter,
    /// `Send` frames stored (new messages, not duplicates).
    pub messages_in: Counter,
    /// `Deliver` frames written to devices.
    pub messages_out: Counter,
    /// Connections closed by the relay, by close code.
    pub closes: CounterVec,
    /// Commands per group commit.
    pub commit_batch: Histogram,
    /// Time of each group commit's `COMMIT` (its fsync), seconds.
    pub fsync_seconds: Histogram,
    /// Attachment blobs recorded (uploading or complete).
    pub blobs: Gauge,
    /// Declared bytes of those blobs.
    pub blob_bytes: Gauge,
    /// Blob pieces stored (each fsynced, each acknowledged once).
    pub blob_pieces_in: Counter,
    /// Blob bytes stored.
    pub blob_bytes_in: Counter,
    /// Blob pieces refused (out of order, wrong length, not the uploader's).
    pub blob_pieces_refused: Counter,
    /// Blob frames that waited for the device's byte budget.
    pub blob_throttled: Counter,
    /// Blob bytes served to readers.
    pub blob_bytes_out: Counter,
    /// Blobs deleted (fetched by every reader, expired, abandoned).
    pub blobs_deleted: Counter,
    /// Push wake-ups the gateway accepted (SECURITY.md §9.2).
    pub push_sent: Counter,
    /// Push wake-ups given up after every retry failed.
    pub push_failed: Counter,
    /// Push wake-ups dropped because the queue to the gateway was full.
    pub push_dropped: Counter,
    /// Device-link rendezvous waiting for their joiner (SECURITY.md §9.3).
    pub links_waiting: Gauge,
    /// Link joins paired with their opener.
    pub links_joined: Counter,
    /// Link joins refused (no such link, expired, already joined, malformed).
    pub link_joins_refused: Counter,
}

impl RelayMetrics {
    /// Registers the series on `r`.
    pub fn new(r: &Registry) -> Self {
        Self {
            connections: r.gauge("ward_relay_connections", "Open connections."),
            accepted: r.counter("ward_relay_connections_accepted_total", "Connections accepted."),
            handshake_failures: r.counter(
                "ward_relay_handshake_failures_total",
                "Connections dropped in the TLS handshake (untrusted, plain text, timeout).",
            ),
            messages_in: r.counter("ward_relay_messages_in_total", "Messages stored (Send)."),
            messages_out: r.counter("ward_relay_messages_out_total", "Messages delivered (Deliver)."),
            closes: r.counter_vec(
                "ward_relay_closes_total",
                "Connections closed by the relay, by WebSocket close code (rejections: 1002, 1009, 4001-4007).",
                "code",
            ),
            commit_batch: r.histogram(
                "ward_relay_commit_batch_size",
                "Commands per group commit (one fsync).",
                BATCH_BUCKETS,
            ),
            fsync_seconds: r.histogram(
                "ward_relay_fsync_seconds",
                "Duration of each group commit's COMMIT, which holds its fsync.",
                LATENCY_BUCKETS,
            ),
            blobs: r.gauge("ward_relay_blobs", "Attachment blobs stored or uploading."),
            blob_bytes: r.gauge(
                "ward_relay_blob_bytes",
                "Declared bytes of the attachment blobs stored or uploading.",
            ),
            blob_pieces_in: r.counter(
                "ward_relay_blob_pieces_in_total",
                "Blob pieces stored (fsynced and acknowledged).",
            ),
            blob_bytes_in: r.counter("ward_relay_blob_bytes_in_total", "Blob bytes stored."),
            blob_pieces_refused: r.counter(
                "ward_relay_blob_pieces_refused_total",
                "Blob pieces refused (out of order, wrong length, not the uploader's).",
            ),
            blob_throttled: r.counter(
                "ward_relay_blob_throttled_total",
                "Blob pieces and reads that waited for their device's byte budget (--blob-rate).",
            ),
            blob_bytes_out: r.counter(
                "ward_relay_blob_bytes_out_total",
                "Blob bytes served to readers.",
            ),
            blobs_deleted: r.counter(
                "ward_relay_blobs_deleted_total",
                "Blobs deleted (fetched by every reader, expired or abandoned).",
            ),
            push_sent: r.counter(
                "ward_relay_push_sent_total",
                "Push wake-ups the gateway accepted (2xx).",
            ),
            push_failed: r.counter(
                "ward_relay_push_failed_total",
                "Push wake-ups given up after every retry failed.",
            ),
            push_dropped: r.counter(
                "ward_relay_push_dropped_total",
                "Push wake-ups dropped: the queue to the gateway was full.",
            ),
            links_waiting: r.gauge(
                "ward_relay_links_waiting",
                "Device-link rendezvous waiting for the new device.",
            ),
            links_joined: r.counter(
                "ward_relay_links_joined_total",
                "Device links joined (both sides paired).",
            ),
            link_joins_refused: r.counter(
                "ward_relay_link_joins_refused_total",
                "Device-link joins refused (no such link, expired, already joined, malformed).",
            ),
        }
    }

    /// Counts a close the relay sends.
    pub fn closed(&self, code: u16) {
        self.closes.inc(&code.to_string());
    }
}
