//! The dashboard (`agq serve --web`) against a real queue and worker with jobs in every
//! state, read by a real browser (headless Chromium) and by hand over HTTP: what it shows,
//! that hostile text renders inert, who may read and who may cancel, and TLS off loopback.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A worker enrolled under this name: an element, were it not escaped.
const HOSTILE_NAME: &str = "<img src=x onerror=alert(1)>";
/// A plan description that would run, were it not escaped.
const HOSTILE_DESCRIPTION: &str =
    "<script>document.title='owned'</script><b id=\"injected\">bold</b>";
/// A file name grep complains about on stderr.
const HOSTILE_ARG: &str = "/nonexistent/<script>alert(2)</script><i id=\"stderr-injected\">x";

/// An HTTP answer.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One HTTP/1.1 request to `at` (plain HTTP).
fn http(at: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut s = std::net::TcpStream::connect(at).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {at}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Answer { status, head: head.to_string(), body: body.to_string() }
}

/// The dashboard's address, from the ready file.
fn web_at(c: &Cluster) -> String {
    let ready: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.path("queue.ready")).unwrap()).unwrap();
    ready["web"].as_str().expect("the ready file names the dashboard").to_string()
}

/// Signs in with the token in `file`; the session cookie and the page's CSRF token.
fn sign_in(at: &str, token_file: &std::path::Path) -> (String, String) {
    let token = std::fs::read_to_string(token_file).unwrap();
    let origin = format!("http://{at}");
    let a = http(at, "POST", "/login", &[("Origin", &origin)], &format!("token={}", token.trim()));
    assert_eq!(a.status, 303, "{}\n{}", a.head, a.body);
    let set = a.header("set-cookie").unwrap().to_string();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attribute), "{set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    let page = http(at, "GET", "/", &[("Cookie", &cookie)], "");
    let csrf = page
        .body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    (cookie, csrf)
}

/// A plan file in the cluster's directory.
fn plan(c: &Cluster, name: &str, json: &serde_json::Value) -> String {
    let p = c.path(name);
    std::fs::write(&p, serde_json::to_vec_pretty(json).unwrap()).unwrap();
    p.to_str().unwrap().to_string()
}

fn chromium() -> Option<std::path::PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|b| {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|d| std::path::Path::new(d).join(b))
            .find(|p| p.is_file())
    })
}

/// Runs headless Chromium on `url` with `args` (`--dump-dom`, `--screenshot=...`); its
/// stdout.
fn browse(
    browser: &std::path::Path,
    profile: &std::path::Path,
    url: &str,
    args: &[&str],
) -> String {
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,1800",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("chromium did not finish with {url} within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    out
}

