//! What the soak submits: the plans (the two examples and four generated ones), inputs of
//! mixed sizes made from a seed, and the output each input must give, computed here.

use std::path::{Path, PathBuf};

use agenix_proto::Digest;
use agenix_proto::plan::{MAX_ARG_BYTES, MAX_PLAN_BYTES, MAX_TASKS};
use anyhow::{Context as _, Result};
use serde_json::json;

/// A small deterministic generator (SplitMix64): a run is reproduced by its seed.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo { lo } else { lo + self.next_u64() % (hi - lo + 1) }
    }

    /// True with probability `p`.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    /// A number in `lo..=hi`, uniform in its logarithm (small ones common, large ones rare).
    pub(crate) fn log_range(&mut self, lo: u64, hi: u64) -> u64 {
        let (l, h) = ((lo.max(1) as f64).ln(), (hi.max(1) as f64).ln());
        let x = l + (h - l) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64);
        (x.exp() as u64).clamp(lo, hi)
    }

    pub(crate) fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[(self.next_u64() % xs.len() as u64) as usize]
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// The kinds of job, one plan each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Kind {
    /// `examples/log-errors.json`: grep -i error | cut -d ' ' -f 3- | sort | uniq -c.
    LogErrors,
    /// `examples/orders-report.json`: csv2json, then wc, two jq (fan-out), then jq (fan-in).
    Orders,
    /// One task: sha256sum (any bytes, empty up to the queue's largest blob).
    Sha,
    /// wc -l and wc -c of the input, fanned into jq -s -c.
    Count,
    /// 100 tasks, the most a plan may hold: sort, 98 × tail -n +1, uniq -c.
    Wide,
    /// A plan near 1 MiB: a chain of the `echo` guest, each with three arguments of `"`
    /// characters, so each task writes about 10,000 bytes of `"` on stderr (the worst case
    /// for JSON escaping); the output is the input.
    Quotes,
}

impl Kind {
    pub(crate) const ALL: [Self; 6] =
        [Self::LogErrors, Self::Orders, Self::Sha, Self::Count, Self::Wide, Self::Quotes];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::LogErrors => "log-errors",
            Self::Orders => "orders-report",
            Self::Sha => "sha256",
            Self::Count => "count",
            Self::Wide => "wide-100",
            Self::Quotes => "quotes-1mib",
        }
    }
}

/// Where each kind's plan is: the plan file (signed by `agx submit`) and a copy signed
/// beforehand with `agx plan sign` (submitted as it is).
#[derive(Debug, Clone)]
pub(crate) struct Plans {
    files: Vec<(Kind, PathBuf)>,
    /// The quotes plan's size and task count, for the report.
    pub(crate) quotes: (usize, usize),
}

