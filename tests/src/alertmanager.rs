//! A real Alertmanager (Debian's `prometheus-alertmanager`) on a free loopback port, tuned to
//! notify at once, with a webhook receiver in the test that records every notification.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::http::{self, Webhook};
use crate::{free_port, system_bin, wait_until, WAIT};

/// Tries at finding a free port before giving up (another process may take the one picked).
const START_ATTEMPTS: usize = 3;

/// A running Alertmanager and the webhook it notifies.
pub struct Alertmanager {
    pub addr: SocketAddr,
    pub webhook: Webhook,
    pub log: PathBuf,
    home: PathBuf,
    child: Option<Child>,
}

impl Alertmanager {
    /// Starts Alertmanager with its config, storage and log under `dir/alertmanager`.
    pub fn start(dir: &Path) -> Self {
        let home = dir.join("alertmanager");
        fs::create_dir_all(&home).expect("alertmanager dir");
        let webhook = Webhook::start();
        fs::write(config(&home), config_text(&webhook.url())).expect("alertmanager config");
        let log = home.join("alertmanager.log");
        for _ in 0..START_ATTEMPTS {
            let addr = free_port().parse::<SocketAddr>().expect("loopback address");
            if let Some(child) = launch(&home, &log, addr) {
                return Self {
                    addr,
                    webhook,
                    log,
                    home,
                    child: Some(child),
                };
            }
        }
        panic!("Alertmanager did not start; its log:\n{}", log_text(&log));
    }

    /// Kills Alertmanager with SIGKILL; the alerts it held are gone with it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts Alertmanager again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let child = launch(&self.home, &self.log, self.addr);
        let log = log_text(&self.log);
        self.child = Some(child.unwrap_or_else(|| panic!("Alertmanager did not restart: {log}")));
    }

    /// `http://127.0.0.1:PORT`, as `--alertmanager` takes it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The alerts Alertmanager holds, from `GET /api/v2/alerts`.
    pub fn alerts(&self) -> Vec<Value> {
        let response = http::get(self.addr, "/api/v2/alerts").expect("alertmanager answers");
        assert_eq!(response.status, 200, "{}", response.body);
        let alerts: Value = serde_json::from_str(&response.body).expect("alerts are JSON");
        alerts.as_array().expect("an array of alerts").clone()
    }

    /// Every alert of every notification the webhook received, each with the notification's
    /// `status` copied into it, oldest first.
    pub fn notified(&self) -> Vec<Value> {
        self.webhook
            .received()
            .iter()
            .flat_map(|notification| {
                let alerts = notification["alerts"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                alerts.into_iter().map(|mut alert| {
                    alert["notification_status"] = notification["status"].clone();
                    alert
                })
            })
            .collect()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `alert` (from the API or a notification) has label `name` equal to `value`.
pub fn has_label(alert: &Value, name: &str, value: &str) -> bool {
    alert["labels"][name] == value
}

fn config_text(webhook: &str) -> String {
    format!(
        "global:\n  resolve_timeout: 5s\n\
         route:\n  receiver: test\n  group_by: ['...']\n  group_wait: 0s\n  \
         group_interval: 100ms\n  repeat_interval: 1h\n\
         receivers:\n  - name: test\n    webhook_configs:\n      - url: {webhook}\n        \
         send_resolved: true\n"
    )
}

fn config(home: &Path) -> PathBuf {
    home.join("alertmanager.yml")
}

fn log_text(log: &Path) -> String {
    fs::read_to_string(log).unwrap_or_default()
}

/// Starts Alertmanager on `addr` and waits until it is ready; `None` when it exits instead.
fn launch(home: &Path, log: &Path, addr: SocketAddr) -> Option<Child> {
    let mut child = spawn(home, log, addr);
    let mut exited = false;
    wait_until(WAIT, "Alertmanager to be ready", || {
        exited = child.try_wait().expect("alertmanager status").is_some();
        exited || http::get(addr, "/-/ready").is_ok_and(|r| r.status == 200)
    });
    (!exited).then_some(child)
}

fn spawn(home: &Path, log: &Path, addr: SocketAddr) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("alertmanager log");
    let bin = system_bin("prometheus-alertmanager", "prometheus-alertmanager");
    Command::new(bin)
        .arg(format!("--config.file={}", config(home).display()))
        .arg(format!("--storage.path={}", home.join("data").display()))
        .arg(format!("--web.listen-address={addr}"))
        // Empty, or Alertmanager listens for cluster peers on every interface.
        .arg("--cluster.listen-address=")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("prometheus-alertmanager starts")
}
