//! AUs on wasmtime: one engine per process that counts fuel and, from the first task that
//! opts out of fuel (`"unmetered"`), one that does not; each component compiled once per
//! digest and engine, each task in a fresh store with fuel (unless unmetered), memory,
//! wall-clock, output and scratch-space limits, and only the capabilities the task was
//! granted.
//!
//! Time: the engine uses epoch interruption with a 10 ms ticker; at every tick a running guest
//! checks its deadline (and traps once past it) and yields to the async executor, so a
//! wall-clock timeout stops a spinning guest, one making cheap host calls in a loop, and (by
//! dropping the future) one blocked inside a host call.
//!
//! Denied by default: a task sees no environment variables but the ones it is given, no
//! directories but its mounts and (unless it asks for none) a private scratch `/tmp`, and no
//! network at all. The
//! sockets and http interfaces that language runtimes import are linked with every way out
//! denied (`network.rs`: no socket, name lookup or request is ever made); a component
//! importing anything else outside the `unit` world is refused before it is instantiated.
//!
//! Here: the engine, the linker and preparing components (compiled once per digest, kept in
//! `prepared.rs` and on disk in `cache.rs`, its imports sorted into granted, denied and
//! refused in `imports.rs`); `run.rs` is one run of a prepared component, `scratch.rs` the
//! tasks' `/tmp` directories.

mod cache;
pub mod imports;
mod network;
mod prepared;
mod run;
mod scratch;

pub use run::TaskState;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use agenix_proto::{Access, Digest, Limits, Outcome};
use tokio::sync::{OnceCell, Semaphore};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};
use wasmtime_wasi::p2::bindings::{Command, CommandPre};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use self::cache::ArtifactCache;
pub use self::imports::{ConformanceError, Import, ImportKind};
use self::prepared::PreparedMap;
use self::scratch::ScratchPool;
use crate::output::CappedPipe;
use crate::task::{Finished, HostError, WasmTask};

/// How often the engine's epoch advances: each running guest checks its deadline and yields
/// to the executor this often.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Most bytes a guest may pass to one host call.
const HOSTCALL_BYTES: usize = 16 << 20;
/// Most bytes one `get-random-bytes` call may ask for.
const MAX_RANDOM_BYTES: u64 = 1 << 20;
/// Longest trap message kept in a report.
const MAX_TRAP_MESSAGE: usize = 1024;
/// How often the scratch directory's size is checked while a task runs.
const SCRATCH_POLL: Duration = Duration::from_millis(20);
/// Most entries a scratch directory may hold.
const SCRATCH_MAX_ENTRIES: u64 = 10_000;
/// Core instances, memories and tables one component may create (a Rust AU uses ~3/2/2).
const CORE_INSTANCES_PER_COMPONENT: u32 = 16;
const MEMORIES_PER_COMPONENT: u32 = 4;
const TABLES_PER_COMPONENT: u32 = 8;
/// Host resources one task may hold at once (open files and directories, streams,
/// pollables, `wasi:http` values): each lives in host memory, outside the task's memory
/// limit. Creating one more traps. CPython and SpiderMonkey hold a few dozen.
const MAX_RESOURCES: usize = 4096;
/// Table elements one task may allocate.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;
/// Bytes of each pooled memory and table kept resident between tasks (see [`pooling`]). At
/// most this much per slot stays in RAM while idle; 256 KiB to 4 MiB ran alike here.
const KEEP_RESIDENT_BYTES: usize = 1 << 20;
/// A prepared component is counted as its compiled image plus this fraction of it
/// (`image / PREPARED_OVERHEAD_DIVISOR`) for what it holds besides: its type and module
/// metadata on the heap, the instance-pre, and the copy-on-write memory images wasmtime makes
/// at its first instantiation. Measured here (wasmtime 48, Linux), growth of the process's
/// resident memory plus shared memory per prepared-and-run component: 1.36× the image for a
/// 300 KB image (a 75 KB guest), 1.17× for a 5.7 MB image (the 1.7 MB jq AU).
const PREPARED_OVERHEAD_DIVISOR: u64 = 3;
/// How often, at most, a component used from memory marks its artifact on disk as used.
const ARTIFACT_TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// How instance memory is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// The pooling allocator if the address space can be reserved, else on demand.
    Auto,
    /// The pooling allocator or fail.
    Pooling,
    /// Allocate per instance.
    OnDemand,
}