#[test]
fn the_dashboard_shows_every_state_renders_hostile_text_inert_and_lets_planners_cancel() {
    let mut c = Cluster::start(&["--web", "127.0.0.1:0"]);
    c.push_aus();
    let tools = ["grep", "cut", "sort", "uniq"].map(|t| ["--allow-tool", t]).concat();
    c.worker(HOSTILE_NAME, &tools);
    let at = web_at(&c);

    // succeeded
    let log = example("data/app.log");
    let ok = c.submit(&example("log-errors.json"), &[&log]);
    // dead: grep cannot open a file, and says so on stderr
    let hostile = plan(
        &c,
        "hostile.json",
        &serde_json::json!({
            "schema": "agenix.plan/v1",
            "name": "hostile",
            "description": HOSTILE_DESCRIPTION,
            "tasks": [{
                "id": "errors",
                "run": { "native": { "tool": "grep" } },
                "args": ["-i", "error", HOSTILE_ARG],
            }],
            "output": "errors",
        }),
    );
    let dead = c.submit(&hostile, &[]);
    // leased: a long nap
    let input = c.path("in.txt");
    std::fs::write(&input, "zzz\n").unwrap();
    let nap = plan(
        &c,
        "nap.json",
        &serde_json::json!({
            "schema": "agenix.plan/v1",
            "name": "nap",
            // Its time limit as long as its nap: the default (60 s) would end it, and its
            // lease, before a slow run of this test reads the workers page.
            "tasks": [{ "id": "nap", "run": { "wasm": { "name": "nap" } }, "args": ["600000"],
                        "limits": { "timeout_ms": 600000 },
                        "stdin": { "input": true } }],
            "output": "nap",
        }),
    );
    let leased = c.submit(&nap, &[input.to_str().unwrap()]);
    // queued: a tool no worker offers
    let wc = plan(
        &c,
        "wc.json",
        &serde_json::json!({
            "schema": "agenix.plan/v1",
            "name": "count",
            "tasks": [{ "id": "count", "run": { "native": { "tool": "wc" } },
                        "stdin": { "input": true } }],
            "output": "count",
        }),
    );
    let queued = c.submit(&wc, &[input.to_str().unwrap(), log.as_str()]);
    c.wait_job(&ok[0], Duration::from_secs(60), |j| state(j) == "succeeded");
    c.wait_job(&dead[0], Duration::from_secs(60), |j| state(j) == "dead");
    c.wait_job(&leased[0], Duration::from_secs(60), |j| state(j) == "leased");

    // Reading is open on loopback, to loopback host names only.
    let home = http(&at, "GET", "/", &[], "");
    assert_eq!(home.status, 200, "{}", home.body);
    let csp = home.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'") && !csp.contains("script-src"), "{csp}");
    // Browsers send `Origin: null` on a page's own forms under `no-referrer`, which the
    // same-origin check refuses: the policy must leave them their origin.
    assert_eq!(home.header("referrer-policy"), Some("same-origin"));
    let rebound = http(&at, "GET", "/", &[("Host", "attacker.example")], "");
    assert_eq!(rebound.status, 421);
    // An observer may read but not cancel; nobody cancels without the session's token.
    let cancel_path = format!("/jobs/{}/cancel", queued[1]);
    let origin = format!("http://{at}");
    let (observer, observer_csrf) = sign_in(&at, &c.path("queue/observer.token"));
    let refused = http(
        &at,
        "POST",
        &cancel_path,
        &[("Cookie", &observer), ("Origin", &origin)],
        &format!("csrf={observer_csrf}"),
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    let (planner, csrf) = sign_in(&at, &c.path("queue/planner.token"));
    for (headers, body, why) in [
        (vec![("Origin", origin.as_str())], format!("csrf={csrf}"), "no session"),
        (
            vec![("Cookie", planner.as_str()), ("Origin", origin.as_str())],
            "csrf=0".into(),
            "a wrong CSRF token",
        ),
        (
            vec![("Cookie", planner.as_str()), ("Origin", "http://attacker.example")],
            format!("csrf={csrf}"),
            "another origin",
        ),
        (vec![("Cookie", planner.as_str())], format!("csrf={csrf}"), "no origin"),
    ] {
        let a = http(&at, "POST", &cancel_path, &headers, &body);
        assert_eq!(a.status, 403, "{why}: {}", a.body);
    }
    assert_eq!(state(&c.job(&queued[1])), "queued", "nothing was cancelled by a refused form");
    let done = http(
        &at,
        "POST",
        &cancel_path,
        &[("Cookie", &planner), ("Origin", &origin)],
        &format!("csrf={csrf}"),
    );
    assert_eq!(done.status, 303, "{}", done.body);
    c.wait_job(&queued[1], Duration::from_secs(10), |j| state(j) == "cancelled");
    // A wrong token is refused, and after ten a minute the address waits.
    for _ in 0..10 {
        let a = http(&at, "POST", "/login", &[("Origin", &origin)], "token=agq_wrong");
        assert_eq!(a.status, 401);
    }
    let a = http(&at, "POST", "/login", &[("Origin", &origin)], "token=agq_wrong");
    assert_eq!(a.status, 429);

    // Connections that never send a request hold at most the listener's slots: agq keeps
    // its file descriptors, and answers planners meanwhile.
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", c.agq_pid())).unwrap().count();
    let before = fds();
    let idle: Vec<_> = (0..300).map(|_| std::net::TcpStream::connect(&at).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let held = fds() - before;
    assert!(
        held <= agenix_link::http::MAX_CONNECTIONS + 4,
        "{held} descriptors for 300 idle connections to the dashboard"
    );
    c.ok(&["queue", "stats"]);
    drop(idle);

    // The pages, as served: escaped text, no element from a client's text.
    let job_page = http(&at, "GET", &format!("/jobs/{}", dead[0]), &[], "").body;
    assert!(job_page.contains("&#60;script&#62;document.title="), "{job_page}");
    assert!(!job_page.contains("<script") && !job_page.contains("id=\"injected\""), "{job_page}");
    assert!(job_page.contains("No such file or directory"), "the stderr is shown: {job_page}");
    let workers = http(&at, "GET", "/workers", &[], "").body;
    assert!(workers.contains("&#60;img src=x onerror=alert(1)&#62;"), "{workers}");
    assert!(!workers.contains("<img"), "{workers}");

    // And in a browser.
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("AGENIX_REQUIRE_CHROMIUM").as_deref() != Ok("1"),
            "chromium is not installed (scripts/setup.sh installs Debian's chromium)"
        );
        #[allow(clippy::print_stdout, reason = "a skipped check says so, with the reason")]
        {
            println!("dashboard: browser checks skipped: chromium is not installed");
        }
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&shots).unwrap();
    let base = format!("http://{at}");

    let dom = browse(&browser, profile.path(), &base, &["--dump-dom"]);
    for (state, n) in
        [("succeeded", 1), ("dead", 1), ("leased", 1), ("queued", 1), ("cancelled", 1)]
    {
        assert!(
            dom.contains(&format!("<span class=\"n\">{n}</span> {state}")),
            "{state}: {n} not shown:\n{dom}"
        );
    }
    assert!(dom.contains(&format!("href=\"/jobs/{}\"", dead[0])), "the dead job is listed: {dom}");

    let dom =
        browse(&browser, profile.path(), &format!("{base}/jobs/{}", dead[0]), &["--dump-dom"]);
    // The browser parsed the page: the description and the stderr are text, not elements.
    assert!(dom.contains(&format!("<title>job {} · agq</title>", dead[0])), "{dom}");
    assert!(!dom.contains("<script") && !dom.contains("<b id=\"injected\">"), "{dom}");
    assert!(!dom.contains("<i id=\"stderr-injected\">"), "{dom}");
    assert!(dom.contains("&lt;script&gt;alert(2)&lt;/script&gt;"), "the stderr, as text: {dom}");
    assert!(dom.contains("exit 2"), "grep's exit is shown: {dom}");
    let dom = browse(&browser, profile.path(), &format!("{base}/jobs/{}", ok[0]), &["--dump-dom"]);
    for task in ["errors", "messages", "sorted", "counted"] {
        assert!(dom.contains(&format!("<td class=\"task-id\">{task}</td>")), "{task}: {dom}");
    }
    assert!(dom.contains("exit 0") && dom.contains("AU grep @"), "{dom}");
    let dom = browse(&browser, profile.path(), &format!("{base}/workers"), &["--dump-dom"]);
    assert!(!dom.contains("<img"), "{dom}");
    assert!(dom.contains("1 of 4"), "the worker's load: {dom}");
    let dom = browse(&browser, profile.path(), &format!("{base}/audit"), &["--dump-dom"]);
    assert!(dom.contains("submitted") && dom.contains("cancelled"), "{dom}");

    // Screenshots, for people to look at.
    for (name, path) in [
        ("overview", String::new()),
        ("dead-job", format!("/jobs/{}", dead[0])),
        ("job", format!("/jobs/{}", ok[0])),
        ("workers", "/workers".into()),
    ] {
        let file = shots.join(format!("{name}.png"));
        let _ = std::fs::remove_file(&file);
        browse(
            &browser,
            profile.path(),
            &format!("{base}{path}"),
            &[&format!("--screenshot={}", file.display())],
        );
        let png = std::fs::read(&file).unwrap_or_default();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{name}: no screenshot at {}",
            file.display()
        );
    }
}

