//! The dashboard: `agq serve --web ADDR` serves server-rendered pages of what the queue
//! holds — jobs by state and throughput over time, each job's tasks with their outcomes,
//! the workers, dead jobs with their reasons, and the audit log's tail.
//!
//! Reading: on a loopback address the pages may be read without signing in (the `Host`
//! header must then name a loopback host, so that a page elsewhere cannot rebind a name to
//! this address and read them); on any other address every page needs a signed-in session,
//! and agq refuses to serve there without TLS (`--web-cert`, `--web-key`). Signing in takes a
//! role token (planner or observer) and gives a session cookie (`HttpOnly; Secure;
//! SameSite=Strict`); only the planner role may cancel. Every form that changes something
//! carries the session's CSRF token and is refused from another origin.
//!
//! Pages are askama templates compiled into the binary: every value is escaped (plan
//! descriptions, stderr, reasons, worker names and labels are chosen by whoever wrote
//! them). No JavaScript; the stylesheet is embedded; the content security policy allows
//! nothing else.

mod pages;
mod tls;

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agenix_proto::wire::{ClientRole, Request, Response};
use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use self::pages::Page;
pub use self::tls::load_tls;
use agenix_link::http::Bounded;

use crate::limits::lock;
use crate::server::{Queue, now_ms};

/// The session cookie's name.
const COOKIE: &str = "agq_session";
/// How long a session lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions held at once, half for each role; the oldest of a role goes first.
const MAX_SESSIONS: usize = 1024;
/// Failed sign-ins an address may make per minute.
const MAX_FAILED_SIGN_INS: u32 = 10;
/// How often throughput is sampled, and how many samples are kept.
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const SAMPLES: usize = 90;

/// How the dashboard is served.
#[derive(Debug, Clone)]
pub struct WebSettings {
    /// TLS, when given (`--web-cert`, `--web-key`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// A signed-in browser.
#[derive(Debug, Clone)]
struct Session {
    role: ClientRole,
    csrf: String,
    expires: Instant,
}

/// One throughput sample.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: u64,
    submitted: u64,
    finished: u64,
}

struct Web {
    queue: Arc<Queue>,
    /// Pages may be read without signing in (a loopback address).
    open: bool,
    /// Served over TLS.
    tls: bool,
    /// By the sha256 of the cookie's value (the value itself is never kept).
    sessions: Mutex<BTreeMap<[u8; 32], Session>>,
    failed: Mutex<BTreeMap<IpAddr, (u32, Instant)>>,
    samples: Mutex<VecDeque<Sample>>,
}

type Shared = State<Arc<Web>>;

/// Serves the dashboard on `listener` until the process ends. Refuses (before serving) a
/// non-loopback address without TLS.
pub async fn serve(
    listener: tokio::net::TcpListener,
    settings: WebSettings,
    queue: Arc<Queue>,
) -> anyhow::Result<()> {
    let at = listener.local_addr()?;
    let open = at.ip().is_loopback();
    if !open && settings.tls.is_none() {
        anyhow::bail!(
            "the dashboard on {at} (not loopback) needs TLS: give --web-cert and --web-key"
        );
    }
    let web = Arc::new(Web {
        queue,
        open,
        tls: settings.tls.is_some(),
        sessions: Mutex::new(BTreeMap::new()),
        failed: Mutex::new(BTreeMap::new()),
        samples: Mutex::new(VecDeque::new()),
    });
    tokio::spawn(sample(Arc::downgrade(&web)));
    let app = router(web);
    let app = app.into_make_service_with_connect_info::<tls::Peer>();
    match settings.tls {
        None => axum::serve(Bounded::new(listener), app).await?,
        Some(config) => {
            axum::serve(Bounded::new(tls::Listener::new(listener, config)), app).await?
        }
    }
    Ok(())
}

fn router(web: Arc<Web>) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/", get(overview))
        .route("/jobs", get(jobs))
        .route("/jobs/{id}", get(job))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/workers", get(workers))
        .route("/audit", get(audit))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/style.css", get(style))
        .fallback(|| async { page_error(StatusCode::NOT_FOUND, "no such page") })
        .layer(axum::middleware::map_response(harden))
        .with_state(web)
}

