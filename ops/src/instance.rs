//! A warning for a server left at the default instance id where other
//! deployments could share its organisation root (SECURITY.md §8).

use std::net::SocketAddr;

/// The warning to log when `instance` is the protocol's default and the
/// server listens beyond loopback, or `None`.
///
/// Two deployments under one root that both keep the default cannot be
/// told apart by the handshake, so one of them can replay the other's
/// device answers (§8). On loopback (`ward up`, tests, demos) the default
/// is what it is for, so nothing is said.
pub fn default_instance_warning(
    service: &str,
    instance: &str,
    default: &str,
    listen: SocketAddr,
) -> Option<String> {
    if instance != default || listen.ip().is_loopback() {
        return None;
    }
    Some(format!(
        "{service} listens on {listen} with the default instance id {default:?}: if another \
         deployment (staging, another site) shares this organisation root, give each its own \
         --instance (SECURITY.md §8)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn the_default_beyond_loopback_is_flagged() {
        let w = default_instance_warning("ward-relay", "default", "default", addr("0.0.0.0:443"));
        assert!(w.is_some_and(|w| w.contains("--instance")));
        let w = default_instance_warning("ward-relay", "default", "default", addr("[::]:443"));
        assert!(w.is_some());
    }

    #[test]
    fn loopback_or_a_named_instance_is_quiet() {
        assert!(
            default_instance_warning("ward-relay", "default", "default", addr("127.0.0.1:0"))
                .is_none()
        );
        assert!(
            default_instance_warning("ward-relay", "default", "default", addr("[::1]:9")).is_none()
        );
        assert!(
            default_instance_warning("ward-relay", "chu-prod", "default", addr("0.0.0.0:443"))
                .is_none()
        );
    }
}
