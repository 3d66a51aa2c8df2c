//! A scratch directory to run agx in, as a newcomer would: its own store, cache, keys and
//! trust file, and no AGX_* settings from the environment.

#![allow(dead_code, unreachable_pub, reason = "shared by several test binaries")]

pub mod llm;

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, contents).unwrap();
        p
    }

    /// Runs agx in the directory with `stdin` on its standard input.
    pub fn agx_in(&self, args: &[&str], stdin: &[u8]) -> Output {
        self.agx_with(args, stdin, &[])
    }

    /// Runs agx in the directory with `stdin` on its standard input and `env` set.
    pub fn agx_with(&self, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
        let mut child = Command::new(env!("CARGO_BIN_EXE_agx"))
            .args(args)
            .envs(env.iter().copied())
            .current_dir(self.dir.path())
            .env("AGX_STORE", self.path("store"))
            .env("AGX_CACHE", self.path("cache"))
            .env_remove("AGX_KEY")
            .env_remove("AGX_TRUST")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    pub fn agx(&self, args: &[&str]) -> Output {
        self.agx_in(args, b"")
    }

    /// Runs agx expecting exit 0, returning stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.agx(args);
        assert_eq!(out.status.code(), Some(0), "agx {args:?}\nstderr: {}", stderr(&out));
        text(&out.stdout)
    }

    /// Runs agx expecting exit 1, returning stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.agx(args);
        assert_eq!(out.status.code(), Some(1), "agx {args:?}\nstdout: {}", text(&out.stdout));
        stderr(&out)
    }

    /// A key pair `name.key`/`name.key.pub`, trusted as `name` in trust.json; returns the
    /// key id.
    pub fn signer(&self, name: &str) -> String {
        let key = format!("{name}.key");
        let out = self.ok(&["keygen", "--out", &key]);
        self.ok(&["trust", "add", &format!("{key}.pub"), "--name", name, "--trust", "trust.json"]);
        out.lines().next().unwrap().to_string()
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn stderr(out: &Output) -> String {
    text(&out.stderr)
}
