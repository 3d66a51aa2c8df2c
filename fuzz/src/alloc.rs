//! A counting global allocator that fails the run on any single allocation over a limit.
//!
//! Every fuzz target installs [`Capped`] and sets a [`Limit`] from its format's cap. While an
//! input runs (inside [`measure`]), one allocation may be at most
//! `min(absolute, fixed + per_byte × input length)`: proportional to what was read, so a
//! decoder that trusts a length or count from its input fails even on a tiny input, and never
//! more than the absolute limit, however large the input. Over the limit the allocator prints
//! the size and a backtrace and aborts, and libFuzzer saves the input (in tests,
//! [`set_abort`]`(false)` records it in the [`Cost`] instead).
//!
//! [`measure`] also records, per input, the largest single allocation and the most bytes live
//! at once; the totals are printed when the process exits (and appended to the file named by
//! `AGENIX_FUZZ_ALLOC_LOG`), so every run reports its real peaks next to the limit.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::Once;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicUsize};

/// The system allocator, counted and capped.
#[derive(Debug)]
pub struct Capped;

/// How large one allocation may be while an input of `n` bytes runs:
/// `min(absolute, fixed + per_byte × n)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Allowed whatever the input's length (a buffer reserved for a declared length up to
    /// the format's cap, fixed-size tables).
    pub fixed: usize,
    /// Allowed per input byte (what parsing into typed values may expand a byte into).
    pub per_byte: usize,
    /// Never more than this.
    pub absolute: usize,
}

impl Limit {
    /// No limit at all.
    pub const NONE: Self = Self { fixed: usize::MAX, per_byte: 0, absolute: usize::MAX };

    /// The largest allocation allowed for an input of `len` bytes.
    pub fn allowed(&self, len: usize) -> usize {
        self.fixed.saturating_add(self.per_byte.saturating_mul(len)).min(self.absolute)
    }
}

static FIXED: AtomicUsize = AtomicUsize::new(usize::MAX);
static PER_BYTE: AtomicUsize = AtomicUsize::new(0);
static ABSOLUTE: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Largest single allocation allowed now: for the input running, else the absolute limit.
static ALLOWED: AtomicUsize = AtomicUsize::new(usize::MAX);
/// Abort on an allocation over the limit (else record it in `OVER`).
static ABORT: AtomicBool = AtomicBool::new(true);
/// Largest allocation over the limit since the current input began (0: none).
static OVER: AtomicUsize = AtomicUsize::new(0);

/// Bytes allocated and not yet freed.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Highest `LIVE` since the current input began.
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// Largest single allocation since the current input began.
static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// Over all inputs: the largest single allocation and the length of the input that made it.
static MAX_LARGEST: AtomicUsize = AtomicUsize::new(0);
static MAX_LARGEST_INPUT: AtomicUsize = AtomicUsize::new(0);
/// Over all inputs: the largest single allocation as a share of what was allowed, in
/// thousandths, and that allocation and its input's length.
static MAX_SHARE: AtomicUsize = AtomicUsize::new(0);
static MAX_SHARE_SIZE: AtomicUsize = AtomicUsize::new(0);
static MAX_SHARE_INPUT: AtomicUsize = AtomicUsize::new(0);
/// Over all inputs: the most bytes one input had live at once, above what was live before it.
static MAX_PEAK: AtomicUsize = AtomicUsize::new(0);
static MAX_PEAK_INPUT: AtomicUsize = AtomicUsize::new(0);
/// How many inputs were measured.
static INPUTS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set while reporting an allocation over the limit, whose report allocates itself.
    static REPORTING: Cell<bool> = const { Cell::new(false) };
}

/// Sets the limit and arranges for the peaks to be printed at exit. Call before the first
/// input (the targets do it in libFuzzer's `init`).
pub fn set_limit(limit: Limit) {
    FIXED.store(limit.fixed, Relaxed);
    PER_BYTE.store(limit.per_byte, Relaxed);
    ABSOLUTE.store(limit.absolute, Relaxed);
    ALLOWED.store(limit.absolute, Relaxed);
    static AT_EXIT: Once = Once::new();
    AT_EXIT.call_once(|| {
        // SAFETY: `report` is an `extern "C" fn()` that does not unwind (it formats integers
        // and writes to stderr); registering it has no other precondition.
        unsafe {
            libc::atexit(report);
        }
    });
}

/// The limit in force.
pub fn limit() -> Limit {
    Limit {
        fixed: FIXED.load(Relaxed),
        per_byte: PER_BYTE.load(Relaxed),
        absolute: ABSOLUTE.load(Relaxed),
    }
}

/// Whether an allocation over the limit aborts the process (the default) or is only
/// recorded in the input's [`Cost`].
pub fn set_abort(abort: bool) {
    ABORT.store(abort, Relaxed);
}

/// What one input cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Largest single allocation (or reallocation's new size), in bytes.
    pub largest: usize,
    /// Most bytes live at once, above what was live when the input began.
    pub peak: usize,
    /// The largest single allocation allowed for this input.
    pub allowed: usize,
    /// Whether an allocation went over `allowed` (only when not aborting).
    pub over: bool,
}

