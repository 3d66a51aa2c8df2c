//! docs/test-matrix.md rows P1–P11 that the contract itself decides: each asserts the precise
//! rejection and its message.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

use agenix_proto::action::ACTION_SCHEMA;
use agenix_proto::envelope::{
    ACTION_PAYLOAD_TYPE, CLOCK_SKEW_SECS, PLAN_PAYLOAD_TYPE, sign_action, sign_plan,
};
use agenix_proto::keys::{SigningKey, signing_key_from_seed};
use agenix_proto::plan::{MAX_PLAN_BYTES, MAX_TASKS};
use agenix_proto::{
    Action, ActionId, Digest, Envelope, Fingerprint, Form, Limits, Plan, PlanId, Role, Trust,
    VerifyError, verify_action, verify_plan,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

const NOW: u64 = 1_764_060_000;

fn key(n: u8) -> SigningKey {
    signing_key_from_seed(&[n; 32])
}

fn trust_with(keys: &[(&str, &SigningKey)]) -> Trust {
    let mut t = Trust::new();
    for (name, k) in keys {
        t.add(name, k.verifying_key(), &Role::SIGNING).unwrap();
    }
    t
}

fn plan_json() -> String {
    format!(
        r#"{{"schema":"agenix.plan/v1","plan_id":"{}","name":"log-errors",
        "issued_at":{NOW},"expires_at":{},
        "tasks":[
          {{"id":"errors","run":{{"wasm":{{"name":"grep","digest":"{}"}}}},"args":["-i","error"],
            "stdin":{{"input":true}}}},
          {{"id":"count","run":{{"native":{{"tool":"sort"}}}},"args":["-u"],"stdin":{{"task":"errors"}}}}
        ],
        "output":"count"}}"#,
        "0".repeat(32),
        NOW + 3600,
        Digest::of(b"grep component"),
    )
}

fn plan() -> Plan {
    Plan::from_json(plan_json().as_bytes()).unwrap()
}

fn signed_plan(k: &SigningKey) -> Vec<u8> {
    sign_plan(&plan(), k).unwrap().to_json()
}

fn audience() -> Fingerprint {
    Fingerprint(Digest::of(b"queue public key"))
}

fn action() -> Action {
    Action {
        schema: ACTION_SCHEMA.into(),
        action_id: ActionId::from_random([5; 16]),
        plan: Digest::of(&plan().to_payload()),
        inputs: vec![],
        issued_at: NOW,
        expires_at: NOW + 600,
        max_attempts: 3,
        priority: 0,
        audience: audience(),
    }
}

fn verify(env: &[u8], trust: &Trust) -> Result<agenix_proto::VerifiedPlan, VerifyError> {
    verify_plan(env, trust, NOW, &Limits::ABSOLUTE)
}

/// Rewrites one field of an envelope, keeping it well-formed JSON.
fn edit_envelope(env: &[u8], f: impl FnOnce(&mut Envelope)) -> Vec<u8> {
    let mut e = Envelope::from_json(env).unwrap();
    f(&mut e);
    e.to_json()
}

#[test]
fn signed_plan_verifies_and_digest_is_of_the_payload() {
    let k = key(1);
    let v = verify(&signed_plan(&k), &trust_with(&[("alice", &k)])).unwrap();
    assert_eq!(v.plan(), &plan());
    assert_eq!(v.digest(), Digest::of(&plan().to_payload()));
    assert_eq!(v.signer().to_string(), agenix_proto::KeyId::of(&k.verifying_key()).to_string());
}

#[test]
fn p01_flipped_payload_byte_is_rejected() {
    let k = key(1);
    let trust = trust_with(&[("alice", &k)]);
    let env = signed_plan(&k);
    let tampered = edit_envelope(&env, |e| {
        let mut payload = B64.decode(&e.payload).unwrap();
        // Turn "-i" into "-v": the plan stays valid JSON and a valid plan, but it is not what
        // was signed.
        let at = payload.windows(4).position(|w| w == b"\"-i\"").unwrap();
        payload[at + 2] = b'v';
        e.payload = B64.encode(payload);
    });
    let err = verify(&tampered, &trust).unwrap_err();
    assert!(
        matches!(err, VerifyError::BadSignature { ref name, .. } if name == "alice"),
        "{err:?}"
    );
    assert!(err.to_string().contains("does not verify: the envelope was altered"), "{err}");
}

