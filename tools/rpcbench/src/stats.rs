//! Latency percentiles, the server's CPU/RSS/fds from /proc, our own CPU, RLIMIT_NOFILE.

use std::time::Duration;

/// Latency samples in nanoseconds; percentiles by sorting (exact).
#[derive(Default)]
pub struct Latencies {
    samples: Vec<u64>,
    sorted: bool,
}

impl Latencies {
    pub fn with_capacity(n: usize) -> Self {
        Latencies {
            samples: Vec::with_capacity(n),
            sorted: false,
        }
    }

    pub fn push(&mut self, d: Duration) {
        self.samples.push(d.as_nanos().min(u64::MAX as u128) as u64);
        self.sorted = false;
    }

    #[cfg(test)]
    pub fn push_ns(&mut self, ns: u64) {
        self.samples.push(ns);
        self.sorted = false;
    }

    pub fn extend(&mut self, other: Latencies) {
        if self.samples.is_empty() {
            self.samples = other.samples;
        } else {
            self.samples.extend_from_slice(&other.samples);
        }
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    fn sort(&mut self) {
        if !self.sorted {
            self.samples.sort_unstable();
            self.sorted = true;
        }
    }

    /// The q-quantile (0 < q <= 1) in microseconds: the smallest sample with at least
    /// q of all samples at or below it.
    pub fn quantile_us(&mut self, q: f64) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        self.sort();
        let n = self.samples.len();
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        Some(self.samples[rank - 1] as f64 / 1000.0)
    }

    pub fn max_us(&mut self) -> Option<f64> {
        self.quantile_us(1.0)
    }
}

pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a whole process (all threads, living and exited), in seconds.
pub fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clk_tck())
}

/// Time the process's living threads spent runnable but waiting for a CPU, in seconds
/// (second field of /proc/PID/task/TID/schedstat): how much the machine's other load
/// delayed the server.
pub fn proc_runq_wait_seconds(pid: u32) -> Option<f64> {
    let mut total = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let mut p = t.path();
        p.push("schedstat");
        if let Ok(s) = std::fs::read_to_string(p) {
            total += s
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Some(total as f64 / 1e9)
}

/// Number of threads of a process.
pub fn proc_threads(pid: u32) -> Option<u64> {
    status_field(pid, "Threads:")
}

/// VmRSS in KiB.
pub fn proc_rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

fn status_field(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Open file descriptors of a process.
pub fn proc_fds(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// Our own user+system CPU seconds.
pub fn self_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut ru) != 0 {
            return 0.0;
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
}

/// Raises our RLIMIT_NOFILE soft limit to `want` (and the hard limit too when we may);
/// returns the soft limit in force afterwards.
pub fn raise_nofile(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 0;
        }
        if rl.rlim_cur >= want as libc::rlim_t {
            return rl.rlim_cur as u64;
        }
        if rl.rlim_max < want as libc::rlim_t {
            let try_hard = libc::rlimit {
                rlim_cur: want as libc::rlim_t,
                rlim_max: want as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &try_hard) == 0 {
                return want;
            }
        }
        rl.rlim_cur = rl.rlim_max.min(want as libc::rlim_t);
        libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        rl.rlim_cur as u64
    }
}

/// A snapshot of the server process, when its pid is known.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerSample {
    pub cpu_s: Option<f64>,
    pub rss_kib: Option<u64>,
    pub fds: Option<u64>,
    pub threads: Option<u64>,
    pub runq_wait_s: Option<f64>,
}

pub fn sample(pid: Option<u32>) -> ServerSample {
    match pid {
        None => ServerSample::default(),
        Some(pid) => ServerSample {
            cpu_s: proc_cpu_seconds(pid),
            rss_kib: proc_rss_kib(pid),
            fds: proc_fds(pid),
            threads: proc_threads(pid),
            runq_wait_s: proc_runq_wait_seconds(pid),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let mut l = Latencies::default();
        for i in 1..=1000u64 {
            l.push_ns(i * 1000);
        }
        assert_eq!(l.quantile_us(0.5), Some(500.0));
        assert_eq!(l.quantile_us(0.99), Some(990.0));
        assert_eq!(l.quantile_us(0.999), Some(999.0));
        assert_eq!(l.max_us(), Some(1000.0));
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(proc_cpu_seconds(pid).is_some());
        assert!(proc_rss_kib(pid).unwrap() > 0);
        assert!(proc_fds(pid).unwrap() >= 3);
    }
}
