//! A small Prometheus registry: counters, gauges and histograms on atomics,
//! rendered in the text exposition format (version 0.0.4).
//!
//! Hand-rolled rather than the `metrics` + `metrics-exporter-prometheus`
//! crates: the servers need a dozen fixed series, and this costs no
//! dependency (the exporter brings metrics-util, quanta, crossbeam and, with
//! its listener, hyper). Labels: at most one per family, values from a small
//! closed set (close codes, request kinds), never an id or a user.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// fsync and commit latencies, in seconds: 50 µs to 2.5 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];
/// Commands per commit (group commit batch sizes).
pub const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// A monotonically increasing count.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
    /// Adds one now and subtracts it when the guard drops (an open
    /// connection, a request in flight).
    pub fn track(&self) -> GaugeGuard {
        self.inc();
        GaugeGuard(self.clone())
    }
}

/// See [`Gauge::track`].
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Debug)]
struct HistInner {
    bounds: Vec<f64>,
    counts: Vec<AtomicU64>,
    sum_bits: AtomicU64,
    count: AtomicU64,
}

/// Observations in fixed buckets, with their sum and count.
#[derive(Clone, Debug)]
pub struct Histogram(Arc<HistInner>);

impl Histogram {
    fn new(bounds: &[f64]) -> Self {
        Self(Arc::new(HistInner {
            bounds: bounds.to_vec(),
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }))
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        let h = &self.0;
        if let Some(i) = h.bounds.iter().position(|b| v <= *b) {
            h.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        let _ = h
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + v).to_bits())
            });
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }
}

/// A counter per value of one label.
#[derive(Clone, Debug, Default)]
pub struct CounterVec(Arc<Mutex<BTreeMap<String, Counter>>>);

impl CounterVec {
    /// The counter for `value`, created at zero if new.
    pub fn with(&self, value: &str) -> Counter {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(value.to_owned()).or_default().clone()
    }
    /// Adds one for `value`.
    pub fn inc(&self, value: &str) {
        self.with(value).inc();
    }
}

type GaugeFn = Arc<dyn Fn() -> f64 + Send + Sync>;

enum Series {
    Counter(Counter),
    CounterVec(&'static str, CounterVec),
    Gauge(Gauge),
    GaugeFn(GaugeFn),
    Histogram(Histogram),
}

struct Family {
    name: String,
    help: String,
    series: Series,
}

#[derive(Default)]
struct Inner {
    families: Mutex<Vec<Family>>,
    ready: AtomicBool,
}

/// The metrics of one server, and whether it is ready. Cloning shares it.
#[derive(Clone, Default)]
pub struct Registry(Arc<Inner>);

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// An empty registry, not ready.
    pub fn new() -> Self {
        Self::default()
    }

    fn add(&self, name: &str, help: &str, series: Series) {
        let mut f = self.0.families.lock().unwrap_or_else(|p| p.into_inner());
        // Registering twice (a server run twice on one registry) replaces.
        f.retain(|x| x.name != name);
        f.push(Family {
            name: name.to_owned(),
            help: help.to_owned(),
            series,
        });
    }

