//! The stop signal every Ward process obeys: Ctrl-C (SIGINT) or SIGTERM from
//! a service manager.

use std::future::Future;

/// Installs the handlers now and returns a future that completes on the
/// first signal. Installing eagerly matters: a handler installed only when a
/// future is first polled misses a signal sent right after the process says
/// it is ready, and the default action then kills it without a clean stop.
pub fn stop() -> std::io::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
