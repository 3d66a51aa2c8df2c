//! Paths of programs built for tests: the purpose-built wasm guests in `host/guests`
//! (`GUEST_*`) and the standard AUs (`AU_*`), compiled for wasm32-wasip2; the AUs in Python
//! and JavaScript (`AU_CSVSTAT`, `AU_RESHAPE`) and the probes in those languages
//! (`PROBE_PY`, `PROBE_JS`, from `host/guests/lang`), built by scripts/build-lang-aus.sh;
//! and the native attack program in `host/attack` (`NATIVE_ATTACK`). Depend on this crate
//! only from tests.

#![allow(missing_docs, reason = "generated constants carry their own docs")]

include!(concat!(env!("OUT_DIR"), "/programs.rs"));

/// The variable that says this kernel must have the native jail: set (to anything but `0`),
/// a test that finds the jail missing fails instead of skipping. `scripts/test.sh` sets it,
/// so CI can never pass with the jail tests silently skipped.
pub const REQUIRE_JAIL: &str = "AGENIX_REQUIRE_JAIL";

/// Called by a test that cannot run because this kernel lacks (part of) the jail, with the
/// reason: prints that it is skipped and why, or, where [`REQUIRE_JAIL`] is set, fails.
#[allow(clippy::print_stderr, reason = "a skipped test says why on the test's stderr")]
pub fn skip_without_jail(test: &str, reason: &str) {
    let required = std::env::var_os(REQUIRE_JAIL).is_some_and(|v| v != "0");
    assert!(!required, "{test}: this kernel must have the jail ({REQUIRE_JAIL} is set): {reason}");
    eprintln!("{test}: skipped: {reason}");
}
