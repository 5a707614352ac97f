//! TLS as a client sees it: a trusted server connects, an untrusted one, a
//! plain one behind `wss://` and a TLS one behind `ws://` each fail at once
//! with a typed error, and a reloaded certificate serves new connections
//! while open ones carry on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use tokio::net::TcpListener;
use ward_net::tls::dev_ca::{DevPki, LOOPBACK_NAMES};
use ward_net::tls::{self, AcceptError, Acceptor, TlsError};
use ward_net::{Limits, NetError};
use ward_proto::v1::AuthResult;

/// Accepts connections forever: TLS (or plain) then WebSocket, then echoes
/// one frame back. Reports each accept outcome.
async fn server(
    acceptor: Acceptor,
) -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<Result<(), String>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let stream = match acceptor.accept(tcp).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(match e {
                            AcceptError::PlainText => "plain".to_owned(),
                            AcceptError::Io(e) => e.to_string(),
                        }));
                        return;
                    }
                };
                let limits = Limits::default();
                let Ok(mut conn) = ward_net::conn::accept(stream, &limits).await else {
                    let _ = tx.send(Err("ws".into()));
                    return;
                };
                let _ = tx.send(Ok(()));
                while let Ok(Some(m)) = conn.recv_msg::<AuthResult>().await {
                    if conn.send_msg(&m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr.to_string(), rx)
}

fn within<F: std::future::Future>(f: F) -> tokio::time::Timeout<F> {
    // "At once": far below the SDK's 10 s request timeout or any backoff.
    tokio::time::timeout(Duration::from_secs(5), f)
}

#[tokio::test]
async fn a_client_connects_to_a_server_its_pinned_ca_signed() {
    let pki = DevPki::mint("ca", LOOPBACK_NAMES).unwrap();
    let (addr, mut accepted) = server(Acceptor::Tls(pki.server().unwrap())).await;
    let port = addr.rsplit(':').next().unwrap();
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("wss://{host}:{port}");
        let mut conn = within(tls::connect(
            &url,
            &Limits::default(),
            &pki.client().unwrap(),
        ))
        .await
        .unwrap()
        .unwrap();
        let ping = AuthResult { ok: true, error: 7 };
        conn.send_msg(&ping).await.unwrap();
        assert_eq!(conn.recv_msg::<AuthResult>().await.unwrap(), Some(ping));
        assert_eq!(accepted.recv().await.unwrap(), Ok(()));
    }
}

#[tokio::test]
async fn a_client_refuses_a_server_whose_certificate_does_not_chain_to_its_roots() {
    let pki = DevPki::mint("the server's CA", LOOPBACK_NAMES).unwrap();
    let other = DevPki::mint("another CA", LOOPBACK_NAMES).unwrap();
    let (addr, _accepted) = server(Acceptor::Tls(pki.server().unwrap())).await;
    let url = format!("wss://{addr}");

    let err = within(tls::connect(
        &url,
        &Limits::default(),
        &other.client().unwrap(),
    ))
    .await
    .unwrap()
    .err()
    .unwrap();
    assert!(
        matches!(&err, NetError::Tls(TlsError::UntrustedCertificate(r)) if r.contains("UnknownIssuer")),
        "{err}"
    );
    assert!(
        err.to_string().contains("--ca-file"),
        "says how to fix: {err}"
    );

    // The public web roots do not trust a private CA either.
    let err = within(tls::connect(&url, &Limits::default(), &Default::default()))
        .await
        .unwrap()
        .err()
        .unwrap();
    assert!(
        matches!(err, NetError::Tls(TlsError::UntrustedCertificate(_))),
        "{err}"
    );

    // A certificate for another name, from the trusted CA, is refused too.
    let elsewhere = DevPki::mint("ca", &["relay.example"]).unwrap();
    let (addr, _a) = server(Acceptor::Tls(elsewhere.server().unwrap())).await;
    let err = within(tls::connect(
        &format!("wss://{addr}"),
        &Limits::default(),
        &elsewhere.client().unwrap(),
    ))
    .await
    .unwrap()
    .err()
    .unwrap();
    assert!(matches!(err, NetError::Tls(TlsError::WrongHost(h)) if h == "127.0.0.1"));
}

#[tokio::test]
async fn a_tls_listener_refuses_a_plain_text_client_and_tells_it_why() {
    let pki = DevPki::mint("ca", LOOPBACK_NAMES).unwrap();
    let (addr, mut accepted) = server(Acceptor::Tls(pki.server().unwrap())).await;
    let err = within(ward_net::conn::connect(
        &format!("ws://{addr}"),
        &Limits::default(),
    ))
    .await
    .unwrap()
    .err()
    .unwrap();
    assert!(
        matches!(&err, NetError::Tls(TlsError::ServerRequiresTls(_))),
        "{err}"
    );
    assert!(err.to_string().contains("wss://"));
    assert_eq!(accepted.recv().await.unwrap(), Err("plain".into()));
}

#[tokio::test]
async fn a_wss_url_to_a_plain_server_fails_at_once_with_a_typed_error() {
    let (addr, _accepted) = server(Acceptor::InsecureLoopback).await;
    let pki = DevPki::mint("ca", LOOPBACK_NAMES).unwrap();
    let err = within(tls::connect(
        &format!("wss://{addr}"),
        &Limits::default(),
        &pki.client().unwrap(),
    ))
    .await
    .expect("immediate, not a timeout")
    .err()
    .unwrap();
    assert!(matches!(err, NetError::Tls(TlsError::NotTls(_))), "{err}");
}

#[tokio::test]
async fn a_reloaded_certificate_serves_new_connections_and_keeps_open_ones() {
    let first = DevPki::mint("first CA", LOOPBACK_NAMES).unwrap();
    let second = DevPki::mint("second CA", LOOPBACK_NAMES).unwrap();
    let dir = std::env::temp_dir().join(format!("ward-tls-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
    std::fs::write(&cert, &first.cert_pem).unwrap();
    std::fs::write(&key, first.key_pem.as_bytes()).unwrap();
    let identity = tls::ServerTls::from_pem_files(&cert, &key).unwrap();
    let (addr, _accepted) = server(Acceptor::Tls(identity.clone())).await;
    let url = format!("wss://{addr}");
    let limits = Limits::default();

    let mut open = tls::connect(&url, &limits, &first.client().unwrap())
        .await
        .unwrap();

    // A broken file is refused and the old certificate stays.
    std::fs::write(&key, "not a key").unwrap();
    assert!(identity.reload().is_err());
    tls::connect(&url, &limits, &first.client().unwrap())
        .await
        .unwrap();

    std::fs::write(&cert, &second.cert_pem).unwrap();
    std::fs::write(&key, second.key_pem.as_bytes()).unwrap();
    identity.reload().unwrap();
    tls::connect(&url, &limits, &second.client().unwrap())
        .await
        .unwrap();
    assert!(
        tls::connect(&url, &limits, &first.client().unwrap())
            .await
            .is_err()
    );

    let ping = AuthResult {
        ok: false,
        error: 1,
    };
    open.send_msg(&ping).await.unwrap();
    assert_eq!(open.recv_msg::<AuthResult>().await.unwrap(), Some(ping));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_plain_listener_on_a_public_address_is_refused() {
    let public: std::net::SocketAddr = "0.0.0.0:7070".parse().unwrap();
    assert!(Acceptor::InsecureLoopback.check(public).is_err());
    assert!(
        Acceptor::InsecureLoopback
            .check("127.0.0.1:7070".parse().unwrap())
            .is_ok()
    );
}
