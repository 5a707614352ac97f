//! Admission of unauthenticated connections, shared by the relay and the
//! keyserver: at most `per_address` at once from one source (an IPv4
//! address, or an IPv6 /64, which one host usually holds whole), and at most
//! `total` from everyone. A flood from one address then fills its own share
//! and nobody else's, and the memory unauthenticated sockets may hold is
//! bounded by `total x max_preauth_frame_bytes`.
//!
//! Authenticated connections are not counted per address: a hospital's
//! phones often share one NAT address.
//!
//! Refusals are logged in aggregate ([`RefusalLog`]): one line per interval,
//! not one per connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The source a connection is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// One IPv4 address.
    V4([u8; 4]),
    /// One IPv6 /64.
    V6([u8; 8]),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4.octets()),
                None => {
                    let o = v6.octets();
                    Source::V6([o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]])
                }
            },
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its source opens connections faster than its accept rate.
    Rate,
    /// Its source already has `per_address` unauthenticated connections.
    PerAddress,
    /// `total` unauthenticated connections are open.
    Total,
}

/// Counts unauthenticated connections per source and in total.
#[derive(Debug)]
pub struct Gate {
    per_address: usize,
    total: usize,
    state: Mutex<(usize, HashMap<Source, usize>)>,
    rate: Option<crate::rate::SharedBuckets<Source>>,
}

/// An admitted unauthenticated connection; its place is given back on drop
/// (at login, or when the connection ends).
#[derive(Debug)]
pub struct Ticket {
    gate: Arc<Gate>,
    source: Source,
}

impl Gate {
    /// A gate of `per_address` and `total` places (each at least 1).
    pub fn new(per_address: usize, total: usize) -> Arc<Self> {
        Arc::new(Self {
            per_address: per_address.max(1),
            total: total.max(1),
            state: Mutex::new((0, HashMap::new())),
            rate: None,
        })
    }

    /// As [`Gate::new`], and each source may open at most `rate_per_sec`
    /// connections per second (bursts of `burst`): refused ones are dropped
    /// at accept, before any work, so a reconnect flood costs little.
    pub fn with_rate(per_address: usize, total: usize, rate_per_sec: f64, burst: u32) -> Arc<Self> {
        Arc::new(Self {
            per_address: per_address.max(1),
            total: total.max(1),
            state: Mutex::new((0, HashMap::new())),
            rate: Some(crate::rate::SharedBuckets::new(rate_per_sec, burst)),
        })
    }

    /// Admits a connection from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refused> {
        let source = Source::from(ip);
        if let Some(rate) = &self.rate
            && !rate.allow(&source)
        {
            return Err(Refused::Rate);
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, map) = &mut *state;
        if *total >= self.total {
            return Err(Refused::Total);
        }
        let n = map.entry(source).or_insert(0);
        if *n >= self.per_address {
            return Err(Refused::PerAddress);
        }
        *n += 1;
        *total += 1;
        Ok(Ticket {
            gate: Arc::clone(self),
            source,
        })
    }

    /// Unauthenticated connections open now.
    pub fn open(&self) -> usize {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).0
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self
            .gate
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (total, map) = &mut *state;
        *total = total.saturating_sub(1);
        if let Some(n) = map.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.source);
            }
        }
    }
}

/// Refused connections, logged as one warning per `interval` with counts by
/// reason, instead of one line per connection (a flood would flood the log).
#[derive(Debug)]
pub struct RefusalLog {
    interval: Duration,
    counts: [AtomicU64; 5],
    last: Mutex<Option<Instant>>,
}

/// What a server refused a connection for.
#[derive(Debug, Clone, Copy)]
pub enum Reason {
    /// Over the cap on connections.
    TooMany = 0,
    /// Over the per-address cap on unauthenticated connections.
    PerAddress = 1,
    /// Over the cap on unauthenticated connections.
    Unauthenticated = 2,
    /// Over the cap on refusals being answered: dropped without a close code.
    Dropped = 3,
    /// Over the per-address accept rate: dropped at accept.
    Rate = 4,
}

impl From<Refused> for Reason {
    fn from(r: Refused) -> Self {
        match r {
            Refused::PerAddress => Reason::PerAddress,
            Refused::Total => Reason::Unauthenticated,
            Refused::Rate => Reason::Rate,
        }
    }
}

impl RefusalLog {
    /// Logs at most once per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            counts: Default::default(),
            last: Mutex::new(None),
        }
    }

    /// Counts one refusal; returns the counts (too many, per address,
    /// unauthenticated, dropped, rate) when a line is due, and then logs it.
    pub fn refused(&self, service: &str, why: Reason) -> Option<[u64; 5]> {
        self.counts[why as usize].fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        {
            let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| now.duration_since(t) < self.interval) {
                return None;
            }
            *last = Some(now);
        }
        let c: [u64; 5] = std::array::from_fn(|i| self.counts[i].swap(0, Ordering::Relaxed));
        tracing::warn!(
            service,
            too_many_connections = c[0],
            per_address = c[1],
            unauthenticated = c[2],
            dropped = c[3],
            over_rate = c[4],
            "connections refused (counts since the last such line)"
        );
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_cannot_take_another_addresses_places() {
        let gate = Gate::new(2, 3);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.1".parse().unwrap();
        let t1 = gate.admit(a).unwrap();
        let _t2 = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).unwrap_err(), Refused::PerAddress);
        let _t3 = gate.admit(b).unwrap();
        assert_eq!(gate.admit(b).unwrap_err(), Refused::Total);
        drop(t1);
        assert_eq!(gate.open(), 2);
        assert!(gate.admit(a).is_ok());
    }

    #[test]
    fn a_source_over_its_accept_rate_is_refused() {
        let gate = Gate::with_rate(100, 100, 0.001, 3);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| gate.admit(a).unwrap()).collect();
        drop(held);
        assert_eq!(gate.admit(a).unwrap_err(), Refused::Rate);
        assert!(gate.admit("127.0.0.1".parse().unwrap()).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let x: IpAddr = "2001:db8::1".parse().unwrap();
        let y: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        assert_eq!(Source::from(x), Source::from(y));
        let m: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(Source::from(m), Source::V4([10, 0, 0, 1]));
    }

    #[test]
    fn refusals_are_logged_once_per_interval() {
        let log = RefusalLog::new(Duration::from_secs(3600));
        assert_eq!(log.refused("t", Reason::TooMany), Some([1, 0, 0, 0, 0]));
        for _ in 0..5000 {
            assert_eq!(log.refused("t", Reason::PerAddress), None);
        }
        let log = RefusalLog::new(Duration::ZERO);
        log.refused("t", Reason::TooMany);
        assert_eq!(log.refused("t", Reason::Dropped), Some([0, 0, 0, 1, 0]));
    }
}
