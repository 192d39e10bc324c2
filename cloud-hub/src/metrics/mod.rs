//! The hub's Prometheus metrics: one registry per hub, filled where things happen
//! (API middleware, sync sessions, enrolment, blobs, the controller loop) and, for
//! Raft, read from the store when scraped. Rendered as OpenMetrics text by
//! `prometheus-client`; served by [`http`].
//!
//! Every label has a bounded set of values: API routes are the router's templates
//! (`/api/v1/{kind}/{name}`), never raw paths; methods outside the usual few count as
//! `other`; transports, controllers and outcomes are enums.

pub mod http;

use hub_store::RaftProgress;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

/// Label values written in lower case, as Prometheus labels usually are.
macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                EncodeLabelValue::encode(&self.as_str(), encoder)
            }
        }
    };
}

label_enum!(
    /// How an agent reached the hub.
    Transport { Quic => "quic", Tcp => "tcp" }
);

label_enum!(
    /// The planners a controller pass runs, in order.
    Controller {
        Scheduler => "scheduler",
        Manifests => "manifests",
        Devices => "devices",
        Apps => "apps",
        Sites => "sites",
    }
);

impl Controller {
    pub const ALL: [Controller; 5] = [
        Controller::Scheduler,
        Controller::Manifests,
        Controller::Devices,
        Controller::Apps,
        Controller::Sites,
    ];
}

label_enum!(EnrolOutcome { Accepted => "accepted", Refused => "refused" });

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    /// The matched route's template, or `unmatched`.
    pub route: String,
    pub code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    pub transport: Transport,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: Controller,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EnrolLabels {
    pub outcome: EnrolOutcome,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// API latencies: 1 ms to about 33 s.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Controller passes: 10 µs to about 5 s (a pass over nothing dirty is microseconds).
fn pass_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.0, 20))
}

/// Everything one hub counts. Cheap to update from any task (atomics, and a lock per
/// label set the first time it is seen).
pub struct HubMetrics {
    registry: Registry,
    api_requests: Family<RequestLabels, Counter>,
    api_duration: HistogramFamily<RequestLabels>,
    connected_devices: Family<TransportLabels, Gauge>,
    sessions_opened: Family<TransportLabels, Counter>,
    sessions_closed: Family<TransportLabels, Counter>,
    frames_rejected: Family<TransportLabels, Counter>,
    enrolments: Family<EnrolLabels, Counter>,
    blob_bytes: Counter,
    controller_pass: HistogramFamily<ControllerLabels>,
    raft_term: Gauge,
    raft_last_log_index: Gauge,
    raft_commit_index: Gauge,
    raft_applied_index: Gauge,
    raft_apply_lag: Gauge,
    raft_leader: Gauge,
}

impl Default for HubMetrics {
    fn default() -> Self {
        HubMetrics::new()
    }
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl HubMetrics {
    pub fn new() -> HubMetrics {
        let mut registry = Registry::with_prefix("flotilla");
        let m = HubMetrics {
            api_requests: Family::default(),
            api_duration: Family::new_with_constructor(request_histogram as fn() -> Histogram),
            connected_devices: Family::default(),
            sessions_opened: Family::default(),
            sessions_closed: Family::default(),
            frames_rejected: Family::default(),
            enrolments: Family::default(),
            blob_bytes: Counter::default(),
            controller_pass: Family::new_with_constructor(pass_histogram as fn() -> Histogram),
            raft_term: Gauge::default(),
            raft_last_log_index: Gauge::default(),
            raft_commit_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_apply_lag: Gauge::default(),
            raft_leader: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("build", "The hub's version", Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]));
        r.register(
            "api_requests",
            "HTTPS API requests answered, by method, route template and status code",
            m.api_requests.clone(),
        );
        r.register(
            "api_request_duration_seconds",
            "Time from a request's arrival to its response head, by method, route template and status code",
            m.api_duration.clone(),
        );
        r.register(
            "connected_devices",
            "Devices with an open sync session on this hub, by transport",
            m.connected_devices.clone(),
        );
        r.register("sync_sessions_opened", "Sync sessions welcomed, by transport", m.sessions_opened.clone());
        r.register(
            "sync_sessions_closed",
            "Welcomed sync sessions that ended, by transport",
            m.sessions_closed.clone(),
        );
        r.register(
            "sync_frames_rejected",
            "Agent streams closed for a malformed frame or an unsupported protocol version, by transport",
            m.frames_rejected.clone(),
        );
        r.register("enrolments", "Enrolment requests answered, by outcome", m.enrolments.clone());
        r.register("blob_bytes_served", "Image blob bytes sent to devices", m.blob_bytes.clone());
        r.register(
            "controller_pass_duration_seconds",
            "Time each planner took in a controller pass on the leader, by controller",
            m.controller_pass.clone(),
        );
        r.register("raft_term", "This hub's current Raft term", m.raft_term.clone());
        r.register(
            "raft_last_log_index",
            "The last entry appended to this hub's Raft log",
            m.raft_last_log_index.clone(),
        );
        r.register(
            "raft_commit_index",
            "The last Raft entry this hub knows to be committed",
            m.raft_commit_index.clone(),
        );
        r.register(
            "raft_applied_index",
            "The last Raft entry applied to this hub's store (its revision)",
            m.raft_applied_index.clone(),
        );
        r.register(
            "raft_apply_lag",
            "Committed Raft entries this hub has not applied yet",
            m.raft_apply_lag.clone(),
        );
        r.register("raft_leader", "1 when this hub is the Raft leader, else 0", m.raft_leader.clone());
        // Every series with a known label set exists from the start, at 0: a scraper
        // sees "no devices" rather than nothing, and rates start from a sample.
        for transport in [Transport::Quic, Transport::Tcp] {
            let labels = TransportLabels { transport };
            drop(m.connected_devices.get_or_create(&labels));
            for family in [&m.sessions_opened, &m.sessions_closed, &m.frames_rejected] {
                drop(family.get_or_create(&labels));
            }
        }
        for outcome in [EnrolOutcome::Accepted, EnrolOutcome::Refused] {
            drop(m.enrolments.get_or_create(&EnrolLabels { outcome }));
        }
        for controller in Controller::ALL {
            drop(m.controller_pass.get_or_create(&ControllerLabels { controller }));
        }
        HubMetrics { registry, ..m }
    }

