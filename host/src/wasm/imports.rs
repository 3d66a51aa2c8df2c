//! The `agenix:au/unit` world as the host enforces it: which imports an AU may have.

use wasmtime::Engine;
use wasmtime::component::Component;

/// The newest WASI 0.2 release this engine serves: wasmtime-wasi and wasmtime-wasi-http 48
/// implement `wasi:*@0.2.12`, and the linker satisfies an import of any earlier 0.2.x with
/// it (0.2 releases only add). A newer 0.2.x may use what this engine lacks: refused.
pub const NEWEST_WASI_0_2_PATCH: u32 = 12;

/// Interfaces an AU may import and use, without versions. Mirrors `wit/au.wit`; a test keeps
/// the two in step.
pub const GRANTED_IMPORTS: &[&str] = &[
    "wasi:cli/environment",
    "wasi:cli/exit",
    "wasi:cli/stdin",
    "wasi:cli/stdout",
    "wasi:cli/stderr",
    "wasi:cli/terminal-input",
    "wasi:cli/terminal-output",
    "wasi:cli/terminal-stdin",
    "wasi:cli/terminal-stdout",
    "wasi:cli/terminal-stderr",
    "wasi:io/error",
    "wasi:io/poll",
    "wasi:io/streams",
    "wasi:clocks/monotonic-clock",
    "wasi:clocks/wall-clock",
    "wasi:random/random",
    "wasi:random/insecure",
    "wasi:random/insecure-seed",
    "wasi:filesystem/types",
    "wasi:filesystem/preopens",
];

/// Standard WASI interfaces that language runtimes import whether or not a program uses
/// them (CPython and componentize-py import every sockets interface; componentize-js imports
/// `wasi:http` for `fetch`). They are linked so that such components run, and every call
/// that could reach a network is denied with the interface's own error (`access-denied`,
/// `HTTP-request-denied`): no socket, name lookup or outgoing request is ever made.
pub const DENIED_IMPORTS: &[&str] = &[
    "wasi:sockets/network",
    "wasi:sockets/instance-network",
    "wasi:sockets/tcp",
    "wasi:sockets/tcp-create-socket",
    "wasi:sockets/udp",
    "wasi:sockets/udp-create-socket",
    "wasi:sockets/ip-name-lookup",
    "wasi:http/types",
    "wasi:http/outgoing-handler",
];

/// The export every AU has: the command entry point.
pub const RUN_EXPORT: &str = "wasi:cli/run";

/// Why a component does not fit the `unit` world.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConformanceError {
    /// It imports interfaces that are neither granted nor linked as denied (anything not
    /// standard WASI, or WASI at a version this engine does not serve).
    #[error("imports outside the agenix:au/unit world: {}", .0.join(", "))]
    Imports(Vec<String>),
    /// It is not a command: no `wasi:cli/run@0.2.x` export (x at most 12).
    #[error("exports no wasi:cli/run@0.2.x: not a command component")]
    NoRun,
    /// Its imports have the right names but not the types this host provides.
    #[error("does not link against this host's WASI: {0}")]
    Link(String),
}

/// What the host does with one import.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportKind {
    /// Part of the `unit` world: linked and usable within the task's grants.
    Granted,
    /// Linked, but every call that could reach a network fails (see [`DENIED_IMPORTS`]).
    Denied,
    /// Neither: the component is refused before it is instantiated.
    Refused(Refusal),
}

/// Why an import is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not an interface the host knows (not standard WASI, or WASI the host does not link).
    Unknown,
    /// A known interface at a version other than 0.2.0 to 0.2.[`NEWEST_WASI_0_2_PATCH`].
    Version,
}

impl ImportKind {
    /// A word for people and JSON: `granted`, `denied` or `refused`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Granted => "granted",
            Self::Denied => "denied",
            Self::Refused(_) => "refused",
        }
    }
}

impl Refusal {
    /// Why, in words.
    pub fn reason(self) -> String {
        match self {
            Self::Unknown => "not an interface AUs may import".into(),
            Self::Version => {
                format!("this engine serves WASI 0.2.0 to 0.2.{NEWEST_WASI_0_2_PATCH} only")
            }
        }
    }
}

/// One import of a component and what the host does with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Import {
    /// The import's name, as the component spells it (`wasi:cli/stdout@0.2.6`).
    pub name: String,
    /// What the host does with it.
    pub kind: ImportKind,
}

/// Whether `version` is a 0.2 release this engine serves: `0.2.N`, N a plain number no
/// greater than [`NEWEST_WASI_0_2_PATCH`] (no pre-releases, no build metadata).
fn served(version: &str) -> bool {
    let Some(patch) = version.strip_prefix("0.2.") else { return false };
    !patch.is_empty()
        && patch.bytes().all(|b| b.is_ascii_digit())
        && (patch == "0" || !patch.starts_with('0'))
        && patch.parse::<u32>().is_ok_and(|p| p <= NEWEST_WASI_0_2_PATCH)
}

