//! `agw doctor` tells the truth about this kernel: its verdicts match what independent
//! tools see, and its exit code matches its verdict.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

use std::io::Write as _;
use std::process::Command;

/// Doctor names each mechanism in force and the fallback taken: the system call allowlist,
/// the root, memory (a cgroup or RLIMIT_AS), processes, the file-system rules.
#[test]
fn doctor_names_every_mechanism_in_force() {
    let out = Command::new(env!("CARGO_BIN_EXE_agw")).args(["doctor", "--json"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mechanisms: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["type"] == "mechanism")
        .map(|r| r["data"].clone())
        .collect();
    let how = |name: &str| {
        mechanisms.iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("no {name}"))["how"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (checks, _, _) = checks();
    if found(&checks, "seccomp filter") {
        assert!(how("system calls").starts_with("allowlist of "), "{}", how("system calls"));
    }
    assert!(how("memory").contains("cgroup") || how("memory").contains("RLIMIT_AS"));
    assert!(how("processes").contains("cgroup") || how("processes").contains("RLIMIT_NPROC"));
    assert_eq!(how("file-system rules").starts_with("Landlock"), found(&checks, "landlock"));
    for name in ["sandbox start", "root"] {
        assert!(!how(name).is_empty());
    }
}

fn checks() -> (Vec<serde_json::Value>, serde_json::Value, i32) {
    let out = Command::new(env!("CARGO_BIN_EXE_agw")).args(["doctor", "--json"]).output().unwrap();
    let recs: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let verdict = recs.iter().find(|r| r["type"] == "verdict").unwrap()["data"].clone();
    let checks =
        recs.into_iter().filter(|r| r["type"] == "check").map(|r| r["data"].clone()).collect();
    (checks, verdict, out.status.code().unwrap())
}

fn found(checks: &[serde_json::Value], name: &str) -> bool {
    checks.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("no check {name}"))["found"]
        .as_bool()
        .unwrap()
}

#[test]
fn doctor_matches_the_kernel_and_its_exit_code_matches_its_verdict() {
    let (checks, verdict, code) = checks();
    // util-linux's unshare, as a second opinion on user and network namespaces.
    let unshare = |flags: &[&str]| {
        Command::new("unshare")
            .args(flags)
            .arg("true")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if Command::new("unshare").arg("--help").output().is_ok() {
        assert_eq!(found(&checks, "user namespace"), unshare(&["--user", "--map-root-user"]));
        assert_eq!(
            found(&checks, "network namespace"),
            unshare(&["--user", "--map-root-user", "--net"])
        );
    } else {
        let _ = writeln!(
            std::io::stderr(),
            "no unshare(1) here: the namespace checks are not cross-checked"
        );
    }
    // Landlock: the kernel lists it among its LSMs when it is enabled.
    match std::fs::read_to_string("/sys/kernel/security/lsm") {
        Ok(lsm) => {
            assert_eq!(found(&checks, "landlock"), lsm.split(',').any(|m| m.trim() == "landlock"))
        }
        Err(_) => {
            let _ = writeln!(
                std::io::stderr(),
                "no /sys/kernel/security/lsm here: the landlock check is not cross-checked"
            );
        }
    }
    let required_ok = checks.iter().filter(|c| c["required"] == true).all(|c| c["found"] == true);
    assert_eq!(verdict["native_ready"], required_ok);
    assert_eq!(code, if required_ok { 0 } else { 1 });
    for c in &checks {
        assert!(!c["meaning"].as_str().unwrap().is_empty(), "every check says what it means");
    }
}

#[test]
fn doctor_prints_a_human_report() {
    let out = Command::new(env!("CARGO_BIN_EXE_agw")).arg("doctor").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("user namespace"), "{text}");
    assert!(text.contains("native tasks: "), "{text}");
}
