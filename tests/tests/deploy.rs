//! The systemd units in `deploy/`, checked by systemd's own tools: `systemd-analyze verify`
//! loads each (pointed at the binaries just built), `systemd-analyze security --offline`
//! rates its sandbox, `systemd-sysusers --dry-run` reads the users file. Beside that, the
//! hardening the deployment promises is asserted setting by setting, with the ones the
//! worker's jail or wasmtime cannot have absent, and every flag and variable the units and
//! the examples use is one the binaries know.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::bin;

/// A file of `deploy/`.
fn deploy(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(name)
}

fn read(name: &str) -> String {
    std::fs::read_to_string(deploy(name)).unwrap()
}

/// A unit file's settings, as (section, key, value), in order. Comments and blank lines are
/// skipped; the units use no line continuations.
fn settings(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = vec![];
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        assert!(!line.ends_with('\\'), "a continued line: {line}");
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or_else(|| panic!("not a setting: {line}"));
        out.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    out
}

/// Every value `key` has in the `[Service]` section.
fn service<'a>(s: &'a [(String, String, String)], key: &str) -> Vec<&'a str> {
    s.iter()
        .filter(|(sec, k, _)| sec == "Service" && k == key)
        .map(|(_, _, v)| v.as_str())
        .collect()
}

/// The one value `key` has in `[Service]`.
fn one<'a>(s: &'a [(String, String, String)], key: &str) -> &'a str {
    match service(s, key).as_slice() {
        [v] => v,
        other => panic!("{key}= is set {} times: {other:?}", other.len()),
    }
}

/// Settings both units must have, as the deployment issue names them: a dedicated user,
/// no way to gain privilege, the OS read-only, a private /tmp, no capabilities.
fn common_hardening(s: &[(String, String, String)], user: &str) {
    assert_eq!(one(s, "User"), user);
    assert_eq!(one(s, "Group"), user);
    assert!(service(s, "DynamicUser").is_empty(), "the user is {user}, made by agenix.sysusers");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("RestrictSUIDSGID", "yes"),
        ("SystemCallArchitectures", "native"),
        ("StateDirectory", user),
        ("StateDirectoryMode", "0700"),
        ("Type", "exec"),
    ] {
        assert_eq!(one(s, key), value, "{user}.service: {key}=");
    }
    assert!(one(s, "ExecStart").contains(&format!("/usr/local/bin/{user}")));
}

