//! Property tests: signing round-trips, tampering never verifies, parsing never panics.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

use agenix_proto::envelope::{sign_plan, verify_plan};
use agenix_proto::keys::signing_key_from_seed;
use agenix_proto::{
    Access, Action, Envelope, Form, Limits, Mount, Plan, PlanId, Role, Run, Stdin, Task,
    TaskLimits, Trust,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use proptest::prelude::*;

const NOW: u64 = 1_764_060_000;

fn slug() -> impl Strategy<Value = String> {
    "[a-z0-9_-]{1,12}"
}

fn run() -> impl Strategy<Value = Run> {
    prop_oneof![
        (slug(), any::<[u8; 32]>()).prop_map(|(name, d)| Run::Wasm(agenix_proto::plan::WasmRef {
            name: name.parse().unwrap(),
            digest: Some(agenix_proto::Digest::from_bytes(d)),
        })),
        "[A-Za-z0-9_.+-]{1,12}".prop_filter("not . or ..", |s| s != "." && s != "..").prop_map(
            |tool| Run::Native(agenix_proto::plan::NativeRef { tool: tool.parse().unwrap() })
        ),
    ]
}

fn limits(wasm: bool) -> impl Strategy<Value = TaskLimits> {
    (
        proptest::option::of(1u64..=1_000_000_000_000),
        proptest::option::of((1u64 << 20)..=(1u64 << 34)),
        proptest::option::of(1u64..=3_600_000),
        proptest::option::of(1u64..=1 << 30),
        proptest::option::of(1u64..=4096),
    )
        .prop_map(move |(fuel, memory_bytes, timeout_ms, output_bytes, pids)| TaskLimits {
            fuel: if wasm { fuel } else { None },
            memory_bytes,
            timeout_ms,
            output_bytes,
            pids: if wasm { None } else { pids },
            file_bytes: None,
        })
}

fn task_parts() -> impl Strategy<Value = (Run, Vec<String>, Option<u8>, bool, TaskLimits)> {
    run().prop_flat_map(|run| {
        let wasm = matches!(run, Run::Wasm(_));
        (
            Just(run),
            proptest::collection::vec("[^\u{0}]{0,20}", 0..5),
            proptest::option::of(any::<u8>()),
            any::<bool>(),
            limits(wasm),
        )
    })
}

/// Valid plans: stdin only ever names an earlier task (or the input).
fn valid_plan() -> impl Strategy<Value = Plan> {
    (slug(), proptest::collection::vec(task_parts(), 1..12), any::<[u8; 16]>(), "[ -~]{0,40}")
        .prop_map(|(name, parts, id, description)| {
            let mut tasks: Vec<Task> = Vec::new();
            for (i, (run, args, stdin_pick, mount, limits)) in parts.into_iter().enumerate() {
                let stdin = match stdin_pick {
                    None => None,
                    Some(_) if i == 0 => Some(Stdin::Input(true)),
                    Some(n) if n % 3 == 0 => Some(Stdin::Input(true)),
                    Some(n) if n % 3 == 1 => Some(Stdin::Task(tasks[n as usize % i].id.clone())),
                    Some(n) => {
                        // Fan-in: one earlier task, then the first, each named once.
                        let mut ids = vec![tasks[n as usize % i].id.clone()];
                        if !(n as usize).is_multiple_of(i) {
                            ids.push(tasks[0].id.clone());
                        }
                        Some(Stdin::Tasks(ids))
                    }
                };
                let mounts = if mount {
                    vec![Mount {
                        name: "data".parse().unwrap(),
                        path: "/data".into(),
                        access: Access::ReadOnly,
                    }]
                } else {
                    vec![]
                };
                tasks.push(Task {
                    id: format!("t{i}").parse().unwrap(),
                    run,
                    args,
                    env: Default::default(),
                    stdin,
                    mounts,
                    limits,
                    scratch: i % 2 == 0,
                });
            }
            let output = tasks[tasks.len() - 1].id.clone();
            Plan {
                schema: agenix_proto::plan::PLAN_SCHEMA.into(),
                plan_id: Some(PlanId::from_random(id)),
                name: name.parse().unwrap(),
                description,
                issued_at: Some(NOW),
                expires_at: Some(NOW + 3600),
                tasks,
                output,
            }
        })
}

fn trust() -> (agenix_proto::keys::SigningKey, Trust) {
    let k = signing_key_from_seed(&[3; 32]);
    let mut t = Trust::new();
    t.add("prop", k.verifying_key(), &Role::SIGNING).unwrap();
    (k, t)
}

/// Arbitrary JSON values, nested a few levels.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "[ -~]{0,10}".prop_map(serde_json::Value::from),
        prop_oneof![
            Just("agenix.plan/v1"),
            Just("t0"),
            Just("grep"),
            Just("/data"),
            Just("ro"),
            Just("sha256:0000000000000000000000000000000000000000000000000000000000000000"),
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("schema".to_string()),
                    Just("tasks".to_string()),
                    Just("id".to_string()),
                    Just("run".to_string()),
                    Just("wasm".to_string()),
                    Just("stdin".to_string()),
                    Just("task".to_string()),
                    Just("output".to_string()),
                    Just("limits".to_string()),
                    Just("name".to_string()),
                    "[a-z_]{1,8}",
                ],
                inner,
                0..6,
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sign_then_verify_round_trips(plan in valid_plan()) {
        plan.validate(Form::Signed, &Limits::ABSOLUTE).unwrap();
        let (k, trust) = trust();
        let env = sign_plan(&plan, &k).unwrap().to_json();
        let v = verify_plan(&env, &trust, NOW, &Limits::ABSOLUTE).unwrap();
        prop_assert_eq!(v.plan(), &plan);
        prop_assert_eq!(v.digest(), agenix_proto::Digest::of(&plan.to_payload()));
    }

    #[test]
    fn any_single_byte_change_to_payload_is_rejected(plan in valid_plan(), pos in any::<prop::sample::Index>(), x in 1u8..=255) {
        let (k, trust) = trust();
        let env = sign_plan(&plan, &k).unwrap();
        let mut payload = B64.decode(&env.payload).unwrap();
        let i = pos.index(payload.len());
        payload[i] ^= x;
        let tampered = Envelope { payload: B64.encode(&payload), ..env };
        prop_assert!(verify_plan(&tampered.to_json(), &trust, NOW, &Limits::ABSOLUTE).is_err());
    }

    #[test]
    fn any_single_byte_change_to_signature_is_rejected(plan in valid_plan(), i in 0usize..64, x in 1u8..=255) {
        let (k, trust) = trust();
        let mut env = sign_plan(&plan, &k).unwrap();
        let mut sig = B64.decode(&env.signatures[0].sig).unwrap();
        sig[i] ^= x;
        env.signatures[0].sig = B64.encode(&sig);
        prop_assert!(verify_plan(&env.to_json(), &trust, NOW, &Limits::ABSOLUTE).is_err());
    }

    #[test]
    fn any_single_byte_change_to_the_envelope_text_never_verifies_a_different_plan(
        plan in valid_plan(), pos in any::<prop::sample::Index>(), x in 1u8..=255,
    ) {
        let (k, trust) = trust();
        let mut bytes = sign_plan(&plan, &k).unwrap().to_json();
        let i = pos.index(bytes.len());
        bytes[i] ^= x;
        // Some edits keep the meaning (whitespace, base64 padding bits are rejected by the
        // decoder); whatever verifies must be exactly the signed plan.
        if let Ok(v) = verify_plan(&bytes, &trust, NOW, &Limits::ABSOLUTE) {
            prop_assert_eq!(v.plan(), &plan);
        }
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_json(value in json_value()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        if let Ok(p) = Plan::from_json(&bytes) {
            let _ = p.validate(Form::Signed, &Limits::DEFAULT);
            let _ = p.validate(Form::Draft, &Limits::ABSOLUTE);
        }
        if let Ok(a) = Action::from_json(&bytes) {
            let _ = a.validate();
        }
        let _ = Trust::from_json(&bytes);
        let (_, trust) = trust();
        let _ = verify_plan(&bytes, &trust, NOW, &Limits::ABSOLUTE);
    }

    #[test]
    fn parsers_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Plan::from_json(&bytes);
        let _ = Action::from_json(&bytes);
        let _ = Trust::from_json(&bytes);
        let _ = Envelope::from_json(&bytes);
    }

    #[test]
    fn validator_never_panics_on_mutated_valid_plans(plan in valid_plan(), pos in any::<prop::sample::Index>(), x in any::<u8>()) {
        let mut bytes = plan.to_payload();
        let i = pos.index(bytes.len());
        bytes[i] = x;
        if let Ok(p) = Plan::from_json(&bytes) {
            let _ = p.validate(Form::Signed, &Limits::DEFAULT);
        }
    }
}

