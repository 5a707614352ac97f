//! The `ward-relay` binary as an operator runs it: TLS from PEM files,
//! reloaded on SIGHUP without dropping open connections; plain text refused
//! off loopback; JSON logs on request and no colour codes off a terminal;
//! the admin listener's readiness.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use ward_core::testkit::Org;
use ward_net::tls::dev_ca::{DevPki, LOOPBACK_NAMES};
use ward_net::{Limits, tls};
use ward_proto::v1::AuthChallenge;

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn dir() -> Dir {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).unwrap();
    let p = std::env::temp_dir().join(format!("ward-bin-tls-{}", hex::encode(r)));
    std::fs::create_dir_all(&p).unwrap();
    Dir(p)
}

fn root_hex() -> String {
    hex::encode(Org::new(&mut rand::rng()).root_public().as_bytes())
}

/// Starts the relay with `args`; returns it and the address it printed.
async fn start(args: &[String]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ward-relay"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line
        .strip_prefix("ward-relay listening on ")
        .unwrap()
        .to_owned();
    (child, addr)
}

async fn term(mut child: Child) -> String {
    let pid = child.id().unwrap().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    err
}

#[tokio::test]
async fn tls_from_files_reloads_on_sighup_and_keeps_open_connections() {
    let d = dir();
    let (first, second) = (
        DevPki::mint("first CA", LOOPBACK_NAMES).unwrap(),
        DevPki::mint("second CA", LOOPBACK_NAMES).unwrap(),
    );
    let (cert, key) = (d.0.join("relay.pem"), d.0.join("relay.key"));
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, first.key_pem.as_bytes()).unwrap();
    let args: Vec<String> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--db".into(),
        d.0.join("relay.db").display().to_string(),
        "--org-root".into(),
        root_hex(),
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
        "--log-format".into(),
        "json".into(),
        "--auth-timeout-secs".into(),
        "3".into(),
    ];
    let (child, addr) = start(&args).await;
    let url = format!("wss://{addr}");
    let limits = Limits::default();
    let mut open = tls::connect(&url, &limits, &first.client().unwrap())
        .await
        .unwrap();
    // The relay speaks first: its challenge, over TLS.
    let challenge: AuthChallenge = open.recv_msg().await.unwrap().unwrap();
    assert_eq!(challenge.service, "ward-relay");

    // New certificate files, then SIGHUP.
    std::fs::write(&cert, &second.cert_pem).unwrap();
    std::fs::write(&key, second.key_pem.as_bytes()).unwrap();
    let pid = child.id().unwrap().to_string();
    Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .await
        .unwrap();
    let mut reloaded = false;
    for _ in 0..100 {
        if tls::connect(&url, &limits, &second.client().unwrap())
            .await
            .is_ok()
        {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "the new certificate is served after SIGHUP");
    assert!(
        tls::connect(&url, &limits, &first.client().unwrap())
            .await
            .is_err()
    );
    // The connection opened before the reload is still up: it ends with its
    // handshake timeout's close frame (4002) over the old session, not a reset.
    let closed = tokio::time::timeout(Duration::from_secs(15), open.recv())
        .await
        .expect("the old connection answers");
    assert!(
        matches!(closed, Err(ward_net::NetError::Closed(Some(4002), _))),
        "{closed:?}"
    );

    let logs = term(child).await;
    assert!(!logs.contains('\u{1b}'), "no colour codes off a terminal");
    let mut saw_reload = false;
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v.get("level").is_some(), "{line}");
        saw_reload |= line.contains("TLS certificate reloaded");
    }
    assert!(saw_reload, "{logs}");
}

#[tokio::test]
async fn plain_text_is_refused_off_loopback_and_tls_is_required_by_default() {
    let d = dir();
    let base = |listen: &str| -> Vec<String> {
        vec![
            "--listen".into(),
            listen.into(),
            "--db".into(),
            d.0.join("relay.db").display().to_string(),
            "--org-root".into(),
            root_hex(),
        ]
    };
    let out = Command::new(env!("CARGO_BIN_EXE_ward-relay"))
        .args(base("127.0.0.1:0"))
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("TLS is required"),
        "{err}"
    );

    let mut args = base("0.0.0.0:0");
    args.push("--insecure-loopback".into());
    let out = Command::new(env!("CARGO_BIN_EXE_ward-relay"))
        .args(&args)
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("loopback addresses only"),
        "{err}"
    );
}