    /// A new counter `name` (by convention ending in `_total`).
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        let c = Counter::default();
        self.add(name, help, Series::Counter(c.clone()));
        c
    }

    /// A new family of counters keyed by `label`.
    pub fn counter_vec(&self, name: &str, help: &str, label: &'static str) -> CounterVec {
        let c = CounterVec::default();
        self.add(name, help, Series::CounterVec(label, c.clone()));
        c
    }

    /// A new gauge.
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        let g = Gauge::default();
        self.add(name, help, Series::Gauge(g.clone()));
        g
    }

    /// A gauge read from `f` at each scrape (a queue's depth).
    pub fn gauge_fn(&self, name: &str, help: &str, f: impl Fn() -> f64 + Send + Sync + 'static) {
        self.add(name, help, Series::GaugeFn(Arc::new(f)));
    }

    /// A new histogram with these upper bounds (ascending; `+Inf` is added).
    pub fn histogram(&self, name: &str, help: &str, bounds: &[f64]) -> Histogram {
        let h = Histogram::new(bounds);
        self.add(name, help, Series::Histogram(h.clone()));
        h
    }

    /// Marks the server ready (`/readyz`): its database is open and migrated.
    pub fn set_ready(&self, ready: bool) {
        self.0.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether the server said it is ready.
    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::SeqCst)
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let families = self.0.families.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for f in families.iter() {
            let kind = match f.series {
                Series::Counter(_) | Series::CounterVec(..) => "counter",
                Series::Gauge(_) | Series::GaugeFn(_) => "gauge",
                Series::Histogram(_) => "histogram",
            };
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help.replace('\n', " "));
            let _ = writeln!(out, "# TYPE {} {kind}", f.name);
            match &f.series {
                Series::Counter(c) => {
                    let _ = writeln!(out, "{} {}", f.name, c.get());
                }
                Series::CounterVec(label, v) => {
                    let map = v.0.lock().unwrap_or_else(|p| p.into_inner());
                    for (value, c) in map.iter() {
                        let value = value.replace('\\', "\\\\").replace('"', "\\\"");
                        let _ = writeln!(out, "{}{{{label}=\"{value}\"}} {}", f.name, c.get());
                    }
                }
                Series::Gauge(g) => {
                    let _ = writeln!(out, "{} {}", f.name, g.get());
                }
                Series::GaugeFn(g) => {
                    let _ = writeln!(out, "{} {}", f.name, g());
                }
                Series::Histogram(h) => {
                    let mut cumulative = 0;
                    for (b, c) in h.0.bounds.iter().zip(&h.0.counts) {
                        cumulative += c.load(Ordering::Relaxed);
                        let _ = writeln!(out, "{}_bucket{{le=\"{b}\"}} {cumulative}", f.name);
                    }
                    let count = h.count();
                    let _ = writeln!(out, "{}_bucket{{le=\"+Inf\"}} {count}", f.name);
                    let sum = f64::from_bits(h.0.sum_bits.load(Ordering::Relaxed));
                    let _ = writeln!(out, "{}_sum {sum}", f.name);
                    let _ = writeln!(out, "{}_count {count}", f.name);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_text_format_parses_with_a_prometheus_parser() {
        let r = Registry::new();
        let c = r.counter("ward_test_messages_total", "Messages.");
        let v = r.counter_vec("ward_test_rejections_total", "By code.", "code");
        let g = r.gauge("ward_test_connections", "Open.");
        r.gauge_fn("ward_test_queue_depth", "Depth.", || 3.0);
        let h = r.histogram("ward_test_fsync_seconds", "Fsync.", LATENCY_BUCKETS);
        c.add(5);
        v.inc("4003");
        v.inc("4003");
        let _open = g.track();
        h.observe(0.0007);
        h.observe(0.02);
        let text = r.render();
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
        let find = |name: &str| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name)
                .unwrap_or_else(|| panic!("{name} in {text}"))
        };
        assert!(
            matches!(find("ward_test_messages_total").value, prometheus_parse::Value::Counter(x) if x == 5.0)
        );
        let rej = find("ward_test_rejections_total");
        assert_eq!(rej.labels.get("code"), Some("4003"));
        assert!(
            matches!(find("ward_test_connections").value, prometheus_parse::Value::Gauge(x) if x == 1.0)
        );
        match &find("ward_test_fsync_seconds").value {
            prometheus_parse::Value::Histogram(b) => {
                let le_1ms = b.iter().find(|x| x.less_than == 0.001).unwrap();
                assert_eq!(le_1ms.count, 1.0);
                assert_eq!(b.last().unwrap().count, 2.0);
            }
            other => panic!("{other:?}"),
        }
        drop(_open);
        assert_eq!(g.get(), 0);
    }
}
