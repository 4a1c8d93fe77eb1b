//! Project chores, run as `cargo xtask <command>`.
//!
//! * `ci`: everything CI checks, in order, stopping at the first failure.
//! * `fuzz [--target NAME] [--seconds N]`: runs the cargo-fuzz targets
//!   under `fuzz/` with the nightly toolchain.
//! * `loom`: the loom model tests (part of `ci`).
//! * `soak [--seconds N]`: the randomized stream soak test, for N seconds.
//! * `bench`: runs the criterion benchmarks.
//! * `interop`: builds `drpc-interop`, starts its server and runs every
//!   client scenario against it, in each flow-control mode and sequential
//!   (part of `ci`).
//! * `adversarial [--scale N]`: the hostile-peer suite, floods N times
//!   longer than in CI.
//! * `interop-bench [--duration D] [--rounds N] [--bin PATH] [--only SUBSTRING]`:
//!   the benchmark shapes of the interop contract (release build, with the
//!   `grpc` feature) next to the raw TCP baselines and to tonic (gRPC)
//!   serving and calling the same service, N times over, with the issues'
//!   targets per round and their medians; `--only` runs the shapes whose
//!   label contains SUBSTRING (`--only tonic`, `--only "outstream small"`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

const FUZZ_TARGETS: &[&str] = &[
    "frame_parser",
    "metadata",
    "coalescing_reader",
    "flow_frames",
];

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
        "interop" => interop(),
        "adversarial" => adversarial(rest),
        "interop-bench" => interop_bench(rest),
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
     \x20 bench                              run the criterion benchmarks\n\
     \x20 interop                            drpc-interop server + every client scenario, each flow-control mode\n\
     \x20 adversarial [--scale N]            the hostile-peer suite with floods N times longer (default 20)\n\
     \x20 interop-bench [--duration D] [--rounds N] [--bin PATH] [--only SUBSTRING]\n\
     \x20                                    interop benchmark shapes, TCP baselines, tonic, targets"
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
        "--all-features",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args(["test", "--workspace"]))?;
    interop()?;
    loom()?;
    run(cargo()
        .args(["doc", "--workspace", "--no-deps", "--all-features"])
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
        .args([
            "test",
            "-p",
            "drpc-manager",
            "--release",
            "--test",
            "soak",
            "--",
            "--nocapture",
        ])
        .env("DRPC_SOAK_SECONDS", seconds.to_string()))
}

/// The hostile-peer suite (`drpc-server/tests/adversarial.rs`) in release
/// mode with its floods `--scale N` times longer than in CI.
fn adversarial(args: &[String]) -> Result<()> {
    let scale = match args {
        [] => 20,
        [flag, n] if flag == "--scale" => n.parse().context("--scale needs a number")?,
        other => bail!("unexpected arguments {other:?}; expected --scale N"),
    };
    run(cargo()
        .args([
            "test",
            "-p",
            "drpc-server",
            "--release",
            "--test",
            "adversarial",
            "--",
            "--nocapture",
        ])
        .env("DRPC_ADVERSARIAL_SCALE", scale.to_string()))
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

/// The directory cargo builds into.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        })
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The `drpc-interop` binary of a profile (`debug` or `release`).
fn interop_binary(profile: &str) -> PathBuf {
    target_dir()
        .join(profile)
        .join(format!("drpc-interop{}", std::env::consts::EXE_SUFFIX))
}

/// A server process that prints `listening on ADDR` once ready; killed
/// when dropped, whatever happened meanwhile.
struct Background {
    child: Child,
    addr: String,
}

impl Background {
    /// Starts `bin args` and waits (at most 30 s) for its address.
    fn start(bin: &Path, args: &[&str]) -> Result<Background> {
        println!("xtask: starting {} {}", bin.display(), args.join(" "));
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        // From here on, the process is killed on every path out.
        let mut server = Background {
            child,
            addr: String::new(),
        };
        let (tx, rx) = mpsc::channel();
        // Reads the address, then keeps draining stdout so that the server
        // never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match (line.strip_prefix("listening on "), tx.take()) {
                    (Some(addr), Some(tx)) => {
                        let _ = tx.send(addr.trim().to_owned());
                    }
                    (_, unsent) => {
                        tx = unsent;
                        println!("{line}");
                    }
                }
            }
        });
        server.addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => bail!(
                "`{} {}` exited or did not print `listening on ADDR` within 30 s",
                bin.display(),
                args.join(" ")
            ),
        };
        println!("xtask: {} listening on {}", args[0], server.addr);
        Ok(server)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `bin args`, prints its output, and says whether it succeeded.
