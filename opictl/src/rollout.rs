//! `opictl rollout status|pause|resume|abort|undo`: a pool's rollout as the manager steps it,
//! wave by wave, and the operator's hand on it. Every action prints the rollout as it is then.

use std::io::IsTerminal;
use std::time::{Duration, SystemTime};

use opi_proto::v1::{Rollout, RolloutActionKind, RolloutNode, RolloutWave};
use serde::Serialize;

use crate::cli::RolloutCommand;
use crate::output::{self, fields, timestamp, write_out, Format, Table};
use crate::{Context, Error};

/// Time between two polls of `status --watch`.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);
/// Width of a wave's progress bar, in characters.
const BAR_WIDTH: usize = 20;

/// The JSON shape of a rollout.
#[derive(Debug, Serialize, PartialEq)]
pub struct RolloutView {
    /// The pool rolled out.
    pub pool: String,
    /// progressing, paused, halted, completed or aborted.
    pub state: String,
    /// Since when, RFC 3339.
    pub state_since: Option<String>,
    /// Why it is paused, halted, aborted, completed or waiting.
    pub reason: String,
    /// The generation the pool ran before; 0 for its first profile.
    pub from_generation: u64,
    /// The generation rolled out.
    pub to_generation: u64,
    /// For an undo: the generation whose content is rolled out again; 0 otherwise.
    pub reverts_to: u64,
    /// How it proceeds.
    pub strategy: StrategyView,
    /// The waves started so far.
    pub waves: Vec<WaveView>,
    /// Every node of the pool and its step.
    pub nodes: Vec<NodeStepView>,
    /// The nodes whose failures count against the budget.
    pub failures: Vec<String>,
    /// When the rollout started, RFC 3339.
    pub created_at: Option<String>,
    /// Who started it.
    pub created_by: String,
    /// When the manager last changed it, RFC 3339.
    pub updated_at: Option<String>,
}

/// The JSON shape of a rollout's strategy.
#[derive(Debug, Serialize, PartialEq)]
pub struct StrategyView {
    /// Nodes of the canary wave.
    pub canary: u32,
    /// A count or a percentage.
    pub max_unavailable: String,
    /// The failure-domain label, empty when none.
    pub failure_domain: String,
    /// Seconds a node stays healthy before it is done.
    pub settle_secs: u64,
    /// Failures tolerated after the canary.
    pub failure_budget: u32,
}

/// The JSON shape of a wave.
#[derive(Debug, Serialize, PartialEq)]
pub struct WaveView {
    /// 1 for the canary wave.
    pub number: u32,
    /// Whether it is the canary wave.
    pub canary: bool,
    /// The failure domain's value, empty when none.
    pub domain: String,
    /// Its nodes, in the order they were chosen.
    pub nodes: Vec<String>,
    /// When it started, RFC 3339.
    pub started_at: Option<String>,
    /// Its nodes that are done.
    pub done: u32,
    /// Its nodes that failed.
    pub failed: u32,
}

/// The JSON shape of a node's step.
#[derive(Debug, Serialize, PartialEq)]
pub struct NodeStepView {
    /// The node.
    pub name: String,
    /// pending, updating, reboot-pending, settling, done, failed or skipped.
    pub step: String,
    /// Its wave's number; 0 before it has one.
    pub wave: u32,
    /// Since when it is at this step, RFC 3339.
    pub since: Option<String>,
    /// Why.
    pub reason: String,
}

/// Runs `opictl rollout …`.
pub async fn run(context: &Context, command: RolloutCommand) -> Result<(), Error> {
    let (pool, action) = match command {
        RolloutCommand::Status { pool, watch: true } => return watch(context, &pool).await,
        RolloutCommand::Status { pool, watch: false } => (pool, None),
        RolloutCommand::Pause { pool } => (pool, Some(RolloutActionKind::Pause)),
        RolloutCommand::Resume { pool } => (pool, Some(RolloutActionKind::Resume)),
        RolloutCommand::Abort { pool } => (pool, Some(RolloutActionKind::Abort)),
        RolloutCommand::Undo { pool } => (pool, Some(RolloutActionKind::Undo)),
    };
    let mut client = context.connect().await?;
    let rollout = match action {
        Some(action) => client.rollout_action(&pool, action).await?,
        None => client.rollout_status(&pool).await?,
    };
    let view = RolloutView::from(rollout);
    match context.format {
        Format::Json => output::print_json(&view),
        Format::Table => output::print(&render(&view, bars(), SystemTime::now())),
    }
}

