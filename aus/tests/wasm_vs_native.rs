//! Every AU, built natively and as a component, on the same inputs: stdout and exit code
//! must be identical. The component runs in the real sandbox (host::wasm).

#![allow(clippy::unwrap_used, reason = "a test fails loudly on any unexpected error")]

mod common;

use agenix_host::wasm::{Allocator, Metering, WasmConfig, WasmHost};
use agenix_host::{Finished, WasmTask};
use agenix_proto::{Digest, Limits, Outcome};
use agenix_test_programs as programs;
use bytes::Bytes;

fn binary_input() -> Vec<u8> {
    let mut v: Vec<u8> = (0..=255u8).collect();
    v.extend_from_slice(b"\nline two\r\n\xff\xfe error\n\n");
    v
}

const LOG: &str = "b ERROR x\na info\nc error y\nb ERROR x\n\nd warn\n";
const CSV: &str = "id,name,amount\n1,\"a, b\",3.5\n2,c,\"10\"\n";
const JSON: &str = "{\"a\":1,\"b\":[1,2]}\n{\"a\":2,\"b\":[]}\n";

fn cases() -> Vec<(&'static str, &'static str, Vec<&'static str>, Vec<u8>)> {
    let log = LOG.as_bytes().to_vec();
    vec![
        ("grep", programs::AU_GREP, vec!["-i", "error"], log.clone()),
        ("grep", programs::AU_GREP, vec!["-c", "-v", "x"], log.clone()),
        ("grep", programs::AU_GREP, vec!["-n", "-o", "[a-d] [A-Z]+"], log.clone()),
        ("grep", programs::AU_GREP, vec!["absent"], log.clone()),
        ("grep", programs::AU_GREP, vec!["("], log.clone()),
        ("grep", programs::AU_GREP, vec!["error"], binary_input()),
        ("wc", programs::AU_WC, vec![], log.clone()),
        ("wc", programs::AU_WC, vec!["-c", "-l"], binary_input()),
        ("sort", programs::AU_SORT, vec![], log.clone()),
        ("sort", programs::AU_SORT, vec!["-r", "-u"], log.clone()),
        ("sort", programs::AU_SORT, vec!["-n", "-k", "2"], b"x 10\ny 9\nz 100\n".to_vec()),
        ("sort", programs::AU_SORT, vec![], binary_input()),
        ("uniq", programs::AU_UNIQ, vec!["-c"], b"a\na\nb\na\n".to_vec()),
        ("head", programs::AU_HEAD, vec!["-n", "2"], log.clone()),
        ("head", programs::AU_HEAD, vec!["-c", "300"], binary_input()),
        ("tail", programs::AU_TAIL, vec!["-n", "+3"], log.clone()),
        ("tail", programs::AU_TAIL, vec!["-c", "7"], binary_input()),
        ("cut", programs::AU_CUT, vec!["-d", " ", "-f", "2-"], log.clone()),
        ("cut", programs::AU_CUT, vec!["-f", "0"], log.clone()),
        ("jq", programs::AU_JQ, vec!["-c", ".b | length"], JSON.as_bytes().to_vec()),
        ("jq", programs::AU_JQ, vec!["-s", "map(.a) | add"], JSON.as_bytes().to_vec()),
        ("jq", programs::AU_JQ, vec!["error(\"boom\")"], b"1\n".to_vec()),
        ("jq", programs::AU_JQ, vec!["."], b"{not json".to_vec()),
        ("csv2json", programs::AU_CSV2JSON, vec![], CSV.as_bytes().to_vec()),
        ("csv2json", programs::AU_CSV2JSON, vec![], b"a,b\n1,2,3\n".to_vec()),
        ("sha256sum", programs::AU_SHA256SUM, vec![], binary_input()),
        ("sha256sum", programs::AU_SHA256SUM, vec!["--bogus"], vec![]),
    ]
}

fn native(name: &str) -> &'static str {
    match name {
        "grep" => env!("CARGO_BIN_EXE_au-grep"),
        "wc" => env!("CARGO_BIN_EXE_au-wc"),
        "sort" => env!("CARGO_BIN_EXE_au-sort"),
        "uniq" => env!("CARGO_BIN_EXE_au-uniq"),
        "head" => env!("CARGO_BIN_EXE_au-head"),
        "tail" => env!("CARGO_BIN_EXE_au-tail"),
        "cut" => env!("CARGO_BIN_EXE_au-cut"),
        "jq" => env!("CARGO_BIN_EXE_au-jq"),
        "csv2json" => env!("CARGO_BIN_EXE_au-csv2json"),
        "sha256sum" => env!("CARGO_BIN_EXE_au-sha256sum"),
        other => panic!("no native build of {other}"),
    }
}

