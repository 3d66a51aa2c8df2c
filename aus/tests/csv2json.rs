//! `csv2json`: CSV with a header row to JSON Lines.

mod common;

use common::{check, check_usage_error, run};

const CSV2JSON: &str = env!("CARGO_BIN_EXE_au-csv2json");

#[test]
fn one_object_per_record_in_header_order() {
    check(
        CSV2JSON,
        &[],
        "name,age,city\nann,30,Oslo\nbob,4,\n",
        0,
        "{\"name\":\"ann\",\"age\":\"30\",\"city\":\"Oslo\"}\n{\"name\":\"bob\",\"age\":\"4\",\"city\":\"\"}\n",
    );
    // Ends of line may be CRLF and the last record needs no newline.
    check(
        CSV2JSON,
        &[],
        "z,a\r\n1,2\r\n3,4",
        0,
        "{\"z\":\"1\",\"a\":\"2\"}\n{\"z\":\"3\",\"a\":\"4\"}\n",
    );
}

#[test]
fn quoting_and_escapes() {
    let csv =
        "k,v\n\"a,b\",\"say \"\"hi\"\"\"\n\"multi\nline\",back\\slash\n\u{e9},\"tab\there\"\n";
    let expected = concat!(
        "{\"k\":\"a,b\",\"v\":\"say \\\"hi\\\"\"}\n",
        "{\"k\":\"multi\\nline\",\"v\":\"back\\\\slash\"}\n",
        "{\"k\":\"\u{e9}\",\"v\":\"tab\\there\"}\n",
    );
    let r = check(CSV2JSON, &[], csv, 0, expected);
    for line in r.out().lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
        assert!(v.is_object());
    }
}

#[test]
fn delimiters() {
    check(CSV2JSON, &["-d", ";"], "a;b\n1;2\n", 0, "{\"a\":\"1\",\"b\":\"2\"}\n");
    check(CSV2JSON, &["-d", "\\t"], "a\tb\n1\t2\n", 0, "{\"a\":\"1\",\"b\":\"2\"}\n");
    check(CSV2JSON, &["-d\t"], "a\tb\n1\t2\n", 0, "{\"a\":\"1\",\"b\":\"2\"}\n");
}

#[test]
fn empty_inputs() {
    check(CSV2JSON, &[], "", 0, "");
    check(CSV2JSON, &[], "a,b\n", 0, "");
}

#[test]
fn malformed_csv_names_the_line() {
    let r = run(CSV2JSON, &[], b"a,b\n1,2\n3\n4,5\n");
    assert_eq!(r.code, 2);
    // The records before the bad one were written.
    assert_eq!(r.out(), "{\"a\":\"1\",\"b\":\"2\"}\n");
    assert!(r.stderr.starts_with("csv2json: line 3: "), "{}", r.stderr);
    let r = run(CSV2JSON, &[], b"a,b\n1,\xff\n");
    assert_eq!(r.code, 2);
    assert!(r.stderr.starts_with("csv2json: line 2: "), "{}", r.stderr);
}

#[test]
fn bad_usage() {
    check_usage_error(CSV2JSON, "csv2json", &["-d", ";;"], "");
    check_usage_error(CSV2JSON, "csv2json", &["-d"], "");
}
