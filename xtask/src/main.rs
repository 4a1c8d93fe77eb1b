//! Project chores, run as `cargo xtask <command>`.
//!
//! * `ci`: everything CI checks, in order, stopping at the first failure.
//! * `fuzz [--target NAME] [--seconds N]`: runs the cargo-fuzz targets
//!   under `fuzz/` with the nightly toolchain.
//! * `loom`: the loom model tests (part of `ci`).
//! * `soak [--seconds N]`: the randomized stream soak test, for N seconds.
//! * `bench`: runs the criterion benchmarks.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const FUZZ_TARGETS: &[&str] = &["frame_parser", "metadata"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = args
        .split_first()
        .map_or(("help", &[][..]), |(c, r)| (c.as_str(), r));
    match command {
        "ci" => ci(),
        "fuzz" => fuzz(rest),
        "soak" => soak(rest),
        "loom" => loom(),
        "bench" => run(cargo().args(["bench", "--workspace"])),
        "help" | "--help" | "-h" => {
            println!("{}", usage());
            Ok(())
        }
        other => bail!("unknown command {other:?}\n{}", usage()),
    }
}

fn usage() -> &'static str {
    "usage: cargo xtask <command>\n\
     \n\
     commands:\n\
     \x20 ci                                 fmt, clippy, tests, docs (what CI runs)\n\
     \x20 fuzz [--target NAME] [--seconds N] run fuzz targets (needs nightly + cargo-fuzz)\n\
     \x20 loom                               loom model tests (also part of ci)\n\
     \x20 soak [--seconds N]                 randomized stream soak test (default 60 s)\n\
     \x20 bench                              run the criterion benchmarks"
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Prints the command, runs it, and fails if it fails.
fn run(cmd: &mut Command) -> Result<()> {
    let shown = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let envs: String = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={} ", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    println!("xtask: running {envs}{shown}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("xtask: `{shown}` failed with {status}");
    }
    Ok(())
}

fn ci() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args(["test", "--workspace"]))?;
    loom()?;
    run(cargo()
        .args(["doc", "--workspace", "--no-deps"])
        .env("RUSTDOCFLAGS", "-D warnings"))?;
    println!("xtask: ci passed");
    Ok(())
}

/// Parses `--seconds N` (the only option of `soak`).
fn seconds_option(args: &[String], default: u64) -> Result<u64> {
    match args {
        [] => Ok(default),
        [flag, n] if flag == "--seconds" => n.parse().context("--seconds needs a number"),
        other => bail!("unexpected arguments {other:?}; expected --seconds N"),
    }
}

fn soak(args: &[String]) -> Result<()> {
    let seconds = seconds_option(args, 60)?;
    run(cargo()
        .args(["test", "-p", "drpc-manager", "--release", "--test", "soak", "--", "--nocapture"])
        .env("DRPC_SOAK_SECONDS", seconds.to_string()))
}

/// The loom model tests of drpc-stream's receive queue and writer, in
/// their own target directory (the cfg changes every crate's build).
fn loom() -> Result<()> {
    let target = workspace_root().join("target").join("loom");
    run(cargo()
        .args(["test", "-p", "drpc-stream", "--release", "--test", "loom"])
        .env("RUSTFLAGS", "--cfg drpc_loom")
        .env("CARGO_TARGET_DIR", target))
}

fn fuzz(args: &[String]) -> Result<()> {
    let mut targets: Vec<String> = Vec::new();
    let mut seconds: u64 = 60;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--target" => targets.push(it.next().context("--target needs a name")?.clone()),
            "--seconds" => {
                seconds = it
                    .next()
                    .context("--seconds needs a number")?
                    .parse()
                    .context("--seconds needs a number")?
            }
            other => bail!("unknown fuzz option {other:?}"),
        }
    }
    if targets.is_empty() {
        targets = FUZZ_TARGETS.iter().map(|s| s.to_string()).collect();
    }
    let nightly = Command::new("cargo")
        .args(["+nightly", "--version"])
        .output();
    if !nightly.is_ok_and(|o| o.status.success()) {
        bail!("cargo xtask fuzz needs a nightly toolchain: rustup toolchain install nightly");
    }
    let fuzz_installed = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output();
    if !fuzz_installed.is_ok_and(|o| o.status.success()) {
        bail!("cargo xtask fuzz needs cargo-fuzz: cargo install cargo-fuzz --locked");
    }
    for target in targets {
        run(Command::new("cargo")
            .current_dir(workspace_root().join("fuzz"))
            .args(["+nightly", "fuzz", "run", &target, "--"])
            .arg(format!("-max_total_time={seconds}")))?;
    }
    Ok(())
}