fn names(
    pool: &'static [&'static str],
) -> impl Strategy<Value = std::collections::BTreeSet<String>> {
    proptest::sample::subsequence(pool, 0..=pool.len())
        .prop_map(|v| v.into_iter().map(str::to_owned).collect())
}

fn some_limits() -> impl Strategy<Value = Limits> {
    (0u64..4, 0u64..4, 0u64..4, 0u64..4, 0u64..4, 0u64..4).prop_map(|(a, b, c, d, e, f)| Limits {
        fuel: a,
        memory_bytes: b,
        timeout_ms: c,
        output_bytes: d,
        pids: e,
        file_bytes: f,
    })
}

proptest! {
    /// What a worker lacks, as people are told it (`unmet_by`), is empty exactly when the
    /// scheduler would give it the job (`met_by`), and names each thing it lacks.
    #[test]
    fn unmet_by_agrees_with_met_by(
        need_wasm in any::<bool>(),
        has_wasm in any::<bool>(),
        need_tools in names(&["grep", "sort", "jq"]),
        has_tools in names(&["grep", "sort", "jq"]),
        need_mounts in names(&["data", "out"]),
        has_mounts in names(&["data", "out"]),
        need in some_limits(),
        ceilings in some_limits(),
    ) {
        use agenix_proto::job::{Capabilities, Requirements};
        let reqs = Requirements {
            wasm: need_wasm,
            tools: need_tools.iter().map(|t| t.parse().unwrap()).collect(),
            mounts: need_mounts.iter().map(|m| m.parse().unwrap()).collect(),
            limits: need,
        };
        let caps = Capabilities {
            name: "w".into(),
            wasm: has_wasm,
            tools: has_tools.iter().map(|t| t.parse().unwrap()).collect(),
            mounts: has_mounts.iter().map(|m| m.parse().unwrap()).collect(),
            ceilings,
            concurrency: 1,
            labels: Default::default(),
        };
        let lacks = reqs.unmet_by(&caps);
        prop_assert_eq!(lacks.is_empty(), reqs.met_by(&caps), "{:?}", lacks);
        for t in need_tools.difference(&has_tools) {
            let expected = format!("no native tool {t}");
            prop_assert!(lacks.contains(&expected), "{:?}", lacks);
        }
    }
}
