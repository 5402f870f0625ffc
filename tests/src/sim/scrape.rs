//! Reading the target from outside: its metrics page, and its resident memory in `/proc`.

use std::net::SocketAddr;

use anyhow::Context;

/// The histogram of heartbeat handling durations.
pub const PROCESSING: &str = "opi_heartbeat_processing_seconds";

/// Clock ticks per second of `/proc/PID/stat` times (`USER_HZ`, 100 on every Linux
/// architecture this runs on).
const CLOCK_TICKS: f64 = 100.0;

/// Cumulative bucket counts by upper bound, `+Inf` last.
pub type Buckets = Vec<(f64, u64)>;

/// What the metrics page said at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub heartbeats: u64,
    pub sessions: f64,
    /// Empty when the target has no such histogram (the echo ceiling).
    pub buckets: Buckets,
}

impl Snapshot {
    /// Scrapes `GET /metrics` on `addr`.
    pub async fn take(addr: SocketAddr) -> anyhow::Result<Self> {
        let response = tokio::task::spawn_blocking(move || crate::http::get(addr, "/metrics"))
            .await
            .context("scrape task")?
            .with_context(|| format!("scrape http://{addr}/metrics"))?;
        anyhow::ensure!(
            response.status == 200,
            "GET /metrics on {addr}: {}",
            response.status
        );
        Ok(Self::parse(&response.body))
    }

    /// [`Snapshot::take`] from a thread outside any runtime.
    pub fn take_blocking(addr: SocketAddr) -> anyhow::Result<Self> {
        let response = crate::http::get(addr, "/metrics")
            .with_context(|| format!("scrape http://{addr}/metrics"))?;
        anyhow::ensure!(
            response.status == 200,
            "GET /metrics on {addr}: {}",
            response.status
        );
        Ok(Self::parse(&response.body))
    }

    /// The values this module needs from a metrics page.
    pub fn parse(page: &str) -> Self {
        let value = |series| crate::sample(page, series).unwrap_or_default();
        Self {
            heartbeats: value("opi_heartbeats_total") as u64,
            sessions: value("opi_agent_sessions"),
            buckets: buckets(page, PROCESSING),
        }
    }
}

/// The unlabelled histogram `name`'s buckets.
fn buckets(page: &str, name: &str) -> Buckets {
    let prefix = format!("{name}_bucket{{le=\"");
    page.lines()
        .filter_map(|line| {
            let (le, count) = line.strip_prefix(&prefix)?.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// `after - before`, bucket by bucket; `after` alone if the bounds differ.
pub fn delta(after: &Buckets, before: &Buckets) -> Buckets {
    if after.len() != before.len() {
        return after.clone();
    }
    after
        .iter()
        .zip(before)
        .map(|((le, a), (_, b))| (*le, a.saturating_sub(*b)))
        .collect()
}

/// Quantile `q` of cumulative `buckets`, interpolated linearly inside its bucket; `None`
/// without observations. A quantile in the `+Inf` bucket reads as the last finite bound.
pub fn quantile(buckets: &Buckets, q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower, mut below) = (0.0, 0);
    for &(upper, count) in buckets {
        if count as f64 >= rank {
            if upper.is_infinite() {
                return Some(lower);
            }
            let share = (rank - below as f64) / (count - below).max(1) as f64;
            return Some(lower + (upper - lower) * share);
        }
        (lower, below) = (upper, count);
    }
    Some(lower)
}

/// Resident memory of process `pid` in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// User plus system CPU time of process `pid` in seconds, from `/proc/PID/stat`.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let (utime, stime): (u64, u64) = (fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?);
    Some((utime + stime) as f64 / CLOCK_TICKS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let page = "opi_heartbeat_processing_seconds_bucket{le=\"0.001\"} 50\n\
                    opi_heartbeat_processing_seconds_bucket{le=\"0.002\"} 100\n\
                    opi_heartbeat_processing_seconds_bucket{le=\"+Inf\"} 100\n";
        let buckets = Snapshot::parse(page).buckets;

        assert_eq!(buckets.len(), 3);
        assert_eq!(quantile(&buckets, 0.5), Some(0.001));
        assert_eq!(quantile(&buckets, 0.75), Some(0.0015));
        assert_eq!(quantile(&vec![(f64::INFINITY, 0)], 0.5), None);
    }

    #[test]
    fn the_resident_memory_of_this_process_is_read() {
        assert!(rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }

    #[test]
    fn the_cpu_time_of_this_process_grows_with_work() {
        let before = cpu_secs(std::process::id()).expect("cpu time of this process");
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = cpu_secs(std::process::id()).expect("cpu time of this process");
        assert!(after >= before + 0.02, "{before} -> {after}");
    }
}