#[test]
fn the_queue_unit_takes_everything_agq_does_not_use() {
    let s = settings(&read("agq.service"));
    common_hardening(&s, "agq");
    for (key, value) in [
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictNamespaces", "yes"),
        ("PrivateUsers", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectHostname", "yes"),
        ("ProtectClock", "yes"),
        ("ProcSubset", "pid"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6"),
    ] {
        assert_eq!(one(&s, key), value, "agq.service: {key}=");
    }
    assert_eq!(service(&s, "SystemCallFilter"), ["@system-service", "~@privileged @resources"]);
    assert!(service(&s, "Delegate").is_empty());
    assert!(
        one(&s, "ExecStart").starts_with("/usr/local/bin/agq serve --data /var/lib/agq "),
        "the queue directory is the unit's StateDirectory"
    );
}

#[test]
fn the_worker_unit_delegates_cgroups_and_leaves_the_jail_what_it_needs() {
    let s = settings(&read("agw.service"));
    common_hardening(&s, "agw");
    assert_eq!(one(&s, "Delegate"), "yes", "per-task cgroups need a delegated subtree");
    // wasmtime compiles components to machine code in memory.
    assert!(service(&s, "MemoryDenyWriteExecute").is_empty(), "no AU would run");
    // Each covers part of /proc (a fresh /proc in a user namespace is then refused), makes
    // the delegated cgroup read-only, or forbids sethostname(2) in the sandbox's own UTS
    // namespace: the jail would refuse every native task.
    for key in [
        "ProtectKernelTunables",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectHostname",
        "PrivateUsers",
        "ProcSubset",
    ] {
        assert!(service(&s, key).is_empty(), "agw.service must not set {key}=");
    }
    let namespaces: Vec<&str> = one(&s, "RestrictNamespaces").split_whitespace().collect();
    for ns in ["user", "mnt", "pid", "net", "ipc", "uts"] {
        assert!(namespaces.contains(&ns), "the jail makes {ns} namespaces: {namespaces:?}");
    }
    assert_eq!(one(&s, "KillMode"), "mixed", "SIGTERM to agw alone: it drains its jobs");
    assert_eq!(one(&s, "CacheDirectory"), "agw");
    assert_eq!(one(&s, "RestrictAddressFamilies"), "AF_INET AF_INET6 AF_UNIX");
    // A deny list only, and none of what the jail calls.
    for filter in service(&s, "SystemCallFilter") {
        let groups = filter.strip_prefix('~').expect("a deny list");
        for needed in ["@mount", "@privileged", "@setuid", "@process", "@system-service"] {
            assert!(!groups.split_whitespace().any(|g| g == needed), "{needed} is denied");
        }
    }
    // No shell: agw itself, started in a leaf of its delegated cgroup.
    assert_eq!(one(&s, "ExecStart"), "/usr/local/bin/agw");
    assert_eq!(one(&s, "DelegateSubgroup"), "agw");
    let env = one(&s, "Environment");
    for var in
        ["AGW_CONFIG=/etc/agenix/agw.toml", "AGW_DATA=/var/lib/agw", "AGW_CACHE_DIR=/var/cache/agw"]
    {
        assert!(env.split_whitespace().any(|v| v == var), "{var} in {env}");
    }
}

fn help(program: &str, args: &[&str]) -> String {
    let out = Command::new(bin(program)).args(args).arg("--help").output().unwrap();
    assert!(out.status.success(), "{program} {args:?} --help");
    String::from_utf8(out.stdout).unwrap()
}

/// The `--flags` in `text`.
fn flags(text: &str) -> Vec<&str> {
    text.split(|c: char| c.is_whitespace() || matches!(c, '\'' | '"' | '='))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .collect()
}

#[test]
fn every_flag_and_variable_in_deploy_is_one_the_binaries_know() {
    let serve = help("agq", &["serve"]);
    let agq = settings(&read("agq.service"));
    let env_file = read("agq.env");
    let used: Vec<&str> =
        flags(one(&agq, "ExecStart")).into_iter().chain(flags(&env_file)).collect();
    assert!(used.contains(&"--metrics"), "{used:?}");
    for flag in used {
        assert!(serve.contains(&format!("{flag} ")), "agq serve has no {flag}");
    }
    let agw = help("agw", &[]);
    let unit = settings(&read("agw.service"));
    let names = one(&unit, "Environment")
        .split_whitespace()
        .map(|v| v.split_once('=').unwrap().0)
        .chain(["AGW_METRICS", "AGW_LOG_FORMAT"]);
    for name in names {
        assert!(agw.contains(&format!("[env: {name}=]")), "agw reads no {name}");
    }
    for name in ["AGW_METRICS", "AGW_LOG_FORMAT", "AGW_LOG"] {
        assert!(read("agw.env").contains(&format!("# {name}=")), "agw.env shows {name}");
    }
}

#[test]
fn the_example_worker_configuration_is_one_agw_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let run = |config: &Path| {
        Command::new(bin("agw"))
            .env("AGW_CONFIG", config)
            .env("AGW_DATA", dir.path().join("no-key"))
            .env("AGW_CACHE_DIR", dir.path().join("cache"))
            .env_remove("AGW_QUEUE")
            .env_remove("AGW_FINGERPRINT")
            .env_remove("AGW_TRUST")
            .output()
            .unwrap()
    };
    // agw reads the file, then the key: no key means the file was accepted.
    let out = run(&deploy("agw.toml"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot read the worker key"), "{stderr}");
    // The same file with a key agw does not know is refused, naming it: the check above
    // would have seen a bad file.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, read("agw.toml").replace("concurrency =", "concurency =")).unwrap();
    let stderr = String::from_utf8_lossy(&run(&bad).stderr).into_owned();
    assert!(stderr.contains("is not a valid worker configuration"), "{stderr}");
}

/// The commands a `--help` lists under "Commands:".
fn subcommands(help: &str) -> Vec<&str> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect()
}

#[test]
fn every_command_in_the_operator_guide_is_one_the_binaries_know() {
    let guide = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md"),
    )
    .unwrap();
    let mut in_block = false;
    let mut checked = 0;
    for line in guide.lines() {
        if line.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        let line = line.split(" #").next().unwrap().trim();
        let line = line.strip_prefix("runuser -u agq -- ").unwrap_or(line);
        let line = line.strip_prefix("runuser -u agw -- ").unwrap_or(line);
        let mut words = line.split_whitespace();
        let Some(program) = words.next().filter(|p| ["agq", "agw", "agx"].contains(p)) else {
            continue;
        };
        if !in_block {
            continue;
        }
        // The command path (`agq worker enroll`), then its flags.
        let mut path: Vec<&str> = vec![];
        let mut words = words.peekable();
        while let Some(w) = words.next_if(|w| subcommands(&help(program, &path)).contains(w)) {
            path.push(w);
        }
        let help = help(program, &path);
        // Unless the program runs without one (`Usage: agw [OPTIONS] [COMMAND]`).
        assert!(
            help.contains("[COMMAND]") || subcommands(&help).iter().all(|c| *c == "help"),
            "`{line}`: no command given"
        );
        for flag in words.filter(|w| w.starts_with("--")) {
            let flag = flag.split('=').next().unwrap();
            // A line of the help that starts with the flag (after a short form, if any).
            let defined = help.lines().any(|l| {
                let l = l.trim_start();
                let l = l.split_once(", ").filter(|(short, _)| short.len() == 2).map_or(l, |p| p.1);
                l == flag || l.starts_with(&format!("{flag} "))
            });
            assert!(defined, "`{line}`: {program} {path:?} has no {flag}");
        }
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} commands found in the guide");
}

/// `name` on PATH, else in /usr/bin.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[allow(clippy::print_stderr, reason = "a skipped test says why on the test's stderr")]
fn skip(test: &str, reason: &str) {
    eprintln!("{test}: skipped: {reason}");
}

/// systemd's tool `name`, or a skip saying why there is none.
fn systemd_tool(test: &str, name: &str) -> Option<PathBuf> {
    let found = find_tool(name);
    if found.is_none() {
        skip(test, &format!("no {name} (Debian's package `systemd` has it)"));
    }
    found
}

/// Both units in a fresh directory, their binaries those of this build (systemd checks
/// that ExecStart= names an executable file).
fn units_for_this_build(dir: &Path) -> [PathBuf; 2] {
    ["agq", "agw"].map(|name| {
        let text = read(&format!("{name}.service"))
            .replace(&format!("/usr/local/bin/{name}"), bin(name).to_str().unwrap());
        let path = dir.join(format!("{name}.service"));
        std::fs::write(&path, text).unwrap();
        path
    })
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn systemd_analyze_verify_loads_both_units() {
    let Some(analyze) = systemd_tool("verify", "systemd-analyze") else { return };
    let dir = tempfile::tempdir().unwrap();
    let units = units_for_this_build(dir.path());
    let out = Command::new(&analyze).arg("verify").args(&units).output().unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    // DelegateSubgroup= is systemd 254's; older versions name it unknown and go on, as
    // the unit says.
    let ours: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("agq.service") || l.contains("agw.service"))
        .filter(|l| !l.contains("Unknown key 'DelegateSubgroup'"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify: {ours:?}");
    // The check is real: the unit as shipped names /usr/local/bin/agq, which systemd
    // requires to exist.
    if !Path::new("/usr/local/bin/agq").exists() {
        let shipped = dir.path().join("shipped");
        std::fs::create_dir(&shipped).unwrap();
        std::fs::copy(deploy("agq.service"), shipped.join("agq.service")).unwrap();
        let out =
            Command::new(&analyze).arg("verify").arg(shipped.join("agq.service")).output().unwrap();
        assert!(!out.status.success());
        assert!(text(&out).contains("/usr/local/bin/agq is not executable"), "{}", text(&out));
    }
}

/// One setting as `systemd-analyze security` rates it: (name, set, description).
type Rated = (String, bool, String);

/// What `systemd-analyze security --offline=yes` says of a unit: its exposure, and each
/// setting.
fn security(analyze: &Path, unit: &Path) -> Option<(f64, Vec<Rated>)> {
    let run = |args: &[&str]| {
        Command::new(analyze).args(["security", "--offline=yes"]).args(args).arg(unit).output()
    };
    let plain = run(&[]).unwrap();
    if text(&plain).contains("--offline") {
        skip("security", "this systemd-analyze has no --offline (systemd 250 added it)");
        return None;
    }
    assert!(plain.status.success(), "{}", text(&plain));
    let stdout = String::from_utf8_lossy(&plain.stdout);
    let overall: f64 = stdout
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for ")?.1.split_once(": "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no overall exposure level: {stdout}"));
    let json = run(&["--json=short"]).unwrap();
    assert!(json.status.success(), "{}", text(&json));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&json.stdout).unwrap();
    let rows = rows
        .iter()
        .map(|r| {
            let field = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (field("name"), r["set"].as_bool().unwrap(), field("description"))
        })
        .collect();
    Some((overall, rows))
}

