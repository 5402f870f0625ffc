//! The benchmark's results as Markdown: settings, one table per kind of measurement with each
//! figure beside its baseline from the same run, and the targets, met or missed.

use std::fmt::Write as _;

use super::bench::{median, Bench, Results, Row};
use super::Report;

/// Per-agent memory of the manager at most, in KiB (issue 7).
const TARGET_KIB_PER_AGENT: f64 = 48.0;
/// p99 heartbeat processing at most, in seconds.
const TARGET_P99: f64 = 0.005;
/// Share of the echo ceiling's saturated throughput at least.
const TARGET_CEILING_SHARE: f64 = 0.70;
/// Enrollments per second at least.
const TARGET_ENROLL: f64 = 1000.0;
/// Seconds for every agent to be back after a restart, at most.
const TARGET_STORM: f64 = 60.0;
/// Seconds of `opictl status` at 10,000 nodes, at most.
const TARGET_STATUS: f64 = 0.1;
/// Resident memory of the agent at most, in KiB (15 MB).
const TARGET_AGENT_KIB: f64 = 15_000_000.0 / 1024.0;

/// RESULTS.md of one run.
pub fn markdown(bench: &Bench, results: &Results, machine: &str, date: &str) -> String {
    let mut out = String::from("# Fleet benchmark results\n\n");
    let _ = writeln!(out, "Written by `scripts/bench` on {date}.\n\n{machine}\n");
    let _ = writeln!(
        out,
        "Settings: heartbeat every {}, measurement window {}, {} health report changes/min across the fleet, up to {} agents per bootstrap token, connections from {}; {} watchers.\n",
        humantime::format_duration(bench.heartbeat),
        humantime::format_duration(bench.duration),
        bench.changes_per_min,
        bench.uses_per_token,
        if bench.sources.is_empty() { "the kernel's choice".to_string() } else { bench.sources.join(", ") },
        bench.watchers,
    );
    heartbeat_table(&mut out, &results.rows);
    control_table(&mut out, &results.rows);
    saturation_table(&mut out, results);
    footprint_table(&mut out, results);
    targets(&mut out, results);
    out
}

/// A row's fleet size, with the replicas it was spread over if more than one manager.
fn fleet(row: &Row) -> String {
    match row.replicas {
        0 | 1 => row.agents.to_string(),
        n => format!("{} over {n} replicas", row.agents),
    }
}

fn heartbeat_table(out: &mut String, rows: &[Row]) {
    out.push_str("## Heartbeats and memory against fleet size\n\n");
    out.push_str("Each size runs twice on the same machine: against the echo ceiling (the manager's TLS and gRPC stack with nothing behind it), then against the real manager. Processing is the manager's own handling time of one heartbeat (`opi_heartbeat_processing_seconds`). Memory per agent is the growth of resident memory from idle to loaded, over the connected agents; CPU is the server's user and system time over the window. A size \"over N replicas\" is spread evenly over N manager replicas on one etcd member, one simulator each, against N echo ceilings holding the same shares; its memory, CPU and throughput add up over the N servers, its latencies are the worst of them. One process cannot hold more agents than its open-file limit, since every agent holds a socket.\n\n");
    out.push_str("| agents | connected | heartbeats/s manager / ceiling | p50 / p99 processing | RSS per agent manager / ceiling | CPU manager / ceiling |\n");
    out.push_str("|---:|---:|---:|---:|---:|---:|\n");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} / {} | {:.0} / {:.0} ({}) | {} / {} | {} / {} | {} / {} |",
            fleet(row),
            row.manager.connected,
            row.echo.connected,
            row.manager.accepted_per_sec,
            row.echo.accepted_per_sec,
            percent(row.manager.accepted_per_sec, row.echo.accepted_per_sec),
            micros(row.manager.p50_seconds),
            micros(row.manager.p99_seconds),
            kib(per_agent(&row.manager, row.manager_idle_kib)),
            kib(per_agent(&row.echo, row.echo_idle_kib)),
            cpu(&row.manager),
            cpu(&row.echo),
        );
    }
    out.push('\n');
}

