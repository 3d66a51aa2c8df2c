//! Durable throughput of a real agq on loopback: submissions per second and claim → complete
//! cycles per second, with 1 and 8 concurrent clients, with and without group commit. Every
//! figure counts only acknowledged (hence durable) transitions. Run with
//! `cargo bench -p agenix-queue --bench throughput`. Prints medians with min–max; asserts
//! nothing.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "a benchmark program")]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use agenix_proto::Envelope;
use agenix_proto::link::Client;
use agenix_proto::wire::{ClientRole, Request, Response};
use common::{Agq, COMPONENT, no_output, register};

/// Runs per figure.
const RUNS: usize = 5;
/// Jobs per run, shared among the clients.
const JOBS: usize = 400;

fn summary(mut per_sec: Vec<f64>) -> String {
    per_sec.sort_by(f64::total_cmp);
    format!(
        "median {:8.0}/s  (min {:.0}, max {:.0}, n={})",
        per_sec[per_sec.len() / 2],
        per_sec[0],
        per_sec[per_sec.len() - 1],
        per_sec.len()
    )
}

/// A fresh queue with the component stored, and `JOBS` signed one-job actions for it.
async fn queue(group_commit: bool) -> (Agq, Envelope, Vec<Envelope>) {
    let mut args = vec!["--requests-per-minute", "100000000"];
    if !group_commit {
        args.push("--no-group-commit");
    }
    let q = Agq::start(&args);
    let planner = q.client(ClientRole::Planner).await;
    planner.put_blob(COMPONENT).await.unwrap();
    planner.close();
    let (plan, digest) = q.plan(COMPONENT, &[]);
    let actions = (0..JOBS).map(|_| q.action(digest, &[], 1).0).collect();
    (q, plan, actions)
}

async fn clients(q: &Agq, role: ClientRole, n: usize) -> Vec<Client> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(q.client(role).await);
    }
    out
}

/// Submits every action over `n` connections; returns submissions per second.
async fn submit_all(q: &Agq, plan: &Envelope, actions: Vec<Envelope>, n: usize) -> f64 {
    let planners = clients(q, ClientRole::Planner, n).await;
    let mut shares: Vec<Vec<Envelope>> = vec![Vec::new(); n];
    for (i, a) in actions.into_iter().enumerate() {
        shares[i % n].push(a);
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (c, share) in planners.into_iter().zip(shares) {
        let plan = plan.clone();
        tasks.spawn(async move {
            for action in share {
                let r = c.request(&Request::Submit { plan: plan.clone(), action }).await.unwrap();
                assert!(matches!(r, Response::Submitted { duplicate: false, .. }), "{r:?}");
            }
            c.close();
        });
    }
    tasks.join_all().await;
    JOBS as f64 / start.elapsed().as_secs_f64()
}

/// `n` workers claim one job at a time and complete it until none is left; returns cycles
/// per second.
async fn drain(q: &Agq, n: usize) -> f64 {
    let workers = clients(q, ClientRole::Worker, n).await;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, c) in workers.into_iter().enumerate() {
        tasks.spawn(async move {
            let id = register(&c, &format!("bench-{i}")).await;
            let mut done = 0usize;
            loop {
                let claim = Request::Claim { worker: id, max: 1, wait_ms: 0 };
                let Response::Leases { leases } = c.request(&claim).await.unwrap() else {
                    panic!("claim refused")
                };
                let Some(lease) = leases.first() else { break };
                let complete =
                    Request::Complete { worker: id, lease: lease.lease, output: no_output() };
                let r = c.request(&complete).await.unwrap();
                assert!(matches!(r, Response::Recorded { .. }), "{r:?}");
                done += 1;
            }
            c.close();
            done
        });
    }
    let done: usize = tasks.join_all().await.into_iter().sum();
    assert_eq!(done, JOBS);
    JOBS as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("## agq on loopback, {JOBS} one-job actions per run, redb fsync per commit");
    for group_commit in [true, false] {
        let mode = if group_commit { "group commit" } else { "no group commit" };
        for n in [1, 8] {
            let (mut submits, mut cycles) = (Vec::new(), Vec::new());
            for _ in 0..RUNS {
                let (q, plan, actions) = queue(group_commit).await;
                submits.push(submit_all(&q, &plan, actions, n).await);
                cycles.push(drain(&q, n).await);
            }
            println!("submit           {mode:16} {n} client(s)  {}", summary(submits));
            println!("claim → complete {mode:16} {n} client(s)  {}", summary(cycles));
        }
    }
}
