//! What both Ward servers need to be run by an IT team (issue 12), written
//! once:
//!
//! | module | what |
//! |---|---|
//! | [`layered`] | one configuration from a TOML file, the environment and flags (flags win), and `print-config` |
//! | [`tls_args`] | the TLS flags (`--tls-cert`, `--tls-key`, `--insecure-loopback`) into a `ward_net::tls::Acceptor` |
//! | [`logging`] | text or JSON logs on standard error; colour only on a terminal |
//! | [`metrics`] | a small Prometheus registry (counters, gauges, histograms) and its text format |
//! | [`admin`] | the admin listener: `/metrics`, `/healthz`, `/readyz` over a minimal HTTP/1.1 responder |
//! | [`backup`] | SQLite's online backup API, consistent while the server runs |
//! | [`instance`] | a warning for a server left at the default instance id beyond loopback |
//! | [`deploy_check`] | for the servers' tests: `deploy/`'s systemd units and example configurations check out |
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod backup;
pub mod deploy_check;
pub mod instance;
pub mod layered;
pub mod logging;
pub mod metrics;
pub mod tls_args;
