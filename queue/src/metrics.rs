//! What agq counts, in the Prometheus text format (0.0.4), on a listener of its own:
//! `agq serve --metrics ADDR` serves `GET /metrics` over plain HTTP, apart from QUIC.
//!
//! Names follow Prometheus conventions: the `agenix_queue_` prefix, base units, `_total`
//! on counters. Every label takes a bounded set of values (request names, error codes, job
//! states): no job, worker or AU identifier is ever a label. The numbers are counts and
//! durations only; nothing a client sent appears.

use std::sync::{Arc, LazyLock};

use agenix_proto::audit::Step;
use agenix_proto::job::StateKind;
use agenix_proto::wire::Response;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::server::Queue;

/// The queue's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    unsent: IntCounterVec,
    connections_refused: IntCounter,
    commit_seconds: Histogram,
    commit_writes: Histogram,
    commit_failures: IntCounter,
    jobs: IntGaugeVec,
    steps: IntCounterVec,
    workers: IntGauge,
}

impl Metrics {
    fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "agenix_queue_requests_total",
                "Answers sent, by request and outcome (ok, or the error code).",
            ),
            &["request", "outcome"],
        )?;
        let unsent = IntCounterVec::new(
            Opts::new("agenix_queue_answers_unsent_total", "Answers that could not be sent."),
            &["request"],
        )?;
        let connections_refused = IntCounter::new(
            "agenix_queue_connections_refused_total",
            "Connections refused before TLS: too many from one address.",
        )?;
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "agenix_queue_commit_duration_seconds",
                "Time to make one batch of writes durable.",
            )
            .buckets(prometheus::exponential_buckets(0.000_25, 2.0, 14)?),
        )?;
        let commit_writes = Histogram::with_opts(
            HistogramOpts::new("agenix_queue_commit_writes", "Writes in one durable commit.")
                .buckets(prometheus::exponential_buckets(1.0, 2.0, 14)?),
        )?;
        let commit_failures =
            IntCounter::new("agenix_queue_commit_failures_total", "Commits that failed.")?;
        let jobs = IntGaugeVec::new(Opts::new("agenix_queue_jobs", "Jobs by state."), &["state"])?;
        let steps = IntCounterVec::new(
            Opts::new(
                "agenix_queue_job_steps_total",
                "Steps of jobs made durable, by step (submitted, leased, completed, failed, \
                 released, expired, reclaimed, cancel_requested, cancelled, action_expired, \
                 forgotten).",
            ),
            &["step"],
        )?;
        for step in Step::ALL {
            steps.with_label_values(&[step.name()]);
        }
        let workers = IntGauge::new("agenix_queue_workers", "Workers seen in the last minute.")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(unsent.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(commit_seconds.clone()))?;
        registry.register(Box::new(commit_writes.clone()))?;
        registry.register(Box::new(commit_failures.clone()))?;
        registry.register(Box::new(jobs.clone()))?;
        registry.register(Box::new(steps.clone()))?;
        registry.register(Box::new(workers.clone()))?;
        Ok(Self {
            registry,
            requests,
            unsent,
            connections_refused,
            commit_seconds,
            commit_writes,
            commit_failures,
            jobs,
            steps,
            workers,
        })
    }
}

/// The process's metrics; `None` only if they could not be set up (said once, in the log),
/// in which case agq serves without them.
static METRICS: LazyLock<Option<Metrics>> = LazyLock::new(|| {
    Metrics::new().map_err(|e| tracing::error!(error = %e, "metrics could not be set up")).ok()
});

/// Counts an answer to `request`, sent or not.
pub(crate) fn answered(request: &str, resp: &Response, sent: bool) {
    let Some(m) = METRICS.as_ref() else { return };
    if !sent {
        m.unsent.with_label_values(&[request]).inc();
        return;
    }
    let outcome = match resp {
        Response::Error { code, .. } => code.as_str(),
        _ => "ok",
    };
    m.requests.with_label_values(&[request, outcome]).inc();
}

/// Counts a connection refused before TLS.
pub(crate) fn connection_refused() {
    if let Some(m) = METRICS.as_ref() {
        m.connections_refused.inc();
    }
}

/// Records one commit: how long it took, how many writes it held, whether it failed.
pub(crate) fn committed(seconds: f64, writes: usize, ok: bool) {
    let Some(m) = METRICS.as_ref() else { return };
    m.commit_seconds.observe(seconds);
    m.commit_writes.observe(writes as f64);
    if !ok {
        m.commit_failures.inc();
    }
}

/// Counts the steps of jobs a commit made durable.
pub(crate) fn steps(steps: &[Step]) {
    let Some(m) = METRICS.as_ref() else { return };
    for step in steps {
        m.steps.with_label_values(&[step.name()]).inc();
    }
}

/// The text exposition, with jobs by state and workers read from `queue` now.
fn render(queue: &Queue) -> String {
    let Some(m) = METRICS.as_ref() else {
        return "# metrics could not be set up: see agq's log\n".into();
    };
    let stats = queue.stats_now();
    for state in StateKind::ALL {
        let n = stats.jobs.get(state.name()).copied().unwrap_or(0);
        m.jobs.with_label_values(&[state.name()]).set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    m.workers.set(i64::try_from(stats.workers).unwrap_or(i64::MAX));
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&m.registry.gather(), &mut out) {
        tracing::error!(error = %e, "metrics could not be encoded");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, queue: Arc<Queue>) {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let queue = queue.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    render(&queue),
                )
            }
        }),
    );
    if let Err(e) = axum::serve(agenix_link::http::Bounded::new(listener), app).await {
        tracing::error!(error = %e, "the metrics listener stopped");
    }
}