fn control_table(out: &mut String, rows: &[Row]) {
    out.push_str("## Enrollment, restart and operators against fleet size\n\n");
    out.push_str("Enrollments: every agent enrolls with its own key over its own TLS connection, 64 at a time; the ceiling checks and signs the CSR with the same code and keeps nothing. Restart: SIGTERM to the manager, start again on the same address, until every simulated agent has its session again (the agents wait as the real agent does, with its backoff). `opictl` runs as a process (start-up and TLS handshake included), median of 5. Fan-out: from the probe node's report to the last of the watchers receiving its event, each watcher on its own connection, median and worst of 3 changes.\n\n");
    out.push_str("| agents | enrollments/s manager / ceiling | back after restart | `opictl status` | `opictl nodes --pool sim --health degraded` | watch fan-out median / worst |\n");
    out.push_str("|---:|---:|---:|---:|---:|---:|\n");
    for row in rows {
        let mut fanout = row.fanout_secs.clone();
        let worst = fanout
            .iter()
            .copied()
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
        let fanout = if fanout.is_empty() {
            "n/a".to_string()
        } else {
            format!("{} / {}", millis(Some(median(&mut fanout))), millis(worst))
        };
        let _ = writeln!(
            out,
            "| {} | {:.0} / {:.0} ({}) | {} | {} | {} | {} |",
            fleet(row),
            row.manager.enroll_per_sec,
            row.echo.enroll_per_sec,
            percent(row.manager.enroll_per_sec, row.echo.enroll_per_sec),
            row.storm_secs.map_or("n/a".into(), |s| format!("{s:.1} s")),
            millis(row.status_secs),
            millis(row.nodes_secs),
            fanout,
        );
    }
    for row in rows {
        for note in &row.notes {
            let _ = writeln!(out, "\n{} agents: {note}", fleet(row));
        }
    }
    out.push('\n');
}

fn saturation_table(out: &mut String, results: &Results) {
    let Some(sat) = &results.saturation else {
        return;
    };
    out.push_str("## Heartbeat throughput at saturation\n\n");
    let _ = writeln!(
        out,
        "{} agents each sending a heartbeat as soon as the previous one is written, against the ceiling and the manager in turn; the simulator shares the machine with the server.\n",
        sat.manager.agents
    );
    out.push_str("| target | heartbeats/s | share of ceiling | p50 / p99 processing | CPU |\n");
    out.push_str("|---|---:|---:|---:|---:|\n");
    for (name, report) in [("echo ceiling", &sat.echo), ("manager", &sat.manager)] {
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {} | {} / {} | {} |",
            report.accepted_per_sec,
            percent(report.accepted_per_sec, sat.echo.accepted_per_sec),
            micros(report.p50_seconds),
            micros(report.p99_seconds),
            cpu(report),
        );
    }
    out.push('\n');
}

fn footprint_table(out: &mut String, results: &Results) {
    let Some(fp) = &results.footprint else { return };
    out.push_str("## Agent footprint\n\n");
    let _ = writeln!(
        out,
        "The real `opi-agent run` (release build, default checks, 10 s heartbeat) against a manager, and Debian's `prometheus-node-exporter --no-collector.systemd` scraped every 10 s, sampled from `/proc` over the same {:.0} s window; CPU per hour is extrapolated from that window.\n",
        fp.window_secs
    );
    out.push_str("| process | resident memory (end / peak) | CPU in window | CPU per hour |\n");
    out.push_str("|---|---:|---:|---:|\n");
    for (name, usage) in [
        ("opi-agent", &fp.agent),
        ("node_exporter", &fp.node_exporter),
    ] {
        let _ = writeln!(
            out,
            "| {name} | {:.1} / {:.1} MiB | {:.2} s | {:.0} s |",
            usage.rss_kib as f64 / 1024.0,
            usage.peak_rss_kib as f64 / 1024.0,
            usage.cpu_secs,
            usage.cpu_per_hour(fp.window_secs),
        );
    }
    let _ = writeln!(
        out,
        "\nAgent / node_exporter: {} of the resident memory, {} of the CPU.\n",
        percent(
            fp.agent.peak_rss_kib as f64,
            fp.node_exporter.peak_rss_kib as f64
        ),
        percent(fp.agent.cpu_secs, fp.node_exporter.cpu_secs),
    );
}