#[test]
fn p01_flipped_signature_byte_is_rejected() {
    let k = key(1);
    let trust = trust_with(&[("alice", &k)]);
    let env = signed_plan(&k);
    for byte in [0usize, 31, 32, 63] {
        let tampered = edit_envelope(&env, |e| {
            let mut sig = B64.decode(&e.signatures[0].sig).unwrap();
            sig[byte] ^= 0x01;
            e.signatures[0].sig = B64.encode(sig);
        });
        let err = verify(&tampered, &trust).unwrap_err();
        assert!(matches!(err, VerifyError::BadSignature { .. }), "byte {byte}: {err:?}");
    }
}

#[test]
fn p02_valid_signature_by_unknown_key_is_rejected() {
    let stranger = key(2);
    let env = signed_plan(&stranger);
    let err = verify(&env, &trust_with(&[("alice", &key(1))])).unwrap_err();
    let stranger_id = agenix_proto::KeyId::of(&stranger.verifying_key()).to_string();
    assert_eq!(
        err.to_string(),
        format!("no signature is by a trusted key (signed by {stranger_id})")
    );
    // An empty trust file trusts nobody.
    assert!(matches!(verify(&env, &Trust::new()), Err(VerifyError::UnknownSigner { .. })));
}

#[test]
fn p03_expired_not_yet_valid_and_skew() {
    let k = key(1);
    let trust = trust_with(&[("alice", &k)]);
    let env = signed_plan(&k);
    let expires = NOW + 3600;
    // Within the skew on both sides: accepted.
    verify_plan(&env, &trust, NOW - CLOCK_SKEW_SECS, &Limits::ABSOLUTE).unwrap();
    verify_plan(&env, &trust, expires + CLOCK_SKEW_SECS, &Limits::ABSOLUTE).unwrap();
    // One second beyond: rejected, with the times named.
    let err = verify_plan(&env, &trust, NOW - CLOCK_SKEW_SECS - 1, &Limits::ABSOLUTE).unwrap_err();
    assert_eq!(err, VerifyError::NotYetValid { issued_at: NOW, now: NOW - CLOCK_SKEW_SECS - 1 });
    assert!(err.to_string().starts_with("not valid yet: issued at"), "{err}");
    let late = expires + CLOCK_SKEW_SECS + 1;
    let err = verify_plan(&env, &trust, late, &Limits::ABSOLUTE).unwrap_err();
    assert_eq!(err, VerifyError::Expired { expires_at: expires, now: late });
    assert!(err.to_string().contains("skew allowed: 120 s"), "{err}");
}

#[test]
fn p03_action_expiry_is_checked_too() {
    let k = key(1);
    let trust = trust_with(&[("alice", &k)]);
    let env = sign_action(&action(), &k).unwrap().to_json();
    verify_action(&env, &trust, NOW + 600, &audience()).unwrap();
    let err =
        verify_action(&env, &trust, NOW + 600 + CLOCK_SKEW_SECS + 1, &audience()).unwrap_err();
    assert!(matches!(err, VerifyError::Expired { .. }), "{err:?}");
}

#[test]
fn p05_revoked_signer_is_rejected() {
    let k = key(1);
    let mut trust = trust_with(&[("alice", &k)]);
    let env = signed_plan(&k);
    verify(&env, &trust).unwrap();
    trust.revoke(agenix_proto::KeyId::of(&k.verifying_key()));
    let err = verify(&env, &trust).unwrap_err();
    assert!(matches!(err, VerifyError::Revoked { ref name, .. } if name == "alice"), "{err:?}");
    assert!(err.to_string().starts_with("signer \"alice\" (sha256:"), "{err}");
    assert!(err.to_string().ends_with(") is revoked"), "{err}");
    // Revocation survives the trust file's round trip.
    let reloaded = Trust::from_json(&trust.to_json()).unwrap();
    assert!(matches!(verify(&env, &reloaded), Err(VerifyError::Revoked { .. })));
}

