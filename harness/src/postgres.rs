//! A real PostgreSQL server for the tests of agq's PostgreSQL store: Debian's own binaries
//! (`setup.sh` installs them), a cluster made by `initdb` in a temporary directory, run as
//! an unprivileged user (`nobody` when the tests run as root: PostgreSQL refuses root),
//! listening on a free loopback port and a Unix socket in that directory. Password
//! authentication (SCRAM) is on, so agq's way of taking a password is tested too.
//!
//! Tests run every agq on PostgreSQL with `AGENIX_TEST_STORE=postgres`: [`crate::Agq`]
//! then starts one server per queue. `AGENIX_REQUIRE_POSTGRES=1` (set by `scripts/test.sh`)
//! makes a missing installation an error instead of a skip.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The user PostgreSQL runs as when the tests run as root (Debian's `nobody`).
const NOBODY: u32 = 65534;
/// The database user agq connects as.
pub const USER: &str = "agq";

/// Whether tests should run every queue on PostgreSQL (`AGENIX_TEST_STORE=postgres`).
pub fn wanted() -> bool {
    std::env::var("AGENIX_TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// Whether the servers started for queues sync commits to disk: off unless
/// `AGENIX_PG_FSYNC=on` (what the benchmarks set, so PostgreSQL is measured as deployed).
pub fn fsync_wanted() -> bool {
    std::env::var("AGENIX_PG_FSYNC").is_ok_and(|v| v == "on")
}

/// The directory holding `initdb` and `postgres`: the newest under
/// /usr/lib/postgresql/*/bin, or `pg_config --bindir`.
pub fn bindir() -> Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Ok(bin);
    }
    let out = Command::new("pg_config").arg("--bindir").output();
    if let Ok(out) = out
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("postgres").exists() {
            return Ok(dir);
        }
    }
    bail!("PostgreSQL is not installed (scripts/setup.sh installs Debian's postgresql package)")
}

/// Whether a PostgreSQL test may run here; prints why not when it may not, and fails when
/// `AGENIX_REQUIRE_POSTGRES=1` says it must.
pub fn available(test: &str) -> bool {
    match bindir() {
        Ok(_) => true,
        Err(e) if std::env::var("AGENIX_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") => {
            panic!("{test}: {e:#}, and AGENIX_REQUIRE_POSTGRES=1 requires it")
        }
        Err(e) => {
            #[allow(
                clippy::print_stderr,
                reason = "a skipped test says why, where cargo test shows it"
            )]
            {
                eprintln!("SKIPPED {test}: {e:#}");
            }
            false
        }
    }
}

/// A running PostgreSQL server, stopped when dropped.
#[derive(Debug)]
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    child: Option<Child>,
    /// Its loopback address.
    pub addr: SocketAddr,
    /// Whether it syncs commits to disk (`fsync`).
    fsync: bool,
    /// Whether it takes TLS (and only TLS) over TCP.
    tls: bool,
}

impl Postgres {
    /// Makes a cluster and starts it. `fsync` off makes tests faster and changes nothing
    /// they check (a killed server loses nothing the kernel holds); benchmarks keep it on.
    pub fn start(fsync: bool) -> Result<Self> {
        Self::start_with(fsync, None)
    }