/// The targets, each with the figure measured and whether it is met.
fn targets(out: &mut String, results: &Results) {
    out.push_str("## Targets\n\n| target | measured | verdict |\n|---|---|---|\n");
    let mut line = |target: &str, measured: String, met: Option<bool>| {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measured",
        };
        let _ = writeln!(out, "| {target} | {measured} | {verdict} |");
    };
    let largest = results.rows.iter().max_by_key(|r| r.agents);
    let at = |r: &Row| format!(" at {} agents", fleet(r));
    let fifty = results.rows.iter().find(|r| r.agents >= 50_000);
    line(
        "50,000 concurrent agents at 10 s heartbeats",
        fifty.map_or(
            "largest run: ".to_string() + &largest.map_or(0, |r| r.manager.connected).to_string(),
            |r| format!("{} connected", r.manager.connected),
        ),
        fifty.map(|r| r.manager.connected >= 50_000),
    );
    if let Some(r) = largest {
        let p99 = r.manager.p99_seconds;
        line(
            "p99 heartbeat processing < 5 ms",
            format!("{}{}", micros(p99), at(r)),
            p99.map(|p| p < TARGET_P99),
        );
        let per = per_agent(&r.manager, r.manager_idle_kib);
        line(
            "manager memory < 48 KiB per agent",
            format!("{}{}", kib(per), at(r)),
            per.map(|k| k < TARGET_KIB_PER_AGENT),
        );
        let enroll = r.manager.enroll_per_sec;
        line(
            "≥ 1,000 enrollments/s",
            format!("{enroll:.0}/s{}", at(r)),
            Some(enroll >= TARGET_ENROLL),
        );
        line(
            "all agents back < 60 s after a restart",
            r.storm_secs
                .map_or("n/a".into(), |s| format!("{s:.1} s{}", at(r))),
            r.storm_secs.map(|s| s < TARGET_STORM),
        );
    }
    if let Some(sat) = &results.saturation {
        let share = sat.manager.accepted_per_sec / sat.echo.accepted_per_sec.max(f64::MIN_POSITIVE);
        line(
            "≥ 70 % of the echo ceiling's throughput",
            format!("{:.1} %", share * 100.0),
            Some(share >= TARGET_CEILING_SHARE),
        );
    }
    let ten = results.rows.iter().find(|r| r.agents == 10_000);
    line(
        "`opictl status` < 100 ms at 10,000 nodes",
        ten.and_then(|r| r.status_secs)
            .map_or("n/a".into(), |s| millis(Some(s))),
        ten.and_then(|r| r.status_secs).map(|s| s < TARGET_STATUS),
    );
    if let Some(fp) = &results.footprint {
        let (agent, baseline) = (
            fp.agent.peak_rss_kib as f64,
            fp.node_exporter.peak_rss_kib as f64,
        );
        line(
            "agent memory below node_exporter's and < 15 MB",
            format!(
                "{:.1} MiB against {:.1} MiB",
                agent / 1024.0,
                baseline / 1024.0
            ),
            Some(agent < baseline && agent < TARGET_AGENT_KIB),
        );
    }
    out.push('\n');
}

fn percent(part: f64, whole: f64) -> String {
    if whole > 0.0 {
        format!("{:.0} %", part / whole * 100.0)
    } else {
        "n/a".into()
    }
}

fn micros(seconds: Option<f64>) -> String {
    seconds.map_or("n/a".into(), |s| format!("{:.0} µs", s * 1e6))
}

fn millis(seconds: Option<f64>) -> String {
    seconds.map_or("n/a".into(), |s| format!("{:.0} ms", s * 1e3))
}

fn kib(value: Option<f64>) -> String {
    value.map_or("n/a".into(), |k| format!("{k:.1} KiB"))
}

/// CPU share of one core over the window.
fn cpu(report: &Report) -> String {
    match report.target_cpu_secs {
        Some(secs) if report.window_secs > 0.0 => {
            format!("{:.0} %", secs / report.window_secs * 100.0)
        }
        _ => "n/a".into(),
    }
}

/// Growth of resident memory from idle, per connected agent.
fn per_agent(report: &Report, idle_kib: u64) -> Option<f64> {
    match report.target_rss_kib {
        Some(kib) if report.connected > 0 => {
            Some(kib.saturating_sub(idle_kib) as f64 / report.connected as f64)
        }
        _ => None,
    }
}