fn run_printed(bin: &Path, args: &[&str]) -> Result<bool> {
    println!("xtask: running {} {}", bin.display(), args.join(" "));
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {}", bin.display()))?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        println!(
            "xtask: `{} {}` failed with {}",
            bin.display(),
            args.join(" "),
            out.status
        );
    }
    Ok(out.status.success())
}

/// Builds `drpc-interop` (debug), starts its server, and runs every
/// client scenario against it, multiplexed then sequential. The server is
/// killed whatever the outcome.
fn interop() -> Result<()> {
    run(cargo().args(["build", "-p", "drpc-interop"]))?;
    let bin = interop_binary("debug");
    let mut failed = Vec::new();
    // Each flow-control mode against a server in the same mode; a
    // sequential client (flow control never applies to it) against the
    // default server.
    for mode in ["auto", "off", "fork"] {
        let server = Background::start(
            &bin,
            &["serve", "--addr", "127.0.0.1:0", "--flow-control", mode],
        )?;
        let mut runs: Vec<Vec<&str>> = vec![vec!["--flow-control", mode]];
        if mode == "auto" {
            runs.push(vec!["--sequential"]);
        }
        for extra in runs {
            let mut args = vec!["client", "--addr", &server.addr, "--scenario", "all"];
            args.extend_from_slice(&extra);
            if !run_printed(&bin, &args)? {
                failed.push(format!("{} (server --flow-control {mode})", args.join(" ")));
            }
        }
        drop(server);
    }
    if !failed.is_empty() {
        bail!("xtask: interop scenarios failed: {}", failed.join("; "));
    }
    println!("xtask: interop passed");
    Ok(())
}

/// What runs a benchmark shape: `drpc-interop bench` against the DRPC
/// server, `drpc-interop tcp-bench` against the raw TCP echo server, or
/// `drpc-interop grpc-bench` (tonic's client) against `grpc-serve`
/// (tonic's server).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Runner {
    Drpc,
    Tcp,
    Tonic,
}

impl Runner {
    /// The `drpc-interop` command that runs a shape.
    fn command(self) -> &'static str {
        match self {
            Runner::Drpc => "bench",
            Runner::Tcp => "tcp-bench",
            Runner::Tonic => "grpc-bench",
        }
    }

    /// The `drpc-interop` command of the server it runs against.
    fn server(self) -> &'static str {
        match self {
            Runner::Drpc => "serve",
            Runner::Tcp => "tcp-echo",
            Runner::Tonic => "grpc-serve",
        }
    }
}

// The shapes that both DRPC and tonic run (the tonic row's label is the
// DRPC one with `tonic ` in front).
const UNARY_SMALL: &[&str] = &["--kind", "unary", "--size", "small"];
const UNARY_SMALL_64_ON_1: &[&str] = &[
    "--kind", "unary", "--size", "small", "--conc", "64", "--conns", "1",
];
const BIDI_SMALL: &[&str] = &["--kind", "bidi", "--size", "small"];
const INSTREAM_SMALL: &[&str] = &["--kind", "instream", "--size", "small"];
const INSTREAM_MED: &[&str] = &["--kind", "instream", "--size", "med"];
const INSTREAM_LARGE: &[&str] = &["--kind", "instream", "--size", "large"];
const OUTSTREAM_SMALL: &[&str] = &["--kind", "outstream", "--size", "small"];
const OUTSTREAM_MED: &[&str] = &["--kind", "outstream", "--size", "med"];
const OUTSTREAM_LARGE: &[&str] = &["--kind", "outstream", "--size", "large"];

