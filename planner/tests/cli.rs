//! agx as a newcomer types it: keys, trust files, plan validate/sign/verify/show, exit codes.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

use common::*;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn locked_plan() -> String {
    format!(
        r#"{{
  "schema": "agenix.plan/v1",
  "name": "log-errors",
  "tasks": [
    {{ "id": "errors", "run": {{ "wasm": {{ "name": "grep", "digest": "{DIGEST}" }} }},
       "args": ["-i", "error"], "stdin": {{ "input": true }} }},
    {{ "id": "count", "run": {{ "native": {{ "tool": "sort" }} }}, "args": ["-u"],
       "stdin": {{ "task": "errors" }} }}
  ],
  "output": "count"
}}"#
    )
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[test]
fn keygen_writes_a_private_key_0600_and_refuses_to_overwrite() {
    let s = TestDir::new();
    let out = s.ok(&["keygen", "--out", "k"]);
    let keyid = out.lines().next().unwrap();
    assert!(keyid.starts_with("sha256:") && keyid.len() == 71, "{out}");
    assert_eq!(fs::metadata(s.path("k")).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(fs::read_to_string(s.path("k")).unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(fs::read_to_string(s.path("k.pub")).unwrap().starts_with("-----BEGIN PUBLIC KEY-----"));

    let before = fs::read(s.path("k")).unwrap();
    let err = s.fails(&["keygen", "--out", "k"]);
    assert!(err.contains("k already exists (pass --force to replace it)"), "{err}");
    assert_eq!(fs::read(s.path("k")).unwrap(), before, "refused keygen must not touch the key");

    // Only the .pub existing also refuses, and writes nothing.
    fs::remove_file(s.path("k")).unwrap();
    s.fails(&["keygen", "--out", "k"]);
    assert!(!s.path("k").exists());

    let out = s.ok(&["keygen", "--out", "k", "--force", "--json"]);
    let rec = &json_lines(&out)[0];
    assert_eq!(rec["type"], "key");
    assert_ne!(rec["data"]["keyid"].as_str().unwrap(), keyid);
}

#[test]
fn trust_add_list_revoke() {
    let s = TestDir::new();
    let alice = s.signer("alice");
    let list = s.ok(&["trust", "list", "--trust", "trust.json"]);
    assert!(list.contains("alice") && list.contains(&alice) && list.contains("trusted"), "{list}");

    // The same key twice, or the same name for another key: refused, file unchanged.
    let before = fs::read(s.path("trust.json")).unwrap();
    let err =
        s.fails(&["trust", "add", "alice.key.pub", "--name", "again", "--trust", "trust.json"]);
    assert!(err.contains("is already trusted as \"alice\""), "{err}");
    s.ok(&["keygen", "--out", "bob.key"]);
    let err = s.fails(&["trust", "add", "bob.key.pub", "--name", "alice", "--trust", "trust.json"]);
    assert!(err.contains("the name \"alice\" is already used"), "{err}");
    assert_eq!(fs::read(s.path("trust.json")).unwrap(), before);

    // A private key is not a public key.
    let err = s.fails(&["trust", "add", "bob.key", "--name", "bob", "--trust", "trust.json"]);
    assert!(err.contains("not an ed25519 public key"), "{err}");

    s.ok(&["trust", "revoke", &alice, "--trust", "trust.json"]);
    let rows = json_lines(&s.ok(&["--json", "trust", "list", "--trust", "trust.json"]));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["data"]["revoked"], true);
    let err = s.fails(&["trust", "revoke", "sha256:nothex", "--trust", "trust.json"]);
    assert!(err.contains("invalid digest"), "{err}");
}

#[test]
fn plan_sign_then_verify_as_the_readme_shows() {
    let s = TestDir::new();
    s.signer("alice");
    s.write("plan.json", &locked_plan());
    let out = s.ok(&[
        "plan",
        "sign",
        "plan.json",
        "--key",
        "alice.key",
        "--expires",
        "2h",
        "--out",
        "plan.env",
    ]);
    assert!(out.contains("plan digest sha256:"), "{out}");
    let out = s.ok(&["plan", "verify", "plan.env", "--trust", "trust.json"]);
    assert!(out.starts_with("verified: plan \"log-errors\""), "{out}");
    assert!(out.contains("signed by \"alice\""), "{out}");

    let rec =
        &json_lines(&s.ok(&["--json", "plan", "verify", "plan.env", "--trust", "trust.json"]))[0];
    assert_eq!(rec["type"], "verified");
    let expires = rec["data"]["expires_at"].as_u64().unwrap();
    let issued = expires - 7200;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(issued.abs_diff(now) < 60, "issued_at {issued} is not now ({now})");

    let shown = s.ok(&["plan", "show", "plan.env", "--trust", "trust.json"]);
    assert!(shown.contains("verified, signed by \"alice\""), "{shown}");
    assert!(shown.contains("wasm grep@0123456789ab"), "{shown}");
    let unverified = s.ok(&["plan", "show", "plan.env"]);
    assert!(unverified.contains("NOT verified"), "{unverified}");
    assert!(!unverified.contains("no /tmp"), "{unverified}");

    // A task without a scratch /tmp says so, in text and in JSON.
    let plan = locked_plan().replace(r#""args": ["-u"],"#, r#""args": ["-u"], "scratch": false,"#);
    s.write("no-tmp.json", &plan);
    s.ok(&["plan", "sign", "no-tmp.json", "--key", "alice.key", "--out", "no-tmp.env"]);
    let shown = s.ok(&["plan", "show", "no-tmp.env"]);
    assert_eq!(shown.matches("no /tmp").count(), 1, "{shown}");
    let rec = &json_lines(&s.ok(&["--json", "plan", "show", "no-tmp.env"]))[0];
    let scratch: Vec<_> =
        rec["data"]["tasks"].as_array().unwrap().iter().map(|t| &t["scratch"]).collect();
    assert_eq!(scratch, [true, false], "{rec}");
}

#[test]
fn tampered_envelope_is_rejected_with_the_reason() {
    let s = TestDir::new();
    s.signer("alice");
    s.write("plan.json", &locked_plan());
    s.ok(&["plan", "sign", "plan.json", "--key", "alice.key", "--out", "plan.env"]);
    let mut env: serde_json::Value =
        serde_json::from_slice(&fs::read(s.path("plan.env")).unwrap()).unwrap();
    let payload = String::from_utf8(B64.decode(env["payload"].as_str().unwrap()).unwrap()).unwrap();
    env["payload"] = B64.encode(payload.replace("\"-u\"", "\"-r\"")).into();
    s.write("tampered.env", &env.to_string());
    let err = s.fails(&["plan", "verify", "tampered.env", "--trust", "trust.json"]);
    assert!(err.contains("tampered.env failed verification"), "{err}");
    assert!(err.contains("signature by \"alice\""), "{err}");
    assert!(err.contains("does not verify: the envelope was altered after signing"), "{err}");
    // show --trust refuses it too; show without trust displays it, marked unverified.
    s.fails(&["plan", "show", "tampered.env", "--trust", "trust.json"]);
    assert!(s.ok(&["plan", "show", "tampered.env"]).contains("NOT verified"));
}

#[test]
fn revoked_and_unknown_signers_are_rejected() {
    let s = TestDir::new();
    let alice = s.signer("alice");
    s.ok(&["keygen", "--out", "mallory.key"]);
    s.write("plan.json", &locked_plan());
    s.ok(&["plan", "sign", "plan.json", "--key", "mallory.key", "--out", "m.env"]);
    let err = s.fails(&["plan", "verify", "m.env", "--trust", "trust.json"]);
    assert!(err.contains("no signature is by a trusted key"), "{err}");

    s.ok(&["plan", "sign", "plan.json", "--key", "alice.key", "--out", "a.env"]);
    s.ok(&["trust", "revoke", &alice, "--trust", "trust.json"]);
    let err = s.fails(&["plan", "verify", "a.env", "--trust", "trust.json"]);
    assert!(err.contains("signer \"alice\"") && err.contains("is revoked"), "{err}");
}

#[test]
fn validate_names_rule_and_path_and_json_lists_violations() {
    let s = TestDir::new();
    let bad = locked_plan().replace(r#""stdin": { "input": true }"#, r#""stdin": { "task": "x" }"#);
    s.write("bad.json", &bad);
    let err = s.fails(&["plan", "validate", "bad.json"]);
    assert!(
        err.contains(
            "tasks[0].stdin: refers to task \"x\", which is not an earlier task [stdin-ref]"
        ),
        "{err}"
    );

    let out = s.agx(&["--json", "plan", "validate", "bad.json"]);
    assert_eq!(out.status.code(), Some(1));
    let rec = &json_lines(&String::from_utf8(out.stdout).unwrap())[0];
    assert_eq!(rec["type"], "error");
    assert_eq!(rec["data"]["violations"][0]["rule"], "stdin-ref");
    assert_eq!(rec["data"]["violations"][0]["path"], "tasks[0].stdin");

    s.write(
        "dup.json",
        &locked_plan().replace(r#""name": "log-errors","#, r#""name": "a", "name": "b","#),
    );
    let err = s.fails(&["plan", "validate", "dup.json"]);
    assert!(err.contains("name: duplicate key \"name\" [json]"), "{err}");
}

#[test]
fn signing_refuses_unlocked_aus_and_unreadable_keys() {
    let s = TestDir::new();
    s.signer("alice");
    s.write("draft.json", &locked_plan().replace(&format!(r#", "digest": "{DIGEST}""#), ""));
    s.ok(&["plan", "validate", "draft.json"]);
    let err = s.fails(&["plan", "sign", "draft.json", "--key", "alice.key", "--out", "x.env"]);
    assert!(err.contains("tasks[0].run.wasm.name: AU \"grep\" is not in the store"), "{err}");
    assert!(!s.path("x.env").exists(), "nothing is written when signing fails");

    s.write("plan.json", &locked_plan());
    fs::set_permissions(s.path("alice.key"), fs::Permissions::from_mode(0o644)).unwrap();
    let err = s.fails(&["plan", "sign", "plan.json", "--key", "alice.key", "--out", "x.env"]);
    assert!(err.contains("is accessible by others (mode 644)"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let s = TestDir::new();
    for args in [
        &["plan", "sign", "p.json"][..],
        &["frobnicate"],
        &["plan", "sign", "p.json", "--key", "k", "--out", "o", "--expires", "soon"],
        &["plan", "sign", "p.json", "--key", "k", "--out", "o", "--expires", "0s"],
    ] {
        let out = s.agx(args);
        assert_eq!(out.status.code(), Some(2), "agx {args:?}: {}", stderr(&out));
    }
    assert_eq!(s.agx(&["--help"]).status.code(), Some(0));
}

/// Durations take a unit and stay within their range; states are a closed set. Each bad
/// value is a usage error (exit 2) naming what is wrong and, for a bare number, the form
/// to use; nothing is clamped.
#[test]
fn durations_need_a_unit_and_a_range_and_states_are_named() {
    let s = TestDir::new();
    let cases: [(&[&str], &str); 11] = [
        (&["submit", "p.json", "--expires", "0s"], "0s is outside 1m..=366days"),
        (&["jobs", "list", "--limit", "0"], "0 is not in 1.."),
        (
            &["run", "p.json", "--disable-jail-feature", "seccomp"],
            "\"seccomp\" is not a part of the jail; the parts are: user namespace,",
        ),
        (
            &["jobs", "list", "--role", "worker"],
            "agx connects as planner or observer, not \"worker\"",
        ),
        (&["au", "run", "x.wasm", "--timeout", "500"], "\"500\" has no unit: write it as 500ms"),
        (&["au", "run", "x.wasm", "--timeout", "61m"], "61m is outside 1ms..=1h"),
        (&["au", "run", "x.wasm", "--timeout", "0ms"], "is outside 1ms..=1h"),
        (&["submit", "p.json", "--expires", "367days"], "is outside 1m..=366days"),
        (&["submit", "p.json", "--expires", "86400"], "\"86400\" has no unit"),
        (
            &["plan", "sign", "p.json", "--key", "k", "--out", "o", "--expires", "367days"],
            "outside",
        ),
        (
            &["jobs", "list", "--state", "finished"],
            "unknown state \"finished\" (one of queued, leased, succeeded, dead, cancelled)",
        ),
    ];
    for (args, says) in cases {
        let out = s.agx(args);
        assert_eq!(out.status.code(), Some(2), "agx {args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "agx {args:?}: {}", stderr(&out));
    }
    // An observer is told it may not submit before anything is signed or sent.
    let out = s.agx(&["submit", "p.json", "--role", "observer"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("the observer role may not submit"), "{}", stderr(&out));
}

#[test]
fn example_plans_validate() {
    let s = TestDir::new();
    for name in ["log-errors.json", "orders-report.json", "orders-columns.json"] {
        let p = examples_dir().join(name);
        let out = s.ok(&["plan", "validate", p.to_str().unwrap()]);
        assert!(out.contains("valid plan"), "{out}");
    }
}

/// Keys are the plain PKCS#8 of RFC 8410: OpenSSL and Python's `cryptography` read what agx
/// writes (private and public), and agx signs with a key OpenSSL made. A missing tool is
/// skipped, saying so.
#[test]
fn keys_interoperate_with_openssl_and_python() {
    let s = TestDir::new();
    s.ok(&["keygen", "--out", "k"]);
    let run = |program: &str, args: &[&str]| {
        std::process::Command::new(program).args(args).current_dir(s.path("")).output()
    };
    match run("openssl", &["pkey", "-in", "k", "-noout", "-text"]) {
        Err(e) => println!("openssl: skipped, it does not run here ({e})"),
        Ok(out) => {
            assert!(out.status.success(), "openssl cannot read agx's key: {}", text(&out.stderr));
            assert!(text(&out.stdout).contains("ED25519 Private-Key"), "{}", text(&out.stdout));
            let out = run("openssl", &["pkey", "-pubin", "-in", "k.pub", "-noout"]).unwrap();
            assert!(out.status.success(), "{}", text(&out.stderr));
            // The other way: a key OpenSSL made signs a plan agx verifies.
            let out =
                run("openssl", &["genpkey", "-algorithm", "ed25519", "-out", "o.key"]).unwrap();
            assert!(out.status.success(), "{}", text(&out.stderr));
            let out =
                run("openssl", &["pkey", "-in", "o.key", "-pubout", "-out", "o.key.pub"]).unwrap();
            assert!(out.status.success(), "{}", text(&out.stderr));
            s.ok(&["trust", "add", "o.key.pub", "--name", "ossl", "--trust", "trust.json"]);
            s.write("plan.json", &locked_plan());
            s.ok(&["plan", "sign", "plan.json", "--key", "o.key", "--out", "plan.env"]);
            let shown = s.ok(&["plan", "show", "plan.env", "--trust", "trust.json"]);
            assert!(shown.contains("verified, signed by \"ossl\""), "{shown}");
            // An envelope made by another DSSE tool: OpenSSL signs the pre-authentication
            // encoding, and the signature carries no key id. agx verifies it.
            let env: serde_json::Value =
                serde_json::from_slice(&fs::read(s.path("plan.env")).unwrap()).unwrap();
            let ty = env["payloadType"].as_str().unwrap();
            let payload = B64.decode(env["payload"].as_str().unwrap()).unwrap();
            let mut pae = format!("DSSEv1 {} {ty} {} ", ty.len(), payload.len()).into_bytes();
            pae.extend_from_slice(&payload);
            fs::write(s.path("pae.bin"), &pae).unwrap();
            let out = run(
                "openssl",
                &[
                    "pkeyutl", "-sign", "-inkey", "o.key", "-rawin", "-in", "pae.bin", "-out",
                    "sig.bin",
                ],
            )
            .unwrap();
            assert!(out.status.success(), "{}", text(&out.stderr));
            let sig = B64.encode(fs::read(s.path("sig.bin")).unwrap());
            let foreign = serde_json::json!({
                "payloadType": ty,
                "payload": env["payload"],
                "signatures": [{ "sig": sig }],
            });
            s.write("foreign.env", &foreign.to_string());
            let out = s.ok(&["plan", "verify", "foreign.env", "--trust", "trust.json"]);
            assert!(out.contains("ossl"), "{out}");
            // Ed25519 is deterministic: OpenSSL's signature is agx's.
            assert_eq!(sig, env["signatures"][0]["sig"].as_str().unwrap());
        }
    }
    let py = "from cryptography.hazmat.primitives import serialization as s; \
              s.load_pem_private_key(open('k','rb').read(), None); \
              s.load_pem_public_key(open('k.pub','rb').read()); print('read')";
    match run("python3", &["-c", py]) {
        Ok(out) if out.status.success() => assert_eq!(text(&out.stdout), "read\n"),
        Ok(out) if text(&out.stderr).contains("No module named") => {
            println!("python cryptography: skipped, not installed")
        }
        Ok(out) => panic!("python cannot read agx's key: {}", text(&out.stderr)),
        Err(e) => println!("python3: skipped, it does not run here ({e})"),
    }
}

/// `trust rotate` trusts the new key under the signer's name from now and keeps the old one
/// until the overlap ends: both verify in between. A key whose period has ended (here, as a
/// trust file says it) is refused, naming the period.
#[test]
fn rotation_overlaps_and_a_key_outside_its_period_is_refused() {
    let s = TestDir::new();
    let old = s.signer("alice");
    s.write("plan.json", &locked_plan());
    s.ok(&["plan", "sign", "plan.json", "--key", "alice.key", "--out", "old.env"]);
    s.ok(&["keygen", "--out", "alice2.key"]);
    let out = s.ok(&[
        "--json",
        "trust",
        "rotate",
        &old,
        "--to",
        "alice2.key.pub",
        "--overlap",
        "1h",
        "--trust",
        "trust.json",
    ]);
    let rec = &json_lines(&out)[0];
    assert_eq!(
        (rec["type"].as_str(), rec["data"]["name"].as_str()),
        (Some("rotated"), Some("alice"))
    );
    s.ok(&["plan", "sign", "plan.json", "--key", "alice2.key", "--out", "new.env"]);
    for env in ["old.env", "new.env"] {
        s.ok(&["plan", "verify", env, "--trust", "trust.json"]);
    }
    let list = s.ok(&["trust", "list", "--trust", "trust.json"]);
    assert!(list.contains("alice (until ") && list.contains(" until "), "{list}");
    // Past its period (the file edited as an operator might): refused, and the new key
    // still verifies.
    let mut doc: serde_json::Value =
        serde_json::from_slice(&fs::read(s.path("trust.json")).unwrap()).unwrap();
    for signer in doc["signers"].as_array_mut().unwrap() {
        if signer["name"].as_str().is_some_and(|n| n.starts_with("alice (until ")) {
            signer["not_after"] = 1_000_000.into();
        }
    }
    s.write("trust.json", &doc.to_string());
    let err = s.fails(&["plan", "verify", "old.env", "--trust", "trust.json"]);
    assert!(err.contains("is trusted from any time to 1000000 (unix seconds), not now"), "{err}");
    s.ok(&["plan", "verify", "new.env", "--trust", "trust.json"]);
    // A revoked key cannot be rotated (it is already out), and bad overlaps are refused.
    s.ok(&["trust", "revoke", &old, "--trust", "trust.json"]);
    s.ok(&["keygen", "--out", "alice3.key"]);
    let err =
        s.fails(&["trust", "rotate", &old, "--to", "alice3.key.pub", "--trust", "trust.json"]);
    assert!(err.contains("is revoked"), "{err}");
    let out = s.agx(&[
        "trust",
        "rotate",
        &old,
        "--to",
        "alice3.key.pub",
        "--overlap",
        "400days",
        "--trust",
        "trust.json",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("outside 0ms..=366days"), "{err}");
}

/// Edits of one trust file made at the same time all land: twelve `trust add` and twelve
/// `trust revoke` run at once leave every signer and every revocation in the file.
#[test]
fn concurrent_trust_edits_all_land() {
    let s = TestDir::new();
    for i in 0..12 {
        s.ok(&["keygen", "--out", &format!("k{i}")]);
    }
    let agx = env!("CARGO_BIN_EXE_agx");
    let spawn = |args: Vec<String>| {
        std::process::Command::new(agx)
            .args(args)
            .args(["--trust", "trust.json"])
            .current_dir(s.path(""))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut adds = vec![];
    let mut revokes = vec![];
    for i in 0..12u32 {
        let name = format!("s{i}");
        adds.push(spawn(vec![
            "trust".into(),
            "add".into(),
            format!("k{i}.pub"),
            "--name".into(),
            name,
        ]));
        let keyid = format!("sha256:{:064x}", i + 1);
        revokes.push((keyid.clone(), spawn(vec!["trust".into(), "revoke".into(), keyid])));
    }
    for c in adds {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let mut said_revoked = vec![];
    for (keyid, c) in revokes {
        // One that ran before the file existed fails, saying so.
        if c.wait_with_output().unwrap().status.success() {
            said_revoked.push(keyid);
        }
    }
    let list = s.ok(&["--json", "trust", "list", "--trust", "trust.json"]);
    let recs = json_lines(&list);
    assert_eq!(recs.iter().filter(|r| r["type"] == "signer").count(), 12, "{list}");
    let revoked: Vec<&str> = recs
        .iter()
        .filter(|r| r["type"] == "revoked")
        .filter_map(|r| r["data"]["keyid"].as_str())
        .collect();
    for k in &said_revoked {
        assert!(revoked.contains(&k.as_str()), "{k} was said revoked, but the file lacks it");
    }
    assert!(!said_revoked.is_empty());
}

#[test]
fn completion_scripts_complete_agx_s_own_commands() {
    let t = TestDir::new();
    let script = t.ok(&["completions", "bash"]);
    t.write("agx.bash", &script);
    // Loaded into bash, it offers the plan commands for `agx plan d`.
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(
            "source agx.bash; COMP_WORDS=(agx plan d); COMP_CWORD=2; _agx agx d plan; \
             printf '%s\\n' \"${COMPREPLY[@]}\"",
        )
        .current_dir(t.path(""))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(text(&out.stdout), "draft\n");
    assert!(t.ok(&["completions", "zsh"]).starts_with("#compdef agx"));
    assert!(t.ok(&["completions", "fish"]).contains("complete -c agx"));
    let out = t.agx(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("bash"), "{}", stderr(&out));
}

#[test]
fn signing_never_writes_over_its_key_or_its_plan() {
    let t = TestDir::new();
    t.signer("alice");
    let plan = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/log-errors.json");
    fs::copy(&plan, t.path("plan.json")).unwrap();
    let key = fs::read(t.path("alice.key")).unwrap();
    for out in ["alice.key", "plan.json", "./alice.key"] {
        let err = t.fails(&["plan", "sign", "plan.json", "--key", "alice.key", "--out", out]);
        assert!(err.contains("signing would replace it"), "{err}");
    }
    assert_eq!(fs::read(t.path("alice.key")).unwrap(), key);
    assert_eq!(fs::read(t.path("plan.json")).unwrap(), fs::read(&plan).unwrap());
}

/// Every help page of agx ends with examples that agx's own parser accepts
/// (`agenix_harness::help`: the pages are found by following each page's `Commands:`).
#[test]
fn every_help_page_ends_with_examples_that_parse() {
    let agx = agenix_harness::workspace_bin("agx").unwrap();
    let walked = agenix_harness::help::check_examples(&agx, "agx", false).unwrap();
    // The walk went through groups to the commands in them.
    assert!(walked.pages > 10 && walked.deepest >= 2, "{walked:?}");
}
