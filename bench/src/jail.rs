//! The native jail: spawn-to-exit of `/usr/bin/true` and `sort` on 1 MB, jailed, under
//! bubblewrap, and as a plain spawn.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use agenix_host::NativeTask;
use agenix_host::native::probe::names;
use agenix_host::native::{Allowlist, Helper, NativeConfig, NativeHost, ToolEntry, jail};
use agenix_proto::{Limits, ToolName};
use anyhow::{Context as _, Result, bail};
use bytes::Bytes;

use crate::report::{Figure, Section};
use crate::util::{log_lines, per_call, run, show, tool};

const TRUE: &str = "/usr/bin/true";
const SORT: &str = "/usr/bin/sort";

/// `bwrap --unshare-all` with /usr, the usual /lib and /bin links, /proc and /dev.
fn bwrap(bwrap: &Path, program: &str) -> Command {
    let mut c = Command::new(bwrap);
    c.args(["--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr"])
        .args(["--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64"])
        .args(["--symlink", "usr/bin", "/bin", "--proc", "/proc", "--dev", "/dev"])
        .args(["--setenv", "LC_ALL", "C", program]);
    c
}

/// The section.
pub(crate) async fn spawn(runs: usize, dir: &Path) -> Result<Section> {
    let mut s = Section::new(
        "Native tools: jailed spawn",
        "Spawn-to-exit per task (mean of each run's tasks) of `/usr/bin/true`, and of `sort` \
         with 1 MB of log lines on stdin: in the AGEniX jail (user, mount, pid, network, IPC \
         and UTS namespaces, a fresh minimal root, Landlock, seccomp, rlimits, a per-task \
         cgroup where available) and, to show what that cgroup costs, the same jail without \
         it; under `bwrap --unshare-all` (Debian's bubblewrap, binding /usr read-only, no \
         cgroup); and as a plain spawn.",
    );
    let input = Bytes::from(log_lines(1 << 20));
    let expected = run(Command::new(SORT).env("LC_ALL", "C"), input.clone(), &[])?;

    let mut allow = Allowlist::new();
    for (name, path) in [("true", TRUE), ("sort", SORT)] {
        allow.allow(name.parse()?, ToolEntry::new(path))?;
    }
    let program = std::env::current_exe().context("where is agenix-bench")?;
    let make = |disabled: &[&str]| {
        NativeHost::new(NativeConfig {
            helper: Helper { program: program.clone(), args: vec![jail::HELPER_ARG.into()] },
            allowlist: allow.clone(),
            danger_degraded: false,
            scratch_dir: dir.into(),
            disabled: disabled.iter().map(|d| d.to_string()).collect(),
        })
    };
    let mut hosts = vec![("AGEniX jail", make(&[]).await?)];
    // The same jail without its per-task cgroup, to show what the cgroup costs.
    if hosts[0].1.probe().found(names::MEMORY_CGROUP) {
        let without = make(&[names::MEMORY_CGROUP, names::PIDS_CGROUP]).await?;
        hosts.push(("AGEniX jail without the per-task cgroup", without));
    }
    let jailed = |tool: ToolName, stdin: Bytes| NativeTask {
        program: tool,
        args: vec![],
        env: vec![("LC_ALL".into(), "C".into())],
        stdin,
        grants: vec![],
        limits: Limits::DEFAULT,
        scratch: true,
    };
    let bw = tool("bwrap", None);
    s.command("# in process: NativeHost::run (the jail agw uses), LC_ALL=C, stdin from memory");
    for (name, program, stdin, per_run) in
        [("true", TRUE, Bytes::new(), 100), ("sort", SORT, input.clone(), 50)]
    {
        let label = if name == "true" { "`/usr/bin/true`" } else { "`sort` on 1 MB" };
        for (which, host) in &hosts {
            if let Some(reason) = host.refusal() {
                s.skip(format!("{label}: {which}"), reason.to_string());
                continue;
            }
            let mut times = Vec::with_capacity(runs);
            for _ in 0..runs {
                let t = Instant::now();
                for _ in 0..per_run {
                    let r = host.run(jailed(name.parse()?, stdin.clone())).await?;
                    if !r.outcome.is_success() {
                        bail!("{name} in the jail: {:?}", r.outcome);
                    }
                    if name == "sort" && r.stdout != expected {
                        bail!("sort in the jail printed something else");
                    }
                }
                times.push(t.elapsed() / per_run);
            }
            s.add(Figure::ms(format!("{label}: {which}"), &times));
        }
        match &bw {
            None => {
                s.skip(format!("{label}: `bwrap --unshare-all`"), "bubblewrap is not installed")
            }
            Some(b) => {
                let times = per_call(runs, per_run, || {
                    run(&mut bwrap(b, program), stdin.clone(), &[]).map(drop)
                })?;
                s.command(format!("{} < {name}.in", show(&bwrap(b, program))));
                s.add(Figure::ms(format!("{label}: `bwrap --unshare-all`"), &times));
            }
        }
        let plain = || {
            let mut c = Command::new(program);
            c.env("LC_ALL", "C");
            c
        };
        let times = per_call(runs, per_run, || run(&mut plain(), stdin.clone(), &[]).map(drop))?;
        s.command(format!("{} < {name}.in", show(&plain())));
        s.add(Figure::ms(format!("{label}: plain spawn"), &times));
    }
    Ok(s)
}
