//! The native jail's processes as the operating system sees them: the zygote and every
//! sandbox die with the process that ran them, however it dies.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agenix_test_programs as programs;
use common::bin;

/// The parent of `pid`, from /proc; `None` once it is gone (or a zombie, which runs
/// nothing more and waits only to be reaped).
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    if fields.next()? == "Z" {
        return None;
    }
    fields.next()?.parse().ok()
}

/// Every live process, with its parent.
fn processes() -> Vec<(u32, u32)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, parent(pid)?)))
        .collect()
}

/// `root` and every process below it.
fn descendants(root: u32) -> Vec<u32> {
    let all = processes();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(all.iter().filter(|(_, pp)| *pp == p).map(|(pid, _)| *pid));
        i += 1;
    }
    found
}

fn running(program: &std::path::Path) -> Vec<u32> {
    processes()
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == program))
        .collect()
}

/// What `agw doctor` prints, or `None` (with the reason printed for `row`) where this
/// kernel cannot give the jail.
fn doctor(row: &str) -> Option<String> {
    let doctor = Command::new(bin("agw")).arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&doctor.stdout).to_string();
    if !doctor.status.success() {
        programs::skip_without_jail(row, text.lines().last().unwrap_or(""));
        return None;
    }
    Some(text)
}

/// `agx run` of `plan` (written into `dir`), unsigned, with the attack program allowlisted
/// as `attack`.
fn agx_run(dir: &std::path::Path, plan: &str) -> Command {
    let file = dir.join("plan.json");
    std::fs::write(&file, plan).unwrap();
    let attack = std::fs::canonicalize(programs::NATIVE_ATTACK).unwrap();
    let mut agx = Command::new(bin("agx"));
    agx.arg("run")
        .arg(file)
        .arg("--unsigned")
        .arg("--allow-tool")
        .arg(format!("attack={}", attack.display()));
    agx
}

/// agx runs a native task (a program that sleeps an hour) in the jail, started through its
/// zygote; agx is SIGKILLed. Nothing it started survives it: not the zygote, not the
/// helper, not the sandbox's init, not the tool, not the task's cgroup.
#[test]
fn a_runner_killed_mid_task_leaves_no_zygote_helper_or_sandbox_behind() {
    if doctor("jail lifetimes").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let plan = r#"{"schema": "agenix.plan/v1", "name": "sleep",
            "tasks": [{"id": "sleep", "run": {"native": {"tool": "attack"}}, "args": ["sleep"]}],
            "output": "sleep"}"#;
    let attack = std::fs::canonicalize(programs::NATIVE_ATTACK).unwrap();
    /// Kills agx however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let agx = agx_run(dir.path(), plan)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Killed)
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    let tree = loop {
        let tree = descendants(agx.0.id());
        if running(&attack).iter().any(|p| tree.contains(p)) {
            break tree;
        }
        assert!(Instant::now() < until, "the tool never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    let zygote: Vec<u32> = tree
        .iter()
        .copied()
        .filter(|p| {
            parent(*p) == Some(agx.0.id())
                && std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("zygote"))
        })
        .collect();
    assert_eq!(zygote.len(), 1, "one zygote under agx: {tree:?}");
    // agx, the zygote, the helper, the sandbox's init and the tool at least.
    assert!(tree.len() >= 5, "{tree:?}");
    let pid = agx.0.id();
    drop(agx);
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let alive: Vec<u32> = tree.iter().copied().filter(|p| parent(*p).is_some()).collect();
        if alive.is_empty() {
            break;
        }
        assert!(Instant::now() < until, "survived agx: {alive:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The helper, told to stop by agx's end of its socket closing, removed the task's
    // cgroup after killing its sandbox.
    assert_eq!(task_cgroups(pid), Vec::<std::path::PathBuf>::new(), "task cgroups left behind");
}

/// Directories named `agenix-{pid}-*` (the task cgroups of the process `pid`) anywhere in
/// the cgroup hierarchies.
fn task_cgroups(pid: u32) -> Vec<std::path::PathBuf> {
    let prefix = format!("agenix-{pid}-");
    let mut found = vec![];
    let mut dirs = vec![(std::path::PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((dir, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                found.push(e.path());
            } else if depth < 8 {
                dirs.push((e.path(), depth + 1));
            }
        }
    }
    found
}

/// A one-shot runner (agx) exits as soon as its last answer comes; the helpers, which answer
/// before their sandboxes have ended, still remove every task cgroup after them.
#[test]
fn a_runner_that_exits_at_once_leaves_no_task_cgroup_behind() {
    let Some(text) = doctor("task cgroups") else { return };
    if !text.lines().any(|l| l.starts_with("found") && l.contains("memory cgroup")) {
        programs::skip_without_jail("task cgroups", "no per-task cgroup here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let plan = r#"{"schema": "agenix.plan/v1", "name": "say",
            "tasks": [
              {"id": "a", "run": {"native": {"tool": "attack"}}, "args": ["say", "a"]},
              {"id": "b", "run": {"native": {"tool": "attack"}}, "args": ["say", "b"],
               "stdin": {"task": "a"}},
              {"id": "c", "run": {"native": {"tool": "attack"}}, "args": ["say", "c"],
               "stdin": {"task": "b"}}],
            "output": "c"}"#;
    let agx =
        agx_run(dir.path(), plan).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let pid = agx.id();
    let out = agx.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "c");
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let left = task_cgroups(pid);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < until, "task cgroups left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