/// How a [`WasmHost`] is set up.
#[derive(Debug, Clone)]
pub struct WasmConfig {
    /// The most any task may ask for; the pool is sized for it.
    pub ceilings: Limits,
    /// Tasks running at once; more wait for a slot.
    pub max_concurrent: u32,
    /// Where precompiled artifacts are kept; `None` keeps them in memory only.
    pub cache_dir: Option<PathBuf>,
    /// Where each task's private scratch directory is created.
    pub scratch_dir: PathBuf,
    /// Instance allocation.
    pub allocator: Allocator,
}

/// Default of [`CacheBudget::prepared_bytes`]: 512 MiB, room for about 70 components the
/// size of the jq AU (1.7 MB, counted as 7.6 MB) or 1,300 small ones (75 KB, counted as
/// 0.4 MB).
pub const DEFAULT_PREPARED_BYTES: u64 = 512 << 20;
/// Default of [`CacheBudget::artifact_bytes`]: 2 GiB.
pub const DEFAULT_ARTIFACT_BYTES: u64 = 2 << 30;

/// How much a [`WasmHost`] keeps of the components it compiled, so that a worker meeting
/// thousands of distinct AUs keeps bounded memory and disk. In both places the least
/// recently used go first, and a component larger than the whole budget still runs: it is
/// just not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheBudget {
    /// Most bytes of prepared components kept in memory (default
    /// [`DEFAULT_PREPARED_BYTES`]), each counted as an estimate of the memory it holds (see
    /// [`Prepared::cost_bytes`]). A component some task is running stays alive until that
    /// task ends, whether or not it is still kept.
    pub prepared_bytes: u64,
    /// Most bytes of precompiled artifacts kept under [`WasmConfig::cache_dir`], the files of
    /// every engine version there counted together (default [`DEFAULT_ARTIFACT_BYTES`]).
    pub artifact_bytes: u64,
}

impl Default for CacheBudget {
    fn default() -> Self {
        Self { prepared_bytes: DEFAULT_PREPARED_BYTES, artifact_bytes: DEFAULT_ARTIFACT_BYTES }
    }
}