/// The row `name`: whether it is set, and what systemd says of it.
fn row<'a>(rows: &'a [(String, bool, String)], name: &str) -> (bool, &'a str) {
    let (_, set, description) =
        rows.iter().find(|(n, _, _)| n == name).unwrap_or_else(|| panic!("no row {name}"));
    (*set, description.as_str())
}

#[test]
fn systemd_analyze_security_rates_both_sandboxes() {
    let Some(analyze) = systemd_tool("security", "systemd-analyze") else { return };
    let dir = tempfile::tempdir().unwrap();
    let [agq, agw] = units_for_this_build(dir.path());
    let Some((agq_level, agq_rows)) = security(&analyze, &agq) else { return };
    let (agw_level, agw_rows) = security(&analyze, &agw).unwrap();
    // systemd's scale: 0 (nothing exposed) to 10; up to 2 is rated "OK" with the
    // smallest exposures. The worker pays for the namespaces, the cgroup and the
    // writable-executable memory its sandboxes need.
    assert!(agq_level <= 1.5, "agq.service exposure {agq_level}");
    assert!(agw_level <= 3.5, "agw.service exposure {agw_level}");
    for rows in [&agq_rows, &agw_rows] {
        for name in [
            "NoNewPrivileges=",
            "PrivateTmp=",
            "ProtectHome=",
            "PrivateDevices=",
            "AmbientCapabilities=",
            "CapabilityBoundingSet=~CAP_SYS_ADMIN",
            "CapabilityBoundingSet=~CAP_SET(UID|GID|PCAP)",
            "CapabilityBoundingSet=~CAP_NET_ADMIN",
            "SystemCallArchitectures=",
            "RestrictSUIDSGID=",
        ] {
            assert!(row(rows, name).0, "{name} not in force: {}", row(rows, name).1);
        }
        assert_eq!(
            row(rows, "ProtectSystem="),
            (true, "Service has strict read-only access to the OS file hierarchy")
        );
        assert_eq!(
            row(rows, "User=/DynamicUser="),
            (true, "Service runs under a static non-root user identity")
        );
    }
    assert!(row(&agq_rows, "MemoryDenyWriteExecute=").0);
    assert!(row(&agq_rows, "RestrictNamespaces=~user").0);
    assert!(row(&agq_rows, "Delegate=").0, "agq delegates nothing");
    // As systemd reads agw.service: its cgroup delegated, writable-executable memory
    // allowed (wasmtime), user namespaces allowed (the jail).
    assert_eq!(
        row(&agw_rows, "Delegate="),
        (false, "Service maintains its own delegated control group subtree")
    );
    assert!(!row(&agw_rows, "MemoryDenyWriteExecute=").0);
    assert!(!row(&agw_rows, "RestrictNamespaces=~user").0);
    assert!(row(&agw_rows, "SystemCallFilter=~@debug").0);
}

#[test]
fn systemd_sysusers_makes_both_users() {
    let Some(sysusers) = systemd_tool("sysusers", "systemd-sysusers") else { return };
    let root = tempfile::tempdir().unwrap();
    let out = Command::new(sysusers)
        .arg("--dry-run")
        .arg(format!("--root={}", root.path().display()))
        .arg(deploy("agenix.sysusers"))
        .output()
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    for user in ["agq", "agw"] {
        assert!(said.contains(&format!("Creating user '{user}'")), "{said}");
        assert!(said.contains(&format!("Creating group '{user}'")), "{said}");
    }
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0, "a dry run writes nothing");
}
