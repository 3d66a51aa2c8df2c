//! End-to-end tests of AGEniX: real `agq`, `agw` and `agx` processes on loopback (see
//! `tests/`). The binaries are the workspace's own, found next to the test executable;
//! `cargo test --workspace` builds them.