/// Why a component cannot be prepared. Each is a property of the component (or its
/// delivery), reported as the task's refusal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrepareError {
    /// The bytes are not the component the plan pinned.
    #[error("component bytes have digest {found}, but the plan pins {expected}")]
    DigestMismatch {
        /// The pinned digest.
        expected: Digest,
        /// The digest of the bytes delivered.
        found: Digest,
    },
    /// The bytes are not a valid WebAssembly component.
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    /// The component does not fit the `agenix:au/unit` world.
    #[error(transparent)]
    Conformance(#[from] ConformanceError),
    /// The bytes could not be had, for now (a transient failure of the source).
    #[error("cannot load the component: {0}")]
    Fetch(String),
    /// The source does not have the bytes, or has damaged ones.
    #[error("component unavailable: {0}")]
    Unavailable(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HostError {
    move |source| HostError::Io { what: what.into(), source }
}

/// A component ready to instantiate: compiled, conformance-checked, pre-linked.
pub struct Prepared {
    digest: Digest,
    metering: Metering,
    engine: Engine,
    pre: CommandPre<TaskState>,
    imports: Vec<Import>,
    cost: u64,
    /// When its artifact on disk was last marked as used by this process.
    touched: Mutex<Instant>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("digest", &self.digest)
            .field("metering", &self.metering)
            .field("imports", &self.imports)
            .field("cost", &self.cost)
            .finish()
    }
}

impl Prepared {
    /// The component's digest.
    pub fn digest(&self) -> Digest {
        self.digest
    }
    /// Whether it counts fuel: the tasks it runs are those of this metering.
    pub fn metering(&self) -> Metering {
        self.metering
    }
    /// The interfaces it imports, each with what the host does with it.
    pub fn imports(&self) -> &[Import] {
        &self.imports
    }
    /// The bytes it is counted as against [`CacheBudget::prepared_bytes`]: its compiled
    /// image, as wasmtime keeps it in memory, plus a third for what it holds besides (a
    /// measured estimate).
    pub fn cost_bytes(&self) -> u64 {
        self.cost
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: &Engine) -> std::io::Result<Self> {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, weak) = (stop.clone(), engine.weak());
        let thread = std::thread::Builder::new().name("agenix-epoch".into()).spawn(move || {
            // Parked rather than asleep between ticks, so that stopping it (a short-lived
            // process exiting) does not wait out a tick.
            let mut next = Instant::now() + EPOCH_TICK;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let now = Instant::now();
                if now < next {
                    std::thread::park_timeout(next - now);
                    continue;
                }
                next = now + EPOCH_TICK;
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })?;
        Ok(Self { stop, thread: Some(thread) })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// Whether a component is compiled to count fuel. Each has an engine of its own: fuel
/// instrumentation is compiled into the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metering {
    /// Fuel is counted, and a task stops when its fuel runs out.
    Fuel,
    /// No fuel instrumentation: compute-bound code runs faster, and the task's wall-clock
    /// timeout alone bounds it. For tasks whose fuel is [`agenix_proto::UNMETERED`].
    Unmetered,
}

impl Metering {
    /// How a task under `limits` runs.
    pub fn of(limits: &Limits) -> Self {
        if limits.is_metered() { Self::Fuel } else { Self::Unmetered }
    }

    /// `metered` or `unmetered`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fuel => "metered",
            Self::Unmetered => "unmetered",
        }
    }
}

/// One engine, with its epoch ticker, its linker and its directory in the artifact cache.
struct Flavor {
    _ticker: EpochTicker,
    engine: Engine,
    linker: Linker<TaskState>,
    pooled: bool,
    cache: Option<ArtifactCache>,
}

impl Flavor {
    /// An engine for `metering`: the pooling allocator when it can reserve its address space
    /// (or as configured), and the linker for the `unit` world. Opens (and trims) its
    /// directory of the artifact cache.
    fn new(
        config: &WasmConfig,
        budget: &CacheBudget,
        metering: Metering,
    ) -> Result<Self, HostError> {
        let on_demand = || {
            Engine::new(&engine_config(metering)).map_err(|e| HostError::Engine(format!("{e:#}")))
        };
        let pooled = || {
            let mut c = engine_config(metering);
            c.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(config)));
            Engine::new(&c).map_err(|e| HostError::Engine(format!("{e:#}")))
        };
        let (engine, pooled) = match config.allocator {
            Allocator::OnDemand => (on_demand()?, false),
            Allocator::Pooling => (pooled()?, true),
            Allocator::Auto => match pooled() {
                Ok(e) => (e, true),
                Err(e) => {
                    tracing::warn!(error = %e, "pooling allocator unavailable; allocating on demand");
                    (on_demand()?, false)
                }
            },
        };
        let ticker =
            EpochTicker::start(&engine).map_err(io_err("cannot start the epoch ticker"))?;
        let mut linker = Linker::new(&engine);
        link(&mut linker).map_err(|e| HostError::Engine(format!("{e:#}")))?;
        let cache = match &config.cache_dir {
            Some(dir) => {
                let cache = ArtifactCache::open(dir, &engine, budget.artifact_bytes).map_err(
                    io_err(format!(
                        "cannot open the artifact cache {} (engine of {} tasks)",
                        dir.display(),
                        metering.name()
                    )),
                )?;
                if let Err(e) = cache.sweep() {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot sweep the artifact cache");
                }
                Some(cache)
            }
            None => None,
        };
        Ok(Self { _ticker: ticker, engine, linker, pooled, cache })
    }
}