fn host(scratch: &std::path::Path) -> WasmHost {
    WasmHost::new(WasmConfig {
        ceilings: Limits::ABSOLUTE,
        max_concurrent: 4,
        cache_dir: None,
        scratch_dir: scratch.to_path_buf(),
        allocator: Allocator::Auto,
    })
    .unwrap()
}

/// Runs `wasm` in the sandbox, metered, with 256 MiB of memory.
async fn run_wasm(
    host: &WasmHost,
    name: &str,
    wasm: &str,
    args: &[&str],
    input: &[u8],
) -> Finished {
    run_wasm_in(host, name, wasm, args, input, 256 << 20).await
}

/// Runs `wasm` in the sandbox, metered, with `memory` bytes of memory.
async fn run_wasm_in(
    host: &WasmHost,
    name: &str,
    wasm: &str,
    args: &[&str],
    input: &[u8],
    memory: u64,
) -> Finished {
    let bytes = std::fs::read(wasm).unwrap();
    let prepared =
        host.prepare(Digest::of(&bytes), Metering::Fuel, || async { Ok(bytes) }).await.unwrap();
    let task = WasmTask {
        program: name.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        stdin: Bytes::from(input.to_vec()),
        grants: vec![],
        limits: Limits { memory_bytes: memory, output_bytes: 64 << 20, ..Limits::DEFAULT },
        scratch: true,
    };
    host.run(&prepared, task).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_and_native_builds_agree() {
    let scratch = tempfile::tempdir().unwrap();
    let host = host(scratch.path());
    let mut codes = std::collections::BTreeSet::new();
    for (name, wasm, args, input) in cases() {
        let w = run_wasm(&host, name, wasm, &args, &input).await;
        let n = common::run(native(name), &args, &input);
        let Outcome::Exited { code } = w.outcome else {
            panic!("{name} {args:?}: {:?}", w.outcome)
        };
        assert_eq!(
            code,
            n.code,
            "{name} {args:?}: exit codes differ; wasm stderr {:?}",
            String::from_utf8_lossy(&w.stderr)
        );
        assert_eq!(&w.stdout[..], &n.stdout[..], "{name} {args:?}: stdout differs");
        codes.insert(code);
    }
    // The cases reach success, failure, bad input and an AU-specific code on wasm.
    assert!(codes.is_superset(&[0, 1, 2, 5].into()), "{codes:?}");
}

/// `n / 4` lines of 30 random `a`s and `b`s: patterns over them make the lazy DFA give up.
fn ab_lines(n: usize) -> Vec<u8> {
    let mut r = common::Rng(0x2545_f491_4f6c_dd1d);
    let mut text = Vec::new();
    for _ in 0..n / 4 {
        text.extend((0..30).map(|_| if r.below(2) == 0 { b'a' } else { b'b' }));
        text.push(b'\n');
    }
    text
}

/// An AU, its arguments, and its input of size `n`.
type Scaled = (&'static str, &'static str, &'static [&'static str], fn(usize) -> Vec<u8>);