/// Every answer: no caching, no framing, no sniffing, and nothing but our own stylesheet.
async fn harden(mut r: axum::response::Response) -> axum::response::Response {
    let h = r.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Not `no-referrer`: with it, browsers send `Origin: null` on the dashboard's own
        // forms, which the same-origin check must then refuse.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    r
}

/// Who is looking: the session's role and CSRF token, if signed in.
#[derive(Debug, Clone, Default)]
struct Viewer {
    role: Option<ClientRole>,
    csrf: String,
}

impl Viewer {
    fn may_cancel(&self) -> bool {
        self.role == Some(ClientRole::Planner)
    }
}

type Refused = axum::response::Response;

impl Web {
    /// Refuses, when pages are open (loopback), a request under a name that is not a
    /// loopback host's: a page elsewhere that rebinds its own name to this address.
    fn host_ok(&self, headers: &HeaderMap) -> Result<(), Refused> {
        if self.open && !loopback_host(headers) {
            return Err(page_error(
                StatusCode::MISDIRECTED_REQUEST,
                "this dashboard answers only to a loopback host name",
            ));
        }
        Ok(())
    }

    /// The viewer of a page read with `headers`, or the answer that refuses it.
    fn reader(&self, headers: &HeaderMap) -> Result<Viewer, Refused> {
        self.host_ok(headers)?;
        let viewer = self.viewer(headers);
        if viewer.role.is_none() && !self.open {
            return Err(Redirect::to("/login").into_response());
        }
        Ok(viewer)
    }

    fn viewer(&self, headers: &HeaderMap) -> Viewer {
        let Some(id) = cookie(headers, COOKIE) else { return Viewer::default() };
        let key = session_key(&id);
        let mut sessions = lock(&self.sessions);
        match sessions.get(&key) {
            Some(s) if s.expires > Instant::now() => {
                Viewer { role: Some(s.role), csrf: s.csrf.clone() }
            }
            Some(_) => {
                sessions.remove(&key);
                Viewer::default()
            }
            None => Viewer::default(),
        }
    }

    /// The viewer of a form post: same origin, signed in, with the session's CSRF token.
    fn poster(&self, headers: &HeaderMap, csrf: &str) -> Result<Viewer, Refused> {
        let viewer = self.reader(headers)?;
        if !same_origin(headers, self.scheme()) {
            return Err(page_error(StatusCode::FORBIDDEN, "a form from another site"));
        }
        let good = viewer.role.is_some()
            && !viewer.csrf.is_empty()
            && bool::from(viewer.csrf.as_bytes().ct_eq(csrf.as_bytes()));
        if !good {
            return Err(page_error(
                StatusCode::FORBIDDEN,
                "this form is not from this session: reload the page and try again",
            ));
        }
        Ok(viewer)
    }

    /// Counts a failed sign-in from `ip`; whether it may still try.
    fn may_try(&self, ip: IpAddr) -> bool {
        let mut failed = lock(&self.failed);
        let now = Instant::now();
        failed.retain(|_, (_, since)| now.duration_since(*since) < Duration::from_secs(60));
        failed.get(&ip).is_none_or(|(n, _)| *n < MAX_FAILED_SIGN_INS)
    }

    fn failed(&self, ip: IpAddr) {
        let mut failed = lock(&self.failed);
        let entry = failed.entry(ip).or_insert((0, Instant::now()));
        entry.0 += 1;
    }

    fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    fn cookie_attributes(&self) -> &'static str {
        // `Secure` always: browsers keep such cookies for http://127.0.0.1 and
        // http://localhost too, and send them nowhere in clear text.
        "HttpOnly; Secure; SameSite=Strict; Path=/"
    }
}

