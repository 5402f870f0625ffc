//! `KubeletHealthy`: kubelet answers `200 ok` on its healthz endpoint.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opi_proto::v1::Severity;

use super::config::HealthConfig;
use super::http::{self, HttpAnswer, HttpUrl};
use super::{CollectFuture, Collector, Observation};
use crate::ErrorChain;

/// The condition type.
pub const KUBELET_HEALTHY: &str = "KubeletHealthy";
/// The body kubelet sends when healthy.
pub const HEALTHY_BODY: &str = "ok";
/// Longest part of an unexpected body quoted in a message.
pub const QUOTED_BODY_CHARS: usize = 200;

/// Probes kubelet's healthz.
#[derive(Debug)]
pub struct KubeletCollector {
    url: String,
    timeout: Duration,
}

impl KubeletCollector {
    /// A probe of the URL and timeout `config` names.
    pub fn new(config: &HealthConfig) -> Self {
        Self {
            url: config.kubelet.healthz_url.clone(),
            timeout: Duration::from_millis(config.kubelet.timeout_ms),
        }
    }

    /// Probes once.
    pub async fn observe(&self) -> Result<Observation, super::CollectError> {
        let url = HttpUrl::parse(&self.url)?;
        let started = Instant::now();
        let observation = match http::get(&url, self.timeout).await {
            Ok(answer) => judge(&self.url, &answer, started.elapsed()),
            Err(error) => unreachable_kubelet(&self.url, &error),
        };
        Ok(observation)
    }
}

impl Collector for KubeletCollector {
    fn kinds(&self) -> Vec<&'static str> {
        vec![KUBELET_HEALTHY]
    }

    fn collect(self: Arc<Self>) -> CollectFuture {
        Box::pin(async move { Ok(vec![self.observe().await?]) })
    }
}

/// The condition an answer from kubelet means.
fn judge(url: &str, answer: &HttpAnswer, took: Duration) -> Observation {
    let body = String::from_utf8_lossy(&answer.body);
    if answer.status == 200 && body.trim() == HEALTHY_BODY {
        let message = format!(
            "kubelet answered 200 ok at {url} in {} ms",
            took.as_millis()
        );
        return Observation::ok(KUBELET_HEALTHY, "", "HealthzOk", message);
    }
    let quoted: String = body.trim().chars().take(QUOTED_BODY_CHARS).collect();
    let message = format!(
        "kubelet answered {} at {url} with {quoted:?}, not 200 {HEALTHY_BODY:?}",
        answer.status
    );
    Observation::problem(
        KUBELET_HEALTHY,
        "",
        Severity::Critical,
        "HealthzFailing",
        message,
    )
}

/// The condition of a kubelet that could not be asked.
fn unreachable_kubelet(url: &str, error: &http::GetError) -> Observation {
    let reason = match error {
        http::GetError::Connect { .. } => "HealthzUnreachable",
        http::GetError::TimedOut { .. } => "HealthzTimedOut",
        http::GetError::Exchange { .. } | http::GetError::ParseAnswer { .. } => "HealthzBroken",
    };
    let message = format!("kubelet healthz at {url} failed: {}", ErrorChain(error));
    Observation::problem(KUBELET_HEALTHY, "", Severity::Critical, reason, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opi_proto::v1::ConditionStatus;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A real HTTP server on `127.0.0.1:0` answering every connection with `answer`, or
    /// closing it at once when `answer` is empty.
    async fn serve(answer: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 1024];
                let _ = conn.read(&mut request).await;
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
        format!("http://{address}/healthz")
    }

    fn collector(url: String) -> KubeletCollector {
        let mut config = HealthConfig::default();
        config.kubelet.healthz_url = url;
        KubeletCollector::new(&config)
    }

    #[tokio::test]
    async fn kubelet_answering_ok_is_healthy() {
        let url = serve("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let seen = collector(url.clone()).observe().await.unwrap();
        assert_eq!(seen.status, ConditionStatus::Ok, "{}", seen.message);
        assert!(seen.message.contains(&url), "{}", seen.message);
    }

    #[tokio::test]
    async fn kubelet_answering_500_is_a_critical_problem_quoting_its_answer() {
        let url = serve(
            "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 26\r\n\r\n[-]syncloop failed: reason",
        )
        .await;
        let seen = collector(url).observe().await.unwrap();
        assert_eq!(seen.status, ConditionStatus::Problem);
        assert_eq!(seen.severity, Severity::Critical);
        assert_eq!(seen.reason, "HealthzFailing");
        assert!(seen.message.contains("500"), "{}", seen.message);
        assert!(seen.message.contains("syncloop failed"), "{}", seen.message);
    }

    #[tokio::test]
    async fn kubelet_closing_without_an_answer_is_a_problem() {
        let url = serve("").await;
        let seen = collector(url).observe().await.unwrap();
        assert_eq!(seen.status, ConditionStatus::Problem);
        assert_eq!(seen.reason, "HealthzBroken", "{}", seen.message);
    }

    #[tokio::test]
    async fn refused_connection_is_a_critical_problem_naming_the_address() {
        // Bind then drop a listener: its port is free and refuses connections.
        let address = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let seen = collector(format!("http://{address}/healthz"))
            .observe()
            .await
            .unwrap();
        assert_eq!(seen.reason, "HealthzUnreachable", "{}", seen.message);
        assert_eq!(seen.severity, Severity::Critical);
        assert!(
            seen.message.contains(&address.to_string()),
            "{}",
            seen.message
        );
    }

    #[tokio::test]
    async fn kubelet_that_accepts_but_never_answers_times_out_as_a_problem() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/healthz", listener.local_addr().unwrap());
        // The listener stays open and never accepts: the connection completes in the
        // kernel's backlog, and no answer ever comes.
        let mut config = HealthConfig::default();
        config.kubelet.healthz_url = url;
        config.kubelet.timeout_ms = 200;
        let seen = KubeletCollector::new(&config).observe().await.unwrap();
        assert_eq!(seen.reason, "HealthzTimedOut", "{}", seen.message);
        drop(listener);
    }
}
