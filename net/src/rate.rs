//! Per-device rate limits, shared by the relay and the keyserver: a token
//! bucket, the buckets of devices between their connections (so that
//! reconnecting does not refill one), and buckets shared by all of a
//! device's concurrent connections.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Refills at `rate` tokens per second up to `capacity`; each frame takes one.
#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_sec: f64, burst: u32) -> Self {
        let capacity = f64::from(burst.max(1));
        Self {
            capacity,
            rate: rate_per_sec.max(0.0),
            tokens: capacity,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self) -> bool {
        self.try_take_at(Instant::now())
    }

    /// Takes `n` tokens (bytes, for a byte budget), going into debt when
    /// there are fewer, and returns how long the caller waits before using
    /// them: zero while the bucket held `n`, else the time the rate takes to
    /// refill what was missing. A later call also waits out the debt, so a
    /// sustained stream gets the rate whatever the size of each piece.
    pub fn take_many(&mut self, n: f64) -> Duration {
        self.take_many_at(Instant::now(), n)
    }

    fn take_many_at(&mut self, now: Instant, n: f64) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity) - n.max(0.0);
        if self.tokens >= 0.0 || self.rate <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// Whether the bucket has refilled completely by `now`.
    fn is_full_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.capacity
    }

    fn try_take_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Buckets of devices that are not connected right now. A full bucket is
/// not kept: a fresh one is the same.
pub struct Buckets<K> {
    rate: f64,
    burst: u32,
    parked: Mutex<HashMap<K, TokenBucket>>,
}

/// Parked buckets beyond which full ones are pruned.
const PRUNE_ABOVE: usize = 4096;

impl<K: Eq + Hash> Buckets<K> {
    /// Buckets of `rate_per_sec` and `burst`.
    pub fn new(rate_per_sec: f64, burst: u32) -> Self {
        Self {
            rate: rate_per_sec,
            burst,
            parked: Mutex::new(HashMap::new()),
        }
    }

    /// The bucket `key` left behind, or a full one.
    pub fn take(&self, key: &K) -> TokenBucket {
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key)
            .unwrap_or_else(|| TokenBucket::new(self.rate, self.burst))
    }

    /// Parks `key`'s bucket until its next connection.
    pub fn park(&self, key: K, bucket: TokenBucket) {
        let now = Instant::now();
        if bucket.is_full_at(now) {
            return;
        }
        let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        if parked.len() >= PRUNE_ABOVE {
            parked.retain(|_, b| !b.is_full_at(now));
        }
        parked.insert(key, bucket);
    }
}

/// Buckets shared by every connection of a key (a device may hold several
/// keyserver connections at once; they draw on one budget).
#[derive(Debug)]
pub struct SharedBuckets<K> {
    rate: f64,
    burst: u32,
    buckets: Mutex<HashMap<K, TokenBucket>>,
}

impl<K: Eq + Hash + Clone> SharedBuckets<K> {
    /// Buckets of `rate_per_sec` and `burst`.
    pub fn new(rate_per_sec: f64, burst: u32) -> Self {
        Self {
            rate: rate_per_sec,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `key`'s bucket; false when it is empty.
    pub fn allow(&self, key: &K) -> bool {
        let now = Instant::now();
        let mut map = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= PRUNE_ABOVE {
            map.retain(|_, b| !b.is_full_at(now));
        }
        map.entry(key.clone())
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst))
            .try_take_at(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte budget: a burst passes at once, then pieces wait for the
    /// rate, debt included; an idle pause refills it.
    #[test]
    fn take_many_waits_for_the_rate_beyond_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000.0, 2000);
        b.last = t0;
        assert_eq!(b.take_many_at(t0, 1500.0), Duration::ZERO);
        // 500 left: 1,000 more is 500 short, half a second at 1,000/s.
        assert_eq!(b.take_many_at(t0, 1000.0), Duration::from_millis(500));
        // The debt stays: another 1,000 at once waits 1.5 s in all.
        assert_eq!(b.take_many_at(t0, 1000.0), Duration::from_millis(1500));
        // Ten idle seconds refill it to the burst, not beyond.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.take_many_at(later, 2000.0), Duration::ZERO);
        assert!(b.take_many_at(later, 1.0) > Duration::ZERO);
    }

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3);
        b.last = t0;
        assert!((0..3).all(|_| b.try_take_at(t0)));
        assert!(!b.try_take_at(t0));
        assert!(b.try_take_at(t0 + Duration::from_millis(100)));
        assert!(!b.try_take_at(t0 + Duration::from_millis(100)));
        // Never more than the burst, however long the pause.
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| b.try_take_at(later)));
        assert!(!b.try_take_at(later));
    }

    #[test]
    fn shared_buckets_draw_on_one_budget_per_key() {
        let shared = SharedBuckets::new(0.001, 2);
        assert!(shared.allow(&"dev") && shared.allow(&"dev"));
        assert!(
            !shared.allow(&"dev"),
            "a second connection gets no fresh bucket"
        );
        assert!(shared.allow(&"other"));
    }

    #[test]
    fn a_parked_bucket_is_not_refilled_by_reconnecting() {
        let buckets = Buckets::new(0.001, 2);
        let mut b = buckets.take(&"dev");
        assert!(b.try_take() && b.try_take() && !b.try_take());
        buckets.park("dev", b);
        let mut again = buckets.take(&"dev");
        assert!(!again.try_take());
        // A full bucket is not kept.
        buckets.park("other", buckets.take(&"other"));
        assert!(buckets.parked.lock().unwrap().get("other").is_none());
    }
}