/// The wasm sandbox: one per process.
pub struct WasmHost {
    /// The engine of metered tasks, made at the start.
    metered: Flavor,
    /// The engine of unmetered tasks, made when the first one comes.
    unmetered: OnceCell<Flavor>,
    /// What the unmetered engine is made with.
    config: WasmConfig,
    budget: CacheBudget,
    /// Prepared components of both engines, by digest and metering, in one budget.
    prepared: Mutex<PreparedMap<Key, Arc<Prepared>>>,
    slots: Semaphore,
    scratch: Arc<ScratchPool>,
}

/// What a prepared component is kept by.
type Key = (Digest, Metering);

impl std::fmt::Debug for WasmHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmHost")
            .field("pooled", &self.metered.pooled)
            .field("ceilings", &self.config.ceilings)
            .finish()
    }
}

fn engine_config(metering: Metering) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true);
    c.consume_fuel(metering == Metering::Fuel);
    c.epoch_interruption(true);
    c
}

fn pooling(config: &WasmConfig) -> PoolingAllocationConfig {
    let n = config.max_concurrent.max(1);
    // wasm32 memories stop at 4 GiB; the limiter enforces each task's own limit below this.
    let max_memory = config.ceilings.memory_bytes.min(4 << 30) as usize;
    let mut p = PoolingAllocationConfig::default();
    p.total_component_instances(n)
        .total_core_instances(n * CORE_INSTANCES_PER_COMPONENT)
        .total_memories(n * MEMORIES_PER_COMPONENT)
        .total_tables(n * TABLES_PER_COMPONENT)
        .total_stacks(n)
        .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MEMORIES_PER_COMPONENT)
        .max_tables_per_component(TABLES_PER_COMPONENT)
        .max_memory_size(max_memory)
        .table_elements(MAX_TABLE_ELEMENTS);
    // Where the kernel can tell which pages a task touched (PAGEMAP_SCAN, Linux 6.7), those
    // are zeroed in place for the next task rather than handed back and faulted in again.
    // (Without it, zeroing a fixed prefix costs more than it saves.)
    if PoolingAllocationConfig::is_pagemap_scan_available() {
        p.pagemap_scan(wasmtime::Enabled::Yes)
            .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
            .table_keep_resident(KEEP_RESIDENT_BYTES);
    }
    p
}

/// Links the `agenix:au/unit` world (wasi:io, cli, clocks, random, filesystem) and, with
/// every way out denied, wasi:sockets and wasi:http.
fn link(linker: &mut Linker<TaskState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
    use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random};
    use wasmtime_wasi::random::{WasiRandom, WasiRandomView};

    let l = linker;
    wasmtime_wasi_io::add_to_linker_async(l)?;
    clocks::wall_clock::add_to_linker::<_, WasiClocks>(l, TaskState::clocks)?;
    clocks::monotonic_clock::add_to_linker::<_, WasiClocks>(l, TaskState::clocks)?;
    filesystem::types::add_to_linker::<_, WasiFilesystem>(l, TaskState::filesystem)?;
    filesystem::preopens::add_to_linker::<_, WasiFilesystem>(l, TaskState::filesystem)?;
    random::random::add_to_linker::<_, WasiRandom>(l, TaskState::random)?;
    random::insecure::add_to_linker::<_, WasiRandom>(l, TaskState::random)?;
    random::insecure_seed::add_to_linker::<_, WasiRandom>(l, TaskState::random)?;
    cli::exit::add_to_linker::<_, WasiCli>(l, TaskState::cli)?;
    cli::environment::add_to_linker::<_, WasiCli>(l, TaskState::cli)?;
    cli::stdin::add_to_linker::<_, WasiCli>(l, TaskState::cli)?;
    cli::stdout::add_to_linker::<_, WasiCli>(l, TaskState::cli)?;
    cli::stderr::add_to_linker::<_, WasiCli>(l, TaskState::cli)?;
    cli::terminal_input::add_to_linker::<_, WasiCli>(l, TaskState::cli)?;
    cli::terminal_output::add_to_linker::<_, WasiCli>(l, TaskState::cli)?;
    cli::terminal_stdin::add_to_linker::<_, WasiCli>(l, TaskState::cli)?;
    cli::terminal_stdout::add_to_linker::<_, WasiCli>(l, TaskState::cli)?;
    cli::terminal_stderr::add_to_linker::<_, WasiCli>(l, TaskState::cli)?;
    network::link(l)
}

