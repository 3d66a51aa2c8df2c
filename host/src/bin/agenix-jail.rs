//! The native jail helper as a program of its own, for embedders and tests. The worker and
//! agx embed the same helper and re-execute themselves instead.

#![allow(clippy::print_stderr, reason = "the only message, for a person who ran it by hand")]

fn main() {
    agenix_host::native::jail::run_if_helper();
    eprintln!("agenix-jail: this is the native jail helper; the worker starts it, not people");
    std::process::exit(2);
}
