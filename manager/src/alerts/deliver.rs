//! Delivery to one Alertmanager: a worker that pushes the desired alerts whenever they change
//! and every resend interval, resolves the ones that cleared, and retries failed pushes with
//! exponential backoff. Each push carries the whole current truth, so a push that failed is
//! simply superseded by the next one.
//!
//! HTTPS Alertmanager endpoints are not supported yet: pushes go over plain HTTP/1.1.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use time::OffsetDateTime;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::model::{payload, Alert, Labels};
use super::{AlertMetrics, AlertsError, Snapshot};

/// Path of the alerts endpoint of Alertmanager's API v2, under the configured URL.
const ALERTS_PATH: &str = "/api/v2/alerts";
/// Time a push has to be answered.
pub const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// Delay before the first retry of a failed push; it doubles at each failure.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest delay between retries.
pub const MAX_RETRY: Duration = Duration::from_secs(30);
/// Firing alerts are valid for this many resend intervals, so that Alertmanager resolves them
/// on its own if the manager stops pushing.
const VALIDITY_RESENDS: u32 = 3;
/// Bytes of an error answer kept for the log.
const MAX_ERROR_BODY: usize = 4096;

/// An Alertmanager, as `--alertmanager http://HOST:PORT[/PREFIX]` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertmanagerUrl {
    url: String,
    api: Uri,
}

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The request could not be sent, or no answer came back.
    #[error("cannot post alerts to Alertmanager {url}")]
    PostAlerts {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// No full answer within [`POST_TIMEOUT`].
    #[error("Alertmanager {url} did not answer within {timeout:?}")]
    AwaitAnswer { url: String, timeout: Duration },
    /// Alertmanager answered with an error status.
    #[error("Alertmanager {url} refused the alerts with HTTP {status}: {body}")]
    Refused {
        url: String,
        status: StatusCode,
        body: String,
    },
}

/// What one worker knows of what its Alertmanager holds.
#[derive(Debug, Default)]
struct Delivery {
    /// Alerts the last successful push asserted as firing.
    delivered: BTreeMap<Labels, Alert>,
    /// Delivered alerts that cleared since, with when they cleared, until a push says so.
    resolving: BTreeMap<Labels, (Alert, OffsetDateTime)>,
    last_push: Option<Instant>,
    backoff: Option<Duration>,
    retry_at: Option<Instant>,
}

/// Whether this manager leads its replicas.
pub(super) type Leads = Arc<dyn Fn() -> bool + Send + Sync>;
/// How often a replica that does not lead looks again whether it does.
const FOLLOWER_RECHECK: Duration = Duration::from_secs(1);

/// Pushes to one Alertmanager.
pub(super) struct Worker {
    pub url: AlertmanagerUrl,
    pub resend: Duration,
    pub metrics: Arc<AlertMetrics>,
    client: Client<HttpConnector, Full<Bytes>>,
    /// Whether this manager may push now: only the leader replica does.
    leads: Leads,
}

impl AlertmanagerUrl {
    /// Parses `http://HOST:PORT[/PREFIX]`; HTTPS is refused, as it is not supported yet.
    pub fn parse(text: &str) -> Result<Self, AlertsError> {
        let uri: Uri = text.parse().map_err(|source| AlertsError::ParseUrl {
            url: text.into(),
            source,
        })?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(AlertsError::UnsupportedScheme { url: text.into() }),
            _ => return Err(AlertsError::NotHttp { url: text.into() }),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| AlertsError::NotHttp { url: text.into() })?;
        let prefix = uri.path().trim_end_matches('/');
        let api = format!("http://{authority}{prefix}{ALERTS_PATH}");
        let api = api.parse().map_err(|source| AlertsError::ParseUrl {
            url: text.into(),
            source,
        })?;
        Ok(Self {
            url: text.into(),
            api,
        })
    }

    /// The URL alerts are posted to.
    pub fn api(&self) -> &Uri {
        &self.api
    }
}