impl Plans {
    /// Writes the generated plans and copies of the examples into `dir`.
    pub(crate) fn write(dir: &Path, examples: &Path) -> Result<Self> {
        // Copies of the examples, so that their signed copies are made here too.
        let mut files = Vec::new();
        for kind in [Kind::LogErrors, Kind::Orders] {
            let (from, to) = (
                examples.join(format!("{}.json", kind.name())),
                dir.join(format!("{}.json", kind.name())),
            );
            std::fs::copy(&from, &to).with_context(|| {
                format!("cannot copy the {} example from {}", kind.name(), from.display())
            })?;
            files.push((kind, to));
        }
        let task = |id: String, au: &str, args: &[&str], stdin: serde_json::Value| json!({ "id": id, "run": { "wasm": { "name": au } }, "args": args, "stdin": stdin });
        let plan = |name: &str, tasks: Vec<serde_json::Value>, output: &str| json!({ "schema": "agenix.plan/v1", "name": name, "tasks": tasks, "output": output });
        let input = json!({ "input": true });
        let from = |t: &str| json!({ "task": t });
        let sha =
            plan("soak-sha256", vec![task("sum".into(), "sha256sum", &[], input.clone())], "sum");
        let count = plan(
            "soak-count",
            vec![
                task("lines".into(), "wc", &["-l"], input.clone()),
                task("bytes".into(), "wc", &["-c"], input.clone()),
                task(
                    "both".into(),
                    "jq",
                    &["-s", "-c", "."],
                    json!({ "tasks": ["lines", "bytes"] }),
                ),
            ],
            "both",
        );
        let mut wide = vec![task("t0".into(), "sort", &[], input.clone())];
        for i in 1..MAX_TASKS - 1 {
            wide.push(task(format!("t{i}"), "tail", &["-n", "+1"], from(&format!("t{}", i - 1))));
        }
        let last = MAX_TASKS - 1;
        wide.push(task(format!("t{last}"), "uniq", &["-c"], from(&format!("t{}", last - 1))));
        let wide = plan("soak-wide", wide, &format!("t{last}"));
        // Each task: three arguments of `"` (each under the per-argument cap), so that its
        // stderr ("arg ..." lines) fills the 10,000 bytes kept per task. As many tasks as
        // fit under the plan limit, leaving room for what signing adds (a digest per task,
        // an id and two times).
        let quote = "\"".repeat(MAX_ARG_BYTES.min(3400) - 70);
        let args = [quote.as_str(), quote.as_str(), quote.as_str()];
        let quotes_plan = |n: usize| {
            let tasks = (0..n)
                .map(|i| {
                    let stdin = if i == 0 { input.clone() } else { from(&format!("q{}", i - 1)) };
                    task(format!("q{i}"), "echo", &args, stdin)
                })
                .collect();
            plan("soak-quotes", tasks, &format!("q{}", n - 1))
        };
        let fits = |n: usize| {
            serde_json::to_vec(&quotes_plan(n)).map_or(usize::MAX, |v| v.len()) + 100 * n + 512
                <= MAX_PLAN_BYTES
        };
        let n = (1..=MAX_TASKS).take_while(|n| fits(*n)).last().context("no quotes task fits")?;
        let quotes = quotes_plan(n);
        let quotes_bytes = serde_json::to_vec(&quotes)?.len();
        for (kind, plan) in
            [(Kind::Sha, sha), (Kind::Count, count), (Kind::Wide, wide), (Kind::Quotes, quotes)]
        {
            let path = dir.join(format!("{}.json", kind.name()));
            std::fs::write(&path, serde_json::to_vec(&plan)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
            files.push((kind, path));
        }
        Ok(Self { files, quotes: (quotes_bytes, n) })
    }

    pub(crate) fn file(&self, kind: Kind) -> &Path {
        // Every kind has a file: `write` adds one for each.
        self.files.iter().find(|(k, _)| *k == kind).map_or(Path::new(""), |(_, p)| p)
    }

    pub(crate) fn signed(&self, kind: Kind) -> PathBuf {
        self.file(kind).with_extension("env")
    }
}

/// What a job must output: its digest and size, and the bytes when they are small.
#[derive(Debug, Clone)]
pub(crate) struct Expected {
    pub(crate) digest: Digest,
    pub(crate) size: u64,
    pub(crate) bytes: Option<Vec<u8>>,
}

impl Expected {
    fn of(bytes: Vec<u8>) -> Self {
        Self {
            digest: Digest::of(&bytes),
            size: bytes.len() as u64,
            bytes: (bytes.len() <= 4096).then_some(bytes),
        }
    }
}

/// How big an input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Size {
    /// Nothing at all.
    Empty,
    /// About this many bytes (line inputs end at a line).
    Bytes(u64),
}

/// Picks a size for an input of `kind`: mostly small, some up to a few MiB.
pub(crate) fn pick_size(kind: Kind, rng: &mut Rng) -> Size {
    const K: u64 = 1 << 10;
    const M: u64 = 1 << 20;
    let may_be_empty = matches!(kind, Kind::Sha | Kind::Count);
    if may_be_empty && rng.chance(0.08) {
        return Size::Empty;
    }
    let cap = match kind {
        Kind::Wide => 64 * K,
        Kind::Quotes => 32 * K,
        Kind::Orders => M,
        _ => 4 * M,
    };
    let roll = rng.range(0, 99);
    let (lo, hi) = if roll < 70 {
        (1, 8 * K)
    } else if roll < 95 {
        (8 * K, 512 * K)
    } else {
        (512 * K, 4 * M)
    };
    Size::Bytes(rng.log_range(lo.min(cap), hi.min(cap)))
}

