//! One run of an AU: the per-store state (WASI context, memory limiter, deadline), the run
//! itself under fuel, memory, wall-clock, output and scratch-space limits, and how its end
//! is classified into an [`Outcome`].

use super::*;

impl WasmHost {
    /// Runs one task. Waits for a free slot first. A guest failing in any way is an
    /// [`Outcome`]; `Err` means the host itself failed.
    pub async fn run(&self, prepared: &Prepared, task: WasmTask) -> Result<Finished, HostError> {
        let _slot = self.slots.acquire().await.map_err(|e| HostError::Runtime(e.to_string()))?;
        let limits = task.limits;
        let started = Instant::now();
        if let Err(reason) = task.check() {
            return Ok(refused(reason, started));
        }
        for ((name, asked), (_, max)) in
            limits.fields().into_iter().zip(self.config.ceilings.fields())
        {
            if asked > max {
                let asked = agenix_proto::limits::show_limit(name, asked);
                return Ok(refused(
                    format!("limits.{name} {asked} is above this host's ceiling of {max}"),
                    started,
                ));
            }
        }
        let metering = Metering::of(&limits);
        if prepared.metering != metering {
            return Err(HostError::Runtime(format!(
                "component {} was prepared for {} tasks, not {} ones",
                prepared.digest,
                prepared.metering.name(),
                metering.name()
            )));
        }
        let scratch = task
            .scratch
            .then(|| self.scratch.take())
            .transpose()
            .map_err(io_err("cannot create the task's scratch directory"))?;
        let cap = usize::try_from(limits.output_bytes).unwrap_or(usize::MAX);
        let (stdout, stderr) = (CappedPipe::new(cap), CappedPipe::new(cap));

        let mut argv = Vec::with_capacity(task.args.len() + 1);
        argv.push(task.program.clone());
        argv.extend(task.args.iter().cloned());
        let mut b = WasiCtxBuilder::new();
        b.args(&argv)
            .envs(&task.env)
            .stdin(MemoryInputPipe::new(task.stdin.clone()))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .max_random_size(MAX_RANDOM_BYTES)
            // The network's ways in are the host's own and deny (`network.rs`); should any
            // of wasmtime-wasi's be reached, these deny too. They are its defaults, stated.
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        if let Some(scratch) = &scratch {
            b.preopened_dir(scratch.path(), "/tmp", FsPerms::ReadWrite).map_err(|e| {
                HostError::Runtime(format!("cannot open the scratch directory: {e:#}"))
            })?;
        }
        for g in &task.grants {
            if scratch.is_some() && std::path::Path::new(&g.guest).starts_with("/tmp") {
                return Ok(refused(
                    format!("mount {} would hide the task's scratch /tmp", g.guest),
                    started,
                ));
            }
            let perms = match g.access {
                Access::ReadOnly => FsPerms::ReadOnly,
                Access::ReadWrite => FsPerms::ReadWrite,
            };
            if let Err(e) = b.preopened_dir(&g.host, &g.guest, perms) {
                return Ok(refused(format!("mount {} is not available: {e:#}", g.guest), started));
            }
        }
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let state = TaskState {
            wasi: b.build(),
            table,
            network: network::NetworkState::new(),
            limiter: Limiter { limit: limits.memory_bytes, total: 0, peak: 0, denied: false },
            deadline: started + Duration::from_millis(limits.timeout_ms),
        };
        let mut store = Store::new(&prepared.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_hostcall_fuel(HOSTCALL_BYTES);
        if metering == Metering::Fuel {
            store.set_fuel(limits.fuel).map_err(|e| HostError::Runtime(format!("{e:#}")))?;
        }
        // At each epoch tick: trap if past the deadline, else yield to the executor (which
        // lets the timeout and cancellation below take effect) until the next tick.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Err(wasmtime::Error::new(DeadlineReached))
            } else {
                Ok(wasmtime::UpdateDeadline::Yield(1))
            }
        });

        let watch = async {
            match &scratch {
                Some(dir) => scratch::watch(dir.path().to_path_buf(), limits.file_bytes).await,
                None => std::future::pending().await,
            }
        };
        let ended = {
            let pre = &prepared.pre;
            let store = &mut store;
            let run = async move {
                let command: Command = pre.instantiate_async(&mut *store).await?;
                command.wasi_cli_run().call_run(&mut *store).await
            };
            tokio::select! {
                biased;
                r = run => Ended::Returned(r),
                () = tokio::time::sleep(Duration::from_millis(limits.timeout_ms)) => Ended::TimedOut,
                e = watch => e,
            }
        };
        let fuel_consumed = match metering {
            Metering::Fuel => Some(limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0))),
            Metering::Unmetered => None,
        };
        let limiter = &store.data().limiter;
        let denials = store.data().network.denials;
        if denials > 0 {
            tracing::info!(program = %task.program, denials, "network calls denied");
        }
        let denied = limiter.denied;
        let peak_memory = limiter.peak;
        // The store holds the guest's descriptors, in the scratch directory among others:
        // it goes first. Then what the task left in its scratch counts, whenever it was
        // written (the watch may not have looked since).
        drop(store);
        let ended = match scratch {
            Some(scratch) if scratch.touched() => {
                let count = matches!(ended, Ended::Returned(_));
                let left = tokio::task::spawn_blocking(move || scratch.discard(count))
                    .await
                    .map_err(|e| HostError::Runtime(format!("scratch count failed: {e}")))?;
                match left {
                    Some(Ok((bytes, entries)))
                        if bytes > limits.file_bytes || entries > SCRATCH_MAX_ENTRIES =>
                    {
                        Ended::ScratchFull
                    }
                    Some(Err(e)) => Ended::ScratchUnmeasured(e.to_string()),
                    _ => ended,
                }
            }
            Some(scratch) => {
                scratch.recycle();
                ended
            }
            None => ended,
        };
        let outcome = classify(ended, denied, &stdout, &stderr);
        Ok(Finished {
            outcome,
            stdout: stdout.contents(),
            stderr: stderr.contents(),
            fuel_consumed,
            wall: started.elapsed(),
            peak_memory,
            setup: None,
        })
    }
}