#[test]
fn p07_plan_signature_presented_as_action_is_rejected() {
    let k = key(1);
    let trust = trust_with(&[("alice", &k)]);
    let env = signed_plan(&k);
    let err = verify_action(&env, &trust, NOW, &audience()).unwrap_err();
    assert_eq!(
        err,
        VerifyError::PayloadType {
            expected: ACTION_PAYLOAD_TYPE.into(),
            found: PLAN_PAYLOAD_TYPE.into()
        }
    );
    // Relabelling the envelope does not help: the type is inside the signed PAE.
    let relabelled = edit_envelope(&env, |e| e.payload_type = ACTION_PAYLOAD_TYPE.into());
    let err = verify_action(&relabelled, &trust, NOW, &audience()).unwrap_err();
    assert!(matches!(err, VerifyError::BadSignature { .. }), "{err:?}");
    // And the other way round.
    let action_env = sign_action(&action(), &k).unwrap().to_json();
    let err = verify(&action_env, &trust).unwrap_err();
    assert!(matches!(err, VerifyError::PayloadType { .. }), "{err:?}");
}

#[test]
fn p07_role_is_enforced() {
    let k = key(1);
    let mut trust = Trust::new();
    trust.add("planner-only", k.verifying_key(), &[Role::Plan]).unwrap();
    let env = sign_action(&action(), &k).unwrap().to_json();
    let err = verify_action(&env, &trust, NOW, &audience()).unwrap_err();
    assert_eq!(err.to_string(), "signer \"planner-only\" is not trusted to sign actions");
}

fn plan_err(json: &str) -> agenix_proto::Invalid {
    Plan::from_json(json.as_bytes()).unwrap_err()
}

#[test]
fn p08_duplicate_keys_are_rejected_even_inside_signed_payloads() {
    let err = plan_err(&plan_json().replacen(
        r#""name":"log-errors","#,
        r#""name":"log-errors","name":"other","#,
        1,
    ));
    assert_eq!(err.to_string(), "name: duplicate key \"name\" [json]");
    // A signed payload with a duplicate key is rejected after the signature verifies.
    let k = key(1);
    let payload = plan_json().replacen(
        r#""args":["-i","error"],"#,
        r#""args":["-i","error"],"args":["x"],"#,
        1,
    );
    let env = Envelope::sign(PLAN_PAYLOAD_TYPE, payload.as_bytes(), &k).to_json();
    let err = verify(&env, &trust_with(&[("alice", &k)])).unwrap_err();
    let VerifyError::Invalid(inv) = err else { panic!("{err:?}") };
    assert_eq!(inv.violations()[0].path, "tasks[0].args");
    assert_eq!(inv.violations()[0].message, "duplicate key \"args\"");
}

#[test]
fn p08_unknown_fields_are_rejected_with_their_path() {
    let err = plan_err(&plan_json().replacen(
        r#""stdin":{"task":"errors"}"#,
        r#""stdin":{"task":"errors"},"shell":true"#,
        1,
    ));
    let v = &err.violations()[0];
    assert_eq!(v.rule, "json");
    assert_eq!(v.path, "tasks[1].shell");
    assert!(v.message.starts_with("unknown field `shell`"), "{}", v.message);
    // In envelopes too.
    let k = key(1);
    let env = String::from_utf8(signed_plan(&k)).unwrap().replacen('{', "{\"extra\": 1,", 1);
    let err = verify(env.as_bytes(), &trust_with(&[("alice", &k)])).unwrap_err();
    assert!(matches!(err, VerifyError::Malformed(ref e) if e.path == "extra"), "{err:?}");
}

#[test]
fn p08_non_utf8_is_rejected() {
    let mut bytes = plan_json().into_bytes();
    let at = bytes.windows(5).position(|w| w == b"error").unwrap();
    bytes[at] = 0xff;
    let err = Plan::from_json(&bytes).unwrap_err();
    assert!(err.to_string().starts_with("not UTF-8 (invalid byte at offset"), "{err}");
}