/// The `Host` header names a loopback address or `localhost`.
fn loopback_host(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A form post came from a page of this site: its one `Origin` (sent by every current
/// browser on a POST) is `scheme://` and the `Host` it was sent to, and `Sec-Fetch-Site`,
/// when sent, agrees.
fn same_origin(headers: &HeaderMap, scheme: &str) -> bool {
    let one = |h: header::HeaderName| {
        let mut all = headers.get_all(h).iter();
        match (all.next(), all.next()) {
            (Some(v), None) => v.to_str().ok(),
            _ => None,
        }
    };
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
        && site != "none"
    {
        return false;
    }
    match (one(header::ORIGIN), one(header::HOST)) {
        (Some(origin), Some(host)) => {
            origin.strip_prefix(scheme).and_then(|o| o.strip_prefix("://")) == Some(host)
        }
        _ => false,
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(|v| {
        v.split(';').find_map(|pair| {
            let (k, val) = pair.trim().split_once('=')?;
            (k == name).then(|| val.to_string())
        })
    })
}

fn session_key(id: &str) -> [u8; 32] {
    *agenix_proto::Digest::of(id.as_bytes()).as_bytes()
}

fn random_hex() -> Result<String, Refused> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)
        .map_err(|_| page_error(StatusCode::INTERNAL_SERVER_ERROR, "no randomness"))?;
    Ok(hex::encode(b))
}

/// An error page with `status`.
fn page_error(status: StatusCode, message: &str) -> axum::response::Response {
    let body = pages::ErrorPage { message }.html();
    (status, body).into_response()
}

/// The page shown while the queue reads its state back from storage.
fn unavailable() -> axum::response::Response {
    page_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the queue is reading its state back from storage after a failed commit: try again shortly",
    )
}

/// Samples throughput every [`SAMPLE_EVERY`] while the dashboard is served.
async fn sample(web: std::sync::Weak<Web>) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    loop {
        every.tick().await;
        let Some(web) = web.upgrade() else { return };
        let stats = web.queue.stats_now();
        let mut samples = lock(&web.samples);
        samples.push_back(Sample {
            at: now_ms(),
            submitted: stats.submitted_last_minute,
            finished: stats.finished_last_minute,
        });
        while samples.len() > SAMPLES {
            samples.pop_front();
        }
    }
}

async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("style.css"))
}