/// Runs `f` for an input of `input_len` bytes under the limit and records what it allocated.
pub fn measure<R>(input_len: usize, f: impl FnOnce() -> R) -> (R, Cost) {
    let allowed = limit().allowed(input_len);
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    LARGEST.store(0, Relaxed);
    OVER.store(0, Relaxed);
    ALLOWED.store(allowed, Relaxed);
    let out = f();
    ALLOWED.store(ABSOLUTE.load(Relaxed), Relaxed);
    let cost = Cost {
        largest: LARGEST.load(Relaxed),
        peak: PEAK.load(Relaxed).saturating_sub(base),
        allowed,
        over: OVER.load(Relaxed) != 0,
    };
    INPUTS.fetch_add(1, Relaxed);
    if cost.largest > MAX_LARGEST.load(Relaxed) {
        MAX_LARGEST.store(cost.largest, Relaxed);
        MAX_LARGEST_INPUT.store(input_len, Relaxed);
    }
    let share = cost.largest.saturating_mul(1000) / allowed.max(1);
    if share > MAX_SHARE.load(Relaxed) {
        MAX_SHARE.store(share, Relaxed);
        MAX_SHARE_SIZE.store(cost.largest, Relaxed);
        MAX_SHARE_INPUT.store(input_len, Relaxed);
    }
    if cost.peak > MAX_PEAK.load(Relaxed) {
        MAX_PEAK.store(cost.peak, Relaxed);
        MAX_PEAK_INPUT.store(input_len, Relaxed);
    }
    (out, cost)
}

/// The summary printed at exit.
pub fn summary() -> String {
    let l = limit();
    format!(
        "agenix-fuzz: {} inputs; largest single allocation {} bytes (input of {} bytes); \
         closest to the limit {}.{}% ({} bytes, input of {} bytes); most live at once for one \
         input {} bytes (input of {} bytes); limit min({}, {} + {} x input length) bytes",
        INPUTS.load(Relaxed),
        MAX_LARGEST.load(Relaxed),
        MAX_LARGEST_INPUT.load(Relaxed),
        MAX_SHARE.load(Relaxed) / 10,
        MAX_SHARE.load(Relaxed) % 10,
        MAX_SHARE_SIZE.load(Relaxed),
        MAX_SHARE_INPUT.load(Relaxed),
        MAX_PEAK.load(Relaxed),
        MAX_PEAK_INPUT.load(Relaxed),
        l.absolute,
        l.fixed,
        l.per_byte,
    )
}

/// Appends the summary to the file `AGENIX_FUZZ_ALLOC_LOG` names, if any, as well as printing
/// it: libFuzzer's fork mode (`scripts/fuzz.sh --keep-going`) discards its workers' output.
extern "C" fn report() {
    let line = summary();
    write_stderr(line.as_bytes());
    write_stderr(b"\n");
    if let Some(path) = std::env::var_os("AGENIX_FUZZ_ALLOC_LOG") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{line}");
        }
    }
}

fn write_stderr(bytes: &[u8]) {
    let mut rest = bytes;
    while !rest.is_empty() {
        // SAFETY: `rest` is a live, initialized buffer of `rest.len()` bytes.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        let Ok(n) = usize::try_from(n) else { return };
        if n == 0 {
            return;
        }
        rest = &rest[n..];
    }
}

/// A fixed buffer for formatting without allocating.
struct StackBuf {
    bytes: [u8; 200],
    len: usize,
}

impl std::fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let dst = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cold]
fn over_limit(size: usize, allowed: usize) {
    if !ABORT.load(Relaxed) {
        if size > OVER.load(Relaxed) {
            OVER.store(size, Relaxed);
        }
        return;
    }
    REPORTING.with(|r| r.set(true));
    let mut msg = StackBuf { bytes: [0; 200], len: 0 };
    let _ = writeln!(
        msg,
        "agenix-fuzz: allocation of {size} bytes is over the limit of {allowed} bytes"
    );
    write_stderr(&msg.bytes[..msg.len]);
    // The backtrace allocates; `REPORTING` lets those allocations through unchecked.
    let trace = std::backtrace::Backtrace::force_capture().to_string();
    write_stderr(trace.as_bytes());
    std::process::abort()
}

#[inline]
fn check(size: usize) {
    let allowed = ALLOWED.load(Relaxed);
    if size > allowed && !REPORTING.with(Cell::get) {
        over_limit(size, allowed);
    }
    if size > LARGEST.load(Relaxed) {
        LARGEST.store(size, Relaxed);
    }
}

#[inline]
fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Relaxed) + by;
    if live > PEAK.load(Relaxed) {
        PEAK.store(live, Relaxed);
    }
}

#[inline]
fn shrank(by: usize) {
    LIVE.fetch_sub(by, Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds as it does for `System`; the bookkeeping around it only reads
// sizes and never unwinds (an allocation over the limit aborts the process or is recorded).
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract for `layout`.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract for `layout`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller passes a block this allocator (hence `System`) returned, with the
        // layout it was allocated with.
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract for `ptr`, `layout` and
        // `new_size`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                grew(new_size - layout.size());
            } else {
                shrank(layout.size() - new_size);
            }
        }
        p
    }
}