/// An input of `kind` and about `size`, unique by `uniq`, and the output its plan gives.
pub(crate) fn generate(kind: Kind, size: Size, uniq: u64, rng: &mut Rng) -> (Vec<u8>, Expected) {
    let target = match size {
        Size::Empty => 0,
        Size::Bytes(n) => n as usize,
    };
    match kind {
        Kind::LogErrors => {
            let input = log_lines(target, uniq, rng, true);
            let expected = log_errors(&input);
            (input, Expected::of(expected))
        }
        Kind::Wide => {
            let input = log_lines(target, uniq, rng, false);
            let expected = uniq_c(&sorted_lines(&input));
            (input, Expected::of(expected))
        }
        Kind::Orders => orders(target, uniq, rng),
        Kind::Sha | Kind::Count => {
            let mut input = vec![0u8; target];
            if rng.chance(0.5) {
                rng.fill(&mut input);
            } else {
                input = log_lines(target, uniq, rng, false);
                input.truncate(target);
            }
            if target >= 8 {
                input[..8].copy_from_slice(&uniq.to_le_bytes());
            }
            let expected = if kind == Kind::Sha {
                sha256sum(&input)
            } else {
                let lines = input.iter().filter(|b| **b == b'\n').count();
                format!("[{lines},{}]\n", input.len()).into_bytes()
            };
            (input, Expected::of(expected))
        }
        Kind::Quotes => {
            let input = log_lines(target.max(1), uniq, rng, false);
            let expected = Expected::of(input.clone());
            (input, expected)
        }
    }
}

/// An input of exactly `size` bytes for the sha256 plan (the largest blob the queue takes),
/// written straight to `path`; returns its digest and its expected output.
pub(crate) fn huge(path: &Path, size: u64, uniq: u64, rng: &mut Rng) -> Result<(Digest, Expected)> {
    use std::io::Write as _;
    let mut file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut h = agenix_proto::digest::Hasher::new();
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = size;
    let mut first = true;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        rng.fill(&mut chunk[..n]);
        if first && n >= 8 {
            chunk[..8].copy_from_slice(&uniq.to_le_bytes());
            first = false;
        }
        h.update(&chunk[..n]);
        file.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    let digest = h.finish();
    Ok((digest, Expected::of(format!("{}  -\n", digest.hex()).into_bytes())))
}

fn sha256sum(input: &[u8]) -> Vec<u8> {
    format!("{}  -\n", Digest::of(input).hex()).into_bytes()
}

/// Log lines of about `target` bytes: a first line unique to `uniq`, then lines of every
/// level (some repeating, some whose message says "error" at another level); with
/// `an_error`, the last line is an error, so that `grep -i error` selects something.
fn log_lines(target: usize, uniq: u64, rng: &mut Rng, an_error: bool) -> Vec<u8> {
    const LEVELS: &[&str] = &["info", "INFO", "warn", "debug", "ERROR", "error", "Error"];
    const PARTS: &[&str] = &["db", "http", "cache", "auth", "queue", "disk", "net"];
    const MESSAGES: &[&str] = &[
        "connection reset by peer",
        "timeout after 30s",
        "disk full",
        "retrying",
        "request served",
        "slow query",
        "cache miss",
        "user login",
        "worker started",
        "checksum mismatch",
        "no errors found",
        "ERRORS: none",
        "terror alert level 3",
    ];
    let mut out = format!("2026-12-01 info soak: input {uniq}\n").into_bytes();
    let mut line = String::new();
    while out.len() < target {
        line.clear();
        let day = rng.range(1, 28);
        let level = rng.pick(LEVELS);
        let part = rng.pick(PARTS);
        let msg = rng.pick(MESSAGES);
        line.push_str(&format!("2026-12-{day:02} {level} {part}: {msg}"));
        if rng.chance(0.3) {
            line.push_str(&format!(" #{}", rng.range(0, 40)));
        }
        line.push('\n');
        out.extend_from_slice(line.as_bytes());
    }
    if an_error {
        out.extend_from_slice(format!("2026-12-31 ERROR soak: last line of {uniq}\n").as_bytes());
    }
    out
}

