//! `jq` (jaq) against jq's behaviour.

mod common;

use common::{check, check_usage_error, run};

const JQ: &str = env!("CARGO_BIN_EXE_au-jq");

#[test]
fn pretty_prints_by_default() {
    check(
        JQ,
        &["."],
        r#"{"a":[1,2],"b":"x","c":{},"d":[],"e":null}"#,
        0,
        "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"b\": \"x\",\n  \"c\": {},\n  \"d\": [],\n  \"e\": null\n}\n",
    );
    // No filter means '.'.
    check(JQ, &["-c"], "[1, 2]", 0, "[1,2]\n");
}

#[test]
fn compact_raw_join() {
    check(JQ, &["-c", ".a"], r#"{"a":{"b":[true,false]}}"#, 0, "{\"b\":[true,false]}\n");
    check(JQ, &["-r", ".[]"], r#"["x","y\nz",1,null]"#, 0, "x\ny\nz\n1\nnull\n");
    check(JQ, &[".[]"], r#"["x"]"#, 0, "\"x\"\n");
    check(JQ, &["-j", ".[]"], r#"["a","b",1]"#, 0, "ab1");
    check(
        JQ,
        &["-S", "-c", "."],
        r#"{"b":1,"a":{"d":1,"c":2}}"#,
        0,
        "{\"a\":{\"c\":2,\"d\":1},\"b\":1}\n",
    );
    check(JQ, &["-c", "."], "\"\\u00e9\\u0001\\t\"", 0, "\"\u{e9}\\u0001\\t\"\n");
}

#[test]
fn streams_slurp_and_null_input() {
    check(JQ, &["-c", ". * 2"], "1 2\n3", 0, "2\n4\n6\n");
    check(JQ, &["-c", "-s", "."], "1 [2] {\"a\":3}", 0, "[1,[2],{\"a\":3}]\n");
    check(JQ, &["-s", "-c", "."], "", 0, "[]\n");
    check(JQ, &["-n", "-c", "[1, 2] | add"], "", 0, "3\n");
    check(JQ, &["-n", "-c", "[inputs]"], "1 2 3", 0, "[1,2,3]\n");
    check(JQ, &["-c", "[., input]"], "1 2 3 4", 0, "[1,2]\n[3,4]\n");
    check(JQ, &["."], "", 0, "");
}

#[test]
fn the_standard_library_is_there() {
    let doc = r#"{"items":[{"n":"b","v":2},{"n":"a","v":1},{"n":"c","v":3}]}"#;
    check(JQ, &["-c", ".items | sort_by(.n) | map(.v)"], doc, 0, "[1,2,3]\n");
    check(JQ, &["-r", ".items[] | select(.v > 1) | .n"], doc, 0, "b\nc\n");
    check(JQ, &["-c", "[.items[].v] | add, length, max"], doc, 0, "6\n3\n3\n");
    check(JQ, &["-c", ".items | map({(.n): .v}) | add | keys"], doc, 0, "[\"a\",\"b\",\"c\"]\n");
    check(JQ, &["-r", "\"x\\(.a)y\" , (.b | @base64)"], r#"{"a":1,"b":"hi"}"#, 0, "x1y\naGk=\n");
    check(
        JQ,
        &["-c", "test(\"b+\"), ascii_upcase, (split(\",\"))"],
        "\"ab,bc\"",
        0,
        "true\n\"AB,BC\"\n[\"ab\",\"bc\"]\n",
    );
    check(JQ, &["-c", "floor, sqrt"], "16.5", 0, "16\n4.06201920231798\n");
    check(JQ, &["-c", "to_entries"], r#"{"a":1}"#, 0, "[{\"key\":\"a\",\"value\":1}]\n");
}

#[test]
fn variables() {
    check(JQ, &["-c", "--arg", "x", "y", "{x: $x}"], "null", 0, "{\"x\":\"y\"}\n");
    check(JQ, &["-c", "--argjson", "n", "{\"k\":[1]}", "$n.k"], "null", 0, "[1]\n");
    check(JQ, &["-r", "$ENV | type"], "null", 0, "object\n");
    check_usage_error(JQ, "jq", &["--argjson", "n", "{bad", "."], "null");
    check_usage_error(JQ, "jq", &["--arg", "x"], "null");
}

#[test]
fn runtime_errors_are_exit_5_and_later_inputs_still_run() {
    let r = check(JQ, &[".a"], "{\"a\":1} 2 {\"a\":3}", 5, "1\n3\n");
    assert!(r.stderr.starts_with("jq: error: cannot index 2"), "{}", r.stderr);
    let r = check(JQ, &["error(\"boom\")"], "1", 5, "");
    assert_eq!(r.stderr, "jq: error: boom\n");
    let r = check(JQ, &["error({a: 1})"], "1", 5, "");
    assert_eq!(r.stderr, "jq: error (not a string): {\"a\":1}\n");
    // Outputs before the error in the same input are kept.
    check(JQ, &["-c", ".[] | . + 1"], "[1, \"x\", 2]", 5, "2\n");
}

#[test]
fn halt_sets_the_exit_code() {
    check(JQ, &["halt"], "1", 0, "");
    let r = check(JQ, &["halt_error(7)"], "\"bye\\n\"", 7, "");
    assert_eq!(r.stderr, "bye\n");
    check(JQ, &["if . == 2 then halt_error(3) else . end"], "1 2 3", 3, "1\n");
}

#[test]
fn bad_filters_and_bad_json_are_exit_2() {
    let r = check_usage_error(JQ, "jq", &[".a |"], "{}");
    assert!(r.stderr.contains("cannot compile"), "{}", r.stderr);
    let r = check_usage_error(JQ, "jq", &["nosuchfn"], "{}");
    assert!(r.stderr.contains("undefined filter nosuchfn/0"), "{}", r.stderr);
    check_usage_error(JQ, "jq", &["{"], "{}");
    // The values before the bad one were written.
    let r = run(JQ, &["-c", "."], b"1 [2] {");
    assert_eq!((r.code, r.out().as_str()), (2, "1\n[2]\n"));
    assert!(r.stderr.starts_with("jq: error: cannot parse input"), "{}", r.stderr);
    let r = run(JQ, &["-s", "."], b"1 }");
    assert_eq!((r.code, r.out().as_str()), (2, ""));
}

#[test]
fn deeply_nested_input_is_refused_not_a_crash() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let r = run(JQ, &["-c", "length"], deep.as_bytes());
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("depth limit"), "{}", r.stderr);
    let ok = format!("{}{}", "[".repeat(512), "]".repeat(512));
    check(JQ, &["-c", "length"], &ok, 0, "1\n");
    // Brackets inside strings and comments do not count.
    check(
        JQ,
        &["-c", "."],
        &format!("\"{}\" # {}\n[1]", "[".repeat(600), "{".repeat(600)),
        0,
        &format!("\"{}\"\n[1]\n", "[".repeat(600)),
    );
    let deep_arg = format!("{}{}", "[".repeat(600), "]".repeat(600));
    check_usage_error(JQ, "jq", &["-n", "--argjson", "x", &deep_arg, "$x"], "");
}

/// Arrays and objects are cut out of the stream and parsed from memory, wherever reads split
/// them (one is larger than a read); a top-level scalar or comment hands the rest of the stream
/// to the byte-at-a-time reader, and values after it come out the same.
#[test]
fn values_across_reads_and_after_a_scalar() {
    let mut values = Vec::new();
    for i in 0..30_000 {
        values.push(match i % 5 {
            0 => format!(r#"{{"n":{i},"s":"]}}\\\"{{[","t":[1,{{"u":null}}]}}"#),
            1 => format!(r#"[{i},"\"]",{{}},[]]"#),
            2 => format!("{{\n  \"pretty\": [\n    {i}\n  ]\n}}"),
            3 => format!(r#"{{"big":"{}"}}"#, "x".repeat(if i == 3 { 600_000 } else { 10 })),
            _ => format!(r#"{{"n":{i}}}"#),
        });
    }
    let compact = |v: &str| v.replace(['\n', ' '], "");
    let expected: String = values.iter().map(|v| compact(v) + "\n").collect();
    let r = run(JQ, &["-c", "."], values.join(" ").as_bytes());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.out() == expected, "jq -c . changed the values");
    for between in ["7", "# a comment\n", "\"s\"", "true"] {
        let mid = values.len() / 2;
        let input =
            format!("{}\n{between}\n{}", values[..mid].join("\n"), values[mid..].join("\n"));
        let r = run(JQ, &["-c", "."], input.as_bytes());
        let shown = if between.starts_with('#') { String::new() } else { format!("{between}\n") };
        let mut expected = values[..mid].iter().map(|v| compact(v) + "\n").collect::<String>();
        expected += &shown;
        expected.extend(values[mid..].iter().map(|v| compact(v) + "\n"));
        assert_eq!(r.code, 0, "{between:?}: {}", r.stderr);
        assert!(r.out() == expected, "jq -c . with {between:?} in the middle");
    }
    // A value cut off by the end of the stream is bad input, after the values before it.
    let r = run(JQ, &["-c", "."], format!("{} {{\"a\":[1,", values[0]).as_bytes());
    assert_eq!((r.code, r.out()), (2, compact(&values[0]) + "\n"), "{}", r.stderr);
    assert!(r.stderr.starts_with("jq: error: cannot parse input"), "{}", r.stderr);
}

/// After a value that is not valid JSON, `input` fails as jaq's own reader fails, not by
/// skipping to the next value.
#[test]
fn input_after_bad_json_fails_as_before() {
    let r = run(JQ, &["-c", "-n", "[range(4) | try input catch \"E\"]"], b"[1,] [2] [3]");
    assert_eq!((r.code, r.out().as_str()), (0, "[\"E\",\"E\",\"E\",\"E\"]\n"), "{}", r.stderr);
    let r = run(JQ, &["-c", "-n", "try input catch \"E\", input"], b"[1,] [2]");
    assert_eq!((r.code, r.out().as_str()), (5, "\"E\"\n"), "{}", r.stderr);
}
