//! What agw counts, in the Prometheus text format (0.0.4), on a listener of its own:
//! `agw --metrics ADDR` serves `GET /metrics` over plain HTTP, apart from the queue's link.
//!
//! Names take the `agenix_worker_` prefix, base units, and `_total` on counters. Labels
//! take bounded values only (a task's kind and outcome, a lease's verdict, a verification
//! failure's reason): no job, plan, AU or tool name is ever a label.

use std::sync::LazyLock;

use agenix_proto::{Outcome, TaskReport};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

use super::Verdict;

struct Metrics {
    registry: Registry,
    tasks: IntCounterVec,
    seconds: HistogramVec,
    memory: HistogramVec,
    fuel: HistogramVec,
    jail_setup: Histogram,
    leases: IntCounterVec,
    verification: IntCounterVec,
}

impl Metrics {
    fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let tasks = IntCounterVec::new(
            Opts::new("agenix_worker_tasks_total", "Tasks run, by kind and outcome."),
            &["kind", "outcome"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new("agenix_worker_task_duration_seconds", "A task's wall time.")
                .buckets(prometheus::exponential_buckets(0.000_1, 4.0, 12)?),
            &["kind"],
        )?;
        let memory = HistogramVec::new(
            HistogramOpts::new("agenix_worker_task_peak_memory_bytes", "A task's peak memory.")
                .buckets(prometheus::exponential_buckets(65_536.0, 4.0, 12)?),
            &["kind"],
        )?;
        let fuel = HistogramVec::new(
            HistogramOpts::new("agenix_worker_task_fuel", "Fuel a wasm task consumed.")
                .buckets(prometheus::exponential_buckets(1_000.0, 10.0, 10)?),
            &["kind"],
        )?;
        let jail_setup = Histogram::with_opts(
            HistogramOpts::new(
                "agenix_worker_jail_setup_seconds",
                "Time from asking for a native task's jail to the tool starting in it.",
            )
            .buckets(prometheus::exponential_buckets(0.000_25, 2.0, 14)?),
        )?;
        let leases = IntCounterVec::new(
            Opts::new(
                "agenix_worker_leases_total",
                "Leases ended: completed, failed (retryable or not) or declined.",
            ),
            &["verdict"],
        )?;
        let verification = IntCounterVec::new(
            Opts::new(
                "agenix_worker_verification_failures_total",
                "Plans and actions that did not verify, by reason.",
            ),
            &["document", "reason"],
        )?;
        for c in [&tasks, &leases, &verification] {
            registry.register(Box::new(c.clone()))?;
        }
        for h in [&seconds, &memory, &fuel] {
            registry.register(Box::new(h.clone()))?;
        }
        registry.register(Box::new(jail_setup.clone()))?;
        Ok(Self { registry, tasks, seconds, memory, fuel, jail_setup, leases, verification })
    }
}

/// The process's metrics; `None` only if they could not be set up (said once, in the log),
/// in which case agw runs without them.
static METRICS: LazyLock<Option<Metrics>> = LazyLock::new(|| {
    Metrics::new().map_err(|e| tracing::error!(error = %e, "metrics could not be set up")).ok()
});

/// Counts one task's report.
pub(super) fn task(wasm: bool, r: &TaskReport) {
    let Some(m) = METRICS.as_ref() else { return };
    let kind = if wasm { "wasm" } else { "native" };
    m.tasks.with_label_values(&[kind, r.outcome.class()]).inc();
    if matches!(r.outcome, Outcome::Skipped { .. }) {
        return;
    }
    m.seconds.with_label_values(&[kind]).observe(r.wall_ms as f64 / 1000.0);
    m.memory.with_label_values(&[kind]).observe(r.peak_memory_bytes as f64);
    if let Some(fuel) = r.fuel_consumed {
        m.fuel.with_label_values(&[kind]).observe(fuel as f64);
    }
}

/// Records how long a native task's jail took to build.
pub(crate) fn jail_setup(d: std::time::Duration) {
    if let Some(m) = METRICS.as_ref() {
        m.jail_setup.observe(d.as_secs_f64());
    }
}

/// Counts how a lease ended.
pub(super) fn lease(v: &Verdict) {
    let Some(m) = METRICS.as_ref() else { return };
    let verdict = match v {
        Verdict::Done(_) => "completed",
        Verdict::Fail { retryable: true, .. } => "failed_retryable",
        Verdict::Fail { retryable: false, .. } => "failed",
        Verdict::Decline(_) => "declined",
    };
    m.leases.with_label_values(&[verdict]).inc();
}

/// Counts a plan or action that did not verify.
pub(super) fn verification_failed(document: &'static str, reason: &'static str) {
    if let Some(m) = METRICS.as_ref() {
        m.verification.with_label_values(&[document, reason]).inc();
    }
}

fn render() -> String {
    let Some(m) = METRICS.as_ref() else {
        return "# metrics could not be set up: see agw's log\n".into();
    };
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&m.registry.gather(), &mut out) {
        tracing::error!(error = %e, "metrics could not be encoded");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                render(),
            )
        }),
    );
    if let Err(e) = axum::serve(agenix_link::http::Bounded::new(listener), app).await {
        tracing::error!(error = %e, "the metrics listener stopped");
    }
}
