//! Paths of programs built for tests: the purpose-built wasm guests in `host/guests`
//! (`GUEST_*`) and the standard AUs (`AU_*`), compiled for wasm32-wasip2, and the native
//! attack program in `host/attack` (`NATIVE_ATTACK`). Depend on this crate only from tests.

#![allow(missing_docs, reason = "generated constants carry their own docs")]

include!(concat!(env!("OUT_DIR"), "/programs.rs"));