impl WasmHost {
    /// Starts the engine of metered tasks: the pooling allocator when it can reserve its
    /// address space (or as configured), fuel metering, and the linker for the `unit` world.
    /// The engine of unmetered tasks, alike but without fuel, is started when the first such
    /// task is prepared. Keeps compiled components within the default [`CacheBudget`].
    pub fn new(config: WasmConfig) -> Result<Self, HostError> {
        Self::with_budget(config, CacheBudget::default())
    }

    /// As [`WasmHost::new`], keeping compiled components within `budget`. An artifact cache
    /// that is over its budget (it was lowered, or other processes share the directory) is
    /// trimmed here.
    pub fn with_budget(config: WasmConfig, budget: CacheBudget) -> Result<Self, HostError> {
        let metered = Flavor::new(&config, &budget, Metering::Fuel)?;
        std::fs::create_dir_all(&config.scratch_dir).map_err(io_err(format!(
            "cannot create scratch directory {}",
            config.scratch_dir.display()
        )))?;
        let slots = config.max_concurrent.max(1) as usize;
        Ok(Self {
            metered,
            unmetered: OnceCell::new(),
            prepared: Mutex::new(PreparedMap::new(budget.prepared_bytes)),
            slots: Semaphore::new(slots),
            scratch: Arc::new(ScratchPool::new(config.scratch_dir.clone(), slots)),
            config,
            budget,
        })
    }

    /// The engine for `metering`, started if it was not.
    async fn flavor(&self, metering: Metering) -> Result<&Flavor, HostError> {
        match metering {
            Metering::Fuel => Ok(&self.metered),
            Metering::Unmetered => {
                self.unmetered
                    .get_or_try_init(|| async {
                        let (config, budget) = (self.config.clone(), self.budget);
                        tokio::task::spawn_blocking(move || {
                            Flavor::new(&config, &budget, Metering::Unmetered)
                        })
                        .await
                        .map_err(|e| HostError::Engine(format!("engine set-up failed: {e}")))?
                    })
                    .await
            }
        }
    }

    /// Starts the engine of unmetered tasks now rather than at the first such task, so that
    /// a host that cannot have it knows at once (a worker then stops offering unmetered
    /// tasks). Does nothing if it runs already.
    pub async fn start_unmetered(&self) -> Result<(), HostError> {
        self.flavor(Metering::Unmetered).await.map(drop)
    }

    /// Whether the pooling allocator is in use (by the engine of metered tasks).
    pub fn is_pooled(&self) -> bool {
        self.metered.pooled
    }

    /// Whether pooled memories keep the pages a task touched resident for the next task
    /// (the pooling allocator, on a kernel with `PAGEMAP_SCAN`).
    pub fn keeps_pages_resident(&self) -> bool {
        self.metered.pooled && PoolingAllocationConfig::is_pagemap_scan_available()
    }

    /// The engine of metered tasks.
    pub fn engine(&self) -> &Engine {
        &self.metered.engine
    }

    /// Component instances currently allocated in the pools (0 when idle), or `None` when
    /// allocating on demand.
    pub fn live_instances(&self) -> Option<u64> {
        let live =
            |f: &Flavor| f.engine.pooling_allocator_metrics().map(|m| m.component_instances());
        let metered = live(&self.metered)?;
        Some(metered + self.unmetered.get().and_then(live).unwrap_or(0))
    }

    /// Bytes of prepared components this host keeps in memory (the sum of their
    /// [`Prepared::cost_bytes`]), at most [`CacheBudget::prepared_bytes`].
    pub fn prepared_bytes(&self) -> u64 {
        self.prepared_map().bytes()
    }

    /// How many prepared components this host keeps in memory.
    pub fn prepared_count(&self) -> usize {
        self.prepared_map().len()
    }

