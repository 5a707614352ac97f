//! The admin listener: `GET /metrics` (Prometheus text), `/healthz` (the
//! process answers) and `/readyz` (200 once the database is open and
//! migrated, 503 before and while stopping). A minimal HTTP/1.1 responder
//! on tokio: one request per connection, heads over 8 KiB or slower than
//! 5 s refused, 32 connections at once. It serves no user data; bind it to
//! loopback or an operations network, never the public interface.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::metrics::Registry;

const MAX_HEAD: usize = 8 << 10;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 32;

/// Serves `registry` on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, registry: Registry, shutdown: impl Future<Output = ()>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else { continue };
                    let registry = registry.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(READ_TIMEOUT * 2, answer(stream, &registry)).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Binds `addr` and serves in a task; returns the bound address.
pub async fn spawn(
    addr: &str,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(listener, registry, shutdown));
    Ok(bound)
}

async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let read = async {
        loop {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
                return Some(());
            }
            if buf.len() > MAX_HEAD {
                return None;
            }
        }
    };
    tokio::time::timeout(READ_TIMEOUT, read).await.ok()??;
    String::from_utf8(buf).ok()
}

/// The status, content type and body for a request line.
pub fn route(request_line: &str, registry: &Registry) -> (u16, &'static str, String) {
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return (405, "text/plain", "GET only\n".into());
    }
    match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            registry.render(),
        ),
        "/healthz" => (200, "text/plain", "ok\n".into()),
        "/readyz" if registry.is_ready() => (200, "text/plain", "ready\n".into()),
        "/readyz" => (503, "text/plain", "not ready\n".into()),
        _ => (
            404,
            "text/plain",
            "not found: /metrics, /healthz, /readyz\n".into(),
        ),
    }
}

async fn answer(mut stream: TcpStream, registry: &Registry) {
    let Some(head) = read_head(&mut stream).await else {
        return;
    };
    let line = head.lines().next().unwrap_or("");
    let (status, ctype, body) = route(line, registry);
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head_only = line.starts_with("HEAD ");
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n\
         cache-control: no-store\r\nconnection: close\r\n\r\n{}",
        body.len(),
        if head_only { "" } else { body.as_str() }
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// `GET path` on `addr`: status and body (for tests and `ward up` checks).
pub async fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn health_readiness_and_metrics_over_http() {
        let r = Registry::new();
        r.counter("ward_x_total", "X.").add(2);
        let addr = spawn("127.0.0.1:0", r.clone(), std::future::pending())
            .await
            .unwrap();
        assert_eq!(get(addr, "/healthz").await.unwrap().0, 200);
        assert_eq!(
            get(addr, "/readyz").await.unwrap(),
            (503, "not ready\n".into())
        );
        r.set_ready(true);
        assert_eq!(get(addr, "/readyz").await.unwrap().0, 200);
        let (status, body) = get(addr, "/metrics").await.unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("ward_x_total 2\n"));
        assert_eq!(get(addr, "/nope").await.unwrap().0, 404);
    }
}
