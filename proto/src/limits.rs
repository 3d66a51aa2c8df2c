//! Resource limits: what a plan asks for, what a worker allows, and what a task runs under.

use serde::{Deserialize, Serialize};

/// Limits a plan task asks for; anything omitted takes the worker's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskLimits {
    /// Wasm instructions, roughly (wasm tasks only). Written `"unmetered"` in a plan, it is
    /// [`UNMETERED`]: the task runs without fuel metering, bounded by its timeout.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "fuel")]
    pub fuel: Option<u64>,
    /// Linear memory for wasm; address space or cgroup memory for native tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Wall-clock time from start to kill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Bytes of stdout (and, separately, of stderr) kept before the task is stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_bytes: Option<u64>,
    /// Processes and threads (native tasks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// Largest file a task may write (native: RLIMIT_FSIZE; wasm: scratch space).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_bytes: Option<u64>,
}

impl TaskLimits {
    /// True when the task asks for nothing in particular.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The concrete limits: what was asked, else `defaults`.
    pub fn resolve(&self, defaults: &Limits) -> Limits {
        Limits {
            fuel: self.fuel.unwrap_or(defaults.fuel),
            memory_bytes: self.memory_bytes.unwrap_or(defaults.memory_bytes),
            timeout_ms: self.timeout_ms.unwrap_or(defaults.timeout_ms),
            output_bytes: self.output_bytes.unwrap_or(defaults.output_bytes),
            pids: self.pids.unwrap_or(defaults.pids),
            file_bytes: self.file_bytes.unwrap_or(defaults.file_bytes),
        }
    }
}

/// The limits one task runs under, every field set. Also used for a worker's ceilings: the
/// most any plan may ask for (a plan asking for more is refused, never clamped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Wasm fuel.
    pub fuel: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// Wall-clock timeout in milliseconds.
    pub timeout_ms: u64,
    /// Output cap per stream in bytes.
    pub output_bytes: u64,
    /// Process cap (native).
    pub pids: u64,
    /// File size cap in bytes.
    pub file_bytes: u64,
}

/// The fuel of a task that runs without fuel metering: the format's maximum, written
/// `"unmetered"` in a plan. At the fastest a core runs wasm (some 3×10^9 instructions a
/// second) it would last over three days, far past the longest timeout, so a task given it
/// could never run out: the host compiles its component without fuel instrumentation, which
/// runs compute-bound code faster, and the wall-clock timeout alone bounds it.
pub const UNMETERED: u64 = Limits::ABSOLUTE.fuel;

/// How a plan writes [`UNMETERED`].
pub const UNMETERED_NAME: &str = "unmetered";

/// A limit's value for people: its number, or `unmetered` for fuel at [`UNMETERED`].
pub fn show_limit(name: &str, value: u64) -> String {
    if name == "fuel" && value >= UNMETERED {
        UNMETERED_NAME.to_string()
    } else {
        value.to_string()
    }
}

/// `TaskLimits::fuel` in JSON: a number, or the string `"unmetered"` for [`UNMETERED`].
mod fuel {
    use serde::{Deserialize, Deserializer, Serializer, de};

    use super::{UNMETERED, UNMETERED_NAME};

    pub(super) fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(UNMETERED) => s.serialize_str(UNMETERED_NAME),
            Some(n) => s.serialize_u64(*n),
            None => s.serialize_none(),
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Fuel {
        Units(u64),
        Signed(i64),
        Float(f64),
        Word(String),
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let what = match Option::<Fuel>::deserialize(d) {
            Ok(None) => return Ok(None),
            Ok(Some(Fuel::Units(n))) => return Ok(Some(n)),
            Ok(Some(Fuel::Word(w))) if w == UNMETERED_NAME => return Ok(Some(UNMETERED)),
            Ok(Some(Fuel::Word(w))) => format!("{w:?}"),
            Ok(Some(Fuel::Signed(n))) => n.to_string(),
            Ok(Some(Fuel::Float(f))) => f.to_string(),
            Err(_) => "that".to_string(),
        };
        Err(de::Error::custom(format!(
            "fuel must be a whole number or \"{UNMETERED_NAME}\", not {what}"
        )))
    }
}

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

impl Limits {
    /// What a task gets when its plan names no limits.
    pub const DEFAULT: Self = Self {
        fuel: 100_000_000_000,
        memory_bytes: 256 * MIB,
        timeout_ms: 60_000,
        output_bytes: 16 * MIB,
        pids: 64,
        file_bytes: 64 * MIB,
    };

