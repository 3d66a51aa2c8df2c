//! Paths of wasm components built for tests: the purpose-built guests in `host/guests`
//! (`GUEST_*`) and the standard AUs (`AU_*`). The build script compiles them for
//! wasm32-wasip2; depend on this crate only from tests.

#![allow(missing_docs, reason = "generated constants carry their own docs")]

include!(concat!(env!("OUT_DIR"), "/programs.rs"));