#[test]
fn p08_huge_and_negative_numbers_are_rejected() {
    for (bad, path) in [
        // Out of any number type's range: refused while parsing, before any path exists.
        (r#""issued_at":1e400"#, ""),
        (r#""issued_at":18446744073709551616"#, "issued_at"),
        (r#""issued_at":-1"#, "issued_at"),
        (r#""issued_at":1.5"#, "issued_at"),
    ] {
        let err = plan_err(&plan_json().replacen(&format!(r#""issued_at":{NOW}"#), bad, 1));
        assert_eq!(err.violations()[0].path, path, "{bad}: {err}");
        assert_eq!(err.violations()[0].rule, "json");
    }
}

#[test]
fn p09_weak_key_cannot_enter_a_trust_file() {
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let doc = format!(
        r#"{{"schema":"agenix.trust/v1","signers":[{{"name":"weak","key":"{}","roles":["plan"]}}]}}"#,
        B64.encode(identity)
    );
    let err = Trust::from_json(doc.as_bytes()).unwrap_err();
    assert_eq!(err.to_string(), "signers[0].key: weak ed25519 key (small order): refused [key]");
}

#[test]
fn p09_malleable_signature_is_rejected() {
    let k = key(1);
    let trust = trust_with(&[("alice", &k)]);
    let env = signed_plan(&k);
    // S + L encodes the same scalar; verify_strict requires the canonical S < L.
    let malleated = edit_envelope(&env, |e| {
        let mut sig = B64.decode(&e.signatures[0].sig).unwrap();
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(sig[32 + i]) + u16::from(L[i]) + carry;
            sig[32 + i] = v as u8;
            carry = v >> 8;
        }
        e.signatures[0].sig = B64.encode(sig);
    });
    assert!(matches!(verify(&malleated, &trust), Err(VerifyError::BadSignature { .. })));
}

#[test]
fn p10_too_many_tasks() {
    let mut p = plan();
    let template = p.tasks[1].clone();
    while p.tasks.len() <= MAX_TASKS {
        let mut t = template.clone();
        t.id = format!("t{}", p.tasks.len()).parse().unwrap();
        p.tasks.push(t);
    }
    let err = p.validate(Form::Draft, &Limits::ABSOLUTE).unwrap_err();
    assert_eq!(err.to_string(), "tasks: 101 tasks, over the limit of 100 [task-count]");
    // Signing refuses it too.
    assert!(sign_plan(&p, &key(1)).unwrap_err().has_rule("task-count"));
}

#[test]
fn p10_payload_over_one_mib() {
    let big = " ".repeat(MAX_PLAN_BYTES);
    let err = plan_err(&format!("{}{big}", plan_json()));
    assert_eq!(err.violations()[0].rule, "size");
    assert!(err.to_string().contains("over the limit of 1048576"), "{err}");
}

#[test]
fn p10_forward_and_self_references() {
    // Forward: the first task reads the second.
    let forward =
        plan_json().replacen(r#""stdin":{"input":true}"#, r#""stdin":{"task":"count"}"#, 1);
    let err = Plan::from_json(forward.as_bytes())
        .unwrap()
        .validate(Form::Draft, &Limits::ABSOLUTE)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "tasks[0].stdin: refers to task \"count\", which is not an earlier task [stdin-ref]"
    );
    // A cycle needs a self or forward reference, so it is refused the same way.
    let selfref = plan_json().replacen(
        r#""stdin":{"task":"errors"}"#,
        r#""stdin":{"tasks":["errors","count"]}"#,
        1,
    );
    let err = Plan::from_json(selfref.as_bytes())
        .unwrap()
        .validate(Form::Draft, &Limits::ABSOLUTE)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "tasks[1].stdin: refers to task \"count\", which is this task itself [stdin-ref]"
    );
    // Unknown output.
    let mut p = plan();
    p.output = "nope".parse().unwrap();
    let err = p.validate(Form::Draft, &Limits::ABSOLUTE).unwrap_err();
    assert_eq!(
        err.to_string(),
        "output: names task \"nope\", which is not in the plan [output-ref]"
    );
}

#[test]
fn p10_limits_above_worker_ceilings_are_refused_not_clamped() {
    let k = key(1);
    let trust = trust_with(&[("alice", &k)]);
    let mut p = plan();
    p.tasks[0].limits.memory_bytes = Some(512 << 20);
    let env = sign_plan(&p, &k).unwrap().to_json();
    let ceilings = Limits { memory_bytes: 256 << 20, ..Limits::ABSOLUTE };
    let err = verify_plan(&env, &trust, NOW, &ceilings).unwrap_err();
    let VerifyError::Invalid(inv) = err else { panic!("{err:?}") };
    assert_eq!(
        inv.to_string(),
        "tasks[0].limits.memory_bytes: 536870912 is above the ceiling of 268435456 [limit-ceiling]"
    );
    // Beyond the format's absolute maxima: refused even when signing.
    p.tasks[0].limits.timeout_ms = Some(3_600_001);
    let err = sign_plan(&p, &k).unwrap_err();
    assert_eq!(
        err.to_string(),
        "tasks[0].limits.timeout_ms: 3600001 is outside 1..=3600000 [limit-range]"
    );
}

#[test]
fn p10_unmetered_fuel_is_signed_as_written_and_refused_by_a_lowered_fuel_ceiling() {
    let k = key(1);
    let trust = trust_with(&[("alice", &k)]);
    let mut json = serde_json::to_value(plan()).unwrap();
    json["tasks"][0]["limits"] = serde_json::json!({"fuel": "unmetered"});
    let p: Plan = serde_json::from_value(json).unwrap();
    assert_eq!(p.tasks[0].limits.fuel, Some(agenix_proto::UNMETERED));
    let env = sign_plan(&p, &k).unwrap().to_json();
    // Accepted as it is by a worker that keeps the format's fuel maximum.
    let verified = verify_plan(&env, &trust, NOW, &Limits::ABSOLUTE).unwrap();
    let signed: serde_json::Value = serde_json::from_slice(verified.payload()).unwrap();
    assert_eq!(signed["tasks"][0]["limits"], serde_json::json!({"fuel": "unmetered"}));
    assert_eq!(verified.plan().tasks[0].limits.fuel, Some(agenix_proto::UNMETERED));
    // A worker that caps fuel refuses it, naming it as written.
    let ceilings = Limits { fuel: 1_000_000_000, ..Limits::ABSOLUTE };
    let err = verify_plan(&env, &trust, NOW, &ceilings).unwrap_err();
    let VerifyError::Invalid(inv) = err else { panic!("{err:?}") };
    assert_eq!(
        inv.to_string(),
        "tasks[0].limits.fuel: unmetered is above the ceiling of 1000000000 [limit-ceiling]"
    );
    // And the queue offers the job only to workers that could run it, saying why not.
    let needs = agenix_proto::job::Requirements::of(&p);
    let caps = |ceilings| agenix_proto::job::Capabilities {
        name: "w".into(),
        wasm: true,
        tools: Default::default(),
        mounts: Default::default(),
        ceilings,
        concurrency: 1,
        labels: Default::default(),
    };
    let fuel_lacks = |ceilings| {
        let lacks = needs.unmet_by(&caps(ceilings));
        lacks.into_iter().filter(|l| l.contains("fuel")).collect::<Vec<_>>()
    };
    assert_eq!(fuel_lacks(Limits::ABSOLUTE), Vec::<String>::new());
    assert_eq!(fuel_lacks(ceilings), ["limits.fuel unmetered is over its ceiling of 1000000000"]);
    assert!(!needs.met_by(&caps(ceilings)));
}

#[test]
fn p10_signed_form_requires_pinned_digests_and_validity() {
    let mut p = plan();
    p.plan_id = None;
    p.expires_at = None;
    if let agenix_proto::Run::Wasm(w) = &mut p.tasks[0].run {
        w.digest = None;
    }
    p.validate(Form::Draft, &Limits::ABSOLUTE).unwrap();
    let err = p.validate(Form::Signed, &Limits::ABSOLUTE).unwrap_err();
    let rules: Vec<_> = err.violations().iter().map(|v| (v.path.as_str(), v.rule)).collect();
    assert_eq!(
        rules,
        [
            ("plan_id", "signed-field"),
            ("expires_at", "signed-field"),
            ("tasks[0].run.wasm.digest", "signed-field")
        ]
    );
}

#[test]
fn p10_mount_paths_and_args_are_checked() {
    let mut p = plan();
    p.plan_id = Some(PlanId::from_random([1; 16]));
    let mount = |path: &str| agenix_proto::Mount {
        name: "logs".parse().unwrap(),
        path: path.into(),
        access: agenix_proto::Access::ReadOnly,
    };
    for (path, why) in [
        ("logs", "is not absolute"),
        ("/logs/../etc", "has a \"..\" component"),
        ("/logs/", "empty component"),
        ("/etc/x", "which the sandbox reserves"),
        ("/", "would replace the sandbox's root"),
    ] {
        p.tasks[0].mounts = vec![mount(path)];
        let err = p.validate(Form::Draft, &Limits::ABSOLUTE).unwrap_err();
        assert_eq!(err.violations()[0].path, "tasks[0].mounts[0].path");
        assert!(err.violations()[0].message.contains(why), "{path}: {err}");
    }
    p.tasks[0].mounts = vec![];
    p.tasks[0].args.push("a\0b".into());
    let err = p.validate(Form::Draft, &Limits::ABSOLUTE).unwrap_err();
    assert_eq!(err.to_string(), "tasks[0].args[2]: contains a NUL byte [args]");
    p.tasks[0].args.pop();
    // Loader and C library variables are refused by name, on any host.
    for name in ["LD_PRELOAD", "PATH", "GCONV_PATH", "LOCPATH", "GLIBC_TUNABLES", "MALLOC_CHECK_"] {
        p.tasks[0].env = [(name.to_string(), "/work/x".to_string())].into_iter().collect();
        let err = p.validate(Form::Draft, &Limits::ABSOLUTE).unwrap_err();
        assert_eq!(err.violations()[0].path, format!("tasks[0].env.{name}"), "{err}");
        assert_eq!(err.violations()[0].rule, "env", "{err}");
    }
    for name in ["LANG", "LC_ALL", "TZ", "TMPDIR", "MY_SETTING"] {
        p.tasks[0].env = [(name.to_string(), "x".to_string())].into_iter().collect();
        assert!(p.validate(Form::Draft, &Limits::ABSOLUTE).is_ok(), "{name} is refused");
    }
}

#[test]
fn p11_action_for_another_queue_is_rejected() {
    let k = key(1);
    let trust = trust_with(&[("alice", &k)]);
    let env = sign_action(&action(), &k).unwrap().to_json();
    let other = Fingerprint(Digest::of(b"another queue"));
    let err = verify_action(&env, &trust, NOW, &other).unwrap_err();
    assert_eq!(err, VerifyError::Audience { expected: other, found: audience() });
    assert!(err.to_string().starts_with("the action is for queue sha256:"), "{err}");
}

#[test]
fn action_must_name_the_plan_it_is_run_with() {
    let k = key(1);
    let trust = trust_with(&[("alice", &k)]);
    let plan = verify(&signed_plan(&k), &trust).unwrap();
    let mut a = action();
    let ok =
        verify_action(&sign_action(&a, &k).unwrap().to_json(), &trust, NOW, &audience()).unwrap();
    // The action names the digest of the payload signed above only if the bytes match.
    assert_eq!(ok.check_plan(&plan), Ok(()));
    a.plan = Digest::of(b"some other plan");
    let other =
        verify_action(&sign_action(&a, &k).unwrap().to_json(), &trust, NOW, &audience()).unwrap();
    assert!(matches!(other.check_plan(&plan), Err(VerifyError::PlanMismatch { .. })));
}

/// P10, hostile sizes: a plan near the size limit that breaks a rule once per few bytes
/// (stdin naming one task 200,000 times; thousands of mounts of one name) is refused with
/// a bounded list of violations, and the count of the rest.
#[test]
fn p10_a_plan_breaking_a_rule_per_byte_gets_a_bounded_report() {
    let refs = vec!["\"a\""; 200_000].join(",");
    let stdin = format!(
        r#"{{"schema":"agenix.plan/v1","name":"w","output":"a","tasks":[{{"id":"a","run":{{"native":{{"tool":"a"}}}},"stdin":{{"tasks":[{refs}]}}}}]}}"#
    );
    let mounts = vec![r#"{"name":"a","path":"/a","access":"ro"}"#; 20_000].join(",");
    let mounts = format!(
        r#"{{"schema":"agenix.plan/v1","name":"w","output":"a","tasks":[{{"id":"a","run":{{"native":{{"tool":"a"}}}},"mounts":[{mounts}]}}]}}"#
    );
    for doc in [stdin, mounts] {
        assert!(doc.len() <= MAX_PLAN_BYTES, "{} bytes", doc.len());
        let plan = Plan::from_json(doc.as_bytes()).unwrap();
        let err = plan.validate(Form::Draft, &Limits::ABSOLUTE).unwrap_err();
        let n = err.violations().len();
        assert!(n <= agenix_proto::validate::MAX_VIOLATIONS + 1, "{n} violations listed");
        assert!(err.to_string().len() < 64 << 10, "{} bytes of report", err.to_string().len());
    }
}

/// What signing adds can take a plan past the size limit: signing refuses that, so nobody
/// holds an envelope every queue and worker would refuse; at exactly the limit it signs.
#[test]
fn a_plan_is_signed_at_exactly_the_size_limit_and_refused_a_byte_past_it() {
    let k = key(1);
    let mut p = plan();
    // Copies of the first task, padded with environment variables, to within reach of the
    // limit; the description makes up the rest.
    let mut padded = p.tasks[0].clone();
    padded.env = (0..64).map(|i| (format!("PAD_{i:02}"), "x".repeat(4000))).collect();
    for i in 0..4 {
        let mut t = padded.clone();
        t.id = format!("pad{i}").parse().unwrap();
        p.tasks.push(t);
    }
    p.description = "d".into();
    let vars = (MAX_PLAN_BYTES - p.to_payload().len() - 300) / 4010;
    let mut t = padded.clone();
    t.id = "pad4".parse().unwrap();
    t.env = (0..vars).map(|i| (format!("PAD_{i:02}"), "x".repeat(4000))).collect();
    p.tasks.push(t);
    // One more variable for all but about 2000 bytes.
    let left = MAX_PLAN_BYTES - p.to_payload().len();
    if let Some(t) = p.tasks.last_mut() {
        t.env.insert("PAD_LAST".into(), "x".repeat(left.saturating_sub(2000)));
    }
    let short = MAX_PLAN_BYTES - p.to_payload().len();
    assert!(short < 4096, "the description can make up {short} bytes");
    p.description = "d".repeat(1 + short);
    assert_eq!(p.to_payload().len(), MAX_PLAN_BYTES);
    let env = sign_plan(&p, &k).unwrap().to_json();
    let v = verify(&env, &trust_with(&[("alice", &k)])).unwrap();
    assert_eq!(v.payload().len(), MAX_PLAN_BYTES);

    p.description.push('d');
    let err = sign_plan(&p, &k).unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "signed plan is {} bytes, over the limit of {MAX_PLAN_BYTES}",
            MAX_PLAN_BYTES + 1
        )),
        "{err}"
    );
}

#[test]
fn a_task_may_ask_for_no_scratch_and_plans_without_the_field_keep_theirs() {
    // Plans written before the field: every task has its /tmp, and nothing new is written.
    let old = plan();
    assert!(old.tasks.iter().all(|t| t.scratch));
    assert!(!serde_json::to_string(&old).unwrap().contains("scratch"));
    // `false` is kept, and survives signing and verification.
    let json = plan_json().replacen(r#""args":["-u"],"#, r#""args":["-u"],"scratch":false,"#, 1);
    let p = Plan::from_json(json.as_bytes()).unwrap();
    assert_eq!(p.tasks.iter().map(|t| t.scratch).collect::<Vec<_>>(), [true, false]);
    assert!(serde_json::to_string(&p).unwrap().contains(r#""scratch":false"#));
    let k = key(1);
    let env = sign_plan(&p, &k).unwrap().to_json();
    let verified = verify(&env, &trust_with(&[("alice", &k)])).unwrap();
    assert!(!verified.plan().tasks[1].scratch);
    // Anything but a boolean is named.
    let err =
        plan_err(&plan_json().replacen(r#""args":["-u"],"#, r#""args":["-u"],"scratch":"no","#, 1));
    let v = &err.violations()[0];
    assert_eq!((v.rule, v.path.as_str()), ("json", "tasks[1].scratch"), "{}", v.message);
}
