//! Hosts made of network namespaces, so the links between agq and agw cross real interfaces
//! that a test can cut: a hub namespace (the queue's host) and one namespace per worker
//! host, each joined to the hub by a veth pair on a private /30 (`10.231.N.0/30`: the hub
//! is `.1`, the worker `.2`). Nothing is routed outside; every namespace, and so every
//! link, is removed when the [`Net`] is dropped.
//!
//! Processes run in a namespace through `ip netns exec NAME` ([`Host::wrap`]), a command
//! prefix, not a shell. Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2;
//! [`available`] says when a machine lacks them, and `AGENIX_REQUIRE_NETNS=1` (set by
//! `scripts/test.sh`) turns that into a failure.

use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `ip ARGS`.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Whether network-namespace tests may run here; prints why not when they may not, and
/// fails when `AGENIX_REQUIRE_NETNS=1` says they must.
pub fn available(test: &str) -> bool {
    let probe = Net::new(0).map(drop);
    match probe {
        Ok(()) => true,
        Err(e) if std::env::var("AGENIX_REQUIRE_NETNS").is_ok_and(|v| v == "1") => {
            panic!(
                "{test}: network namespaces are unavailable ({e:#}), and AGENIX_REQUIRE_NETNS=1 requires them"
            )
        }
        Err(e) => {
            #[allow(
                clippy::print_stderr,
                reason = "a skipped test says why, where cargo test shows it"
            )]
            {
                eprintln!("SKIPPED {test}: network namespaces are unavailable: {e:#}");
            }
            false
        }
    }
}

/// One namespace: a host.
#[derive(Debug)]
pub struct Host {
    /// The namespace's name.
    pub name: String,
    /// Its address on its link to the hub (for the hub: `None`).
    pub addr: Option<Ipv4Addr>,
    /// Its interface on the hub's side (for the hub: `None`).
    hub_dev: Option<String>,
}

impl Host {
    /// The command prefix that runs a program in this namespace.
    pub fn wrap(&self) -> Vec<OsString> {
        ["ip", "netns", "exec", &self.name].iter().map(OsString::from).collect()
    }

    /// `program` as a command run in this namespace.
    pub fn command(&self, program: impl Into<OsString>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program.into());
        cmd
    }
}

/// A hub and its worker hosts.
#[derive(Debug)]
pub struct Net {
    /// The queue's host.
    pub hub: Host,
    /// The worker hosts, in the order added.
    pub hosts: Vec<Host>,
    tag: String,
}

impl Net {
    /// A hub namespace with `workers` worker hosts linked to it.
    pub fn new(workers: usize) -> Result<Self> {
        let tag = format!("ag{}x{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        let hub = format!("{tag}-q");
        ip(&["netns", "add", &hub])?;
        let mut net =
            Self { hub: Host { name: hub.clone(), addr: None, hub_dev: None }, hosts: vec![], tag };
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        for _ in 0..workers {
            net.add_host()?;
        }
        Ok(net)
    }

    /// Adds a worker host linked to the hub; returns its index.
    pub fn add_host(&mut self) -> Result<usize> {
        let n = self.hosts.len() + 1;
        if n > 250 {
            bail!("at most 250 hosts");
        }
        let name = format!("{}-w{n}", self.tag);
        ip(&["netns", "add", &name])?;
        // Interface names are at most 15 bytes: short, and unique within each namespace.
        let (hub_dev, dev) = (format!("hub{n}"), "eth0".to_string());
        let hub_addr = format!("10.231.{n}.1/30");
        let addr = Ipv4Addr::new(10, 231, u8::try_from(n)?, 2);
        ip(&[
            "-n",
            &self.hub.name,
            "link",
            "add",
            &hub_dev,
            "type",
            "veth",
            "peer",
            "name",
            &dev,
            "netns",
            &name,
        ])?;
        ip(&["-n", &self.hub.name, "addr", "add", &hub_addr, "dev", &hub_dev])?;
        ip(&["-n", &name, "addr", "add", &format!("{addr}/30"), "dev", &dev])?;
        ip(&["-n", &self.hub.name, "link", "set", &hub_dev, "up"])?;
        ip(&["-n", &name, "link", "set", &dev, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        self.hosts.push(Host { name, addr: Some(addr), hub_dev: Some(hub_dev) });
        Ok(n - 1)
    }

    /// The hub's address as host `i` reaches it.
    pub fn hub_addr_for(&self, i: usize) -> Result<Ipv4Addr> {
        Ok(Ipv4Addr::new(10, 231, u8::try_from(i + 1)?, 1))
    }

    /// Cuts host `i`'s link (its interface on the hub's side goes down): nothing passes
    /// either way until [`Net::heal`].
    pub fn cut(&self, i: usize) -> Result<()> {
        self.set_link(i, "down")
    }

    /// Restores host `i`'s link.
    pub fn heal(&self, i: usize) -> Result<()> {
        self.set_link(i, "up")
    }

    fn set_link(&self, i: usize, state: &str) -> Result<()> {
        let host = self.hosts.get(i).context("no such host")?;
        let dev = host.hub_dev.as_deref().context("the hub has no link of its own")?;
        ip(&["-n", &self.hub.name, "link", "set", dev, state])
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of each veth, and so the pair.
        for h in self.hosts.iter().chain([&self.hub]) {
            let _ = ip(&["netns", "del", &h.name]);
        }
    }
}