    /// Bytes of precompiled artifacts in the cache directory (every engine version's), as
    /// counted against [`CacheBudget::artifact_bytes`]; `None` without a cache directory.
    /// Reads the directory.
    pub fn cached_artifact_bytes(&self) -> Result<Option<u64>, HostError> {
        let Some(cache) = &self.metered.cache else { return Ok(None) };
        cache.bytes().map(Some).map_err(io_err("cannot read the artifact cache"))
    }

    fn prepared_map(&self) -> std::sync::MutexGuard<'_, PreparedMap<Key, Arc<Prepared>>> {
        self.prepared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The component with `digest`, compiled for `metering` at most once while this host
    /// keeps it: from memory, else from the artifact cache, else from the bytes `fetch`
    /// delivers (verified against the digest, checked against the `unit` world, compiled,
    /// and cached). Concurrent calls for one digest and metering share one preparation. What
    /// is kept is bounded by the host's [`CacheBudget`]; a component that is no longer kept
    /// stays valid for whoever holds it. Runs only tasks of its metering
    /// ([`Metering::of`] their limits).
    pub async fn prepare<F, Fut>(
        &self,
        digest: Digest,
        metering: Metering,
        fetch: F,
    ) -> Result<Arc<Prepared>, PrepareError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, PrepareError>>,
    {
        let flavor = self
            .flavor(metering)
            .await
            .map_err(|e| PrepareError::Fetch(format!("cannot start the engine: {e}")))?;
        let key = (digest, metering);
        let claim = Claim { host: self, key, cell: self.prepared_map().cell(key) };
        let prepared = claim
            .cell
            .get_or_try_init(|| async {
                if let Some(component) =
                    flavor.cache.as_ref().and_then(|c| c.load(&flavor.engine, &digest))
                {
                    return pre(flavor, digest, metering, component);
                }
                let bytes = fetch().await?;
                compile(flavor, digest, metering, bytes).await
            })
            .await?
            .clone();
        self.prepared_map().settle(key, &claim.cell, prepared.cost);
        // Used from memory, the artifact on disk is used too: mark it now and then, so that
        // it does not age out of the disk cache while it is in demand.
        if let Some(cache) = &flavor.cache {
            let due = {
                let mut touched = prepared.touched.lock().unwrap_or_else(PoisonError::into_inner);
                let due = touched.elapsed() >= ARTIFACT_TOUCH_INTERVAL;
                if due {
                    *touched = Instant::now();
                }
                due
            };
            if due {
                cache.touch(&digest);
            }
        }
        Ok(prepared)
    }

    /// Compiles bytes into a component (for metered tasks) without any policy check (for
    /// `agx au check`).
    pub async fn compile_unchecked(&self, bytes: Vec<u8>) -> Result<Component, PrepareError> {
        compile_unchecked(&self.metered.engine, bytes).await
    }

    /// Checks a component (from [`WasmHost::compile_unchecked`]) against the `unit` world;
    /// lists its imports, each with what the host does with it, either way.
    pub fn conformance(
        &self,
        component: &Component,
    ) -> (Vec<Import>, Result<(), ConformanceError>) {
        let f = &self.metered;
        let verdict =
            imports::check(&f.engine, component).and_then(|()| link_pre(f, component).map(drop));
        (imports::imports(&f.engine, component), verdict)
    }

    /// The limits the pool was sized for.
    pub fn ceilings(&self) -> &Limits {
        &self.config.ceilings
    }
}

