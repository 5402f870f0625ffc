//! The benchmark past one process's open-file limit: the fleet spread evenly over manager
//! replicas on one etcd member, one simulator per replica, measured against as many echo
//! ceilings, each ceiling and simulator pair holding the same share. Every agent holds a socket
//! on each side, so one manager (or one simulator) cannot hold more agents than its open-file
//! limit; replicas are how a fleet grows past it.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::bench::{
    addresses, idle_rss, manager_log, next_report, release, stop, Bench, Held, Row, Server,
    STORM_POLL, STORM_TIMEOUT,
};
use super::scrape::Snapshot;
use super::Report;
use crate::etcd::Etcd;

/// Lease of the replicas' leader key.
const LEADER_LEASE: &str = "10s";
/// How often a restart prints how many sessions are back.
const STORM_TRACE: Duration = Duration::from_secs(2);
/// Machine-wide sessions a second the replicas take back after a restart, shared among them
/// (`serve --reconnect-rate`): three replicas and their simulators on two cores took about
/// 1,600 a second back in all when not overloaded. A fixed figure, not measured by the run.
const MACHINE_RECONNECT_RATE: usize = 1_500;

/// One replica's data directory and the addresses its server listens on.
struct Place {
    name: String,
    data_dir: PathBuf,
    listen: String,
    metrics: String,
}