/// The benchmark shapes of the interop contract, their raw TCP baselines
/// and their tonic counterparts, in the order they run: each baseline
/// right before the shapes it is the baseline of, and each tonic row right
/// after its DRPC row, so that a ratio compares runs made under the same
/// conditions on a machine whose speed drifts.
const INTEROP_BENCH_SHAPES: &[(Runner, &str, &[&str])] = &[
    (
        Runner::Tcp,
        "tcp ping-pong small (baseline of unary/bidi small)",
        &["--mode", "pingpong", "--size", "small"],
    ),
    (Runner::Drpc, "unary small", UNARY_SMALL),
    (Runner::Tonic, "tonic unary small", UNARY_SMALL),
    (Runner::Drpc, "bidi small", BIDI_SMALL),
    (Runner::Tonic, "tonic bidi small", BIDI_SMALL),
    (
        Runner::Tcp,
        "tcp ping-pong med (baseline of unary med)",
        &["--mode", "pingpong", "--size", "med"],
    ),
    (
        Runner::Drpc,
        "unary med",
        &["--kind", "unary", "--size", "med"],
    ),
    (
        Runner::Tcp,
        "tcp ping-pong large (baseline of unary large)",
        &["--mode", "pingpong", "--size", "large"],
    ),
    (
        Runner::Drpc,
        "unary large",
        &["--kind", "unary", "--size", "large"],
    ),
    (
        Runner::Tcp,
        "tcp one way large (baseline of in/outstream large)",
        &["--mode", "oneway", "--size", "large"],
    ),
    (Runner::Drpc, "outstream large", OUTSTREAM_LARGE),
    (Runner::Tonic, "tonic outstream large", OUTSTREAM_LARGE),
    (Runner::Drpc, "instream large", INSTREAM_LARGE),
    (Runner::Tonic, "tonic instream large", INSTREAM_LARGE),
    (
        Runner::Tcp,
        "tcp one way small (baseline of outstream small)",
        &["--mode", "oneway", "--size", "small"],
    ),
    (Runner::Drpc, "outstream small", OUTSTREAM_SMALL),
    (Runner::Tonic, "tonic outstream small", OUTSTREAM_SMALL),
    (Runner::Drpc, "outstream med", OUTSTREAM_MED),
    (Runner::Tonic, "tonic outstream med", OUTSTREAM_MED),
    (Runner::Drpc, "instream small", INSTREAM_SMALL),
    (Runner::Tonic, "tonic instream small", INSTREAM_SMALL),
    (Runner::Drpc, "instream med", INSTREAM_MED),
    (Runner::Tonic, "tonic instream med", INSTREAM_MED),
    (
        Runner::Drpc,
        "unary small, 64 tasks on 64 sequential connections",
        &[
            "--kind",
            "unary",
            "--size",
            "small",
            "--conc",
            "64",
            "--conns",
            "64",
            "--sequential",
        ],
    ),
    (
        Runner::Drpc,
        "unary small, 64 tasks on one connection",
        UNARY_SMALL_64_ON_1,
    ),
    (
        Runner::Tonic,
        "tonic unary small, 64 tasks on one connection",
        UNARY_SMALL_64_ON_1,
    ),
    (
        Runner::Drpc,
        "unary small, 64 tasks on 64 connections",
        &[
            "--kind", "unary", "--size", "small", "--conc", "64", "--conns", "64",
        ],
    ),
];

