//! Fuzz target `plan`: see [`agenix_fuzz::targets::plan`].

#![no_main]

use agenix_fuzz::alloc::{self, Capped};
use agenix_fuzz::targets;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: Capped = Capped;

fuzz_target!(
    init: {
        alloc::set_limit(targets::LIMIT_PLAN);
        targets::warm_up();
    },
    |data: &[u8]| {
        alloc::measure(data.len(), || targets::plan(data));
    }
);