    /// The hard maxima of the format: no worker may allow more.
    pub const ABSOLUTE: Self = Self {
        fuel: 1_000_000_000_000_000,
        memory_bytes: 16 * GIB,
        timeout_ms: 3_600_000,
        output_bytes: GIB,
        pids: 4096,
        file_bytes: 64 * GIB,
    };

    /// The smallest values a plan may ask for.
    pub const MINIMUM: Self =
        Self { fuel: 1, memory_bytes: MIB, timeout_ms: 1, output_bytes: 1, pids: 1, file_bytes: 1 };

    /// Each field with its name, in a fixed order.
    pub fn fields(&self) -> [(&'static str, u64); 6] {
        [
            ("fuel", self.fuel),
            ("memory_bytes", self.memory_bytes),
            ("timeout_ms", self.timeout_ms),
            ("output_bytes", self.output_bytes),
            ("pids", self.pids),
            ("file_bytes", self.file_bytes),
        ]
    }

    /// Whether a task under these limits counts its fuel: every fuel below [`UNMETERED`].
    pub fn is_metered(&self) -> bool {
        self.fuel < UNMETERED
    }

    /// The smaller of each field.
    pub fn min(&self, other: &Self) -> Self {
        Self {
            fuel: self.fuel.min(other.fuel),
            memory_bytes: self.memory_bytes.min(other.memory_bytes),
            timeout_ms: self.timeout_ms.min(other.timeout_ms),
            output_bytes: self.output_bytes.min(other.output_bytes),
            pids: self.pids.min(other.pids),
            file_bytes: self.file_bytes.min(other.file_bytes),
        }
    }
}

impl TaskLimits {
    /// Each field asked for, with its name, in the order of [`Limits::fields`].
    pub fn fields(&self) -> [(&'static str, Option<u64>); 6] {
        [
            ("fuel", self.fuel),
            ("memory_bytes", self.memory_bytes),
            ("timeout_ms", self.timeout_ms),
            ("output_bytes", self.output_bytes),
            ("pids", self.pids),
            ("file_bytes", self.file_bytes),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fuel_of(json: &str) -> Result<Option<u64>, String> {
        serde_json::from_str::<TaskLimits>(json).map(|l| l.fuel).map_err(|e| e.to_string())
    }

    #[test]
    fn fuel_is_a_number_or_unmetered_and_round_trips() {
        assert_eq!(fuel_of(r#"{"fuel": 5}"#), Ok(Some(5)));
        assert_eq!(fuel_of(r#"{"fuel": "unmetered"}"#), Ok(Some(UNMETERED)));
        assert_eq!(fuel_of("{}"), Ok(None));
        for (bad, named) in [
            (r#""lots""#, r#"not "lots""#),
            ("-1", "not -1"),
            ("1.5", "not 1.5"),
            (r#""UNMETERED""#, r#"not "UNMETERED""#),
            (r#""unmetered ""#, r#"not "unmetered ""#),
            ("[]", "not that"),
        ] {
            let e = fuel_of(&format!(r#"{{"fuel": {bad}}}"#)).unwrap_err();
            let want = format!(r#"fuel must be a whole number or "unmetered", {named}"#);
            assert!(e.contains(&want), "{bad}: {e}");
        }
        let unmetered = TaskLimits { fuel: Some(UNMETERED), ..TaskLimits::default() };
        let json = serde_json::to_string(&unmetered).unwrap();
        assert_eq!(json, r#"{"fuel":"unmetered"}"#);
        assert_eq!(serde_json::from_str::<TaskLimits>(&json).unwrap(), unmetered);
        let counted = TaskLimits { fuel: Some(7), ..TaskLimits::default() };
        assert_eq!(serde_json::to_string(&counted).unwrap(), r#"{"fuel":7}"#);
        assert_eq!(serde_json::to_string(&TaskLimits::default()).unwrap(), "{}");
    }

    #[test]
    fn only_the_format_maximum_of_fuel_is_unmetered() {
        assert!(Limits::DEFAULT.is_metered());
        assert!(Limits { fuel: UNMETERED - 1, ..Limits::DEFAULT }.is_metered());
        assert!(!Limits { fuel: UNMETERED, ..Limits::DEFAULT }.is_metered());
        assert_eq!(show_limit("fuel", UNMETERED), "unmetered");
        assert_eq!(show_limit("fuel", 12), "12");
        assert_eq!(show_limit("pids", UNMETERED), UNMETERED.to_string());
    }
}