/// What the host does with the import named `name`.
pub fn classify(name: &str) -> ImportKind {
    let (interface, version) = name.split_once('@').unwrap_or((name, ""));
    let kind = if GRANTED_IMPORTS.contains(&interface) {
        ImportKind::Granted
    } else if DENIED_IMPORTS.contains(&interface) {
        ImportKind::Denied
    } else {
        return ImportKind::Refused(Refusal::Unknown);
    };
    if served(version) { kind } else { ImportKind::Refused(Refusal::Version) }
}

/// Every import of `component`, by name, with what the host does with it.
pub fn imports(engine: &Engine, component: &Component) -> Vec<Import> {
    component
        .component_type()
        .imports(engine)
        .map(|(name, _)| Import { name: name.to_owned(), kind: classify(name) })
        .collect()
}

/// Checks a component against the `unit` world, naming every refused import.
pub fn check(engine: &Engine, component: &Component) -> Result<(), ConformanceError> {
    let ty = component.component_type();
    let bad: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name)
        .filter(|n| matches!(classify(n), ImportKind::Refused(_)))
        .map(str::to_owned)
        .collect();
    if !bad.is_empty() {
        return Err(ConformanceError::Imports(bad));
    }
    let runs = ty
        .exports(engine)
        .any(|(name, _)| name.split_once('@').is_some_and(|(i, v)| i == RUN_EXPORT && served(v)));
    if !runs {
        return Err(ConformanceError::NoRun);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_versions_are_both_classified() {
        use ImportKind::{Denied, Granted, Refused};
        let cases = [
            ("wasi:cli/stdout@0.2.0", Granted),
            ("wasi:filesystem/types@0.2.12", Granted),
            ("wasi:sockets/tcp@0.2.0", Denied),
            ("wasi:sockets/ip-name-lookup@0.2.9", Denied),
            ("wasi:http/outgoing-handler@0.2.10", Denied),
            ("wasi:cli/stdout@0.2.13", Refused(Refusal::Version)),
            ("wasi:sockets/tcp@0.2.13", Refused(Refusal::Version)),
            ("wasi:cli/stdout@0.3.0", Refused(Refusal::Version)),
            ("wasi:cli/stdout@0.2.0-rc-2023-11-10", Refused(Refusal::Version)),
            ("wasi:cli/stdout@0.2.01", Refused(Refusal::Version)),
            ("wasi:cli/stdout@0.2.", Refused(Refusal::Version)),
            ("wasi:cli/stdout@0.2.99999999999", Refused(Refusal::Version)),
            ("wasi:cli/stdout", Refused(Refusal::Version)),
            ("wasi:http/incoming-handler@0.2.0", Refused(Refusal::Unknown)),
            ("wasi:config/store@0.2.0", Refused(Refusal::Unknown)),
            ("evil:cli/stdout@0.2.0", Refused(Refusal::Unknown)),
            ("stdout", Refused(Refusal::Unknown)),
        ];
        for (name, kind) in cases {
            assert_eq!(classify(name), kind, "{name}");
        }
    }

    /// `wit/au.wit` describes the same world: [`GRANTED_IMPORTS`] as its imports, and
    /// [`DENIED_IMPORTS`] in the comment that lists what is linked denied.
    #[test]
    fn lists_match_the_unit_world() {
        let mut resolve = wit_parser::Resolve::default();
        let wit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let (pkg, _) = resolve.push_dir(&wit).unwrap();
        let world = resolve.select_world(&[pkg], Some("unit")).unwrap();
        let name = |key: &wit_parser::WorldKey| {
            let wit_parser::WorldKey::Interface(id) = key else { panic!("{key:?}") };
            let iface = &resolve.interfaces[*id];
            let package = &resolve.packages[iface.package.unwrap()].name;
            format!("{}:{}/{}", package.namespace, package.name, iface.name.as_ref().unwrap())
        };
        let mut imports: Vec<String> = resolve.worlds[world].imports.keys().map(name).collect();
        let mut granted: Vec<String> = GRANTED_IMPORTS.iter().map(|s| s.to_string()).collect();
        imports.sort();
        granted.sort();
        assert_eq!(imports, granted);
        let exports: Vec<String> = resolve.worlds[world].exports.keys().map(name).collect();
        assert_eq!(exports, [RUN_EXPORT]);
        let text = std::fs::read_to_string(wit.join("au.wit")).unwrap();
        for denied in DENIED_IMPORTS {
            assert!(text.contains(&format!("///   {denied}\n")), "au.wit does not list {denied}");
        }
        assert!(text.contains(&format!("0.2.0 to 0.2.{NEWEST_WASI_0_2_PATCH}")));
    }
}