/// Runs the interop benchmark shapes: DRPC's against a release
/// `drpc-interop serve`, the raw TCP baselines against `drpc-interop
/// tcp-echo`, tonic's against `drpc-interop grpc-serve` (the binary built
/// with its `grpc` feature), and prints every result line (each under a
/// `# label` line). With `--rounds N`, the whole list runs N times, and the
/// issues' targets are computed per round (each from figures of that
/// round) with their medians, because a shared machine drifts between
/// runs. `--only SUBSTRING` runs only the shapes whose label contains it
/// (and starts only the servers they need).
fn interop_bench(args: &[String]) -> Result<()> {
    let mut duration = "3s".to_owned();
    let mut rounds: usize = 1;
    let mut prebuilt: Option<PathBuf> = None;
    let mut only: Option<String> = None;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--duration" => duration = it.next().context("--duration needs a value")?.clone(),
            // Another build of drpc-interop (an earlier commit's, say), for
            // before/after figures with the same harness.
            "--bin" => prebuilt = Some(PathBuf::from(it.next().context("--bin needs a path")?)),
            "--rounds" => {
                rounds = it
                    .next()
                    .context("--rounds needs a value")?
                    .parse()
                    .context("--rounds")?;
            }
            "--only" => only = Some(it.next().context("--only needs a value")?.clone()),
            other => bail!(
                "unexpected argument {other:?}; expected --duration D, --rounds N, --bin PATH, \
                 --only SUBSTRING"
            ),
        }
    }
    let shapes: Vec<(Runner, &str, &[&str])> = INTEROP_BENCH_SHAPES
        .iter()
        .filter(|(_, label, _)| only.as_deref().is_none_or(|only| label.contains(only)))
        .copied()
        .collect();
    if shapes.is_empty() {
        bail!(
            "--only {:?} matches no shape; the shapes are:\n  {}",
            only.unwrap_or_default(),
            INTEROP_BENCH_SHAPES
                .iter()
                .map(|(_, label, _)| *label)
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
    let bin = match prebuilt {
        Some(bin) => bin,
        None => {
            run(cargo().args([
                "build",
                "-p",
                "drpc-interop",
                "--release",
                "--features",
                "grpc",
            ]))?;
            interop_binary("release")
        }
    };
    // One server for each runner that a selected shape uses.
    let mut servers: Vec<(Runner, Background)> = Vec::new();
    for runner in [Runner::Drpc, Runner::Tcp, Runner::Tonic] {
        if shapes.iter().any(|(r, _, _)| *r == runner) {
            let server = Background::start(&bin, &[runner.server(), "--addr", "127.0.0.1:0"])?;
            servers.push((runner, server));
        }
    }
    let mut all_rounds = Vec::new();
    let mut failed = Vec::new();
    // Let the machine settle after the build before the first figure.
    std::thread::sleep(Duration::from_secs(3));
    for round in 1..=rounds.max(1) {
        let mut results = Vec::new();
        for &(runner, label, shape) in &shapes {
            let Some((_, peer)) = servers.iter().find(|(r, _)| *r == runner) else {
                bail!("no server started for {label}");
            };
            let mut args = vec![
                runner.command(),
                "--addr",
                &peer.addr,
                "--duration",
                &duration,
            ];
            args.extend_from_slice(shape);
            println!(
                "xtask: round {round}: {label}: drpc-interop {}",
                args.join(" ")
            );
            let peer_before = cpu_ticks(peer.child.id());
            // Through a shell that prints its own /proc stat once the client
            // has exited: its children's CPU time is the client's.
            let out = Command::new("sh")
                .arg("-c")
                .arg(r#""$0" "$@" && cat /proc/$$/stat"#)
                .arg(&bin)
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("starting {}", bin.display()))?;
            let peer_after = cpu_ticks(peer.child.id());
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
            let stdout = String::from_utf8_lossy(&out.stdout);
            let mut lines = stdout.lines();
            let mut line = lines.next().unwrap_or_default().trim().to_owned();
            let client_ticks = lines.next().and_then(children_ticks);
            if let (Some(client), Some(before), Some(after), Some(ops)) =
                (client_ticks, peer_before, peer_after, field(&line, "ops"))
                && ops > 0.0
            {
                // Clock ticks are 10 ms: a 3 s run measures to about 1%.
                let us = (client + after.saturating_sub(before)) as f64 * 1e6 / CLOCK_TICKS;
                line.push_str(&format!(" cpu_us_per_op={:.2}", us / ops));
            }
            println!("{line}");
            if out.status.success() {
                results.push((label, line));
            } else {
                failed.push(label);
            }
        }
        println!("\nxtask: interop-bench results, round {round} ({duration} per shape)");
        for (label, line) in &results {
            println!("# {label}\n{line}");
        }
        all_rounds.push(results);
    }
    drop(servers);
    print_targets(&all_rounds);
    if !failed.is_empty() {
        bail!("xtask: benchmarks failed: {}", failed.join("; "));
    }
    Ok(())
}

/// Clock ticks per second of `/proc/*/stat` times (`getconf CLK_TCK`,
/// 100 on Linux).
const CLOCK_TICKS: f64 = 100.0;

/// User plus system CPU time of process `pid` so far, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&stat, &[13, 14])
}

/// The CPU time of the waited-for children of the process whose
/// `/proc/PID/stat` line this is.
fn children_ticks(stat: &str) -> Option<u64> {
    stat_fields(stat, &[15, 16])
}

/// The sum of fields `indexes` (0-based, the command's parenthesized name
/// counted as field 1) of a `/proc/PID/stat` line.
fn stat_fields(stat: &str, indexes: &[usize]) -> Option<u64> {
    // The name may hold spaces: fields are counted after its ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    indexes
        .iter()
        .map(|&i| fields.get(i - 2)?.parse::<u64>().ok())
        .sum()
}

