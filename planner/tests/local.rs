//! agx on one machine: `au run|describe|check|push|new`, `plan sign --store` and `run`,
//! with the real standard AUs and test guests compiled for wasm32-wasip2.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

use common::*;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use agenix_test_programs as programs;

/// Pushes the AUs the example plans use into the test's store.
fn push_standard_aus(t: &TestDir) {
    for (name, path) in programs::ALL_AUS {
        let out = t.ok(&["au", "push", path]);
        assert!(out.contains(&format!("as \"{name}\"")), "{out}");
    }
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

#[test]
fn au_check_sorts_imports_into_granted_denied_and_refused() {
    let t = TestDir::new();
    let out = t.ok(&["au", "check", programs::AU_GREP]);
    assert!(out.contains("conforms to agenix:au/unit"), "{out}");
    assert!(out.contains("\ngranted\n  wasi:") && out.contains("  wasi:cli/stdout@0.2."), "{out}");
    assert!(!out.contains("denied") && !out.contains("refused"), "{out}");

    // A guest whose standard library links the sockets conforms: they are linked denied.
    let out = t.ok(&["au", "check", programs::GUEST_SOCKET]);
    assert!(out.contains("conforms to agenix:au/unit"), "{out}");
    assert!(
        out.contains("\ndenied   (linked; every network call fails)\n  wasi:sockets/"),
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&t.ok(&["--json", "au", "check", programs::GUEST_SOCKET])).unwrap();
    let imports = json["data"]["imports"].as_array().unwrap();
    for i in imports {
        let name = i["name"].as_str().unwrap();
        let kind = if name.starts_with("wasi:sockets/") { "denied" } else { "granted" };
        assert_eq!(i["kind"], kind, "{i}");
    }
    assert!(imports.iter().any(|i| i["kind"] == "denied"), "{json}");
    assert_eq!(json["data"]["conforms"], true);

    // Anything else is refused, each import named with why; the others are still listed.
    let foreign = t.path("foreign.wasm");
    let component = wat::parse_str(
        r#"(component
            (import "wasi:http/outgoing-handler@0.2.0" (instance))
            (import "wasi:cli/stdout@0.2.13" (instance))
            (import "evil:backdoor/shell@1.0.0" (instance)))"#,
    )
    .unwrap();
    fs::write(&foreign, component).unwrap();
    let out = t.agx(&["au", "check", foreign.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stdout.contains("does not conform"), "{stdout}");
    assert!(
        stdout.contains(
            "denied   (linked; every network call fails)\n  wasi:http/outgoing-handler@0.2.0\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("refused\n  wasi:cli/stdout@0.2.13: this engine serves WASI 0.2.0 to 0.2.12 only\n  evil:backdoor/shell@1.0.0: not an interface AUs may import"),
        "{stdout}"
    );
    assert!(
        stderr.contains("does not conform to agenix:au/unit: imports outside the agenix:au/unit world: wasi:cli/stdout@0.2.13, evil:backdoor/shell@1.0.0"),
        "{stderr}"
    );

    // The sandbox refuses to run it: exit 125, like a task it stopped.
    let out = t.agx(&["au", "run", foreign.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("the sandbox refuses"), "{}", text(&out.stderr));

    // Right names, wrong types: refused by check too, not only when it runs.
    let mistyped = t.path("mistyped.wasm");
    let component = wat::parse_str(
        r#"(component
            (import "wasi:cli/environment@0.2.0" (instance (export "get-arguments" (func (result u32)))))
            (core module $m (func (export "run") (result i32) i32.const 0))
            (core instance $i (instantiate $m))
            (func $run (result (result)) (canon lift (core func $i "run")))
            (instance $r (export "run" (func $run)))
            (export "wasi:cli/run@0.2.0" (instance $r)))"#,
    )
    .unwrap();
    fs::write(&mistyped, component).unwrap();
    let out = t.agx(&["au", "check", mistyped.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("does not link against this host's WASI"),
        "{}",
        text(&out.stderr)
    );
    let out = t.agx(&["au", "run", mistyped.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));

    let out = t.agx(&["au", "check", "Cargo.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("does not exist"));
}

#[test]
fn au_run_pipes_stdin_and_mirrors_the_exit_code() {
    let t = TestDir::new();
    let out = t.agx_in(
        &["au", "run", programs::AU_GREP, "--", "-i", "error"],
        b"ok\nAn Error\nfine\nerror 2\n",
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "An Error\nerror 2\n");
    assert!(text(&out.stderr).contains("agx: au-grep: exit 0 (fuel "), "{}", text(&out.stderr));

    // grep's "nothing matched" is exit 1, and agx says so with the same code.
    let out = t.agx_in(&["au", "run", programs::AU_GREP, "--", "absent"], b"ok\n");
    assert_eq!(out.status.code(), Some(1));
    for code in [2, 3, 42] {
        let out = t.agx(&["au", "run", programs::GUEST_EXIT, "--", &code.to_string()]);
        assert_eq!(out.status.code(), Some(code), "exit {code}");
    }
    let out = t.agx(&["au", "run", programs::GUEST_SLEEP, "--timeout", "200ms"]);
    assert_eq!(out.status.code(), Some(124));
    assert!(text(&out.stderr).contains("timed-out"), "{}", text(&out.stderr));
    let out = t.agx(&["au", "run", programs::GUEST_SPIN, "--fuel", "1000000"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("out-of-fuel"), "{}", text(&out.stderr));
    let out = t.agx(&["au", "run", programs::GUEST_GROW, "--memory", "16M"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("memory-exceeded"), "{}", text(&out.stderr));
}

#[test]
fn au_run_unmetered_counts_no_fuel_and_stops_at_the_timeout() {
    let t = TestDir::new();
    let out = t.agx_in(
        &["au", "run", programs::AU_GREP, "--fuel", "unmetered", "--", "error"],
        b"ok\nerror 1\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "error 1\n");
    assert!(text(&out.stderr).contains("exit 0 (fuel unmetered, "), "{}", text(&out.stderr));
    // A spinning AU without fuel ends at its timeout, not out of fuel.
    let out = t.agx(&[
        "--json",
        "au",
        "run",
        programs::GUEST_SPIN,
        "--fuel",
        "unmetered",
        "--timeout",
        "300ms",
    ]);
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    let rec: serde_json::Value = serde_json::from_str(text(&out.stderr).trim()).unwrap();
    assert_eq!(rec["data"]["outcome"]["kind"], "timed_out", "{rec}");
    assert!(rec["data"]["fuel_consumed"].is_null(), "{rec}");
    // Fuel is a number in range or the word; anything else is named.
    for bad in ["lots", "0", "1.5", "1000000000000001"] {
        let out = t.agx(&["au", "run", programs::GUEST_ECHO, "--fuel", bad]);
        assert_eq!(out.status.code(), Some(2), "--fuel {bad}");
        assert!(
            text(&out.stderr)
                .contains("fuel is a whole number from 1 to 1000000000000000 or \"unmetered\""),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn au_run_gives_a_scratch_tmp_unless_told_not_to() {
    let t = TestDir::new();
    let write = |extra: &[&str]| {
        let mut args = vec!["au", "run", programs::GUEST_FS];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "write", "/tmp/x"]);
        t.agx(&args)
    };
    let out = write(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "ok\n");
    let out = write(&["--no-scratch"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).starts_with("ok"), "{}", text(&out.stdout));
    // A directory at /tmp only in the scratch's place.
    fs::create_dir(t.path("mine")).unwrap();
    let out = write(&["--mount", "tmp=mine:rw"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("pass --no-scratch to mount a directory there"));
    let out = write(&["--mount", "tmp=mine:rw", "--no-scratch"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(t.path("mine/x").is_file());
}

#[test]
fn au_run_mounts_a_directory_read_only_unless_asked() {
    let t = TestDir::new();
    fs::create_dir(t.path("logs")).unwrap();
    fs::write(t.path("logs/a.log"), "line\n").unwrap();
    let out = t.agx(&[
        "au",
        "run",
        programs::GUEST_FS,
        "--mount",
        "logs=logs",
        "--",
        "read",
        "/logs/a.log",
    ]);
    assert_eq!(text(&out.stdout), "ok 5 bytes: line\n\n");
    let out = t.agx(&[
        "au",
        "run",
        programs::GUEST_FS,
        "--mount",
        "logs=logs",
        "--",
        "write",
        "/logs/b.log",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(!t.path("logs/b.log").exists(), "a read-only mount took a write");
    let out = t.agx(&[
        "au",
        "run",
        programs::GUEST_FS,
        "--mount",
        "logs=logs:rw",
        "--",
        "write",
        "/logs/b.log",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(fs::read_to_string(t.path("logs/b.log")).unwrap(), "written by guest");
    let out =
        t.agx(&["au", "run", programs::GUEST_FS, "--mount", "logs=nowhere", "--", "list", "/logs"]);
    assert_eq!(out.status.code(), Some(2), "a missing directory is a usage error");
}

#[test]
fn au_describe_and_push_use_the_model_card() {
    let t = TestDir::new();
    let out = t.ok(&["au", "describe", programs::AU_SORT]);
    assert!(out.starts_with("sort 0.1.0"), "{out}");
    let rec: serde_json::Value =
        serde_json::from_str(&t.ok(&["--json", "au", "describe", programs::AU_JQ])).unwrap();
    assert_eq!(rec["data"]["name"], "jq");
    assert_eq!(rec["data"]["schema"], "agenix.au.card/v1");

    let digest = t.ok(&["au", "push", programs::AU_WC]).lines().next().unwrap().to_string();
    let bytes = fs::read(programs::AU_WC).unwrap();
    assert_eq!(digest, agenix_proto::Digest::of(&bytes).to_string());
    assert!(t.ok(&["au", "list"]).contains(&format!("wc           {digest}")));
    // A guest without a card needs a name; one that cannot run here is not stored at all.
    let out = t.agx(&["au", "push", programs::GUEST_ECHO]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("pass --name NAME"), "{}", text(&out.stderr));
    t.ok(&["au", "push", programs::GUEST_ECHO, "--name", "echo"]);
    let foreign = t.path("foreign.wasm");
    let component = r#"(component (import "evil:backdoor/shell@1.0.0" (instance)))"#;
    fs::write(&foreign, wat::parse_str(component).unwrap()).unwrap();
    let out = t.agx(&["au", "push", foreign.to_str().unwrap(), "--name", "foreign"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!t.ok(&["au", "list"]).contains("foreign"));
}

const LOG_ERRORS_OUTPUT: &str = "      1 auth: token expired\n      3 db: connection refused\n      2 payments: card declined\n";

#[test]
fn example_plans_sign_with_the_lock_step_and_run() {
    let t = TestDir::new();
    push_standard_aus(&t);
    t.signer("k");
    t.ok(&["plan", "sign", &example("log-errors.json"), "--key", "k.key", "--out", "log.env"]);
    let shown = t.ok(&["plan", "show", "log.env", "--trust", "trust.json"]);
    let grep = agenix_proto::Digest::of(&fs::read(programs::AU_GREP).unwrap());
    assert!(shown.contains(&format!("wasm grep@{}", grep.short())), "{shown}");

    let out =
        t.agx(&["run", "log.env", "--trust", "trust.json", "--input", &example("data/app.log")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), LOG_ERRORS_OUTPUT);
    let table = text(&out.stderr);
    for task in ["errors", "messages", "sorted", "counted"] {
        assert!(table.lines().any(|l| l.starts_with(task) && l.contains("exit 0")), "{table}");
    }

    t.ok(&[
        "plan",
        "sign",
        &example("orders-report.json"),
        "--key",
        "k.key",
        "--out",
        "orders.env",
    ]);
    let out = t.ok(&[
        "run",
        "orders.env",
        "--trust",
        "trust.json",
        "--input",
        &example("data/orders.csv"),
    ]);
    assert_eq!(
        out,
        "{\"orders\":6,\"revenue\":835.84,\"largest\":{\"id\":\"1003\",\"customer\":\"initech\",\"amount\":\"310.25\"}}\n"
    );
}

#[test]
fn run_needs_a_signature_or_an_explicit_unsigned() {
    let t = TestDir::new();
    push_standard_aus(&t);
    let out = t.agx(&["run", &example("log-errors.json"), "--input", &example("data/app.log")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("is not signed"), "{}", text(&out.stderr));
    let out = t.agx_in(
        &["run", &example("log-errors.json"), "--unsigned", "--input", "-"],
        &fs::read(example("data/app.log")).unwrap(),
    );
    assert_eq!(text(&out.stdout), LOG_ERRORS_OUTPUT);

    t.signer("k");
    t.ok(&["plan", "sign", &example("log-errors.json"), "--key", "k.key", "--out", "log.env"]);
    let out = t.agx(&["run", "log.env"]);
    assert!(text(&out.stderr).contains("is signed: pass --trust FILE"), "{}", text(&out.stderr));
}

#[test]
fn signing_names_aus_missing_from_the_store() {
    let t = TestDir::new();
    t.signer("k");
    let out =
        t.agx(&["plan", "sign", &example("log-errors.json"), "--key", "k.key", "--out", "x.env"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("tasks[0].run.wasm.name: AU \"grep\" is not in the store"), "{err}");
    assert!(err.contains("agx au push --store"), "{err}");
    assert!(!t.path("x.env").exists());
}

#[test]
fn q09_a_failed_task_skips_its_dependents() {
    let t = TestDir::new();
    push_standard_aus(&t);
    // grep finds nothing (exit 1): sort and uniq read from it and are skipped; the
    // independent wc still runs.
    let plan = r#"{"schema":"agenix.plan/v1","name":"q9","tasks":[
        {"id":"find","run":{"wasm":{"name":"grep"}},"args":["no such line"],"stdin":{"input":true}},
        {"id":"sorted","run":{"wasm":{"name":"sort"}},"stdin":{"task":"find"}},
        {"id":"counted","run":{"wasm":{"name":"uniq"}},"args":["-c"],"stdin":{"task":"sorted"}},
        {"id":"lines","run":{"wasm":{"name":"wc"}},"args":["-l"],"stdin":{"input":true}}],
        "output":"counted"}"#;
    fs::write(t.path("q9.json"), plan).unwrap();
    let out =
        t.agx(&["--json", "run", "q9.json", "--unsigned", "--input", &example("data/app.log")]);
    assert_eq!(out.status.code(), Some(1));
    let recs: Vec<serde_json::Value> =
        text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let outcome = |task: &str| {
        recs.iter().find(|r| r["type"] == "task" && r["data"]["task"] == task).unwrap()["data"]["outcome"].clone()
    };
    assert_eq!(outcome("find"), serde_json::json!({"kind": "exited", "code": 1}));
    assert_eq!(outcome("sorted"), serde_json::json!({"kind": "skipped", "because": "find"}));
    assert_eq!(outcome("counted"), serde_json::json!({"kind": "skipped", "because": "sorted"}));
    assert_eq!(outcome("lines"), serde_json::json!({"kind": "exited", "code": 0}));
    let result = recs.last().unwrap();
    assert_eq!(result["type"], "result");
    assert_eq!(result["data"]["succeeded"], false);
    assert_eq!(result["data"]["output_bytes"], 0);
}

#[test]
fn p06_a_swapped_component_in_the_store_is_refused() {
    let t = TestDir::new();
    push_standard_aus(&t);
    t.signer("k");
    t.ok(&["plan", "sign", &example("log-errors.json"), "--key", "k.key", "--out", "log.env"]);
    // Replace grep's bytes in the store with another AU's: the digest no longer matches.
    let grep = agenix_proto::Digest::of(&fs::read(programs::AU_GREP).unwrap());
    let blob = t.path("store/blobs/sha256").join(grep.hex());
    fs::write(&blob, fs::read(programs::AU_WC).unwrap()).unwrap();
    // With grep's own precompiled artifact still cached (keyed by its digest, compiled from
    // verified bytes), the run uses it and never reads the swapped blob.
    let out =
        t.agx(&["run", "log.env", "--trust", "trust.json", "--input", &example("data/app.log")]);
    assert_eq!(text(&out.stdout), LOG_ERRORS_OUTPUT);
    // Without it, the swapped bytes are loaded, checked against the digest, and refused.
    fs::remove_dir_all(t.path("cache")).unwrap();
    let out = t.agx(&[
        "--json",
        "run",
        "log.env",
        "--trust",
        "trust.json",
        "--input",
        &example("data/app.log"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let first: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["data"]["outcome"]["kind"], "refused");
    let reason = first["data"]["outcome"]["reason"].as_str().unwrap();
    assert!(reason.contains("is damaged"), "{reason}");
}

#[test]
fn au_new_scaffolds_a_crate_that_builds_checks_and_runs() {
    let t = TestDir::new();
    t.ok(&["au", "new", "shout"]);
    let out = t.agx(&["au", "new", "shout"]);
    assert!(text(&out.stderr).contains("already exists"));
    let out = t.agx(&["au", "new", "Bad Name"]);
    assert!(text(&out.stderr).contains("invalid AU name"));

    let krate = t.path("shout");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = Command::new(&cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2"])
        .current_dir(&krate)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        // The crate's own target directory, where this test looks, even when the workspace
        // builds into a shared one.
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    assert!(build.status.success(), "{}", text(&build.stderr));
    let wasm = krate.join("target/wasm32-wasip2/release/shout.wasm");
    let wasm = wasm.to_str().unwrap();
    assert!(t.ok(&["au", "check", wasm]).contains("conforms"));
    let out = t.agx_in(&["au", "run", wasm], b"hello\n");
    assert_eq!(text(&out.stdout), "HELLO\n");
    let out = t.agx(&["au", "run", wasm, "--", "--bogus"]);
    assert_eq!(out.status.code(), Some(2), "the exit code survives wasm");
    assert!(t.ok(&["au", "describe", wasm]).starts_with("shout 0.1.0"));

    let test = Command::new(&cargo).args(["test", "--quiet"]).current_dir(&krate).output().unwrap();
    assert!(test.status.success(), "{}{}", text(&test.stdout), text(&test.stderr));
}

#[test]
fn au_new_scaffolds_python_and_javascript_projects_that_build_check_and_run() {
    let t = TestDir::new();
    let tools = Path::new(programs::TOOLCHAINS);
    let langs = [
        ("python", "COMPONENTIZE_PY", tools.join("python/bin/componentize-py")),
        ("js", "COMPONENTIZE_JS", tools.join("js/node_modules/.bin/componentize-js")),
    ];
    for (lang, var, tool) in langs {
        let name = format!("shout-{lang}");
        let out = t.ok(&["au", "new", &name, "--lang", lang]);
        assert!(out.contains("./build.sh"), "{out}");
        let dir = t.path(&name);
        // The world it builds against is the one the host enforces.
        let wit = fs::read_to_string(dir.join("wit/au.wit")).unwrap();
        assert_eq!(
            wit,
            fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit/au.wit"))
                .unwrap()
        );
        let build = Command::new(dir.join("build.sh")).env(var, &tool).output().unwrap();
        assert!(build.status.success(), "{lang}: {}{}", text(&build.stdout), text(&build.stderr));
        let wasm = dir.join(format!("{name}.wasm"));
        let wasm = wasm.to_str().unwrap();
        assert!(t.ok(&["au", "check", wasm]).contains("conforms"), "{lang}");
        let out = t.agx_in(&["au", "run", wasm], b"hello\n");
        assert_eq!(text(&out.stdout), "HELLO\n", "{lang}: {}", text(&out.stderr));
        let out = t.agx_in(&["au", "run", wasm, "--", "--lower"], b"MiXeD");
        assert_eq!(text(&out.stdout), "mixed", "{lang}");
        let out = t.agx(&["au", "run", wasm, "--", "--bogus"]);
        assert_eq!(out.status.code(), Some(2), "{lang}: the exit code survives wasm");
        assert!(text(&out.stderr).contains(&format!("{name}: unknown argument")), "{lang}");
        assert!(t.ok(&["au", "describe", wasm]).starts_with(&format!("{name} 0.1.0")), "{lang}");
        // Into the store, into a signed plan, and run.
        t.ok(&["au", "push", wasm]);
        let plan = format!(
            r#"{{"schema":"agenix.plan/v1","name":"p-{lang}","tasks":[{{"id":"up","run":{{"wasm":{{"name":"{name}"}}}},"stdin":{{"input":true}}}}],"output":"up"}}"#
        );
        t.write(&format!("{lang}.json"), &plan);
        if !t.path("k.key").exists() {
            t.signer("k");
        }
        t.ok(&[
            "plan",
            "sign",
            &format!("{lang}.json"),
            "--key",
            "k.key",
            "--out",
            &format!("{lang}.env"),
        ]);
        t.write("in.txt", "from a plan\n");
        let out =
            t.ok(&["run", &format!("{lang}.env"), "--trust", "trust.json", "--input", "in.txt"]);
        assert_eq!(out, "FROM A PLAN\n", "{lang}");
    }
}

/// The same pipeline, unjailed: GNU tools chained by this test, with the jail's environment.
fn unjailed_pipeline(input: &[u8]) -> Vec<u8> {
    let mut data = input.to_vec();
    for (tool, args) in [
        ("/usr/bin/grep", &["-i", "error"][..]),
        ("/usr/bin/cut", &["-d", " ", "-f", "3-"]),
        ("/usr/bin/sort", &[]),
        ("/usr/bin/uniq", &["-c"]),
    ] {
        let mut child = Command::new(tool)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&data).unwrap();
        data = child.wait_with_output().unwrap().stdout;
    }
    data
}

#[test]
fn native_pipeline_runs_in_the_jail_like_unjailed() {
    let t = TestDir::new();
    let input = fs::read(example("data/app.log")).unwrap();
    let tools = t.path("tools.toml");
    fs::write(&tools, "[tools]\ngrep = \"/usr/bin/grep\"\ncut = \"/usr/bin/cut\"\n").unwrap();
    let out = t.agx(&[
        "run",
        &example("log-errors-native.json"),
        "--unsigned",
        "--input",
        &example("data/app.log"),
        "--tools",
        tools.to_str().unwrap(),
        "--allow-tool",
        "sort",
        "--allow-tool",
        "uniq=/usr/bin/uniq",
    ]);
    let table = text(&out.stderr);
    if table.contains("lacks what the native jail requires") {
        programs::skip_without_jail("native_pipeline_runs_in_the_jail_like_unjailed", &table);
        return;
    }
    assert_eq!(out.status.code(), Some(0), "{table}");
    assert_eq!(out.stdout, unjailed_pipeline(&input));
    assert_eq!(text(&out.stdout), LOG_ERRORS_OUTPUT, "and the same as the AU pipeline");
    for task in ["errors", "messages", "sorted", "counted"] {
        let row = table.lines().find(|l| l.starts_with(task)).unwrap();
        assert!(row.contains("exit 0") && row.contains(" - "), "native rows have no fuel: {row}");
    }
    // A tool the plan names but nobody allowed is refused, and what reads it is skipped.
    let out = t.agx(&[
        "--json",
        "run",
        &example("log-errors-native.json"),
        "--unsigned",
        "--input",
        &example("data/app.log"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let first: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(
        first["data"]["outcome"]["reason"],
        "tool \"grep\" is not in this worker's allowlist"
    );
}

/// With part of the jail missing, native tasks are refused; with `--danger-degraded` they
/// run, and every one of them says DEGRADED on stderr (the warning reaches the user, not
/// only a log nobody reads).
#[test]
fn a_degraded_jail_is_refused_unless_chosen_and_then_said_on_every_task() {
    let t = TestDir::new();
    let run_with = |extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec![
            "run",
            "log-errors-native.json",
            "--unsigned",
            "--input",
            "app.log",
            "--allow-tool",
            "grep",
            "--allow-tool",
            "cut",
            "--allow-tool",
            "sort",
            "--allow-tool",
            "uniq",
            "--disable-jail-feature",
            "seccomp filter",
        ];
        args.extend_from_slice(extra);
        t.agx_with(&args, b"", env)
    };
    let run = |extra: &[&str]| run_with(extra, &[]);
    fs::copy(example("log-errors-native.json"), t.path("log-errors-native.json")).unwrap();
    fs::copy(example("data/app.log"), t.path("app.log")).unwrap();
    let refused = run(&[]);
    let err = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.contains("seccomp filter"), "the refusal names what is missing: {err}");
    assert!(refused.stdout.is_empty(), "nothing ran: {:?}", text(&refused.stdout));

    let degraded = run(&["--danger-degraded"]);
    let err = text(&degraded.stderr);
    assert_eq!(degraded.status.code(), Some(0), "{err}");
    assert_eq!(text(&degraded.stdout), LOG_ERRORS_OUTPUT);
    assert_eq!(err.matches("DEGRADED native sandbox").count(), 4, "one per task: {err}");

    // Whatever AGX_LOG says, a degraded jail is said.
    for filter in ["error", "off", "not a filter["] {
        let out = run_with(&["--danger-degraded"], &[("AGX_LOG", filter)]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "AGX_LOG={filter}: {err}");
        assert!(
            err.contains("agx: DEGRADED: native tools run without seccomp filter"),
            "AGX_LOG={filter}: {err}"
        );
    }
}

/// A scratch directory left by an agx that was killed (it could not remove its own) is
/// removed by the next one; one whose agx still runs (it holds a lock on it) is kept.
#[test]
fn scratch_left_by_a_killed_agx_is_removed_by_the_next() {
    let t = TestDir::new();
    let tmp = t.path("tmp");
    fs::create_dir(&tmp).unwrap();
    // Named after a pid that runs (this one), but nobody holds it: left by a gone agx of
    // another pid namespace, say.
    let stale = tmp.join(format!("agx-scratch-{}-abc", std::process::id()));
    let live = tmp.join("agx-scratch-4194305-abc");
    let other = tmp.join("agx-scratch-notapid");
    for d in [&stale, &live, &other] {
        fs::create_dir_all(d.join("native/jail-x/root")).unwrap();
    }
    // As a running agx holds its own.
    let held = fs::File::open(&live).unwrap();
    held.try_lock().unwrap();
    let tmp_str = tmp.to_str().unwrap().to_owned();
    let out =
        t.agx_with(&["au", "run", programs::AU_GREP, "--", "x"], b"x\n", &[("TMPDIR", &tmp_str)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!stale.exists(), "the stale scratch directory stays");
    assert!(live.exists() && other.exists());
    // Its own is gone too, once it exits.
    let left: Vec<_> = fs::read_dir(&tmp).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left.len(), 2, "{left:?}");
}