    /// One API request answered.
    pub fn api_request(&self, method: &axum::http::Method, route: Option<&str>, code: u16, took: Duration) {
        let labels = RequestLabels {
            method: method_label(method),
            route: route.unwrap_or("unmatched").to_string(),
            code,
        };
        self.api_requests.get_or_create(&labels).inc();
        self.api_duration.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// A sync session was welcomed; the device counts as connected until the guard drops.
    pub fn session_opened(self: &Arc<Self>, transport: Transport) -> ConnectedDevice {
        let labels = TransportLabels { transport };
        self.sessions_opened.get_or_create(&labels).inc();
        self.connected_devices.get_or_create(&labels).inc();
        ConnectedDevice { metrics: self.clone(), labels }
    }

    pub fn frame_rejected(&self, transport: Transport) {
        self.frames_rejected.get_or_create(&TransportLabels { transport }).inc();
    }

    pub fn enrolment(&self, outcome: EnrolOutcome) {
        self.enrolments.get_or_create(&EnrolLabels { outcome }).inc();
    }

    pub fn blob_bytes_served(&self, n: u64) {
        self.blob_bytes.inc_by(n);
    }

    pub fn controller_pass(&self, controller: Controller, took: Duration) {
        self.controller_pass.get_or_create(&ControllerLabels { controller }).observe(took.as_secs_f64());
    }

    /// The OpenMetrics text of every series, with Raft's as `progress` says.
    pub fn render(&self, progress: &RaftProgress) -> String {
        self.raft_term.set(gauge_value(progress.term));
        self.raft_last_log_index.set(gauge_value(progress.last_log_index));
        self.raft_commit_index.set(gauge_value(progress.committed_index));
        self.raft_applied_index.set(gauge_value(progress.applied_index));
        self.raft_apply_lag.set(gauge_value(progress.apply_lag()));
        self.raft_leader.set(i64::from(progress.is_leader));
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// A device connected through one transport; leaving the session drops it.
pub struct ConnectedDevice {
    metrics: Arc<HubMetrics>,
    labels: TransportLabels,
}

impl Drop for ConnectedDevice {
    fn drop(&mut self) {
        self.metrics.connected_devices.get_or_create(&self.labels).dec();
        self.metrics.sessions_closed.get_or_create(&self.labels).inc();
    }
}

/// The method as a label: the usual ones by name, anything else `other`, so a client
/// inventing methods cannot grow the series.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_label_sets_start_at_zero() {
        let text = HubMetrics::new().render(&RaftProgress::default());
        for line in [
            r#"flotilla_connected_devices{transport="quic"} 0"#,
            r#"flotilla_connected_devices{transport="tcp"} 0"#,
            r#"flotilla_enrolments_total{outcome="refused"} 0"#,
            r#"flotilla_sync_frames_rejected_total{transport="tcp"} 0"#,
            r#"flotilla_controller_pass_duration_seconds_count{controller="sites"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
    }

    #[test]
    fn renders_every_series_with_bounded_labels() {
        let m = Arc::new(HubMetrics::new());
        m.api_request(&axum::http::Method::GET, Some("/api/v1/{kind}"), 200, Duration::from_millis(3));
        m.api_request(&"BREW".parse().unwrap(), None, 404, Duration::from_millis(1));
        let quic = m.session_opened(Transport::Quic);
        m.controller_pass(Controller::Scheduler, Duration::from_micros(50));
        m.blob_bytes_served(1234);
        m.enrolment(EnrolOutcome::Accepted);
        let progress = RaftProgress {
            term: 3,
            last_log_index: 12,
            committed_index: 11,
            applied_index: 9,
            is_leader: true,
        };
        let text = m.render(&progress);
        for line in [
            r#"flotilla_api_requests_total{method="GET",route="/api/v1/{kind}",code="200"} 1"#,
            r#"flotilla_api_requests_total{method="other",route="unmatched",code="404"} 1"#,
            r#"flotilla_connected_devices{transport="quic"} 1"#,
            r#"flotilla_sync_sessions_opened_total{transport="quic"} 1"#,
            "flotilla_blob_bytes_served_total 1234",
            r#"flotilla_enrolments_total{outcome="accepted"} 1"#,
            r#"flotilla_controller_pass_duration_seconds_count{controller="scheduler"} 1"#,
            "flotilla_raft_term 3",
            "flotilla_raft_commit_index 11",
            "flotilla_raft_applied_index 9",
            "flotilla_raft_apply_lag 2",
            "flotilla_raft_leader 1",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
        drop(quic);
        let text = m.render(&progress);
        assert!(text.lines().any(|l| l == r#"flotilla_connected_devices{transport="quic"} 0"#), "{text}");
        assert!(text.lines().any(|l| l == r#"flotilla_sync_sessions_closed_total{transport="quic"} 1"#));
    }
}
