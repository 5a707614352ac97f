//! The file-descriptor limit. Each connection holds one descriptor, and the
//! usual soft limit of 1,024 is far below the servers' default connection
//! cap: accepts would then fail (EMFILE) and new clients wait. At start the
//! servers raise the soft limit to the hard one, and lower their connection
//! cap to what the result allows (see [`connection_cap`]).

/// Descriptors kept for everything but connections: the databases (with
/// their WAL and shm files, per pooled reader), the listener, logs.
pub const RESERVED_FDS: u64 = 128;

/// Raises the soft limit on open files to the hard limit; returns the soft
/// limit in force afterwards (`None`: unlimited or unknown, e.g. not Unix).
pub fn raise() -> Option<u64> {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let now = getrlimit(Resource::Nofile);
        let raised = rustix::process::Rlimit {
            current: now.maximum,
            maximum: now.maximum,
        };
        if now.current != now.maximum && setrlimit(Resource::Nofile, raised).is_ok() {
            return now.maximum;
        }
        now.current
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The connection cap that `soft_limit` descriptors allow: `wanted`, or
/// fewer, leaving [`RESERVED_FDS`] for everything else.
pub fn connection_cap(wanted: usize, soft_limit: Option<u64>) -> usize {
    match soft_limit {
        None => wanted,
        Some(n) => {
            let room = usize::try_from(n.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
            wanted.min(room.max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_the_server_itself() {
        assert_eq!(connection_cap(10_000, Some(1024)), 1024 - 128);
        assert_eq!(connection_cap(10_000, Some(1 << 20)), 10_000);
        assert_eq!(connection_cap(10_000, None), 10_000);
        assert_eq!(connection_cap(10, Some(5)), 1);
    }

    #[test]
    fn raise_reaches_the_hard_limit() {
        let soft = raise();
        #[cfg(unix)]
        assert_eq!(
            soft,
            rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum
        );
        let _ = soft;
    }
}