/// Shows the rollout again whenever it changes, until it completes or is aborted, or Ctrl-C.
/// In a terminal the screen is redrawn; otherwise each change is printed after the last, one
/// JSON object per line with `-o json`. It polls once a second rather than following the
/// event stream, so a change shows up to a second late.
async fn watch(context: &Context, pool: &str) -> Result<(), Error> {
    let mut client = context.connect().await?;
    let terminal = std::io::stdout().is_terminal();
    let mut last: Option<RolloutView> = None;
    loop {
        let view = RolloutView::from(client.rollout_status(pool).await?);
        let ended = matches!(view.state.as_str(), "completed" | "aborted");
        // A terminal's screen is redrawn every poll, so that ages stay current.
        let redraw = terminal && context.format == Format::Table;
        if redraw || last.as_ref() != Some(&view) {
            let text = match context.format {
                Format::Json => {
                    serde_json::to_string(&view).expect("a view holds only text") + "\n"
                }
                Format::Table if terminal => {
                    format!("\x1b[H\x1b[2J{}", render(&view, true, SystemTime::now()))
                }
                Format::Table => render(&view, false, SystemTime::now()) + "\n",
            };
            if !write_out(&text)? {
                return Ok(());
            }
        }
        if ended {
            return Ok(());
        }
        last = Some(view);
        tokio::select! {
            () = tokio::time::sleep(WATCH_EVERY) => {}
            result = tokio::signal::ctrl_c() => return result.map_err(Error::Output),
        }
    }
}

/// Whether progress bars are drawn: only when stdout is a terminal.
fn bars() -> bool {
    std::io::stdout().is_terminal()
}

/// The rollout for people: its fields, one line per wave, one row per node.
pub fn render(view: &RolloutView, bars: bool, now: SystemTime) -> String {
    let mut text = fields(&summary(view, now));
    text.push('\n');
    text.push_str(&waves(view, bars).render());
    text.push('\n');
    text.push_str(&nodes(view, now).render());
    text
}

fn summary(view: &RolloutView, now: SystemTime) -> Vec<(&'static str, String)> {
    let from = match view.from_generation {
        0 => "none".to_string(),
        generation => generation.to_string(),
    };
    let mut generation = format!("{from} -> {}", view.to_generation);
    if view.reverts_to != 0 {
        generation.push_str(&format!(
            " (undo: the content of generation {})",
            view.reverts_to
        ));
    }
    let count = |step: &str| view.nodes.iter().filter(|n| n.step == step).count();
    let in_flight = count("updating") + count("reboot-pending") + count("settling");
    let progress = format!(
        "{} of {} done, {} failed, {in_flight} in flight, {} pending, {} skipped (offline), {} reboot-pending",
        count("done"),
        view.nodes.len(),
        count("failed"),
        count("pending"),
        count("skipped"),
        count("reboot-pending"),
    );
    vec![
        ("pool", view.pool.clone()),
        ("state", state_line(view, now)),
        ("reason", view.reason.clone()),
        ("generation", generation),
        ("strategy", strategy_line(&view.strategy)),
        ("progress", progress),
        ("failures", view.failures.join(", ")),
        ("started", started_line(view, now)),
    ]
}

fn state_line(view: &RolloutView, now: SystemTime) -> String {
    match output::relative_rfc3339(view.state_since.as_deref(), now) {
        Some(since) => format!("{} since {since}", view.state),
        None => view.state.clone(),
    }
}

fn started_line(view: &RolloutView, now: SystemTime) -> String {
    match output::when(view.created_at.as_deref(), now) {
        at if at.is_empty() => format!("by {}", view.created_by),
        at => format!("{at} by {}", view.created_by),
    }
}

fn strategy_line(strategy: &StrategyView) -> String {
    let domain = match strategy.failure_domain.as_str() {
        "" => String::new(),
        label => format!(", one {label} at a time"),
    };
    format!(
        "canary {}, max unavailable {}, settle {}s, failure budget {}{domain}",
        strategy.canary, strategy.max_unavailable, strategy.settle_secs, strategy.failure_budget
    )
}

/// One row per wave; a progress bar in a terminal.
fn waves(view: &RolloutView, bars: bool) -> Table {
    let mut headers = vec!["WAVE", "DOMAIN", "DONE", "FAILED", "NODES"];
    if bars {
        headers.insert(2, "PROGRESS");
    }
    let mut table = Table::new(&headers);
    for wave in &view.waves {
        let number = match wave.canary {
            true => format!("{} (canary)", wave.number),
            false => wave.number.to_string(),
        };
        let total = wave.nodes.len();
        let mut cells = vec![
            number,
            wave.domain.clone(),
            format!("{}/{total}", wave.done),
            wave.failed.to_string(),
            wave.nodes.join(","),
        ];
        if bars {
            cells.insert(2, bar(wave.done as usize, wave.failed as usize, total));
        }
        table.row(cells);
    }
    table
}

/// `[#####xx.....]`: done nodes as `#`, failed ones as `x`, the rest as `.`.
pub fn bar(done: usize, failed: usize, total: usize) -> String {
    let width = |count: usize| (count * BAR_WIDTH).checked_div(total).unwrap_or(0);
    let (done, failed) = (width(done), width(failed));
    let rest = BAR_WIDTH.saturating_sub(done + failed);
    format!(
        "[{}{}{}]",
        "#".repeat(done),
        "x".repeat(failed),
        ".".repeat(rest)
    )
}

