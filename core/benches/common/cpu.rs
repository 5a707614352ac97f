//! CPU time from Linux's /proc, for benches on a shared machine: the wall
//! clock of a two-thread pipeline says little when other sessions' builds
//! hold the cores (the kernel's autogroup shares the CPUs between sessions,
//! so a second thread of ours gets a core only when someone else's is
//! idle). On-CPU time does not depend on the load, and neither does the
//! time a thread spent runnable but waiting for a core, which shows the load.
//! Elsewhere than Linux every figure is zero.

use std::time::{Duration, Instant};

/// `(on-CPU, waiting for a CPU)` of the calling thread, in nanoseconds
/// (`/proc/thread-self/schedstat`, nanosecond precision).
fn thread_times() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let mut f = s.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
    (f.next().unwrap_or(0), f.next().unwrap_or(0))
}

/// User + system time of the whole process, every thread that ever ran in
/// it included, in nanoseconds (`/proc/self/stat`, clock ticks of 10 ms:
/// sum it over many iterations).
fn process_cpu() -> u64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) * 10_000_000
}

/// What one side of a pair cost, summed over its iterations.
#[derive(Default, Clone, Copy)]
pub struct Cost {
    /// Wall-clock time.
    pub wall: Duration,
    /// On-CPU time of the calling thread.
    pub thread_cpu: u64,
    /// Time the calling thread was runnable but had no core.
    pub thread_wait: u64,
    /// CPU time of the whole process (the calling thread and any it spawned).
    pub process_cpu: u64,
}

impl Cost {
    /// Runs `f` once and adds what it cost.
    pub fn measure(&mut self, f: impl FnOnce()) -> Duration {
        let start = self.start();
        let t = Instant::now();
        f();
        self.stop(t, start.0, start.1);
        t.elapsed()
    }

    /// For code that cannot be a closure: the counters before it.
    pub fn start(&self) -> ((u64, u64), u64) {
        (thread_times(), process_cpu())
    }

    /// After it: adds the time since `t` and the counters' increase.
    pub fn stop(&mut self, t: Instant, thread0: (u64, u64), process0: u64) {
        let wall = t.elapsed();
        let (c1, w1) = thread_times();
        self.wall += wall;
        self.thread_cpu += c1.saturating_sub(thread0.0);
        self.thread_wait += w1.saturating_sub(thread0.1);
        self.process_cpu += process_cpu().saturating_sub(process0);
    }

    /// CPU time of the other threads (the hash thread).
    pub fn helper_cpu(&self) -> u64 {
        self.process_cpu.saturating_sub(self.thread_cpu)
    }
}

/// Prints a pair: the wall-clock throughput ratio (raw / ward time), and
/// the ratio with two free cores, raw CPU over the longer of the caller
/// thread's CPU and the other threads' (the critical path of the pipeline:
/// what the wall clock gives when the load lets each thread have a core).
pub fn report(name: &str, reference: &str, ward: &Cost, raw: &Cost) {
    let ms = |ns: u64| ns as f64 / 1e6;
    let critical = ward.thread_cpu.max(ward.helper_cpu());
    println!(
        "cpu/{name}: vs {reference}: wall ratio {:.3}; two-free-cores ratio {:.3} \
         (raw cpu {:.0} ms; ward caller cpu {:.0} ms + other threads {:.0} ms); \
         waited for a cpu: ward {:.0} ms, raw {:.0} ms; wall ward {:?}, raw {:?}",
        raw.wall.as_secs_f64() / ward.wall.as_secs_f64(),
        raw.thread_cpu as f64 / critical.max(1) as f64,
        ms(raw.thread_cpu),
        ms(ward.thread_cpu),
        ms(ward.helper_cpu()),
        ms(ward.thread_wait),
        ms(raw.thread_wait),
        ward.wall,
        raw.wall,
    );
}
