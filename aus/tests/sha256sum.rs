//! `sha256sum` against GNU sha256sum on standard input.

mod common;

use common::{check, check_usage_error, run};

const SHA: &str = env!("CARGO_BIN_EXE_au-sha256sum");

#[test]
fn digests_like_gnu() {
    check(SHA, &[], "", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  -\n");
    check(
        SHA,
        &[],
        "abc",
        0,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  -\n",
    );
    check(
        SHA,
        &[],
        "hello\n",
        0,
        "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03  -\n",
    );
}

#[test]
fn binary_and_large_input() {
    let bytes: Vec<u8> = (0..=255u8).collect();
    let r = run(SHA, &[], &bytes);
    assert_eq!(r.out(), "40aff2e9d2d8922e47afd4648e6967497158785fbd1da870e7110266bf944880  -\n");
    let r = run(SHA, &[], &vec![0u8; 1 << 20]);
    assert_eq!(r.out(), "30e14955ebf1352266dc2ff8067e68104607e750abb9d3b36582b8af909fcb58  -\n");
}

#[test]
fn bad_usage() {
    check_usage_error(SHA, "sha256sum", &["-b"], "");
    check_usage_error(SHA, "sha256sum", &["file"], "");
}
