//! `drpc-interop`: the interop and benchmark binary of the contract in
//! `shared/interop/README.md`. See the library for the behaviour; this is
//! only the command line.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use drpc_interop::bench::{BenchConfig, run_bench};
use drpc_interop::scenarios::{ClientConfig, SCENARIOS, result_line, run_scenario};
use drpc_interop::tcp::{Mode, echo_server, run_tcp_bench};
use drpc_interop::{
    ServeOptions, parse_bytes, parse_compression, parse_duration, parse_flow_control, serve,
};

/// How long in-flight RPCs may finish after SIGINT/SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const USAGE: &str = "usage: drpc-interop <command> [options]

commands:
  serve --addr HOST:PORT [--max-conns N] [--max-message-size BYTES] [--flow-control MODE] [-v]
        [--shared-port]
  client --addr HOST:PORT --scenario NAME|all [--sequential] [--max-message-size BYTES]
         [--flow-control MODE] [--compression none|snappy]
  bench --addr HOST:PORT --kind unary|instream|outstream|bidi --size small|med|large
        [--duration 3s] [--conc N] [--conns C] [--sequential] [--max-message-size BYTES]
        [--flow-control MODE] [--compression none|snappy]
  tcp-echo --addr HOST:PORT
  tcp-bench --addr HOST:PORT --mode pingpong|oneway --size small|med|large [--duration 3s]
  grpc-serve --addr HOST:PORT [--max-message-size BYTES]
  grpc-bench --addr HOST:PORT --kind unary|instream|outstream|bidi --size small|med|large
             [--duration 3s] [--conc N] [--conns C] [--max-message-size BYTES]