    /// As [`Postgres::start`]; with `tls` (a certificate chain and its key, PEM), TCP
    /// clients must use TLS: `pg_hba.conf` takes `hostssl` only.
    pub fn start_with(fsync: bool, tls: Option<(&str, &str)>) -> Result<Self> {
        let bin = bindir()?;
        let dir = tempfile::Builder::new().prefix("agenix-pg-").tempdir()?;
        let root = is_root();
        if root {
            std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY))
                .context("cannot give the cluster's directory to nobody")?;
        }
        let pwfile = dir.path().join("password");
        std::fs::write(&pwfile, format!("{}\n", password()))?;
        if root {
            std::os::unix::fs::chown(&pwfile, Some(NOBODY), Some(NOBODY))?;
        }
        let out = as_owner(Command::new(bin.join("initdb")), root)
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", USER, "--auth=scram-sha-256", "--no-sync", "--no-instructions"])
            .args(["-E", "UTF8", "--locale=C"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdin(Stdio::null())
            .output()
            .context("cannot run initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        if let Some((cert, key)) = tls {
            let data = dir.path().join("data");
            for (name, text) in [("server.crt", cert), ("server.key", key)] {
                std::fs::write(data.join(name), text)?;
                std::fs::set_permissions(
                    data.join(name),
                    std::os::unix::fs::PermissionsExt::from_mode(0o600),
                )?;
                if root {
                    std::os::unix::fs::chown(data.join(name), Some(NOBODY), Some(NOBODY))?;
                }
            }
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all scram-sha-256\n\
                 hostssl all all 127.0.0.1/32 scram-sha-256\n\
                 hostssl all all ::1/128 scram-sha-256\n",
            )?;
        }
        let mut pg = Self {
            dir,
            bin,
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            fsync,
            tls: tls.is_some(),
        };
        pg.addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        pg.spawn()?;
        Ok(pg)
    }

    fn spawn(&mut self) -> Result<()> {
        let root = is_root();
        let data = self.dir.path().join("data");
        let _ = std::fs::remove_file(data.join("postmaster.pid"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("postgres.log"))?;
        if root {
            std::os::unix::fs::chown(
                self.dir.path().join("postgres.log"),
                Some(NOBODY),
                Some(NOBODY),
            )?;
        }
        let child = as_owner(Command::new(self.bin.join("postgres")), root)
            .arg("-D")
            .arg(&data)
            .args(["-h", &self.addr.ip().to_string(), "-p", &self.addr.port().to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", &format!("fsync={}", if self.fsync { "on" } else { "off" })])
            .args(["-c", "max_connections=100", "-c", "shared_buffers=32MB"])
            .args(["-c", if self.tls { "ssl=on" } else { "ssl=off" }])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot run postgres")?;
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            // PostgreSQL writes "ready" as the pid file's status once it accepts connections.
            let pid = std::fs::read_to_string(data.join("postmaster.pid")).unwrap_or_default();
            if pid.lines().nth(7).is_some_and(|s| s.trim() == "ready")
                && TcpStream::connect(self.addr).is_ok()
            {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                self.child = None;
                bail!("postgres exited ({status}): {}", self.log_tail());
            }
            if Instant::now() > until {
                bail!("postgres did not start in time: {}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's log's last lines.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// The URL agq is given (over loopback TCP).
    pub fn url(&self) -> String {
        format!("postgres://{USER}@{}/postgres", self.addr)
    }

    /// The URL over the Unix socket.
    pub fn socket_url(&self) -> String {
        let dir = self.dir.path().display().to_string().replace('/', "%2F");
        format!("postgres://{USER}@{dir}:{}/postgres", self.addr.port())
    }

    /// A file holding the password (readable by the tests' user only).
    pub fn password_file(&self) -> Result<PathBuf> {
        let path = self.dir.path().join("agq.pass");
        if !path.exists() {
            std::fs::write(&path, format!("{}\n", password()))?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        }
        Ok(path)
    }

    /// SIGKILLs the server (its backends end when they see it gone).
    pub fn kill(&mut self) {
        crate::kill(&mut self.child);
    }

    /// Kills the server and starts it again on the same port and data (crash recovery).
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        // The backends of the killed server hold the shared memory a moment longer.
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(200)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs `agq migrate` (the real binary) against this server.
    pub fn migrate(&self, agq: &Path) -> Result<()> {
        let out = Command::new(agq)
            .args(["migrate", "--store", &self.url()])
            .env("AGQ_STORE_PASSWORD_FILE", self.password_file()?)
            .env_remove("AGQ_STORE_PASSWORD")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {}", agq.display()))?;
        if !out.status.success() {
            bail!("agq migrate failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // SIGQUIT: immediate shutdown, backends included.
            if let Ok(pid) = i32::try_from(c.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGQUIT,
                );
            }
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill();
    }
}

/// The tests' database password (a fixed one: the server listens on loopback only and
/// lives as long as a test).
fn password() -> &'static str {
    "agenix-test-password"
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn as_owner(mut cmd: Command, root: bool) -> Command {
    if root {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    cmd
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