#[test]
fn off_loopback_the_dashboard_needs_tls_and_a_sign_in_for_every_page() {
    // Refused without TLS, before serving.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("q");
    agenix_harness::init(&bin("agq"), &data).unwrap();
    let out = Command::new(bin("agq"))
        .args(["serve", "--listen", "127.0.0.1:0", "--web", "0.0.0.0:0", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs TLS") && err.contains("--web-cert"), "{err}");

    // With a certificate: served over TLS, every page behind the sign-in.
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.path().join("web.crt"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("web.key"), cert.signing_key.serialize_pem()).unwrap();
    let web = std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port();
    let mut c = Cluster::start(&[
        "--web",
        &format!("0.0.0.0:{web}"),
        "--web-cert",
        dir.path().join("web.crt").to_str().unwrap(),
        "--web-key",
        dir.path().join("web.key").to_str().unwrap(),
    ]);
    let _ = &mut c;
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-i", "--max-time", "10", "--cacert"])
            .arg(dir.path().join("web.crt"))
            .args(["--resolve", &format!("localhost:{web}:127.0.0.1")])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let base = format!("https://localhost:{web}");
    let home = curl(&[&format!("{base}/")]);
    assert!(
        home.starts_with("HTTP/1.1 303") && home.to_lowercase().contains("location: /login"),
        "{home}"
    );
    let jobs = curl(&[&format!("{base}/jobs")]);
    assert!(jobs.starts_with("HTTP/1.1 303"), "{jobs}");
    let token = std::fs::read_to_string(c.path("queue/observer.token")).unwrap();
    let signed = curl(&[
        "-H",
        &format!("Origin: {base}"),
        "--data-urlencode",
        &format!("token={}", token.trim()),
        &format!("{base}/login"),
    ]);
    assert!(signed.starts_with("HTTP/1.1 303"), "{signed}");
    let cookie = signed
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_string();
    let home = curl(&["-H", &format!("Cookie: {cookie}"), &format!("{base}/")]);
    assert!(home.starts_with("HTTP/1.1 200") && home.contains("signed in as observer"), "{home}");
    // Plain HTTP to the TLS port is not served.
    let plain = Command::new("curl")
        .args(["-s", "--max-time", "5", &format!("http://127.0.0.1:{web}/")])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("agq"));
}
