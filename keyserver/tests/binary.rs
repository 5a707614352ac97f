//! The `ward-keyserver` binary starts from flags and environment, serves,
//! and stops cleanly on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::Duration;

use ward_core::testkit::Org;

#[tokio::test]
async fn binary_serves_and_stops_on_sigterm() {
    let mut rng = rand::rng();
    let org = Org::new(&mut rng);
    let a = org.enroll(&mut rng, "dr.a");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut suffix = [0u8; 8];
    rand::fill(&mut suffix);
    let db = std::env::temp_dir().join(format!("ward-ks-bin-{}.db", hex::encode(suffix)));
    let key_file = std::env::temp_dir().join(format!("ward-ks-bin-{}.key", hex::encode(suffix)));
    let mut child = Command::new(env!("CARGO_BIN_EXE_ward-keyserver"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--insecure-loopback")
        .env("WARD_KEYSERVER_DB", &db)
        // Beside the database, not in the working directory.
        .env("WARD_KEYSERVER_DIRECTORY_KEY_FILE", &key_file)
        .env(
            "WARD_KEYSERVER_ORG_ROOT",
            hex::encode(org.root_public().as_bytes()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let url = format!("ws://127.0.0.1:{port}");
    let limits = ward_net::Limits::default();
    let mut conn = None;
    for _ in 0..100 {
        if let Ok(c) = ward_net::conn::connect(&url, &limits).await {
            conn = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut conn = conn.expect("binary did not start listening");
    ward_net::handshake::client_enrolling(
        &mut conn,
        &a.device,
        "dr.a",
        &ward_net::handshake::Audience::keyserver(
            *a.chain.org_root(),
            ward_core::auth::DEFAULT_INSTANCE,
        ),
        &a.delegation,
        &a.invite,
    )
    .await
    .unwrap();
    conn.send_msg(&ward_proto::v1::KsRequest {
        request_id: 9,
        body: Some(ward_proto::v1::ks_request::Body::Append(a.log[0].clone())),
    })
    .await
    .unwrap();
    let r: ward_proto::v1::KsResponse = conn.recv_msg().await.unwrap().unwrap();
    assert_eq!(r.request_id, 9);
    assert!(matches!(
        r.body,
        Some(ward_proto::v1::ks_response::Body::Appended(_))
    ));

    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    // The open connection is told the server is going away.
    assert!(matches!(conn.recv().await, Ok(None)));
    let mut exited = None;
    for _ in 0..100 {
        if let Some(s) = child.try_wait().unwrap() {
            exited = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let exited = exited.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("binary did not stop on SIGTERM")
    });
    assert!(exited.success());
    // The directory key was created on first start, owner-only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(std::fs::read(&key_file).unwrap().len(), 32);
    let _ = std::fs::remove_file(&key_file);
    for ext in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{ext}", db.display()));
    }
}