/// One field of a `bench` result line (`key=value`).
fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// The issues' targets, per round and as medians over the rounds: ratios
/// of two rows' figures, and single figures. A target whose rows did not
/// run (see `--only`) prints `n/a`.
fn print_targets(rounds: &[Vec<(&str, String)>]) {
    /// A figure: the label of a row and the key of a field of its line.
    type Figure = (&'static str, &'static str);
    const TCP_PINGPONG_SMALL: &str = "tcp ping-pong small (baseline of unary/bidi small)";
    const TCP_ONE_WAY_LARGE: &str = "tcp one way large (baseline of in/outstream large)";
    let lookup = |round: &[(&str, String)], (label, key): Figure| {
        round
            .iter()
            .find(|(l, _)| *l == label)
            .and_then(|(_, line)| field(line, key))
    };
    // (name, figure, divided by: None for the figure itself)
    let targets: [(&str, Figure, Option<Figure>); 16] = [
        (
            "unary small p50 / TCP ping-pong p50 (target <= 1.15)",
            ("unary small", "p50_us"),
            Some((TCP_PINGPONG_SMALL, "p50_us")),
        ),
        (
            "unary small mean / TCP ping-pong mean (target <= 1.15)",
            ("unary small", "mean_us"),
            Some((TCP_PINGPONG_SMALL, "mean_us")),
        ),
        (
            "client stream large / TCP one way (target >= 0.75)",
            ("instream large", "mb_per_s"),
            Some((TCP_ONE_WAY_LARGE, "mb_per_s")),
        ),
        (
            "server stream large / TCP one way (target >= 0.75)",
            ("outstream large", "mb_per_s"),
            Some((TCP_ONE_WAY_LARGE, "mb_per_s")),
        ),
        (
            "unary small CPU per call / TCP ping-pong CPU per exchange (target <= 1.35)",
            ("unary small", "cpu_us_per_op"),
            Some((TCP_PINGPONG_SMALL, "cpu_us_per_op")),
        ),
        (
            "64 tasks, one connection / 64 sequential connections (target >= 2)",
            ("unary small, 64 tasks on one connection", "ops_per_s"),
            Some((
                "unary small, 64 tasks on 64 sequential connections",
                "ops_per_s",
            )),
        ),
        (
            "64 tasks, one connection / 64 multiplexed connections (target >= 1.6)",
            ("unary small, 64 tasks on one connection", "ops_per_s"),
            Some(("unary small, 64 tasks on 64 connections", "ops_per_s")),
        ),
        // Issue 14: streams of small messages, and tonic.
        (
            "outstream small drpc/tonic msgs/s (target >= 1)",
            ("outstream small", "ops_per_s"),
            Some(("tonic outstream small", "ops_per_s")),
        ),
        (
            "outstream med drpc/tonic msgs/s (target >= 1)",
            ("outstream med", "ops_per_s"),
            Some(("tonic outstream med", "ops_per_s")),
        ),
        (
            "instream small drpc/tonic msgs/s (target >= 5)",
            ("instream small", "ops_per_s"),
            Some(("tonic instream small", "ops_per_s")),
        ),
        (
            "bidi small p50 / unary small p50 (target <= 0.75)",
            ("bidi small", "p50_us"),
            Some(("unary small", "p50_us")),
        ),
        (
            "instream small cpu_us_per_op (target <= 0.2)",
            ("instream small", "cpu_us_per_op"),
            None,
        ),
        (
            "outstream small cpu_us_per_op (target <= 0.2)",
            ("outstream small", "cpu_us_per_op"),
            None,
        ),
        (
            "unary small p50 drpc/tonic (no target)",
            ("unary small", "p50_us"),
            Some(("tonic unary small", "p50_us")),
        ),
        (
            "tonic instream small cpu_us_per_op (no target)",
            ("tonic instream small", "cpu_us_per_op"),
            None,
        ),
        (
            "tonic outstream small cpu_us_per_op (no target)",
            ("tonic outstream small", "cpu_us_per_op"),
            None,
        ),
    ];
    println!("\nxtask: targets (value per round; median)");
    for (name, figure, divisor) in targets {
        let mut values: Vec<f64> = rounds
            .iter()
            .filter_map(|r| match divisor {
                Some(divisor) => Some(lookup(r, figure)? / lookup(r, divisor)?),
                None => lookup(r, figure),
            })
            .collect();
        if values.is_empty() {
            println!("{name}: n/a");
            continue;
        }
        let per_round: Vec<String> = values.iter().map(|v| format!("{v:.2}")).collect();
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        };
        println!("{name}: {} ; median {median:.2}", per_round.join(" "));
    }
}