/// The fuel an AU burns grows in step with its input where its work does: eight times the
/// input costs about eight times the fuel, not sixty-four (fuel counts work exactly, so this
/// is no timing). grep's block search once rescanned the rest of a block for each line a
/// pattern able to match a newline started in, and, where its lazy DFA gave up (a Unicode
/// word boundary past ASCII, too many states), cleared memory for the rest of the block on
/// every search; and `-w` checked the rest of a line for valid UTF-8 at each place it tried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_grows_in_step_with_the_input() {
    let scratch = tempfile::tempdir().unwrap();
    let host = host(scratch.path());
    let cases: [Scaled; 8] = [
        ("grep", programs::AU_GREP, &["-c", "<[^>]*>"], |n| {
            ["if (a < b) x();\n".repeat(n), "ok >\n".into()].concat().into_bytes()
        }),
        ("grep", programs::AU_GREP, &["-c", "a[^x]*b"], |n| {
            ["a\n".repeat(n * 8), "b\n".into()].concat().into_bytes()
        }),
        ("grep", programs::AU_GREP, &["-vn", r"\s+\S"], |n| " \n".repeat(n * 8).into_bytes()),
        ("grep", programs::AU_GREP, &["-c", r"\b\u{e9}"], |n| "\u{e9}\n".repeat(n).into_bytes()),
        ("grep", programs::AU_GREP, &["-c", "a[ab]{14}$"], ab_lines),
        ("grep", programs::AU_GREP, &["-c", "a[ab]{14}b"], ab_lines),
        ("grep", programs::AU_GREP, &["-w", "-c", "a"], |n| {
            ["a".repeat(n * 8), "\n".into()].concat().into_bytes()
        }),
        ("wc", programs::AU_WC, &[], |n| "\u{4e2d}\u{6587} a\u{e9}\n".repeat(n * 2).into_bytes()),
    ];
    for (name, wasm, args, input) in cases {
        let mut fuel = vec![];
        for n in [4_000, 32_000] {
            let w = run_wasm(&host, name, wasm, args, &input(n)).await;
            assert!(
                matches!(w.outcome, Outcome::Exited { .. }),
                "{name} {args:?}: {:?}",
                w.outcome
            );
            fuel.push(w.fuel_consumed.unwrap());
        }
        assert!(fuel[1] < 16 * fuel[0], "{name} {args:?}: fuel {fuel:?} for inputs 1 : 8");
    }
}

/// What an AU holds grows with what it must: sort, 6 million short lines (18 MB) in 144 MiB
/// (each line's record is 16 bytes, the input held once, no buffer doubling); jq, one array
/// holding 30 MiB of white space in 32 MiB (past 4 MiB its text is read as a stream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_grows_only_as_the_work_needs() {
    let scratch = tempfile::tempdir().unwrap();
    let host = host(scratch.path());
    let lines = b"ab\n".repeat(6_000_000);
    let w = run_wasm_in(&host, "sort", programs::AU_SORT, &["-u"], &lines, 144 << 20).await;
    assert_eq!(w.outcome, Outcome::Exited { code: 0 }, "sort: peak {} bytes", w.peak_memory);
    assert_eq!(&w.stdout[..], b"ab\n");
    let spaces = [&b"["[..], &vec![b' '; 30 << 20], b"1]"].concat();
    let w = run_wasm_in(&host, "jq", programs::AU_JQ, &["-c", "."], &spaces, 32 << 20).await;
    assert_eq!(w.outcome, Outcome::Exited { code: 0 }, "jq: peak {} bytes", w.peak_memory);
    assert_eq!(&w.stdout[..], b"[1]\n");
}

/// `grep -i` where a literal starts every match (grep then folds the text and searches it
/// for the literal) or a case variant past ASCII (the Kelvin sign, the long s) stops it from
/// doing so: the component and the native build select, number and print the same lines, in
/// text where the literal, its near misses and those variants come often.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grep_ignoring_case_agrees_on_wasm_and_native() {
    let scratch = tempfile::tempdir().unwrap();
    let host = host(scratch.path());
    const BYTES: &[&str] =
        &["e", "E", "r", "R", "o", "k", "K", "\u{212a}", "\u{17f}", "s", " ", "\n"];
    let mut r = common::Rng(0x9e37_79b9_7f4a_7c15);
    let text: Vec<u8> = (0..400_000).flat_map(|_| BYTES[r.below(BYTES.len())].bytes()).collect();
    let patterns = ["err", "error", "rror$", r"\berr", "(?-i:E)rr", "rk+s", "errs", "sk", "ERRo"];
    for pattern in patterns {
        for flags in [&["-n"][..], &["-v", "-c"], &["-o", "-n"], &["-w", "-n"], &["-x"]] {
            let args = [&["-i", "-e", pattern][..], flags].concat();
            let w = run_wasm(&host, "grep", programs::AU_GREP, &args, &text).await;
            let n = common::run(native("grep"), &args, &text);
            assert_eq!(w.outcome, Outcome::Exited { code: n.code }, "grep {args:?}");
            assert!(w.stdout[..] == n.stdout[..], "grep {args:?}: stdout differs");
        }
    }
}
