//! `sort` against GNU sort in the C locale (LC_ALL=C).

mod common;

use common::{Rng, check, check_usage_error, run};

const SORT: &str = env!("CARGO_BIN_EXE_au-sort");

#[test]
fn byte_order_by_default() {
    check(SORT, &[], "b\nB\na\n_\n10\n9\n", 0, "10\n9\nB\n_\na\nb\n");
    check(SORT, &["-r"], "b\nB\na\n", 0, "b\na\nB\n");
    // A last line without a newline gets one; empty lines sort first.
    check(SORT, &[], "b\n\na", 0, "\na\nb\n");
    check(SORT, &[], "", 0, "");
    let r = run(SORT, &[], b"\xff\na\n\x00\n");
    assert_eq!(r.stdout, b"\x00\na\n\xff\n");
}

#[test]
fn numeric() {
    // Non-numbers count as 0; ties fall back to byte order of the whole line.
    check(SORT, &["-n"], "10\n9\n-1\n1.5\nabc\n\n", 0, "-1\n\nabc\n1.5\n9\n10\n");
    check(
        SORT,
        &["-n"],
        "  5\n007\n-0\n0.50\n0.5\n-2.5\n-10\n",
        0,
        "-10\n-2.5\n-0\n0.5\n0.50\n  5\n007\n",
    );
    check(SORT, &["-nr"], "1\n3\n2\n", 0, "3\n2\n1\n");
    check(SORT, &["-n"], "1b\n1a\n2\n", 0, "1a\n1b\n2\n");
    check(SORT, &["-ns"], "1b\n1a\n2\n", 0, "1b\n1a\n2\n");
    check(
        SORT,
        &["-n"],
        "123456789012345678901234567890\n99\n",
        0,
        "99\n123456789012345678901234567890\n",
    );
}

#[test]
fn unique() {
    check(SORT, &["-u"], "b\na\nb\na\n", 0, "a\nb\n");
    // With -n, lines with equal numbers are duplicates: the first one read is kept.
    check(SORT, &["-nu"], "1b\n1a\n2\n", 0, "1b\n2\n");
    check(SORT, &["-ru"], "a\nc\nb\nc\n", 0, "c\nb\na\n");
}

#[test]
fn keys_and_separators() {
    check(SORT, &["-t", ",", "-k", "2,2n"], "b,2\na,10\nc,1\n", 0, "c,1\nb,2\na,10\n");
    check(SORT, &["-t:", "-k2"], "b:2\na:10\nc:1\n", 0, "c:1\na:10\nb:2\n");
    check(SORT, &["-t:", "-k2", "-r"], "b:2\na:10\nc:1\n", 0, "b:2\na:10\nc:1\n");
    check(SORT, &["-k2,2nr", "-k1,1"], "b 1\na 1\nc 2\n", 0, "c 2\na 1\nb 1\n");
    // Without -t a field keeps its leading blanks, so "  b" sorts before " a" ...
    check(SORT, &["-k2"], "x  b\ny a\n", 0, "x  b\ny a\n");
    // ... unless -b skips them.
    check(SORT, &["-b", "-k2"], "x  b\ny a\n", 0, "y a\nx  b\n");
    check(SORT, &["-k2b"], "x  b\ny a\n", 0, "y a\nx  b\n");
    // Character positions count from the field's start, blanks included.
    check(SORT, &["-k2.2"], "a yb\nb xa\n", 0, "b xa\na yb\n");
    check(SORT, &["-t,", "-k1.2,1.2"], "ab,1\nba,2\naa,3\n", 0, "aa,3\nba,2\nab,1\n");
    // A missing field is an empty key.
    check(SORT, &["-t,", "-k3"], "b,1,z\na,2\n", 0, "a,2\nb,1,z\n");
}

#[test]
fn stable_and_last_resort() {
    check(SORT, &["-k2,2"], "b 1\na 1\n", 0, "a 1\nb 1\n");
    check(SORT, &["-s", "-k2,2"], "b 1\na 1\n", 0, "b 1\na 1\n");
    check(SORT, &["-s", "-k2,2", "-r"], "b 1\na 1\nc 2\n", 0, "c 2\nb 1\na 1\n");
}

#[test]
fn bad_usage() {
    check_usage_error(SORT, "sort", &["-k", "0"], "");
    check_usage_error(SORT, "sort", &["-k", "x"], "");
    check_usage_error(SORT, "sort", &["-k", "1,0"], "");
    check_usage_error(SORT, "sort", &["-k", "1.0"], "");
    check_usage_error(SORT, "sort", &["-k", "1q"], "");
    check_usage_error(SORT, "sort", &["-t", "ab"], "");
    check_usage_error(SORT, "sort", &["-k"], "");
}

/// Lines sharing prefixes of every length around the 8 bytes sort compares at once, lines
/// that are prefixes of others, NUL and bytes above 0x7f, repeats, and one line longer than
/// the pieces sort reads its input in.
fn byte_lines(seed: u64) -> Vec<Vec<u8>> {
    const PREFIXES: &[&[u8]] =
        &[b"", b"2026-11-25T", b"abcdefg", b"abcdefgh", b"abcdefghi", b"abcdefghabcdefgh"];
    const BYTES: &[u8] = b"\x00\x01ab \x7f\x80\xff";
    let mut r = Rng(seed);
    let mut lines: Vec<Vec<u8>> = (0..40_000)
        .map(|_| {
            let mut line = PREFIXES[r.below(PREFIXES.len())].to_vec();
            line.extend((0..r.below(20)).map(|_| BYTES[r.below(BYTES.len())]));
            line
        })
        .collect();
    // First, where the pieces are smallest.
    lines.insert(1, vec![b'a'; 200 << 10]);
    lines
}

/// Sorting by bytes, 8 at a time, agrees with comparing whole lines, at every option that
/// takes that path; with and without a newline at the end.
#[test]
fn byte_order_agrees_with_whole_line_comparison() {
    let lines = byte_lines(0x2545_f491_4f6c_dd1d);
    let mut sorted = lines.clone();
    sorted.sort();
    let mut unique = sorted.clone();
    unique.dedup();
    let join = |lines: &mut dyn Iterator<Item = &Vec<u8>>| {
        lines.flat_map(|l| [l.as_slice(), b"\n"].concat()).collect::<Vec<u8>>()
    };
    let input = join(&mut lines.iter());
    for args in [&[][..], &["-r"], &["-u"], &["-ru"], &["-s"], &["-k1"], &["-k", "1r"]] {
        let reverse = args.contains(&"-r") || args.contains(&"-ru") || args == ["-k", "1r"];
        let chosen = if args.contains(&"-u") || args.contains(&"-ru") { &unique } else { &sorted };
        let expected =
            if reverse { join(&mut chosen.iter().rev()) } else { join(&mut chosen.iter()) };
        for input in [&input[..], &input[..input.len() - 1]] {
            let r = run(SORT, args, input);
            assert_eq!(r.code, 0, "sort {args:?}: {}", r.stderr);
            assert!(r.stdout == expected, "sort {args:?} put lines in another order");
        }
    }
}