/// One row per node of the pool.
fn nodes(view: &RolloutView, now: SystemTime) -> Table {
    let mut table = Table::new(&["NODE", "STEP", "WAVE", "SINCE", "REASON"]);
    for node in &view.nodes {
        let wave = match node.wave {
            0 => String::new(),
            n => n.to_string(),
        };
        let since = output::relative_rfc3339(node.since.as_deref(), now).unwrap_or_default();
        table.row(vec![
            node.name.clone(),
            node.step.clone(),
            wave,
            since,
            node.reason.clone(),
        ]);
    }
    table
}

impl From<Rollout> for RolloutView {
    fn from(rollout: Rollout) -> Self {
        let strategy = rollout.strategy.unwrap_or_default();
        Self {
            state_since: timestamp(rollout.state_since.as_ref()),
            created_at: timestamp(rollout.created_at.as_ref()),
            updated_at: timestamp(rollout.updated_at.as_ref()),
            pool: rollout.pool,
            state: rollout.state,
            reason: rollout.reason,
            from_generation: rollout.from_generation,
            to_generation: rollout.to_generation,
            reverts_to: rollout.reverts_to,
            strategy: StrategyView {
                canary: strategy.canary,
                max_unavailable: strategy.max_unavailable,
                failure_domain: strategy.failure_domain,
                settle_secs: strategy.settle_secs,
                failure_budget: strategy.failure_budget,
            },
            waves: rollout.waves.into_iter().map(WaveView::from).collect(),
            nodes: rollout.nodes.into_iter().map(NodeStepView::from).collect(),
            failures: rollout.failures,
            created_by: rollout.created_by,
        }
    }
}

impl From<RolloutWave> for WaveView {
    fn from(wave: RolloutWave) -> Self {
        Self {
            started_at: timestamp(wave.started_at.as_ref()),
            number: wave.number,
            canary: wave.canary,
            domain: wave.domain,
            nodes: wave.nodes,
            done: wave.done,
            failed: wave.failed,
        }
    }
}

impl From<RolloutNode> for NodeStepView {
    fn from(node: RolloutNode) -> Self {
        Self {
            since: timestamp(node.since.as_ref()),
            name: node.name,
            step: node.step,
            wave: node.wave,
            reason: node.reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> RolloutView {
        let wave = |number, nodes: &[&str], done| WaveView {
            number,
            canary: number == 1,
            domain: String::new(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            started_at: None,
            done,
            failed: 0,
        };
        let node = |name: &str, step: &str, wave| NodeStepView {
            name: name.into(),
            step: step.into(),
            wave,
            since: None,
            reason: String::new(),
        };
        RolloutView {
            pool: "workers".into(),
            state: "progressing".into(),
            state_since: None,
            reason: String::new(),
            from_generation: 4,
            to_generation: 5,
            reverts_to: 0,
            strategy: StrategyView {
                canary: 1,
                max_unavailable: "2".into(),
                failure_domain: String::new(),
                settle_secs: 30,
                failure_budget: 0,
            },
            waves: vec![wave(1, &["a"], 1), wave(2, &["b", "c"], 1)],
            nodes: vec![
                node("a", "done", 1),
                node("b", "done", 2),
                node("c", "settling", 2),
                node("d", "pending", 0),
            ],
            failures: vec![],
            created_at: None,
            created_by: "spiffe://prod/operator/alice".into(),
            updated_at: None,
        }
    }

    #[test]
    fn a_bar_shows_done_failed_and_left_in_proportion() {
        assert_eq!(
            bar(1, 0, 2),
            format!("[{}{}]", "#".repeat(10), ".".repeat(10))
        );
        assert_eq!(
            bar(1, 1, 4),
            format!("[{}{}{}]", "#".repeat(5), "x".repeat(5), ".".repeat(10))
        );
        assert_eq!(bar(0, 0, 0), format!("[{}]", ".".repeat(20)));
    }

    #[test]
    fn status_shows_progress_and_waves_with_bars_only_for_a_terminal() {
        let now = SystemTime::now();
        let plain = render(&view(), false, now);
        assert!(plain.contains("generation   4 -> 5"), "{plain}");
        assert!(
            plain.contains("2 of 4 done, 0 failed, 1 in flight, 1 pending"),
            "{plain}"
        );
        assert!(plain.contains("1 (canary)"), "{plain}");
        assert!(
            plain.contains("\n2            -        1/2    0        b,c\n"),
            "{plain}"
        );
        assert!(
            !plain.contains('#') && !plain.contains("PROGRESS"),
            "{plain}"
        );

        let terminal = render(&view(), true, now);
        assert!(terminal.contains("PROGRESS"), "{terminal}");
        assert!(terminal.contains("[##########..........]"), "{terminal}");
    }
}