async fn overview(State(web): Shared, headers: HeaderMap) -> axum::response::Response {
    let viewer = match web.reader(&headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let stats = web.queue.stats_now();
    let samples: Vec<Sample> = lock(&web.samples).iter().copied().collect();
    let (dead, recent) = {
        let Ok(sched) = web.queue.current() else { return unavailable() };
        let dead_filter = agenix_proto::wire::JobFilter {
            state: Some(agenix_proto::job::StateKind::Dead),
            action: None,
        };
        let (dead, _) = sched.newest(&dead_filter, None, 20, SCAN);
        let dead: Vec<_> = dead.iter().map(pages::JobRow::of).collect();
        let (recent, _) = sched.newest(&agenix_proto::wire::JobFilter::default(), None, 20, SCAN);
        let recent: Vec<_> = recent.iter().map(pages::JobRow::of).collect();
        (dead, recent)
    };
    pages::Overview::new(&viewer, &stats, &samples, dead, recent).html().into_response()
}

#[derive(Debug, Deserialize)]
struct JobsQuery {
    state: Option<String>,
    before: Option<u64>,
}

/// Jobs per page.
const PAGE: usize = 100;
/// Most jobs one page looks through (with the scheduler held): a page of a rare state in a
/// large queue ends early, with a link to go on.
const SCAN: usize = 5000;

async fn jobs(
    State(web): Shared,
    headers: HeaderMap,
    Query(q): Query<JobsQuery>,
) -> axum::response::Response {
    let viewer = match web.reader(&headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let state = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match s.parse::<agenix_proto::job::StateKind>() {
            Ok(k) => Some(k),
            Err(_) => return page_error(StatusCode::BAD_REQUEST, "no such state"),
        },
    };
    let filter = agenix_proto::wire::JobFilter { state, action: None };
    let (mut rows, go_on): (Vec<pages::JobRow>, _) = {
        let Ok(sched) = web.queue.current() else { return unavailable() };
        let before = q.before.map(agenix_proto::job::JobId);
        let (jobs, go_on) = sched.newest(&filter, before, PAGE + 1, SCAN);
        (jobs.iter().map(pages::JobRow::of).collect(), go_on)
    };
    let older = if rows.len() > PAGE {
        rows.truncate(PAGE);
        rows.last().map(pages::JobRow::id)
    } else {
        go_on.map(|j| j.0)
    };
    pages::Jobs::new(&viewer, state, rows, older).html().into_response()
}

async fn job(
    State(web): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> axum::response::Response {
    let viewer = match web.reader(&headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Ok(id) = id.parse::<u64>() else {
        return page_error(StatusCode::NOT_FOUND, "a job id is a number");
    };
    let id = agenix_proto::job::JobId(id);
    let (record, plan_blob) = {
        let Ok(sched) = web.queue.current() else { return unavailable() };
        let Some(record) = sched.job(id) else {
            return page_error(StatusCode::NOT_FOUND, "no such job (or it is past retention)");
        };
        let plan_blob = sched.action(&record.action).map(|a| a.plan_envelope);
        (record, plan_blob)
    };
    let plan = match plan_blob {
        Some(d) => web
            .queue
            .blobs
            .read(&d, agenix_proto::envelope::MAX_ENVELOPE_BYTES as u64)
            .await
            .ok()
            .and_then(|bytes| agenix_proto::envelope::Envelope::from_json(&bytes).ok())
            .and_then(|env| env.payload_unverified().ok())
            .and_then(|payload| agenix_proto::Plan::from_json(&payload).ok()),
        None => None,
    };
    let reports = match record.output.as_ref().map(|o| &o.reports) {
        Some(agenix_proto::job::Reports::Inline(r)) => r.clone(),
        Some(agenix_proto::job::Reports::Blob(r)) => web
            .queue
            .blobs
            .read(&r.digest, r.size)
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default(),
        None => vec![],
    };
    let store = web.queue.store.clone();
    let history = tokio::task::spawn_blocking(move || store.history(id, None, 200))
        .await
        .ok()
        .and_then(Result::ok)
        .map(|h| h.entries.into_iter().map(|(seq, bytes, _)| (seq, bytes)).collect())
        .unwrap_or_default();
    pages::JobPage::new(&viewer, &record, plan.as_ref(), &reports, history).html().into_response()
}

#[derive(Debug, Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn cancel(
    State(web): Shared,
    ConnectInfo(tls::Peer(peer)): ConnectInfo<tls::Peer>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Form(form): Form<CsrfForm>,
) -> axum::response::Response {
    let viewer = match web.poster(&headers, &form.csrf) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !viewer.may_cancel() {
        return page_error(StatusCode::FORBIDDEN, "only the planner role may cancel");
    }
    let job = agenix_proto::job::JobId(id);
    match web.queue.web_request(peer.ip(), ClientRole::Planner, Request::Cancel { job }).await {
        Response::Cancel { state, .. } => {
            tracing::info!(%job, state = state.name(), ip = %peer.ip(), "cancel asked from the dashboard");
            Redirect::to(&format!("/jobs/{id}")).into_response()
        }
        Response::Error { message, .. } => page_error(StatusCode::CONFLICT, &message),
        _ => page_error(StatusCode::INTERNAL_SERVER_ERROR, "an unexpected answer"),
    }
}

async fn workers(State(web): Shared, headers: HeaderMap) -> axum::response::Response {
    let viewer = match web.reader(&headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Ok(sched) = web.queue.current() else { return unavailable() };
    let (list, _) = sched.workers(None, u32::MAX, usize::MAX);
    drop(sched);
    pages::Workers::new(&viewer, &list, now_ms()).html().into_response()
}

/// Audit entries shown.
const AUDIT_TAIL: usize = 200;

async fn audit(State(web): Shared, headers: HeaderMap) -> axum::response::Response {
    let viewer = match web.reader(&headers) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let store = web.queue.store.clone();
    let tail = tokio::task::spawn_blocking(move || store.audit_tail(AUDIT_TAIL)).await;
    let (entries, problem) = match tail {
        Ok(Ok(e)) => (e, None),
        Ok(Err(e)) => (vec![], Some(e.to_string())),
        Err(e) => (vec![], Some(e.to_string())),
    };
    let checkpoint = web.queue.store.latest_checkpoint().ok().flatten().map(|(size, _)| size);
    pages::Audit::new(&viewer, entries, checkpoint, problem).html().into_response()
}

async fn login_page(State(web): Shared, headers: HeaderMap) -> axum::response::Response {
    if let Err(r) = web.host_ok(&headers) {
        return r;
    }
    let viewer = web.viewer(&headers);
    pages::Login { viewer_role: pages::role_name(&viewer), problem: "" }.html().into_response()
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn login(
    State(web): Shared,
    ConnectInfo(tls::Peer(peer)): ConnectInfo<tls::Peer>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> axum::response::Response {
    if let Err(r) = web.host_ok(&headers) {
        return r;
    }
    if !same_origin(&headers, web.scheme()) {
        return page_error(StatusCode::FORBIDDEN, "a form from another site");
    }
    let ip = peer.ip();
    if !web.may_try(ip) {
        return page_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many wrong tokens from this address: wait a minute",
        );
    }
    let Some(role) = web.queue.role_of_token(form.token.trim()) else {
        web.failed(ip);
        tracing::warn!(%ip, "dashboard sign-in refused: wrong token");
        let page =
            pages::Login { viewer_role: String::new(), problem: "that token is not accepted" };
        return (StatusCode::UNAUTHORIZED, page.html()).into_response();
    };
    let (id, csrf) = match (random_hex(), random_hex()) {
        (Ok(id), Ok(csrf)) => (id, csrf),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    {
        let mut sessions = lock(&web.sessions);
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        // Each role has its half: signing in again and again as an observer never ends a
        // planner's session.
        while sessions.values().filter(|s| s.role == role).count() >= MAX_SESSIONS / 2 {
            let oldest = sessions
                .iter()
                .filter(|(_, s)| s.role == role)
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => sessions.remove(&k),
                None => break,
            };
        }
        sessions.insert(session_key(&id), Session { role, csrf, expires: now + SESSION_TTL });
    }
    tracing::info!(%ip, role = role.as_str(), "dashboard sign-in");
    let cookie =
        format!("{COOKIE}={id}; Max-Age={}; {}", SESSION_TTL.as_secs(), web.cookie_attributes());
    let mut r = Redirect::to("/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn logout(
    State(web): Shared,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> axum::response::Response {
    if let Err(r) = web.poster(&headers, &form.csrf) {
        return r;
    }
    if let Some(id) = cookie(&headers, COOKIE) {
        lock(&web.sessions).remove(&session_key(&id));
    }
    let mut r = Redirect::to(if web.open { "/" } else { "/login" }).into_response();
    let gone = format!("{COOKIE}=; Max-Age=0; {}", web.cookie_attributes());
    if let Ok(v) = HeaderValue::from_str(&gone) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_loopback_host_names_are_loopback() {
        for host in ["127.0.0.1:8080", "localhost:1", "[::1]:9", "LOCALHOST", "127.0.0.2"] {
            assert!(loopback_host(&headers(&[("host", host)])), "{host}");
        }
        for host in ["evil.example:8080", "127.0.0.1.evil.example", "10.0.0.1:80", ""] {
            assert!(!loopback_host(&headers(&[("host", host)])), "{host}");
        }
        assert!(!loopback_host(&HeaderMap::new()));
    }

    #[test]
    fn a_post_must_come_from_this_origin() {
        let ok = headers(&[("host", "127.0.0.1:80"), ("origin", "http://127.0.0.1:80")]);
        assert!(same_origin(&ok, "http"));
        assert!(!same_origin(&ok, "https"), "the scheme is the listener's");
        let other = headers(&[("host", "127.0.0.1:80"), ("origin", "http://evil.example")]);
        assert!(!same_origin(&other, "http"));
        let no_origin = headers(&[("host", "127.0.0.1:80")]);
        assert!(!same_origin(&no_origin, "http"));
        let null = headers(&[("host", "127.0.0.1:80"), ("origin", "null")]);
        assert!(!same_origin(&null, "http"));
        let two = headers(&[
            ("host", "127.0.0.1:80"),
            ("origin", "http://127.0.0.1:80"),
            ("origin", "http://evil.example"),
        ]);
        assert!(!same_origin(&two, "http"), "one Origin, or none is believed");
        let cross = headers(&[
            ("host", "127.0.0.1:80"),
            ("origin", "http://127.0.0.1:80"),
            ("sec-fetch-site", "cross-site"),
        ]);
        assert!(!same_origin(&cross, "http"));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let h = headers(&[("cookie", "a=1; agq_session=abc; b=2")]);
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "zz"), None);
    }
}
