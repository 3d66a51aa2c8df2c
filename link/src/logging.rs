//! How agq and agw log: to stderr, filtered by an environment variable (`AGQ_LOG`,
//! `AGW_LOG`: `info` by default, any `tracing` filter such as `debug` or
//! `agenix_queue=debug,info`), as text for people or as JSON Lines for collectors.
//!
//! In JSON every line is one object: `timestamp`, `level`, `target`, the event's own fields
//! flattened beside its `message`, and `spans`, the spans it happened in, outermost first,
//! each with its `name` and fields. The same names are used everywhere: `job` (a job id),
//! `attempt`, `task` (a task id), `kind` (`wasm` or `native`), `worker` (a worker's id at the
//! queue), `key` (a key id), `ip`. Nothing secret is ever a field: no token, private key,
//! input, output or stderr.

use std::io::IsTerminal;

/// The form of log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event, for people (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Sends log events to stderr in `format`, filtered by the environment variable `env`
/// (`info` when it is unset or not a filter). Call once, first thing.
pub fn init(env: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(env)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => {
            builder.json().flatten_event(true).with_current_span(false).with_span_list(true).init()
        }
    }
}
