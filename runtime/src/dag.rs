//! The DAG of one job as a pure state machine: which tasks may start, and which are skipped
//! when a task they read from fails. No I/O; the executor drives it.

use agenix_proto::Plan;

/// Where one task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for the tasks it reads from.
    Waiting,
    /// Handed to a runner.
    Running,
    /// Finished, successfully or not.
    Done {
        /// Whether it exited 0.
        success: bool,
    },
    /// Will not run: the task at this index did not succeed.
    Skipped {
        /// The index of the upstream task that did not succeed.
        because: usize,
    },
}

/// The job's tasks, by index in the plan, with their upstream indices.
#[derive(Debug, Clone)]
pub struct Dag {
    upstream: Vec<Vec<usize>>,
    state: Vec<State>,
}

impl Dag {
    /// The DAG of a validated plan (every reference names an earlier task).
    pub fn new(plan: &Plan) -> Self {
        let index = |id: &agenix_proto::TaskId| plan.tasks.iter().position(|t| t.id == *id);
        let upstream = plan
            .tasks
            .iter()
            .map(|t| {
                let mut ups: Vec<usize> = t.upstream().iter().filter_map(index).collect();
                ups.sort_unstable();
                ups.dedup();
                ups
            })
            .collect();
        Self { upstream, state: vec![State::Waiting; plan.tasks.len()] }
    }

    /// Marks every waiting task whose upstream tasks all succeeded as running, and returns
    /// them in plan order.
    pub fn start_ready(&mut self) -> Vec<usize> {
        let mut ready = Vec::new();
        for i in 0..self.state.len() {
            if self.state[i] == State::Waiting
                && self.upstream[i].iter().all(|&u| self.state[u] == State::Done { success: true })
            {
                self.state[i] = State::Running;
                ready.push(i);
            }
        }
        ready
    }

    /// Records that task `i` finished; returns the tasks newly skipped because of it
    /// (directly or transitively), each with the upstream task it was skipped for.
    pub fn finish(&mut self, i: usize, success: bool) -> Vec<(usize, usize)> {
        self.state[i] = State::Done { success };
        let mut skipped = Vec::new();
        if success {
            return skipped;
        }
        // Tasks only read from earlier ones, so one pass in plan order reaches every
        // descendant.
        for j in (i + 1)..self.state.len() {
            if self.state[j] != State::Waiting {
                continue;
            }
            let blocker = self.upstream[j].iter().copied().find(|&u| match self.state[u] {
                State::Done { success } => !success,
                State::Skipped { .. } => true,
                State::Waiting | State::Running => false,
            });
            if let Some(u) = blocker {
                self.state[j] = State::Skipped { because: u };
                skipped.push((j, u));
            }
        }
        skipped
    }

    /// Whether every task has finished or been skipped.
    pub fn is_done(&self) -> bool {
        self.state.iter().all(|s| matches!(s, State::Done { .. } | State::Skipped { .. }))
    }

    /// The state of task `i`.
    pub fn state(&self, i: usize) -> State {
        self.state[i]
    }

    /// How many tasks read task `i`'s output.
    pub fn readers(&self, i: usize) -> usize {
        self.upstream.iter().filter(|ups| ups.contains(&i)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(edges: &[(&str, &[&str])]) -> Plan {
        let tasks: Vec<String> = edges
            .iter()
            .map(|(id, ups)| {
                let stdin = match ups.len() {
                    0 => r#"{"input":true}"#.to_string(),
                    1 => format!(r#"{{"task":"{}"}}"#, ups[0]),
                    _ => format!(r#"{{"tasks":{}}}"#, serde_json::to_string(ups).unwrap()),
                };
                format!(r#"{{"id":"{id}","run":{{"native":{{"tool":"cat"}}}},"stdin":{stdin}}}"#)
            })
            .collect();
        let json = format!(
            r#"{{"schema":"agenix.plan/v1","name":"t","tasks":[{}],"output":"{}"}}"#,
            tasks.join(","),
            edges.last().unwrap().0
        );
        let p = Plan::from_json(json.as_bytes()).unwrap();
        p.validate(agenix_proto::Form::Draft, &agenix_proto::Limits::ABSOLUTE).unwrap();
        p
    }

    #[test]
    fn fan_out_runs_in_parallel_and_fan_in_waits_for_all() {
        let p = plan(&[("a", &[]), ("b", &["a"]), ("c", &["a"]), ("d", &["b", "c"])]);
        let mut dag = Dag::new(&p);
        assert_eq!(dag.start_ready(), [0]);
        assert_eq!(dag.start_ready(), Vec::<usize>::new(), "nothing new until a finishes");
        assert!(dag.finish(0, true).is_empty());
        assert_eq!(dag.start_ready(), [1, 2]);
        dag.finish(1, true);
        assert_eq!(dag.start_ready(), Vec::<usize>::new(), "d waits for c");
        dag.finish(2, true);
        assert_eq!(dag.start_ready(), [3]);
        dag.finish(3, true);
        assert!(dag.is_done());
    }

    #[test]
    fn a_failure_skips_every_descendant_and_nothing_else() {
        let p = plan(&[
            ("a", &[]),
            ("b", &["a"]),
            ("c", &[]),
            ("d", &["b"]),
            ("e", &["c", "d"]),
            ("f", &["c"]),
        ]);
        let mut dag = Dag::new(&p);
        assert_eq!(dag.start_ready(), [0, 2]);
        assert_eq!(dag.finish(0, false), [(1, 0), (3, 1), (4, 3)]);
        dag.finish(2, true);
        assert_eq!(dag.start_ready(), [5], "f depends only on c");
        dag.finish(5, true);
        assert!(dag.is_done());
        assert_eq!(dag.state(4), State::Skipped { because: 3 });
    }
}
