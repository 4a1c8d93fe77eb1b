//! `drpc-interop`: the interop and benchmark binary of the contract in
//! `shared/interop/README.md`. See the library for the behaviour; this is
//! only the command line (its options in [`cli`]).

mod cli;

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use drpc_interop::bench::run_bench;
use drpc_interop::scenarios::{result_line, run_scenario};
use drpc_interop::serve;
use drpc_interop::tcp::{echo_server, run_tcp_bench};

use crate::cli::{BenchArgs, Cli, ClientArgs, Command, ServeArgs, TcpBenchArgs, TcpEchoArgs};
#[cfg(feature = "grpc")]
use crate::cli::{GrpcBenchArgs, GrpcServeArgs};

/// How long in-flight RPCs may finish after SIGINT/SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The exit code of a usage error (clap's) and of a command that cannot
/// start (a server that cannot listen, say).
const USAGE_ERROR: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            // `help`, `--help` and `-h` print the help on stdout and
            // succeed; anything else (no command at all included) is a
            // usage error on stderr.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(USAGE_ERROR)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Serve(args) => serve_command(args).await,
        Command::Client(args) => client_command(args).await,
        Command::Bench(args) => bench_command(args).await,
        Command::TcpEcho(args) => tcp_echo_command(args).await,
        Command::TcpBench(args) => tcp_bench_command(args).await,
        #[cfg(feature = "grpc")]
        Command::GrpcServe(args) => grpc_serve_command(args).await,
        #[cfg(feature = "grpc")]
        Command::GrpcBench(args) => grpc_bench_command(args).await,
        #[cfg(not(feature = "grpc"))]
        Command::GrpcServe(_) => Err("grpc-serve: this build has no gRPC (feature grpc)".into()),
        #[cfg(not(feature = "grpc"))]
        Command::GrpcBench(_) => Err("grpc-bench: this build has no gRPC (feature grpc)".into()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("drpc-interop: {e}");
            ExitCode::from(USAGE_ERROR)
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

async fn serve_command(args: ServeArgs) -> Result<ExitCode, String> {
    let opts = args.options();
    let server = serve(&opts);
    let listener = bind(&args.addr).await?;
    if args.shared_port {
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

async fn client_command(args: ClientArgs) -> Result<ExitCode, String> {
    let cfg = args.config();
    let (mut passed, mut failed) = (0, 0);
    for name in args.scenario.0 {
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

async fn bench_command(args: BenchArgs) -> Result<ExitCode, String> {
    match run_bench(&args.config()).await {
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

#[cfg(feature = "grpc")]
async fn grpc_serve_command(args: GrpcServeArgs) -> Result<ExitCode, String> {
    let listener = bind(&args.addr).await?;
    drpc_interop::grpc::serve_grpc(listener, args.max_message_size, shutdown_signal())
        .await
        .map_err(|e| format!("serving: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// `--sequential` and `--flow-control` were refused by [`Cli::parse_args`].
#[cfg(feature = "grpc")]
async fn grpc_bench_command(args: GrpcBenchArgs) -> Result<ExitCode, String> {
    match drpc_interop::grpc::run_grpc_bench(&args.shape.config()).await {
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

async fn tcp_echo_command(args: TcpEchoArgs) -> Result<ExitCode, String> {
    let listener = bind(&args.addr).await?;
    tokio::select! {
        r = echo_server(listener) => r.map_err(|e| format!("accepting: {e}"))?,
        _ = shutdown_signal() => {}
    }
    Ok(ExitCode::SUCCESS)
}

async fn tcp_bench_command(args: TcpBenchArgs) -> Result<ExitCode, String> {
    match run_tcp_bench(&args.addr, args.mode, args.size, args.duration).await {
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
