//! The `agenix:au/unit` world as the host enforces it: which imports an AU may have.

use wasmtime::Engine;
use wasmtime::component::Component;

/// Interfaces an AU may import, without versions (any `0.2.x` is accepted). Mirrors
/// `wit/au.wit`; a test keeps the two in step.
pub const ALLOWED_IMPORTS: &[&str] = &[
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

/// The export every AU has: the command entry point.
pub const RUN_EXPORT: &str = "wasi:cli/run";

/// Why a component does not fit the `unit` world.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConformanceError {
    /// It imports interfaces outside the world (sockets, http, anything unknown).
    #[error("imports outside the agenix:au/unit world: {}", .0.join(", "))]
    Imports(Vec<String>),
    /// It is not a command: no `wasi:cli/run` export.
    #[error("exports no wasi:cli/run@0.2.x: not a command component")]
    NoRun,
}

/// Splits `wasi:cli/stdout@0.2.6` into the interface and whether its version is 0.2.x.
fn allowed(name: &str) -> bool {
    let (interface, version) = name.split_once('@').unwrap_or((name, ""));
    version.starts_with("0.2.") && ALLOWED_IMPORTS.contains(&interface)
}

/// Every import of `component`, by name.
pub fn imports(engine: &Engine, component: &Component) -> Vec<String> {
    component.component_type().imports(engine).map(|(name, _)| name.to_owned()).collect()
}

/// Checks a component against the `unit` world, naming every offending import.
pub fn check(engine: &Engine, component: &Component) -> Result<(), ConformanceError> {
    let ty = component.component_type();
    let bad: Vec<String> = ty
        .imports(engine)
        .map(|(name, _)| name)
        .filter(|n| !allowed(n))
        .map(str::to_owned)
        .collect();
    if !bad.is_empty() {
        return Err(ConformanceError::Imports(bad));
    }
    let runs = ty.exports(engine).any(|(name, _)| {
        name.split_once('@').is_some_and(|(i, v)| i == RUN_EXPORT && v.starts_with("0.2."))
    });
    if !runs {
        return Err(ConformanceError::NoRun);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_names_are_both_checked() {
        assert!(allowed("wasi:cli/stdout@0.2.0"));
        assert!(allowed("wasi:filesystem/types@0.2.12"));
        assert!(!allowed("wasi:cli/stdout@0.3.0"));
        assert!(!allowed("wasi:cli/stdout"));
        assert!(!allowed("wasi:sockets/tcp@0.2.0"));
        assert!(!allowed("wasi:http/outgoing-handler@0.2.0"));
        assert!(!allowed("evil:cli/stdout@0.2.0"));
    }

    /// `wit/au.wit` and [`ALLOWED_IMPORTS`] describe the same world.
    #[test]
    fn allowlist_matches_the_unit_world() {
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
        let mut allowed: Vec<String> = ALLOWED_IMPORTS.iter().map(|s| s.to_string()).collect();
        imports.sort();
        allowed.sort();
        assert_eq!(imports, allowed);
        let exports: Vec<String> = resolve.worlds[world].exports.keys().map(name).collect();
        assert_eq!(exports, [RUN_EXPORT]);
    }
}
