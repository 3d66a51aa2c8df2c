//! Builds the test guests (host/guests) and the standard AUs (aus/) for wasm32-wasip2, the
//! AUs and probes in Python and JavaScript (scripts/build-lang-aus.sh), and the native
//! attack program (host/attack), and exports each one's path as a constant. All
//! go to a fixed directory under the workspace's target dir, so every build of this crate
//! shares one cached build.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUESTS: &[&str] = &[
    "spin", "grow", "sleep", "fs", "fill", "flood", "socket", "exit", "random", "echo", "randloop",
    "unlinked", "tryspin", "nap", "net", "residue",
];
const AUS: &[&str] =
    &["grep", "wc", "sort", "uniq", "head", "tail", "cut", "jq", "csv2json", "sha256sum"];

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest.join("../..").canonicalize().expect("the workspace root exists");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<crate>-<hash>/out.
    let target =
        out.ancestors().nth(4).expect("OUT_DIR is inside the target dir").join("test-programs");

    println!("cargo:rerun-if-changed={}", root.join("host/guests/src").display());
    println!("cargo:rerun-if-changed={}", root.join("host/guests/Cargo.toml").display());
    println!("cargo:rerun-if-changed={}", root.join("aus/src").display());
    println!("cargo:rerun-if-changed={}", root.join("aus/Cargo.toml").display());
    println!("cargo:rerun-if-changed={}", root.join("host/attack/src").display());
    println!("cargo:rerun-if-changed={}", root.join("host/attack/Cargo.toml").display());

    let wasm = ["--target", "wasm32-wasip2"];
    let guests = target.join("guests");
    cargo(
        &root,
        &["build", "--release", "--manifest-path", "host/guests/Cargo.toml"],
        &wasm,
        &guests,
    );
    let aus = target.join("aus");
    cargo(&root, &["build", "--profile", "au", "-p", "agenix-aus"], &wasm, &aus);
    let attack = target.join("attack");
    cargo(
        &root,
        &["build", "--release", "--manifest-path", "host/attack/Cargo.toml"],
        &[],
        &attack,
    );

    // The AUs in Python and JavaScript, and the probes in those languages.
    let cargo_target = out.ancestors().nth(4).expect("OUT_DIR is inside the target dir");
    for dir in ["aus/lang", "host/guests/lang", "wit", "scripts/build-lang-aus.sh"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let status = Command::new(root.join("scripts/build-lang-aus.sh"))
        .arg("--target")
        .arg(cargo_target)
        .status()
        .expect("scripts/build-lang-aus.sh runs");
    assert!(status.success(), "scripts/build-lang-aus.sh failed (it needs python3 and npm)");
    let lang = cargo_target.join("lang-aus");

    let mut code = String::new();
    for g in GUESTS {
        let p = guests.join("wasm32-wasip2/release").join(format!("{g}.wasm"));
        emit(&mut code, "GUEST", g, &p);
    }
    for a in AUS {
        let p = aus.join("wasm32-wasip2/au").join(format!("au-{a}.wasm"));
        emit(&mut code, "AU", a, &p);
    }
    for (kind, name) in [("AU", "csvstat"), ("AU", "reshape"), ("PROBE", "py"), ("PROBE", "js")] {
        let file = format!("{}-{name}.wasm", kind.to_lowercase());
        emit(&mut code, kind, name, &lang.join(file));
    }
    emit(&mut code, "NATIVE", "attack", &attack.join("release/agenix-attack"));
    let _ = writeln!(
        code,
        "/// Where scripts/build-lang-aus.sh installed componentize-py (`python/`) and\n\
         /// componentize-js (`js/`).\npub const TOOLCHAINS: &str = {:?};",
        cargo_target.join("toolchains").display().to_string()
    );
    code.push_str(
        "/// Every standard AU: (name, path).\npub const ALL_AUS: &[(&str, &str)] = &[\n",
    );
    for a in AUS {
        let _ = writeln!(code, "    ({a:?}, AU_{}),", a.to_uppercase());
    }
    code.push_str("];\n");
    std::fs::write(out.join("programs.rs"), code).expect("OUT_DIR is writable");
}

fn emit(code: &mut String, kind: &str, name: &str, path: &Path) {
    assert!(path.exists(), "{} was not built", path.display());
    let _ = writeln!(code, "/// `{name}`, built.");
    let _ = writeln!(
        code,
        "pub const {kind}_{}: &str = {:?};",
        name.to_uppercase(),
        path.display().to_string()
    );
}

fn cargo(root: &Path, args: &[&str], target: &[&str], target_dir: &Path) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root)
        .args(args)
        .args(target)
        .arg("--locked")
        .env("CARGO_TARGET_DIR", target_dir)
        // Don't let the outer build's wrappers and flags (clippy, coverage) leak in.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .expect("cargo runs");
    assert!(
        status.success(),
        "building {args:?} for wasm32-wasip2 failed (is the target installed? run scripts/setup.sh)"
    );
}
