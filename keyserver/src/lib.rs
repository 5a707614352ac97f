//! Ward's keyserver: the clinicians' public-key directory, the resource keys
//! wrapped for each recipient, the device grants of user keys, and the
//! access log of every wrapped-key read. It never sees a plaintext, a
//! resource key or a private key. SECURITY.md §10 specifies the API, its
//! authentication, its access rules and what the keyserver learns.
//!
//! | module | what |
//! |---|---|
//! | [`config`] | [`Config`], limits, the server clock |
//! | [`directory`] | statement acceptance: pure logic over `ward-core`'s verifiers |
//! | [`storage`] | SQLite schema, migrations, queries; [`storage::export_access_log`] |
//! | [`access`] | the group-committed access log |
//! | [`handler`] | request to response |
//! | [`rooms`] | the room requests: shapes, limits, dispatch (SECURITY.md §17.11) |
//! | [`room_storage`] | room logs verified on append, epoch-key wraps, room message keys, who reads what |
//! | [`admin`] | root sessions: root-signed entries from the offline root, no device needed |
//! | [`search`] | the professional directory: search index, normalisation, search budgets |
//! | [`transparency`] | key transparency: epochs published, proofs served, the public `/v2/kt` path (SECURITY.md §18.4) |
//! | `server` | accept loop, per-connection task, revocation fan-out, shutdown ([`run`]) |
//!
//! Transport and authentication are `ward-net`'s, shared with the relay: one
//! protobuf message per binary WebSocket message, then the device handshake
//! (`ward_net::handshake`, service `"ward-keyserver"`), then `KsRequest` /
//! `KsResponse` frames (`proto/ward/v1/keyserver.proto`).
//!
//! # Running
//!
//! ```text
//! ward-keyserver --listen 127.0.0.1:7071 --db /var/lib/ward/keyserver.db \
//!                --org-root <64 hex digits: the organisation root's Ed25519 public key>
//! ```
//!
//! Every flag may also be set from the environment; a flag wins over its
//! variable. No configuration file is needed (a wrapper may still keep one
//! as an environment file).
//!
//! | flag | environment | default | meaning |
//! |---|---|---|---|
//! | `--listen` | `WARD_KEYSERVER_LISTEN` | `127.0.0.1:7071` | TCP address to listen on |
//! | `--db` | `WARD_KEYSERVER_DB` | `keyserver.db` | SQLite database file (created if missing) |
//! | `--org-root` | `WARD_KEYSERVER_ORG_ROOT` | required | organisation root public key, hex |
//! | `--max-frame-bytes` | `WARD_KEYSERVER_MAX_FRAME_BYTES` | 4194304 | largest WebSocket message |
//! | `--auth-timeout-secs` | `WARD_KEYSERVER_AUTH_TIMEOUT_SECS` | 10 | time to finish the handshake |
//! | `--max-items` | `WARD_KEYSERVER_MAX_ITEMS` | 256 | items per request (keys, ids, grants, users) |
//! | `--rate` | `WARD_KEYSERVER_RATE` | 50 | sustained requests per second per device |
//! | `--burst` | `WARD_KEYSERVER_BURST` | 200 | request burst per device |
//! | `--max-connections` | `WARD_KEYSERVER_MAX_CONNECTIONS` | 10000 | open connections |
//! | `--idle-timeout-secs` | `WARD_KEYSERVER_IDLE_TIMEOUT_SECS` | 300 | close silent authenticated connections |
//! | `--max-enrolling` | `WARD_KEYSERVER_MAX_ENROLLING` | 1024 | open sessions of devices not enrolled yet |
//! | `--max-wrapped-keys-per-user` | `WARD_KEYSERVER_MAX_WRAPPED_KEYS_PER_USER` | 250000 | wrapped keys a user may have stored as sender |
//! | `--max-grants-per-user` | `WARD_KEYSERVER_MAX_GRANTS_PER_USER` | 4096 | device grants stored per user |
//! | `--key-retention-days` | `WARD_KEYSERVER_KEY_RETENTION_DAYS` | 60 | age at which wrapped keys (and grants of past user keys) are deleted |
//! | `--searches-per-minute` | `WARD_KEYSERVER_SEARCHES_PER_MINUTE` | 60 | sustained directory searches per device |
//! | `--search-burst` | `WARD_KEYSERVER_SEARCH_BURST` | 20 | directory search burst per device |
//! | `--kt-epoch-interval-ms` | `WARD_KEYSERVER_KT_EPOCH_INTERVAL_MS` | 2000 | how often grown logs are published in an epoch (SECURITY.md §18.4) |
//! | `--kt-max-epoch-age-secs` | `WARD_KEYSERVER_KT_MAX_EPOCH_AGE_SECS` | 60 | longest time between epochs (an idle directory republishes its tree) |
//! | `--directory-key-file` | `WARD_KEYSERVER_DIRECTORY_KEY_FILE` | `keyserver-directory.key` | the directory key's 32-byte seed (created 0600 if missing) |
//! | `--directory-certificate-file` | `WARD_KEYSERVER_DIRECTORY_CERTIFICATE_FILE` | none | the root's certificate of the directory key, hex; none: clients refuse the epochs |
//! | `--kt-public-rate` | `WARD_KEYSERVER_KT_PUBLIC_RATE` | 20 | sustained `/v2/kt` requests per second per source address |
//! | `--kt-public-burst` | `WARD_KEYSERVER_KT_PUBLIC_BURST` | 100 | `/v2/kt` request burst per source address |
//!
//! Logging follows `RUST_LOG` (default `info`). SIGINT or SIGTERM stops the
//! server gracefully.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod access;
pub mod admin;
pub mod config;
pub mod directory;
mod error;
pub mod handler;
pub mod metrics;
pub mod relay_link;
pub mod room_storage;
pub mod rooms;
pub mod search;
mod server;
pub mod storage;
pub mod transparency;

pub use config::{Clock, Config, KsLimits, KtConfig, Quotas};
pub use error::{KeyserverError, RequestError, StorageError};
pub use server::run;