--flow-control off|auto|fork (default auto): auto negotiates flow control
with peers that speak it; fork uses CockroachDB's fork's flow control from
the start (both sides must; pair it with --max-message-size 64MiB for the
fork's message limit); off never gates nor grants.

--compression none|snappy (default none): every call asks for CockroachDB's
fork's per-call compression (metadata drpc-compression) and compresses its
messages both ways. Only for servers that accept it (the fork's, or serve):
a stock Go server would hand the compressed bytes to its decoder. serve
needs no option: it follows each call. minlz-fastest too in a build with
the minlz feature (serve then accepts it as well).

grpc-serve and grpc-bench are the same service and shapes over tonic (gRPC over
HTTP/2) alone, for comparison (feature grpc); HTTP/2 always multiplexes and has
its own flow control, so they take no --sequential nor --flow-control.

serve --shared-port serves one port for DRPC (with or without the migration
header DRPC!!!1 of Go's drpcmigrate), gRPC (the grpc-serve service, feature
grpc) and HTTP/1 (the HTTP/JSON bridge: POST /service.Service/Method1 with
application/json or application/protobuf), telling them apart by each
connection's first bytes.";

/// Options as `--name value` pairs and `--flag`s.
struct Args {
    values: Vec<(String, String)>,
    flags: Vec<String>,
}

impl Args {
    /// Splits `args`: the names in `flags` take no value, the others one.
    fn parse(args: &[String], flags: &[&str]) -> Result<Args, String> {
        let mut parsed = Args {
            values: Vec::new(),
            flags: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if flags.contains(&arg.as_str()) {
                parsed.flags.push(arg.clone());
            } else if let Some((name, value)) =
                arg.split_once('=').filter(|_| arg.starts_with("--"))
            {
                parsed.values.push((name.to_owned(), value.to_owned()));
            } else if arg.starts_with('-') {
                let value = it.next().ok_or_else(|| format!("{arg} needs a value"))?;
                parsed.values.push((arg.clone(), value.clone()));
            } else {
                return Err(format!("unexpected argument {arg:?}"));
            }
        }
        Ok(parsed)
    }

    fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn required(&self, name: &str) -> Result<&str, String> {
        self.get(name).ok_or_else(|| format!("{name} is required"))
    }

    fn parsed<T>(
        &self,
        name: &str,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => parse(v).map_err(|e| format!("{name}: {e}")),
        }
    }

    /// Fails on options not in `known`.
    fn only(&self, known: &[&str]) -> Result<(), String> {
        match self
            .values
            .iter()
            .find(|(n, _)| !known.contains(&n.as_str()))
        {
            Some((name, _)) => Err(format!("unknown option {name}")),
            None => Ok(()),
        }
    }
}

fn number(s: &str) -> Result<usize, String> {
    s.parse().map_err(|_| format!("invalid number {s:?}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match command.as_str() {
        "serve" => serve_command(rest).await,
        "client" => client_command(rest).await,
        "bench" => bench_command(rest).await,
        "tcp-echo" => tcp_echo_command(rest).await,
        "tcp-bench" => tcp_bench_command(rest).await,
        #[cfg(feature = "grpc")]
        "grpc-serve" => grpc_serve_command(rest).await,
        #[cfg(feature = "grpc")]
        "grpc-bench" => grpc_bench_command(rest).await,
        #[cfg(not(feature = "grpc"))]
        "grpc-serve" | "grpc-bench" => {
            Err(format!("{command}: this build has no gRPC (feature grpc)"))
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => Err(format!("unknown command {other:?}")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("drpc-interop: {e}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

async fn bind(addr: &str) -> Result<tokio::net::TcpListener, String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("listening on {addr}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("local address: {e}"))?;
    println!("listening on {local}");
    let _ = std::io::stdout().flush();
    Ok(listener)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn serve_command(args: &[String]) -> Result<ExitCode, String> {
    let args = Args::parse(args, &["-v", "--verbose", "--shared-port"])?;
    args.only(&[
        "--addr",
        "--max-conns",
        "--max-message-size",
        "--flow-control",
    ])?;
    let defaults = ServeOptions::default();
    let opts = ServeOptions {
        max_connections: args.parsed("--max-conns", defaults.max_connections, number)?,
        max_message_size: args.parsed(
            "--max-message-size",
            defaults.max_message_size,
            parse_bytes,
        )?,
        verbose: args.flag("-v") || args.flag("--verbose"),
        flow_control: args.parsed("--flow-control", defaults.flow_control, parse_flow_control)?,
    };
    let addr = args.required("--addr")?;
    let server = serve(&opts);
    let listener = bind(addr).await?;
    if args.flag("--shared-port") {
        drpc_interop::shared::serve_shared_port(
            &server,
            listener,
            opts.max_message_size,
            SHUTDOWN_GRACE,
            async {
                shutdown_signal().await;
                eprintln!("drpc-interop: shutting down (grace {SHUTDOWN_GRACE:?})");
            },
        )
        .await
        .map_err(|e| format!("serving: {e}"))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut serving = tokio::spawn({
        let server = server.clone();
        async move { server.serve_tcp(listener).await }
    });
    tokio::select! {
        r = &mut serving => {
            return match r {
                Ok(Ok(())) => Ok(ExitCode::SUCCESS),
                Ok(Err(e)) => Err(format!("serving: {e}")),
                Err(e) => Err(format!("serving: {e}")),
            };
        }
        _ = shutdown_signal() => {}
    }
    eprintln!("drpc-interop: shutting down (grace {SHUTDOWN_GRACE:?})");
    server.shutdown(SHUTDOWN_GRACE).await;
    match serving.await {
        Ok(Ok(())) => Ok(ExitCode::SUCCESS),
        Ok(Err(e)) => Err(format!("serving: {e}")),
        Err(e) => Err(format!("serving: {e}")),
    }
}

async fn client_command(args: &[String]) -> Result<ExitCode, String> {
    let args = Args::parse(args, &["--sequential"])?;
    args.only(&[
        "--addr",
        "--scenario",
        "--max-message-size",
        "--flow-control",
        "--compression",
    ])?;
    let mut cfg = ClientConfig::new(args.required("--addr")?);
    cfg.sequential = args.flag("--sequential");
    cfg.max_message_size = args.parsed("--max-message-size", cfg.max_message_size, parse_bytes)?;
    cfg.flow_control = args.parsed("--flow-control", cfg.flow_control, parse_flow_control)?;
    cfg.compression = args.parsed("--compression", cfg.compression, parse_compression)?;
    let scenario = args.required("--scenario")?;
    let names: Vec<&str> = if scenario == "all" {
        SCENARIOS.to_vec()
    } else {
        scenario.split(',').map(str::trim).collect()
    };
    if let Some(bad) = names.iter().find(|n| !SCENARIOS.contains(n)) {
        return Err(format!(
            "unknown scenario {bad:?} (known: all, {})",
            SCENARIOS.join(", ")
        ));
    }
    let (mut passed, mut failed) = (0, 0);
    for name in names {
        let result = run_scenario(&cfg, name).await;
        if result.is_ok() {
            passed += 1;
        } else {
            failed += 1;
        }
        println!("{}", result_line(name, &result));
        let _ = std::io::stdout().flush();
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn bench_command(args: &[String]) -> Result<ExitCode, String> {
    let args = Args::parse(args, &["--sequential"])?;
    args.only(&[BENCH_OPTIONS, &["--flow-control", "--compression"]].concat())?;
    let mut cfg = bench_config(&args)?;
    cfg.sequential = args.flag("--sequential");
    cfg.flow_control = args.parsed("--flow-control", cfg.flow_control, parse_flow_control)?;
    cfg.compression = args.parsed("--compression", cfg.compression, parse_compression)?;
    match run_bench(&cfg).await {
        Ok(result) => {
            println!("{result}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("drpc-interop bench: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The options that `bench` and `grpc-bench` share.
const BENCH_OPTIONS: &[&str] = &[
    "--addr",
    "--kind",
    "--size",
    "--duration",
    "--conc",
    "--conns",
    "--max-message-size",
];

/// The [`BenchConfig`] of [`BENCH_OPTIONS`].
fn bench_config(args: &Args) -> Result<BenchConfig, String> {
    let kind = args.required("--kind")?.parse()?;
    let size = args.required("--size")?.parse()?;
    let mut cfg = BenchConfig::new(args.required("--addr")?, kind, size);
    cfg.duration = args.parsed("--duration", cfg.duration, parse_duration)?;
    cfg.conc = args.parsed("--conc", cfg.conc, number)?;
    cfg.conns = args.parsed("--conns", cfg.conns, number)?;
    cfg.max_message_size = args.parsed("--max-message-size", cfg.max_message_size, parse_bytes)?;
    Ok(cfg)
}

#[cfg(feature = "grpc")]
async fn grpc_serve_command(args: &[String]) -> Result<ExitCode, String> {
    let args = Args::parse(args, &[])?;
    args.only(&["--addr", "--max-message-size"])?;
    let max_message_size = args.parsed(
        "--max-message-size",
        ServeOptions::default().max_message_size,
        parse_bytes,
    )?;
    let listener = bind(args.required("--addr")?).await?;
    drpc_interop::grpc::serve_grpc(listener, max_message_size, shutdown_signal())
        .await
        .map_err(|e| format!("serving: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "grpc")]
async fn grpc_bench_command(args: &[String]) -> Result<ExitCode, String> {
    let args = Args::parse(args, &["--sequential"])?;
    if args.flag("--sequential") {
        return Err("--sequential: gRPC has no sequential mode (HTTP/2 always multiplexes)".into());
    }
    if args.get("--flow-control").is_some() {
        return Err("--flow-control: HTTP/2 has its own flow control, always on".into());
    }
    args.only(BENCH_OPTIONS)?;
    let cfg = bench_config(&args)?;
    match drpc_interop::grpc::run_grpc_bench(&cfg).await {
        Ok(result) => {
            println!("{result}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("drpc-interop grpc-bench: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn tcp_echo_command(args: &[String]) -> Result<ExitCode, String> {
    let args = Args::parse(args, &[])?;
    args.only(&["--addr"])?;
    let listener = bind(args.required("--addr")?).await?;
    tokio::select! {
        r = echo_server(listener) => r.map_err(|e| format!("accepting: {e}"))?,
        _ = shutdown_signal() => {}
    }
    Ok(ExitCode::SUCCESS)
}

async fn tcp_bench_command(args: &[String]) -> Result<ExitCode, String> {
    let args = Args::parse(args, &[])?;
    args.only(&["--addr", "--mode", "--size", "--duration"])?;
    let mode: Mode = args.required("--mode")?.parse()?;
    let size = args.required("--size")?.parse()?;
    let duration = args.parsed("--duration", Duration::from_secs(3), parse_duration)?;
    match run_tcp_bench(args.required("--addr")?, mode, size, duration).await {
        Ok(result) => {
            println!("{result}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("drpc-interop tcp-bench: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
