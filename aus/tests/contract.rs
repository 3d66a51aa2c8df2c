//! The AU contract, checked on every AU: `--describe` prints a valid model card, `--help`
//! works, bad usage is exit 2 with a prefixed diagnostic, and a closed stdout is a normal end.

mod common;

use std::process::{Command, Stdio};

use common::{check_usage_error, run};

const AUS: &[(&str, &str)] = &[
    ("grep", env!("CARGO_BIN_EXE_au-grep")),
    ("wc", env!("CARGO_BIN_EXE_au-wc")),
    ("sort", env!("CARGO_BIN_EXE_au-sort")),
    ("uniq", env!("CARGO_BIN_EXE_au-uniq")),
    ("head", env!("CARGO_BIN_EXE_au-head")),
    ("tail", env!("CARGO_BIN_EXE_au-tail")),
    ("cut", env!("CARGO_BIN_EXE_au-cut")),
    ("jq", env!("CARGO_BIN_EXE_au-jq")),
    ("csv2json", env!("CARGO_BIN_EXE_au-csv2json")),
    ("sha256sum", env!("CARGO_BIN_EXE_au-sha256sum")),
];

#[test]
fn describe_prints_the_model_card() {
    for &(name, bin) in AUS {
        let r = run(bin, &["--describe"], b"");
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        assert!(r.stderr.is_empty(), "{name}: {}", r.stderr);
        let text = r.out();
        assert_eq!(text.matches('\n').count(), 1, "{name}: one line of JSON");
        let card: serde_json::Value = serde_json::from_str(&text).expect("card is JSON");
        // Exactly the schema's fields, schema and name first.
        let prefix = format!("{{\"schema\":\"agenix.au.card/v1\",\"name\":\"{name}\",");
        assert!(text.starts_with(&prefix), "{name}: {text}");
        let mut keys: Vec<&str> =
            card.as_object().expect("an object").keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "args",
                "capabilities",
                "description",
                "exit_codes",
                "inputs",
                "mounts",
                "name",
                "outputs",
                "schema",
                "usage",
                "version"
            ],
            "{name}"
        );
        assert_eq!(card["schema"], "agenix.au.card/v1");
        assert_eq!(card["name"], name);
        assert_eq!(card["version"], env!("CARGO_PKG_VERSION"));
        assert!(card["description"].as_str().is_some_and(|d| !d.is_empty()), "{name}");
        assert_eq!(card["capabilities"], serde_json::json!(["stdin", "stdout"]), "{name}");
        for media in ["inputs", "outputs"] {
            let types = card[media].as_array().expect("media types");
            assert!(!types.is_empty(), "{name} {media}");
            assert!(types.iter().all(|t| t.as_str().is_some_and(|t| t.contains('/'))));
        }
        for arg in card["args"].as_array().expect("args") {
            assert!(arg["flag"].as_str().is_some_and(|f| !f.is_empty()), "{name}: {arg}");
            assert!(arg["description"].as_str().is_some_and(|d| !d.is_empty()), "{name}: {arg}");
        }
        assert!(card["usage"].as_str().is_some_and(|u| u.starts_with(name)), "{name}");
        let codes = card["exit_codes"].as_object().expect("exit codes");
        for code in ["0", "2"] {
            assert!(codes.contains_key(code), "{name} documents exit {code}");
        }
        assert_eq!(card["mounts"], serde_json::json!([]), "{name}");
    }
}

#[test]
fn describe_is_honoured_among_other_flags() {
    let r = run(env!("CARGO_BIN_EXE_au-wc"), &["-l", "--describe"], b"");
    assert_eq!(r.code, 0);
    let card: serde_json::Value = serde_json::from_slice(&r.stdout).expect("card is JSON");
    assert_eq!(card["name"], "wc");
}

#[test]
fn help_prints_usage() {
    for &(name, bin) in AUS {
        let r = run(bin, &["--help"], b"");
        assert_eq!(r.code, 0, "{name}: {}", r.stderr);
        assert!(r.out().contains(&format!("usage: {name}")), "{name}: {}", r.out());
    }
}

#[test]
fn unknown_flags_are_usage_errors() {
    for &(name, bin) in AUS {
        let r = check_usage_error(bin, name, &["-Z", "x"], "");
        assert!(r.stderr.contains("usage: "), "{name}: {}", r.stderr);
        check_usage_error(bin, name, &["--no-such-flag"], "");
    }
}

#[test]
fn file_operands_are_refused() {
    // AUs read stdin only; a second operand (the first is grep's pattern, jq's filter).
    for &(name, bin) in AUS {
        let args: &[&str] = if matches!(name, "grep" | "jq") { &[".", "file"] } else { &["file"] };
        let args = if name == "cut" { [&["-f1"], args].concat() } else { args.to_vec() };
        let r = check_usage_error(bin, name, &args, "");
        assert!(r.stderr.contains("standard input"), "{name}: {}", r.stderr);
    }
}

/// An AU whose stdout is closed before it writes ends quietly with its normal status.
#[test]
fn closed_stdout_is_a_normal_end() {
    let input: Vec<u8> = (0..200_000).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
    let cases: &[(&str, &str, &[&str], i32)] = &[
        ("grep", env!("CARGO_BIN_EXE_au-grep"), &["line"], 0),
        ("sort", env!("CARGO_BIN_EXE_au-sort"), &[], 0),
        ("uniq", env!("CARGO_BIN_EXE_au-uniq"), &[], 0),
        ("cut", env!("CARGO_BIN_EXE_au-cut"), &["-c", "1-3"], 0),
        ("tail", env!("CARGO_BIN_EXE_au-tail"), &["-n", "+1"], 0),
        ("head", env!("CARGO_BIN_EXE_au-head"), &["-n", "100000"], 0),
    ];
    for &(name, bin, args, code) in cases {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        drop(child.stdout.take());
        let mut stdin = child.stdin.take().expect("stdin");
        let data = input.clone();
        let feeder = std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut stdin, &data);
        });
        let output = child.wait_with_output().expect("wait");
        feeder.join().expect("feeder");
        assert_eq!(output.status.code(), Some(code), "{name}");
        assert!(output.stderr.is_empty(), "{name}: {}", String::from_utf8_lossy(&output.stderr));
    }
}