/// Compiles bytes that must have `digest` with `flavor`'s engine, and caches the artifact.
async fn compile(
    flavor: &Flavor,
    digest: Digest,
    metering: Metering,
    bytes: Vec<u8>,
) -> Result<Arc<Prepared>, PrepareError> {
    let found = Digest::of(&bytes);
    if found != digest {
        return Err(PrepareError::DigestMismatch { expected: digest, found });
    }
    let component = compile_unchecked(&flavor.engine, bytes).await?;
    imports::check(&flavor.engine, &component)?;
    if let Some(cache) = flavor.cache.clone() {
        match component.serialize() {
            Ok(artifact) => {
                // Off the async threads: the write, its fsync and the sweep of the directory.
                let done = tokio::task::spawn_blocking(move || {
                    (cache.store(&digest, &artifact), cache.sweep())
                })
                .await;
                let (stored, swept) = match done {
                    Ok(r) => r,
                    Err(e) => (Err(std::io::Error::other(e.to_string())), Ok(0)),
                };
                match stored {
                    Ok(true) => {}
                    Ok(false) => tracing::info!(
                        %digest,
                        "precompiled component larger than the whole artifact cache; not cached"
                    ),
                    Err(e) => {
                        tracing::warn!(%digest, error = %e, "cannot cache the precompiled component")
                    }
                }
                if let Err(e) = swept {
                    tracing::warn!(error = %e, "cannot sweep the artifact cache");
                }
            }
            Err(e) => {
                tracing::warn!(%digest, error = %format!("{e:#}"), "cannot serialize the component")
            }
        }
    }
    pre(flavor, digest, metering, component)
}

async fn compile_unchecked(engine: &Engine, bytes: Vec<u8>) -> Result<Component, PrepareError> {
    describe_magic(&bytes)?;
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || Component::new(&engine, &bytes))
        .await
        .map_err(|e| PrepareError::Invalid(format!("compiler task failed: {e}")))?
        .map_err(|e| PrepareError::Invalid(format!("{e:#}")))
}

/// Pre-links a component against `flavor`'s linker.
fn link_pre(
    flavor: &Flavor,
    component: &Component,
) -> Result<CommandPre<TaskState>, ConformanceError> {
    flavor
        .linker
        .instantiate_pre(component)
        .and_then(CommandPre::new)
        .map_err(|e| ConformanceError::Link(format!("{e:#}")))
}

fn pre(
    flavor: &Flavor,
    digest: Digest,
    metering: Metering,
    component: Component,
) -> Result<Arc<Prepared>, PrepareError> {
    imports::check(&flavor.engine, &component)?;
    let imports = imports::imports(&flavor.engine, &component);
    let pre = link_pre(flavor, &component)?;
    // The cost is the compiled image wasmtime keeps in memory for the component (code, data
    // segments and metadata: the bytes `serialize` writes, so the same whether it was
    // compiled here or loaded from the cache), plus a measured share of it for what the
    // component holds besides (see `PREPARED_OVERHEAD_DIVISOR`).
    let image = component.image_range();
    let image = image.end.addr().saturating_sub(image.start.addr()) as u64;
    let cost = image.saturating_add(image / PREPARED_OVERHEAD_DIVISOR);
    Ok(Arc::new(Prepared {
        digest,
        metering,
        engine: flavor.engine.clone(),
        pre,
        imports,
        cost,
        touched: Mutex::new(Instant::now()),
    }))
}

/// One caller's hold on a prepared-component cell: when it ends, however (done, failed,
/// cancelled), an empty cell nobody else holds is forgotten, so that digests that never
/// prepare do not pile up in the map.
struct Claim<'a> {
    host: &'a WasmHost,
    key: Key,
    cell: Arc<OnceCell<Arc<Prepared>>>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        // Let go of the cell first (for a fresh empty one), so that the map's count of its
        // holders is right.
        drop(std::mem::take(&mut self.cell));
        self.host.prepared_map().forget_if_idle(self.key);
    }
}

/// Names what the bytes are when they are not a component, so the error says what to do.
fn describe_magic(bytes: &[u8]) -> Result<(), PrepareError> {
    const WASM: &[u8] = b"\0asm";
    match bytes.get(..8) {
        Some([0, b'a', b's', b'm', 0x0d, 0, 1, 0]) => Ok(()),
        Some([0, b'a', b's', b'm', 1, 0, 0, 0]) => Err(PrepareError::Invalid(
            "a core wasm module, not a component (build with --target wasm32-wasip2)".into(),
        )),
        _ if bytes.starts_with(WASM) => Err(PrepareError::Invalid("unknown wasm version".into())),
        _ => Err(PrepareError::Invalid(format!(
            "does not start with the wasm magic bytes ({} bytes)",
            bytes.len()
        ))),
    }
}