/// The lines of `input` without their newlines (a last line without one counts).
fn lines(input: &[u8]) -> Vec<&[u8]> {
    let mut v: Vec<&[u8]> = input.split(|b| *b == b'\n').collect();
    if input.is_empty() || input.ends_with(b"\n") {
        v.pop();
    }
    v
}

fn sorted_lines(input: &[u8]) -> Vec<&[u8]> {
    let mut v = lines(input);
    v.sort_unstable();
    v
}

/// `uniq -c` of `lines`: `%7d %s`.
fn uniq_c(lines: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let mut j = i;
        while j < lines.len() && lines[j] == lines[i] {
            j += 1;
        }
        out.extend_from_slice(format!("{:>7} ", j - i).as_bytes());
        out.extend_from_slice(lines[i]);
        out.push(b'\n');
        i = j;
    }
    out
}

/// grep -i error | cut -d ' ' -f 3- | sort | uniq -c, for ASCII lines.
fn log_errors(input: &[u8]) -> Vec<u8> {
    let mut picked: Vec<&[u8]> = lines(input)
        .into_iter()
        .filter(|l| l.to_ascii_lowercase().windows(5).any(|w| w == b"error"))
        .map(|l| {
            // Fields from the third on; a line without the delimiter passes whole, one with
            // fewer than three fields gives an empty line (as GNU cut does).
            let spaces: Vec<usize> =
                l.iter().enumerate().filter(|(_, b)| **b == b' ').map(|(i, _)| i).collect();
            match spaces.len() {
                0 => l,
                1 => &l[..0],
                _ => &l[spaces[1] + 1..],
            }
        })
        .collect();
    picked.sort_unstable();
    uniq_c(&picked)
}

/// An orders CSV of about `target` bytes (at least one order, amounts that sum well inside
/// 32 bits, one largest order) and its report.
fn orders(target: usize, uniq: u64, rng: &mut Rng) -> (Vec<u8>, Expected) {
    const CUSTOMERS: &[&str] = &["acme", "globex", "initech", "umbrella", "hooli", "stark"];
    const REGIONS: &[&str] = &["eu", "us", "apac"];
    let rows = (target / 28).clamp(1, 40_000);
    let largest = rng.range(0, rows as u64 - 1) as usize;
    let mut csv = String::from("id,customer,region,amount\n");
    let (mut sum, mut top) = (0u64, (String::new(), "", 0u64));
    for i in 0..rows {
        let id = format!("{uniq}-{i}");
        let customer = *rng.pick(CUSTOMERS);
        let amount = if i == largest { rng.range(10_000, 99_999) } else { rng.range(1, 9_999) };
        csv.push_str(&format!("{id},{customer},{},{amount}\n", rng.pick(REGIONS)));
        sum += amount;
        if i == largest {
            top = (id, customer, amount);
        }
    }
    let report = format!(
        "{{\"orders\":{rows},\"revenue\":{sum},\"largest\":{{\"id\":\"{}\",\"customer\":\"{}\",\"amount\":\"{}\"}}}}\n",
        top.0, top.1, top.2
    );
    (csv.into_bytes(), Expected::of(report.into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_errors_follows_the_pipeline() {
        let input = b"2026-12-01 info a b\n2026-12-02 ERROR db: x\n2026-12-03 error db: x\n\
            no-space-error\n2026-12-04 warn terror\nan error\n";
        let out = String::from_utf8(log_errors(input)).unwrap();
        assert_eq!(out, "      1 \n      2 db: x\n      1 no-space-error\n      1 terror\n");
    }

    #[test]
    fn every_kind_gives_output_for_every_size() {
        let mut rng = Rng::new(7);
        for kind in Kind::ALL {
            for size in [Size::Empty, Size::Bytes(1), Size::Bytes(100_000)] {
                let (input, e) = generate(kind, size, 42, &mut rng);
                assert!(e.size > 0 || input.is_empty(), "{kind:?} {size:?}");
            }
        }
    }
}