/// The per-store state: the WASI context, the limiter and the deadline.
#[allow(missing_debug_implementations, reason = "WasiCtx has no Debug")]
pub struct TaskState {
    wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) network: network::NetworkState,
    limiter: Limiter,
    deadline: Instant,
}

/// The trap raised at an epoch tick past the task's deadline.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("wall-clock timeout")]
struct DeadlineReached;

impl WasiView for TaskState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl wasmtime_wasi_io::IoView for TaskState {
    fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

/// Caps linear memory across all of a task's memories, remembering the peak and whether it
/// ever refused growth (the reliable sign of `MemoryExceeded`: a Rust guest that cannot grow
/// aborts with an ordinary trap).
#[derive(Debug)]
struct Limiter {
    limit: u64,
    total: u64,
    peak: u64,
    denied: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = desired.saturating_sub(current) as u64;
        if self.total.saturating_add(grow) > self.limit {
            self.denied = true;
            return Ok(false);
        }
        self.total += grow;
        self.peak = self.peak.max(self.total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        CORE_INSTANCES_PER_COMPONENT as usize
    }
    fn memories(&self) -> usize {
        MEMORIES_PER_COMPONENT as usize
    }
    fn tables(&self) -> usize {
        TABLES_PER_COMPONENT as usize
    }
}

/// How a run ended, before it is classified.
pub(super) enum Ended {
    Returned(wasmtime::Result<Result<(), ()>>),
    TimedOut,
    ScratchFull,
    /// The scratch directory could not be measured (the process is out of descriptors,
    /// say): the task is stopped rather than left unbounded.
    ScratchUnmeasured(String),
}

/// A trap or error, for people: the trap's own description (not a backtrace), control
/// characters removed, capped.
fn trap_message(e: &wasmtime::Error) -> String {
    let raw = match e.downcast_ref::<Trap>() {
        Some(t) => t.to_string(),
        None => e.root_cause().to_string(),
    };
    let mut msg: String = raw.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if msg.len() > MAX_TRAP_MESSAGE {
        let mut cut = MAX_TRAP_MESSAGE;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
    }
    msg
}

/// A task refused before it ran (it consumed no fuel).
fn refused(reason: String, started: Instant) -> Finished {
    Finished { fuel_consumed: Some(0), ..Finished::refused(reason, started.elapsed()) }
}

fn classify(
    ended: Ended,
    memory_denied: bool,
    stdout: &CappedPipe,
    stderr: &CappedPipe,
) -> Outcome {
    let result = match ended {
        Ended::TimedOut => return Outcome::TimedOut,
        Ended::ScratchFull => return Outcome::OutputExceeded { stream: "scratch".into() },
        Ended::ScratchUnmeasured(why) => {
            tracing::warn!(error = %why, "cannot measure a task's scratch directory; stopping it");
            return Outcome::Trapped {
                message: format!("stopped: the scratch directory could not be measured: {why}"),
            };
        }
        Ended::Returned(r) => r,
    };
    if stdout.overflowed() {
        return Outcome::OutputExceeded { stream: "stdout".into() };
    }
    if stderr.overflowed() {
        return Outcome::OutputExceeded { stream: "stderr".into() };
    }
    // A guest that failed after the limiter refused it memory failed for want of it: a
    // managed runtime (SpiderMonkey, CPython) turns the refusal into an exception and exits
    // non-zero, where a Rust guest aborts with a trap.
    let failed = |code: i32| {
        if memory_denied { Outcome::MemoryExceeded } else { Outcome::Exited { code } }
    };
    match result {
        Ok(Ok(())) => Outcome::Exited { code: 0 },
        Ok(Err(())) => failed(1),
        Err(e) => {
            if let Some(exit) = e.downcast_ref::<I32Exit>() {
                if exit.0 == 0 { Outcome::Exited { code: 0 } } else { failed(exit.0) }
            } else if e.downcast_ref::<DeadlineReached>().is_some() {
                Outcome::TimedOut
            } else if matches!(e.downcast_ref::<Trap>(), Some(Trap::OutOfFuel)) {
                Outcome::OutOfFuel
            } else if memory_denied {
                // A Rust guest that cannot grow aborts with an ordinary trap; the limiter's
                // refusal is what says why.
                Outcome::MemoryExceeded
            } else {
                Outcome::Trapped { message: trap_message(&e) }
            }
        }
    }
}
