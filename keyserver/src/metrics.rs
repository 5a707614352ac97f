//! The keyserver's Prometheus series (served by the admin listener, see
//! `ward_ops::admin`). Counts by request kind and error code only: no user,
//! device or resource id becomes a label.

use ward_ops::metrics::{Counter, CounterVec, Gauge, Histogram, Registry};
use ward_proto::v1::{ErrorCode, KsRequest, KsResponse, ks_request, ks_response};

/// Every series the keyserver updates.
#[derive(Clone, Debug)]
pub struct KsMetrics {
    /// Open connections.
    pub connections: Gauge,
    /// Connections dropped in the TLS handshake.
    pub handshake_failures: Counter,
    /// Requests by kind.
    pub requests: CounterVec,
    /// Refusals by error code.
    pub errors: CounterVec,
    /// Access-log rows written: one per wrapped key or grant served.
    pub access_log_rows: Counter,
}

impl KsMetrics {
    /// Registers the series on `r`.
    pub fn new(r: &Registry) -> Self {
        Self {
            connections: r.gauge("ward_keyserver_connections", "Open connections."),
            handshake_failures: r.counter(
                "ward_keyserver_handshake_failures_total",
                "Connections dropped in the TLS handshake (untrusted, plain text, timeout).",
            ),
            requests: r.counter_vec("ward_keyserver_requests_total", "Requests by kind.", "kind"),
            errors: r.counter_vec(
                "ward_keyserver_errors_total",
                "Requests refused, by error code.",
                "code",
            ),
            access_log_rows: r.counter(
                "ward_keyserver_access_log_rows_total",
                "Access-log rows written (one per wrapped key or device grant served).",
            ),
        }
    }

    /// The request's kind, as its label.
    pub fn kind(req: &KsRequest) -> &'static str {
        match &req.body {
            Some(ks_request::Body::Append(_)) => "append",
            Some(ks_request::Body::GetLogs(_)) => "get_logs",
            Some(ks_request::Body::PutKeys(_)) => "put_keys",
            Some(ks_request::Body::GetKeys(_)) => "get_keys",
            Some(ks_request::Body::PutGrants(_)) => "put_grants",
            Some(ks_request::Body::GetGrant(_)) => "get_grant",
            Some(ks_request::Body::AdminSubmit(_)) => "admin_submit",
            Some(ks_request::Body::AppendRoom(_)) => "append_room",
            Some(ks_request::Body::GetRoomLog(_)) => "get_room_log",
            Some(ks_request::Body::GetRoomWraps(_)) => "get_room_wraps",
            Some(ks_request::Body::PutRoomKey(_)) => "put_room_key",
            Some(ks_request::Body::GetRoomKeys(_)) => "get_room_keys",
            Some(ks_request::Body::ListRooms(_)) => "list_rooms",
            Some(ks_request::Body::SearchDirectory(_)) => "search_directory",
            Some(ks_request::Body::GetEpoch(_)) => "get_epoch",
            Some(ks_request::Body::GetInclusion(_)) => "get_inclusion",
            Some(ks_request::Body::GetLeaves(_)) => "get_leaves",
            None => "empty",
        }
    }

    /// Counts a request (its [`Self::kind`]) and its answer.
    pub fn observe(&self, kind: &'static str, resp: &KsResponse) {
        self.requests.inc(kind);
        match &resp.body {
            Some(ks_response::Body::Error(e)) => {
                let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
                self.errors.inc(code.as_str_name());
            }
            Some(ks_response::Body::Keys(k)) => self.access_log_rows.add(k.keys.len() as u64),
            Some(ks_response::Body::Grant(_)) => self.access_log_rows.inc(),
            Some(ks_response::Body::RoomWraps(w)) => self.access_log_rows.add(w.wraps.len() as u64),
            _ => {}
        }
    }
}

/// Key transparency's series (SECURITY.md §18.4).
#[derive(Clone, Debug)]
pub struct KtMetrics {
    /// The latest published epoch.
    pub epoch: Gauge,
    /// Leaves in the latest epoch's tree.
    pub tree_size: Gauge,
    /// Time to publish an epoch: the changed users read, the leaves and
    /// the epoch written and committed, the root computed and signed.
    pub publication_seconds: Histogram,
    /// Requests on the public `/v2/kt` path, by kind.
    pub public_requests: CounterVec,
}

impl KtMetrics {
    /// Registers the series on `r`.
    pub fn new(r: &Registry) -> Self {
        Self {
            epoch: r.gauge(
                "ward_keyserver_kt_epoch",
                "Latest published key-transparency epoch.",
            ),
            tree_size: r.gauge(
                "ward_keyserver_kt_tree_size",
                "Leaves in the latest key-transparency epoch.",
            ),
            publication_seconds: r.histogram(
                "ward_keyserver_kt_publication_seconds",
                "Time to publish a key-transparency epoch (read, write, sign, commit).",
                &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0],
            ),
            public_requests: r.counter_vec(
                "ward_keyserver_kt_public_requests_total",
                "Requests on the public /v2/kt path, by kind (refused: by error code).",
                "kind",
            ),
        }
    }
}