impl Bench {
    /// Runs `agents` over `replicas` managers on one etcd member, against as many ceilings.
    pub fn run_replicated(&self, agents: usize, replicas: usize) -> anyhow::Result<Row> {
        let dir = self.fresh_dir(&format!("n{agents}-r{replicas}"))?;
        let etcd = Etcd::single();
        let mut places = self.init_replicas(&dir, &etcd.url(), replicas)?;
        let shares = shares(agents, replicas);

        eprintln!("bench: {agents} agents against {replicas} echo ceilings");
        let mut echoes = Vec::new();
        for place in &places {
            let run_dir = place.data_dir.join("echo-run");
            let mut command = Command::new(self.bin_dir.join("opi-echo-ceiling"));
            command
                .arg("--data-dir")
                .arg(&place.data_dir)
                .arg("--run-dir")
                .arg(&run_dir);
            let log = dir.join(format!("echo-{}.log", place.name));
            let echo = self.spawn(&mut command, &log)?;
            let (addr, metrics) = addresses(&run_dir)?;
            echoes.push((echo, addr, metrics));
        }
        let echo_idle_kib = echoes
            .iter()
            .map(|(echo, _, _)| idle_rss(echo))
            .sum::<anyhow::Result<u64>>()?;
        let sims = places
            .iter()
            .zip(&echoes)
            .zip(&shares)
            .map(|((place, (echo, addr, metrics)), &(first, count))| {
                let first = first.to_string();
                let extra = ["--target", "echo", "--metrics", metrics, "--first", &first];
                let mut command =
                    self.sim_command(&place.data_dir, count, self.heartbeat, echo, addr, &extra);
                Self::hold_started(command.arg("--hold"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let echo = finish(sims)?;
        drop(echoes);

        eprintln!("bench: {agents} agents against {replicas} manager replicas on etcd");
        let mut managers = Vec::new();
        for place in &mut places {
            let log = dir.join(format!("manager-{}.log", place.name));
            let manager = self.start_replica(place, &etcd.url(), &log)?;
            let (listen, metrics) = addresses(&place.data_dir.join("run"))?;
            (place.listen, place.metrics) = (listen, metrics);
            managers.push(manager);
        }
        let manager_idle_kib = managers.iter().map(idle_rss).sum::<anyhow::Result<u64>>()?;
        let mut sims = Vec::new();
        for ((place, manager), &(first, count)) in places.iter().zip(&managers).zip(&shares) {
            let first = first.to_string();
            let extra = ["--first", first.as_str()];
            let mut command = self.sim_command(
                &place.data_dir,
                count,
                self.heartbeat,
                manager,
                &place.listen,
                &extra,
            );
            sims.push(Self::hold_started(command.arg("--hold"))?);
        }
        let reports = sims
            .iter_mut()
            .map(|held| next_report(&mut held.stdout))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut row = Row {
            agents,
            replicas,
            echo,
            manager: Report::combine(&reports),
            manager_idle_kib,
            echo_idle_kib,
            ..Row::default()
        };
        self.loaded_measurements(&mut row, &places[0].data_dir, &places[0].listen);
        let restarted = self.storm_replicas(&mut row, managers, &places, &etcd.url(), &dir);
        let finals = sims
            .into_iter()
            .map(release)
            .collect::<anyhow::Result<Vec<Report>>>()?;
        row.take_final(&Report::combine(&finals));
        drop(restarted?);
        Ok(row)
    }

    /// The first replica's data directory (`opi-manager init --store`), then the others joined
    /// to it (`init --join`), each with its own issuing CA.
    fn init_replicas(
        &self,
        dir: &Path,
        store: &str,
        replicas: usize,
    ) -> anyhow::Result<Vec<Place>> {
        let mut places: Vec<Place> = Vec::new();
        for i in 0..replicas {
            let name = format!("r{i}");
            let data_dir = dir.join(&name);
            let mut command = Command::new(self.bin_dir.join("opi-manager"));
            command
                .args(["init", "--fleet", "bench", "--listen", "127.0.0.1:0"])
                .args(["--store", store, "--replica", &name, "--data-dir"])
                .arg(&data_dir);
            if let Some(first) = places.first() {
                command.arg("--join").arg(&first.data_dir);
            }
            let output = command
                .stdin(Stdio::null())
                .output()
                .context("run opi-manager init")?;
            anyhow::ensure!(
                output.status.success(),
                "opi-manager init of replica {name}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            places.push(Place {
                name,
                data_dir,
                listen: "127.0.0.1:0".into(),
                metrics: "127.0.0.1:0".into(),
            });
        }
        Ok(places)
    }

    /// `opi-manager serve` of one replica on its place's addresses.
    fn start_replica(&self, place: &Place, store: &str, log: &Path) -> anyhow::Result<Server> {
        let run = place.data_dir.join("run");
        let _ = std::fs::remove_file(run.join("listen-addr"));
        let _ = std::fs::remove_file(run.join("metrics-addr"));
        let mut command = Command::new(self.bin_dir.join("opi-manager"));
        command
            .args(["serve", "--listen", &place.listen])
            .args(["--metrics-listen", &place.metrics])
            .args(["--store", store, "--replica-name", &place.name])
            .args(["--leader-lease", LEADER_LEASE])
            .arg("--reconnect-rate")
            .arg((MACHINE_RECONNECT_RATE / self.replicas.max(1)).to_string())
            .arg("--heartbeat")
            .arg(humantime::format_duration(self.heartbeat).to_string())
            .arg("--data-dir")
            .arg(&place.data_dir)
            .env("RUST_LOG", manager_log());
        self.spawn(&mut command, log)
    }

    /// Stops every replica at once, starts them again on the same addresses and waits until
    /// their sessions add up to every agent; returns the new replicas.
    fn storm_replicas(
        &self,
        row: &mut Row,
        managers: Vec<Server>,
        places: &[Place],
        store: &str,
        dir: &Path,
    ) -> anyhow::Result<Vec<Server>> {
        eprintln!(
            "bench: restart of {} replicas with {} agents",
            places.len(),
            row.manager.connected
        );
        let started = Instant::now();
        std::thread::scope(|scope| {
            let stops: Vec<_> = managers
                .into_iter()
                .map(|manager| scope.spawn(move || stop(manager)))
                .collect();
            stops
                .into_iter()
                .try_for_each(|stop| stop.join().expect("stop thread"))
        })?;
        eprintln!(
            "bench: replicas stopped {:.1}s after SIGTERM",
            started.elapsed().as_secs_f64()
        );
        let mut restarted = Vec::new();
        let mut metrics = Vec::new();
        for place in places {
            let log = dir.join(format!("manager-{}.restart.log", place.name));
            restarted.push(self.start_replica(place, store, &log)?);
            metrics.push(place.metrics.parse().context("metrics address")?);
        }
        let expected = row.manager.connected as f64;
        let mut traced = Instant::now();
        while started.elapsed() < STORM_TIMEOUT {
            let sessions: f64 = metrics
                .iter()
                .map(|&addr| Snapshot::take_blocking(addr).map_or(0.0, |s| s.sessions))
                .sum();
            if traced.elapsed() >= STORM_TRACE {
                traced = Instant::now();
                eprintln!(
                    "bench: {:.0}s after SIGTERM, {sessions} of {expected} sessions back",
                    started.elapsed().as_secs_f64()
                );
            }
            if sessions >= expected {
                row.storm_secs = Some(started.elapsed().as_secs_f64());
                return Ok(restarted);
            }
            std::thread::sleep(STORM_POLL);
        }
        row.notes.push(format!(
            "reconnection storm: not every agent was back within {STORM_TIMEOUT:?}"
        ));
        Ok(restarted)
    }

    /// Starts a simulator (already given `--hold`) without waiting for its report.
    fn hold_started(command: &mut Command) -> anyhow::Result<Held> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start opi-fleet-sim")?;
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(Held {
            child,
            stdout,
            report: Report::default(),
        })
    }
}

/// Waits for every held simulator's report, then ends them; their reports as one.
fn finish(mut sims: Vec<Held>) -> anyhow::Result<Report> {
    let reports = sims
        .iter_mut()
        .map(|held| next_report(&mut held.stdout))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for held in sims {
        release(held)?;
    }
    Ok(Report::combine(&reports))
}

/// `(first index, count)` of each of `parts` even shares of `agents`.
fn shares(agents: usize, parts: usize) -> Vec<(usize, usize)> {
    let base = agents / parts;
    let extra = agents % parts;
    let mut first = 0;
    (0..parts)
        .map(|i| {
            let count = base + usize::from(i < extra);
            let share = (first, count);
            first += count;
            share
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::shares;

    #[test]
    fn shares_cover_every_agent_once() {
        assert_eq!(
            shares(50_000, 3),
            [(0, 16_667), (16_667, 16_667), (33_334, 16_666)]
        );
        assert_eq!(shares(2, 3), [(0, 1), (1, 1), (2, 0)]);
    }
}