impl fmt::Display for AlertmanagerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl Worker {
    /// A worker for `url`, pushing at least every `resend`.
    pub fn new(url: AlertmanagerUrl, resend: Duration, metrics: Arc<AlertMetrics>) -> Self {
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self {
            url,
            resend,
            metrics,
            client,
            leads: Arc::new(|| true),
        }
    }

    /// Pushes only while `leads` holds, so that a replica that stepped down stops resending.
    pub fn gated(mut self, leads: Leads) -> Self {
        self.leads = leads;
        self
    }

    /// Pushes the desired alerts as they change, until the reconciler goes away.
    pub async fn run(self, mut desired: watch::Receiver<Arc<Snapshot>>) {
        // The channel's initial value is a placeholder: wait for the first evaluation.
        if desired.changed().await.is_err() {
            return;
        }
        let mut delivery = Delivery::default();
        loop {
            let snapshot = desired.borrow_and_update().clone();
            delivery.track(&snapshot);
            match delivery.wait(&snapshot, Instant::now(), self.resend) {
                Some(wait) => {
                    tokio::select! {
                        changed = desired.changed() => if changed.is_err() { return },
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                None if !(self.leads)() => tokio::time::sleep(FOLLOWER_RECHECK).await,
                None => self.push(&mut delivery, &snapshot).await,
            }
        }
    }

    async fn push(&self, delivery: &mut Delivery, snapshot: &Snapshot) {
        let until = OffsetDateTime::now_utc() + self.resend * VALIDITY_RESENDS;
        let resolved: Vec<(Alert, OffsetDateTime)> = delivery.resolving.values().cloned().collect();
        let body = payload(&snapshot.firing, until, &resolved);
        let (firing, resolved) = (snapshot.firing.len(), resolved.len());
        match self.post(body).await {
            Ok(()) => {
                self.metrics.count_delivery(true);
                // The span names the Alertmanager.
                if delivery.backoff.is_some() {
                    info!(firing, resolved, "alert delivery recovered");
                }
                debug!(firing, resolved, "alerts pushed");
                delivery.pushed(snapshot, Instant::now());
            }
            Err(error) => {
                self.metrics.count_delivery(false);
                let retry_in = delivery.failed(Instant::now());
                warn!(
                    error = %crate::error_chain(&error),
                    ?retry_in,
                    firing,
                    resolved,
                    "cannot deliver alerts; retrying"
                );
            }
        }
    }

    async fn post(&self, body: Vec<u8>) -> Result<(), DeliveryError> {
        let mut request = Request::post(self.url.api().clone())
            .body(Full::new(Bytes::from(body)))
            .expect("a POST to a parsed URI is a valid request");
        let json = HeaderValue::from_static("application/json");
        request.headers_mut().insert(CONTENT_TYPE, json);
        tokio::time::timeout(POST_TIMEOUT, self.exchange(request))
            .await
            .map_err(|_| DeliveryError::AwaitAnswer {
                url: self.url.to_string(),
                timeout: POST_TIMEOUT,
            })?
    }

    /// Sends `request` and reads the answer; an error status is an error.
    async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<(), DeliveryError> {
        let response =
            self.client
                .request(request)
                .await
                .map_err(|source| DeliveryError::PostAlerts {
                    url: self.url.to_string(),
                    source,
                })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = Limited::new(response.into_body(), MAX_ERROR_BODY)
            .collect()
            .await;
        let body = body.map(|b| b.to_bytes()).unwrap_or_default();
        Err(DeliveryError::Refused {
            url: self.url.to_string(),
            status,
            body: String::from_utf8_lossy(&body).trim().to_string(),
        })
    }
}

impl Delivery {
    /// Notes which delivered alerts cleared, and which cleared ones fire again.
    fn track(&mut self, snapshot: &Snapshot) {
        let firing: BTreeMap<&Labels, &Alert> =
            snapshot.firing.iter().map(|a| (&a.labels, a)).collect();
        self.resolving
            .retain(|labels, _| !firing.contains_key(labels));
        for (labels, alert) in &self.delivered {
            if !firing.contains_key(labels) {
                self.resolving
                    .entry(labels.clone())
                    .or_insert_with(|| (alert.clone(), snapshot.at));
            }
        }
    }

    /// How long to wait before the next push; `None` when one is due now.
    fn wait(&self, snapshot: &Snapshot, now: Instant, resend: Duration) -> Option<Duration> {
        let changed = !self.resolving.is_empty()
            || snapshot
                .firing
                .iter()
                .any(|a| !self.delivered.contains_key(&a.labels));
        let until_due = match (changed, self.last_push) {
            (false, Some(at)) => resend.saturating_sub(now - at),
            _ => Duration::ZERO,
        };
        let backoff = self
            .retry_at
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
        let wait = until_due.max(backoff);
        (!wait.is_zero()).then_some(wait)
    }

    fn pushed(&mut self, snapshot: &Snapshot, now: Instant) {
        self.delivered = snapshot
            .firing
            .iter()
            .map(|a| (a.labels.clone(), a.clone()))
            .collect();
        self.resolving.clear();
        self.last_push = Some(now);
        self.backoff = None;
        self.retry_at = None;
    }

    /// Schedules the next attempt; returns how long until it.
    fn failed(&mut self, now: Instant) -> Duration {
        let backoff = self.backoff.map_or(FIRST_RETRY, |b| (b * 2).min(MAX_RETRY));
        self.backoff = Some(backoff);
        self.retry_at = Some(now + backoff);
        backoff
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const AT: OffsetDateTime = datetime!(2025-03-01 12:00:00 UTC);
    const RESEND: Duration = Duration::from_secs(60);

    fn alert(node: &str) -> Alert {
        Alert::new("OpiNodeOffline", "prod", "critical", AT).label("node", node)
    }

    fn snapshot(nodes: &[&str], at: OffsetDateTime) -> Snapshot {
        Snapshot {
            at,
            firing: nodes.iter().map(|n| alert(n)).collect(),
        }
    }

    /// A loopback server that answers one request with `answer`.
    async fn answering(answer: &'static [u8]) -> AlertmanagerUrl {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = vec![0; 64 * 1024];
            let _ = stream.read(&mut request).await;
            stream.write_all(answer).await.unwrap();
        });
        AlertmanagerUrl::parse(&format!("http://{addr}")).unwrap()
    }

    #[tokio::test]
    async fn a_refused_push_names_the_status_and_the_body() {
        let answer = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\n\r\nbad payload";
        let worker = Worker::new(answering(answer).await, RESEND, Arc::default());

        let error = worker.post(b"[]".to_vec()).await.expect_err("refused");

        assert!(
            matches!(&error, DeliveryError::Refused { status, body, .. }
                if *status == StatusCode::BAD_REQUEST && body == "bad payload"),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .contains("HTTP 400 Bad Request: bad payload"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_accepted_push_is_ok_and_an_unreachable_one_names_the_url() {
        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let worker = Worker::new(answering(answer).await, RESEND, Arc::default());
        worker.post(b"[]".to_vec()).await.expect("accepted");

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = AlertmanagerUrl::parse(&format!("http://{}", closed.local_addr().unwrap()));
        drop(closed);
        let worker = Worker::new(url.unwrap(), RESEND, Arc::default());
        let error = worker
            .post(b"[]".to_vec())
            .await
            .expect_err("nobody listens");
        assert!(matches!(error, DeliveryError::PostAlerts { .. }), "{error}");
        assert!(error.to_string().contains("http://127.0.0.1:"), "{error}");
    }

    #[tokio::test]
    async fn a_worker_that_does_not_lead_pushes_nothing_until_it_leads() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = AlertmanagerUrl::parse(&format!("http://{}", listener.local_addr().unwrap()));
        let leading = Arc::new(AtomicBool::new(false));
        let flag = leading.clone();
        let worker = Worker::new(url.unwrap(), RESEND, Arc::default())
            .gated(Arc::new(move || flag.load(Ordering::SeqCst)));
        let (desired, receiver) = watch::channel(Arc::new(snapshot(&[], AT)));
        let task = tokio::spawn(worker.run(receiver));
        desired.send_replace(Arc::new(snapshot(&["n1"], AT)));

        let early = tokio::time::timeout(Duration::from_millis(1500), listener.accept()).await;
        assert!(early.is_err(), "a follower pushed its alerts");
        leading.store(true, Ordering::SeqCst);
        let pushed = tokio::time::timeout(Duration::from_secs(3), listener.accept()).await;
        assert!(pushed.is_ok(), "the leader did not push within 3s");
        task.abort();
    }

    #[test]
    fn urls_must_be_plain_http_and_get_the_api_path_under_their_prefix() {
        let url = AlertmanagerUrl::parse("http://127.0.0.1:9093").expect("valid");
        assert_eq!(url.api().to_string(), "http://127.0.0.1:9093/api/v2/alerts");
        let prefixed = AlertmanagerUrl::parse("http://am:9093/alertmanager/").expect("valid");
        assert_eq!(
            prefixed.api().to_string(),
            "http://am:9093/alertmanager/api/v2/alerts"
        );

        let https = AlertmanagerUrl::parse("https://am:9093").expect_err("not supported yet");
        assert!(https.to_string().contains("not supported yet"), "{https}");
        assert!(AlertmanagerUrl::parse("am:9093").is_err());
        assert!(AlertmanagerUrl::parse("http://").is_err());
    }

    #[test]
    fn a_new_alert_is_due_at_once_then_only_every_resend_interval() {
        let mut delivery = Delivery::default();
        let now = Instant::now();
        let first = snapshot(&["n1"], AT);
        delivery.track(&first);
        assert_eq!(delivery.wait(&first, now, RESEND), None);

        delivery.pushed(&first, now);
        let later = now + Duration::from_secs(20);
        assert_eq!(
            delivery.wait(&first, later, RESEND),
            Some(Duration::from_secs(40))
        );
        assert_eq!(delivery.wait(&first, now + RESEND, RESEND), None);
    }

    #[test]
    fn a_cleared_alert_is_sent_resolved_once_with_the_time_it_cleared() {
        let mut delivery = Delivery::default();
        let now = Instant::now();
        let first = snapshot(&["n1", "n2"], AT);
        delivery.track(&first);
        delivery.pushed(&first, now);

        let cleared_at = AT + Duration::from_secs(5);
        let second = snapshot(&["n2"], cleared_at);
        delivery.track(&second);
        delivery.track(&snapshot(&["n2"], cleared_at + Duration::from_secs(1)));
        assert_eq!(delivery.wait(&second, now, RESEND), None, "due at once");
        let resolving: Vec<_> = delivery.resolving.values().collect();
        assert_eq!(resolving, vec![&(alert("n1"), cleared_at)]);

        delivery.pushed(&second, now);
        assert!(delivery.resolving.is_empty());
        assert!(delivery.wait(&second, now, RESEND).is_some());
    }

    #[test]
    fn an_alert_that_fires_again_before_its_resolution_was_pushed_is_not_resolved() {
        let mut delivery = Delivery::default();
        let now = Instant::now();
        let first = snapshot(&["n1"], AT);
        delivery.track(&first);
        delivery.pushed(&first, now);

        delivery.track(&snapshot(&[], AT));
        delivery.track(&first);

        assert!(delivery.resolving.is_empty());
    }

    #[test]
    fn failed_pushes_back_off_from_one_second_doubling_up_to_thirty() {
        let mut delivery = Delivery::default();
        let now = Instant::now();
        let first = snapshot(&["n1"], AT);
        delivery.track(&first);

        let delays: Vec<u64> = (0..7).map(|_| delivery.failed(now).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(delivery.wait(&first, now, RESEND), Some(MAX_RETRY));
        assert_eq!(delivery.wait(&first, now + MAX_RETRY, RESEND), None);

        delivery.pushed(&first, now);
        assert_eq!(delivery.failed(now), FIRST_RETRY, "reset by a success");
    }
}
