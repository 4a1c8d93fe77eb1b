//! The command line of `drpc-interop` (clap, derive API): the subcommands,
//! options and defaults of the contract in `shared/interop/README.md`.
//!
//! Values are parsed by the library's parsers (`parse_bytes`,
//! `parse_duration`, `parse_flow_control`, `parse_compression` and the
//! `FromStr` of `Kind`, `Size` and `Mode`), so that they accept exactly what
//! they always did. A repeated option keeps its last value.

use std::ffi::OsString;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory as _, Parser, Subcommand};
use drpc_interop::bench::{BenchConfig, Kind, Size};
use drpc_interop::scenarios::{ClientConfig, SCENARIOS};
use drpc_interop::tcp::Mode;
use drpc_interop::{
    ServeOptions, parse_bytes, parse_compression, parse_duration, parse_flow_control,
};
use drpc_stream::FlowControl;
use drpc_wire::Compression;

/// The explanations printed after the options by `--help`.
const AFTER_HELP: &str = "\
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

const FLOW_CONTROL_HELP: &str = "\
Flow control: off, auto or fork. auto negotiates flow control with peers
that speak it; fork uses CockroachDB's fork's flow control from the start
(both sides must; pair it with --max-message-size 64MiB for the fork's
message limit); off never gates nor grants.";

const COMPRESSION_HELP: &str = "\
Per-call compression: none or snappy (minlz-fastest too in a build with the
minlz feature). Every call asks for CockroachDB's fork's per-call
compression (metadata drpc-compression) and compresses its messages both
ways. Only for servers that accept it (the fork's, or serve): a stock Go
server would hand the compressed bytes to its decoder.";

const SHARED_PORT_HELP: &str = "\
Serve one port for DRPC (with or without the migration header DRPC!!!1 of
Go's drpcmigrate), gRPC (the grpc-serve service, feature grpc) and HTTP/1
(the HTTP/JSON bridge: POST /service.Service/Method1 with application/json
or application/protobuf), telling them apart by each connection's first
bytes.";

const MAX_MESSAGE_SIZE_HELP: &str = "\
The largest message sent or accepted: a number of bytes, or one with a K,
KiB, M, MiB, G or GiB suffix (powers of 1024). The default is the reference
implementation's limit; peers that exchange larger messages raise it on
both sides.";

const DURATION_HELP: &str = "\
How long the operations run: 3s, 200ms, 1.5s, 500us, 2m, or a plain number
of seconds.";

/// The interop and benchmark binary of the shared contract
/// (shared/interop/README.md): serve, client scenarios, bench, TCP
/// baselines, and tonic (gRPC) counterparts.
#[derive(Debug, Clone, PartialEq, Parser)]
#[command(
    name = "drpc-interop",
    after_help = AFTER_HELP,
    arg_required_else_help = true,
    args_override_self = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Clone, PartialEq, Subcommand)]
pub(crate) enum Command {
    /// Serve the contract's service over DRPC
    ///
    /// Prints `listening on ADDR` once ready; shuts down cleanly on SIGINT or
    /// SIGTERM.
    Serve(ServeArgs),
    /// Run client scenarios against a server
    ///
    /// Prints `PASS name` or `FAIL name: reason` per scenario, then `N
    /// passed, M failed`; exits 1 if anything failed.
    Client(ClientArgs),
    /// Run a benchmark shape against `serve`
    ///
    /// Prints exactly one line: `kind=... size=... conc=... conns=... ops=...
    /// ops_per_s=... mb_per_s=... mean_us=... p50_us=... p99_us=...`.
    Bench(BenchArgs),
    /// Serve raw TCP echo, the baseline of `tcp-bench`
    ///
    /// Prints `listening on ADDR` once ready.
    TcpEcho(TcpEchoArgs),
    /// Run a raw TCP baseline against `tcp-echo`
    ///
    /// Prints one line, as `bench` does.
    TcpBench(TcpBenchArgs),
    /// Serve the same service over tonic (gRPC over HTTP/2; feature grpc)
    ///
    /// Prints `listening on ADDR` once ready.
    GrpcServe(GrpcServeArgs),
    /// Run a benchmark shape with tonic's client against `grpc-serve` (feature
    /// grpc)
    ///
    /// Prints one line, as `bench` does. HTTP/2 always multiplexes and has its
    /// own flow control: no --sequential nor --flow-control.
    GrpcBench(GrpcBenchArgs),
}

/// `serve`.
#[derive(Debug, Clone, PartialEq, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (port 0: any free port)
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) addr: String,
    /// The most connections served at once
    #[arg(long, value_name = "N", value_parser = number, default_value = "4096")]
    pub(crate) max_conns: usize,
    /// The largest message accepted from (and sent to) a client
    #[arg(
        long,
        value_name = "BYTES",
        value_parser = parse_bytes,
        default_value = "4MiB",
        long_help = MAX_MESSAGE_SIZE_HELP
    )]
    pub(crate) max_message_size: usize,
    /// Flow control: off, auto or fork
    #[arg(
        long,
        value_name = "MODE",
        value_parser = parse_flow_control,
        default_value = "auto",
        long_help = FLOW_CONTROL_HELP
    )]
    pub(crate) flow_control: FlowControl,
    /// Log one line per RPC on stderr
    #[arg(short, long)]
    pub(crate) verbose: bool,
    /// Serve DRPC, gRPC and HTTP/1 on one port
    #[arg(long, long_help = SHARED_PORT_HELP)]
    pub(crate) shared_port: bool,
}

impl ServeArgs {
    /// The server's options.
    pub(crate) fn options(&self) -> ServeOptions {
        ServeOptions {
            max_connections: self.max_conns,
            max_message_size: self.max_message_size,
            verbose: self.verbose,
            flow_control: self.flow_control,
        }
    }
}

/// How a DRPC client of `client` and `bench` makes its calls.
#[derive(Debug, Clone, PartialEq, Args)]
pub(crate) struct CallSettings {
    /// One stream at a time per connection, as the reference Go
    /// implementation requires of its peers
    #[arg(long)]
    pub(crate) sequential: bool,
    /// Flow control: off, auto or fork
    #[arg(
        long,
        value_name = "MODE",
        value_parser = parse_flow_control,
        default_value = "auto",
        long_help = FLOW_CONTROL_HELP
    )]
    pub(crate) flow_control: FlowControl,
    /// Per-call compression: none or snappy
    #[arg(
        long,
        value_name = "none|snappy",
        value_parser = parse_compression,
        default_value = "none",
        long_help = COMPRESSION_HELP
    )]
    pub(crate) compression: CallCompression,
}

/// `client`.
#[derive(Debug, Clone, PartialEq, Args)]
pub(crate) struct ClientArgs {
    /// The server's address
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) addr: String,
    /// A scenario, several separated by commas, or all
    #[arg(long, value_name = "NAME|all", value_parser = parse_scenarios)]
    pub(crate) scenario: Scenarios,
    /// The largest message sent to or accepted from the server
    #[arg(
        long,
        value_name = "BYTES",
        value_parser = parse_bytes,
        default_value = "4MiB",
        long_help = MAX_MESSAGE_SIZE_HELP
    )]
    pub(crate) max_message_size: usize,
    #[command(flatten)]
    pub(crate) calls: CallSettings,
}

impl ClientArgs {
    /// The client's configuration.
    pub(crate) fn config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new(&self.addr);
        cfg.sequential = self.calls.sequential;
        cfg.max_message_size = self.max_message_size;
        cfg.flow_control = self.calls.flow_control;
        cfg.compression = self.calls.compression;
        cfg
    }
}

/// The value of `--compression` (`none` is `None`): an alias, so that clap
/// takes it for one value rather than for an optional option.
pub(crate) type CallCompression = Option<Compression>;

/// The scenarios of `client --scenario`, in the order they run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scenarios(pub(crate) Vec<&'static str>);

/// Parses `--scenario`: `all`, or names separated by commas.
fn parse_scenarios(s: &str) -> Result<Scenarios, String> {
    if s == "all" {
        return Ok(Scenarios(SCENARIOS.to_vec()));
    }
    s.split(',')
        .map(str::trim)
        .map(|name| {
            SCENARIOS
                .iter()
                .find(|known| **known == name)
                .copied()
                .ok_or_else(|| {
                    format!(
                        "unknown scenario {name:?} (known: all, {})",
                        SCENARIOS.join(", ")
                    )
                })
        })
        .collect::<Result<_, _>>()
        .map(Scenarios)
}

/// The options that `bench` and `grpc-bench` share.
#[derive(Debug, Clone, PartialEq, Args)]
pub(crate) struct BenchShape {
    /// The server's address
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) addr: String,
    /// What one operation is
    #[arg(long, value_name = "unary|instream|outstream|bidi", value_parser = str::parse::<Kind>)]
    pub(crate) kind: Kind,
    /// The request: small (In{in: 5}), med (2 KiB) or large (1 MiB)
    #[arg(long, value_name = "small|med|large", value_parser = str::parse::<Size>)]
    pub(crate) size: Size,
    /// How long the operations run
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = parse_duration,
        default_value = "3s",
        long_help = DURATION_HELP
    )]
    pub(crate) duration: Duration,
    /// How many tasks run operations at once
    #[arg(long, value_name = "N", value_parser = number, default_value = "1")]
    pub(crate) conc: usize,
    /// How many connections the tasks share (1: every task multiplexes over
    /// one connection)
    #[arg(long, value_name = "C", value_parser = number, default_value = "1")]
    pub(crate) conns: usize,
    /// The largest message sent to or accepted from the server
    #[arg(
        long,
        value_name = "BYTES",
        value_parser = parse_bytes,
        default_value = "4MiB",
        long_help = MAX_MESSAGE_SIZE_HELP
    )]
    pub(crate) max_message_size: usize,
}

impl BenchShape {
    /// The run's configuration (with the library's defaults for the rest).
    pub(crate) fn config(&self) -> BenchConfig {
        let mut cfg = BenchConfig::new(&self.addr, self.kind, self.size);
        cfg.duration = self.duration;
        cfg.conc = self.conc;
        cfg.conns = self.conns;
        cfg.max_message_size = self.max_message_size;
        cfg
    }
}

/// `bench`.
#[derive(Debug, Clone, PartialEq, Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    pub(crate) shape: BenchShape,
    #[command(flatten)]
    pub(crate) calls: CallSettings,
}

impl BenchArgs {
    /// The run's configuration.
    pub(crate) fn config(&self) -> BenchConfig {
        let mut cfg = self.shape.config();
        cfg.sequential = self.calls.sequential;
        cfg.flow_control = self.calls.flow_control;
        cfg.compression = self.calls.compression;
        cfg
    }
}

/// `tcp-echo`.
#[derive(Debug, Clone, PartialEq, Args)]
pub(crate) struct TcpEchoArgs {
    /// Address to listen on (port 0: any free port)
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) addr: String,
}

/// `tcp-bench`.
#[derive(Debug, Clone, PartialEq, Args)]
pub(crate) struct TcpBenchArgs {
    /// The tcp-echo server's address
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) addr: String,
    /// pingpong: request, echoed response; oneway: messages one way
    #[arg(long, value_name = "pingpong|oneway", value_parser = str::parse::<Mode>)]
    pub(crate) mode: Mode,
    /// Payloads of the encoded size of this bench size's request
    #[arg(long, value_name = "small|med|large", value_parser = str::parse::<Size>)]
    pub(crate) size: Size,
    /// How long the operations run
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = parse_duration,
        default_value = "3s",
        long_help = DURATION_HELP
    )]
    pub(crate) duration: Duration,
}

/// `grpc-serve`.
#[derive(Debug, Clone, PartialEq, Args)]
pub(crate) struct GrpcServeArgs {
    /// Address to listen on (port 0: any free port)
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) addr: String,
    /// The largest message accepted from (and sent to) a client
    #[arg(
        long,
        value_name = "BYTES",
        value_parser = parse_bytes,
        default_value = "4MiB",
        long_help = MAX_MESSAGE_SIZE_HELP
    )]
    pub(crate) max_message_size: usize,
}

/// `grpc-bench`.
#[derive(Debug, Clone, PartialEq, Args)]
pub(crate) struct GrpcBenchArgs {
    #[command(flatten)]
    pub(crate) shape: BenchShape,
    /// Refused (HTTP/2 always multiplexes); accepted only to say so
    #[arg(long, hide = true)]
    pub(crate) sequential: bool,
    /// Refused (HTTP/2 has its own flow control); accepted only to say so
    #[arg(long, hide = true, value_name = "MODE")]
    pub(crate) flow_control: Option<String>,
}

impl Cli {
    /// Parses `args` (the program name first) and checks what clap cannot
    /// express: the options `grpc-bench` refuses with a reason.
    pub(crate) fn parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cli = Cli::try_parse_from(args)?;
        if let Command::GrpcBench(args) = &cli.command {
            if args.sequential {
                return Err(subcommand_error(
                    "grpc-bench",
                    "--sequential: gRPC has no sequential mode (HTTP/2 always multiplexes)",
                ));
            }
            if args.flow_control.is_some() {
                return Err(subcommand_error(
                    "grpc-bench",
                    "--flow-control: HTTP/2 has its own flow control, always on",
                ));
            }
        }
        Ok(cli)
    }
}

/// A usage error of subcommand `name`, shown with that subcommand's usage.
fn subcommand_error(name: &str, message: &str) -> clap::Error {
    let mut cli = Cli::command();
    cli.build();
    match cli.find_subcommand_mut(name) {
        Some(sub) => sub.error(ErrorKind::ArgumentConflict, message),
        None => cli.error(ErrorKind::ArgumentConflict, message),
    }
}

/// Parses a count (`--max-conns`, `--conc`, `--conns`).
fn number(s: &str) -> Result<usize, String> {
    s.parse().map_err(|_| format!("invalid number {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Cli, clap::Error> {
        Cli::parse_args(std::iter::once("drpc-interop").chain(line.split_whitespace()))
    }

    fn command(line: &str) -> Command {
        match parse(line) {
            Ok(cli) => cli.command,
            Err(e) => panic!("{line:?}: {e}"),
        }
    }

    fn error_kind(line: &str) -> ErrorKind {
        match parse(line) {
            Ok(cli) => panic!("{line:?} parsed as {cli:?}"),
            Err(e) => e.kind(),
        }
    }

    #[test]
    fn command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_library() {
        let Command::Serve(serve) = command("serve --addr 127.0.0.1:0") else {
            panic!("not serve");
        };
        let (got, want) = (serve.options(), ServeOptions::default());
        assert_eq!(got.max_connections, want.max_connections);
        assert_eq!(got.max_message_size, want.max_message_size);
        assert_eq!(got.verbose, want.verbose);
        assert_eq!(got.flow_control, want.flow_control);
        assert!(!serve.shared_port);

        let Command::Client(client) = command("client --addr a:1 --scenario all") else {
            panic!("not client");
        };
        let (got, want) = (client.config(), ClientConfig::new("a:1"));
        assert_eq!(got.addr, want.addr);
        assert_eq!(got.sequential, want.sequential);
        assert_eq!(got.max_message_size, want.max_message_size);
        assert_eq!(got.flow_control, want.flow_control);
        assert_eq!(got.compression, want.compression);

        let Command::Bench(bench) = command("bench --addr a:1 --kind unary --size small") else {
            panic!("not bench");
        };
        let (got, want) = (
            bench.config(),
            BenchConfig::new("a:1", Kind::Unary, Size::Small),
        );
        assert_eq!(got.duration, want.duration);
        assert_eq!(got.conc, want.conc);
        assert_eq!(got.conns, want.conns);
        assert_eq!(got.sequential, want.sequential);
        assert_eq!(got.max_message_size, want.max_message_size);
        assert_eq!(got.flow_control, want.flow_control);
        assert_eq!(got.compression, want.compression);

        assert_eq!(
            command("grpc-serve --addr a:1"),
            Command::GrpcServe(GrpcServeArgs {
                addr: "a:1".into(),
                max_message_size: ServeOptions::default().max_message_size,
            })
        );
    }

    #[test]
    fn parses_serve() {
        assert_eq!(
            command(
                "serve --addr 127.0.0.1:4000 --max-conns 3 --max-message-size 64MiB \
                 --flow-control fork -v --shared-port"
            ),
            Command::Serve(ServeArgs {
                addr: "127.0.0.1:4000".into(),
                max_conns: 3,
                max_message_size: 64 << 20,
                flow_control: FlowControl::fork(),
                verbose: true,
                shared_port: true,
            })
        );
        // `--name=value`, `--verbose`, and the last of repeated values.
        let Command::Serve(serve) = command(
            "serve --addr=127.0.0.1:0 --verbose --flow-control off --flow-control=off \
             --max-message-size 1K --max-message-size 2K",
        ) else {
            panic!("not serve");
        };
        assert!(serve.verbose && !serve.shared_port);
        assert_eq!(serve.addr, "127.0.0.1:0");
        assert_eq!(serve.flow_control, FlowControl::off());
        assert_eq!(serve.max_message_size, 2048);
        // The exact line of `tests/shared_port.rs`.
        let Command::Serve(serve) = command("serve --addr 127.0.0.1:0 --shared-port") else {
            panic!("not serve");
        };
        assert!(serve.shared_port && !serve.verbose);
    }

    #[test]
    fn parses_client() {
        // As xtask runs it.
        for (extra, sequential, flow_control) in [
            ("--flow-control auto", false, FlowControl::auto()),
            ("--flow-control off", false, FlowControl::off()),
            ("--flow-control fork", false, FlowControl::fork()),
            ("--sequential", true, FlowControl::auto()),
        ] {
            let Command::Client(client) =
                command(&format!("client --addr 127.0.0.1:5 --scenario all {extra}"))
            else {
                panic!("not client");
            };
            assert_eq!(client.scenario, Scenarios(SCENARIOS.to_vec()));
            assert_eq!(client.calls.sequential, sequential);
            assert_eq!(client.calls.flow_control, flow_control);
        }
        assert_eq!(
            command(
                "client --addr h:1 --scenario empty_unary,ping_pong --sequential \
                 --max-message-size 1M --compression snappy"
            ),
            Command::Client(ClientArgs {
                addr: "h:1".into(),
                scenario: Scenarios(vec!["empty_unary", "ping_pong"]),
                max_message_size: 1 << 20,
                calls: CallSettings {
                    sequential: true,
                    flow_control: FlowControl::auto(),
                    compression: Some(Compression::Snappy),
                },
            })
        );
        // Names are trimmed (a shell-quoted list may hold spaces).
        let Command::Client(client) = Cli::parse_args([
            "drpc-interop",
            "client",
            "--addr",
            "h:1",
            "--scenario",
            "ping_pong, cancel_blocked",
        ])
        .expect("parses")
        .command
        else {
            panic!("not client");
        };
        assert_eq!(client.scenario.0, ["ping_pong", "cancel_blocked"]);
    }

    #[test]
    fn parses_bench() {
        assert_eq!(
            command(
                "bench --addr h:1 --kind outstream --size large --duration 200ms --conc 64 \
                 --conns 2 --sequential --max-message-size 8MiB --flow-control off \
                 --compression none"
            ),
            Command::Bench(BenchArgs {
                shape: BenchShape {
                    addr: "h:1".into(),
                    kind: Kind::OutStream,
                    size: Size::Large,
                    duration: Duration::from_millis(200),
                    conc: 64,
                    conns: 2,
                    max_message_size: 8 << 20,
                },
                calls: CallSettings {
                    sequential: true,
                    flow_control: FlowControl::off(),
                    compression: None,
                },
            })
        );
        let Command::Bench(bench) = command("bench --addr h:1 --kind bidi --size med --duration 2")
        else {
            panic!("not bench");
        };
        let cfg = bench.config();
        assert_eq!((cfg.kind, cfg.size), (Kind::Bidi, Size::Med));
        assert_eq!(cfg.duration, Duration::from_secs(2));
    }

    #[test]
    fn parses_tcp() {
        assert_eq!(
            command("tcp-echo --addr 127.0.0.1:0"),
            Command::TcpEcho(TcpEchoArgs {
                addr: "127.0.0.1:0".into()
            })
        );
        assert_eq!(
            command("tcp-bench --addr h:1 --mode oneway --size med --duration 1.5s"),
            Command::TcpBench(TcpBenchArgs {
                addr: "h:1".into(),
                mode: Mode::OneWay,
                size: Size::Med,
                duration: Duration::from_millis(1500),
            })
        );
        let Command::TcpBench(tcp) = command("tcp-bench --addr h:1 --mode pingpong --size small")
        else {
            panic!("not tcp-bench");
        };
        assert_eq!(tcp.duration, Duration::from_secs(3));
    }

    #[test]
    fn parses_grpc() {
        assert_eq!(
            command("grpc-serve --addr 127.0.0.1:0 --max-message-size 16MiB"),
            Command::GrpcServe(GrpcServeArgs {
                addr: "127.0.0.1:0".into(),
                max_message_size: 16 << 20,
            })
        );
        let Command::GrpcBench(grpc) =
            command("grpc-bench --addr h:1 --kind unary --size small --conc 64 --conns 1")
        else {
            panic!("not grpc-bench");
        };
        assert!(!grpc.sequential && grpc.flow_control.is_none());
        let cfg = grpc.shape.config();
        assert_eq!(
            (cfg.kind, cfg.size, cfg.conc, cfg.conns),
            (Kind::Unary, Size::Small, 64, 1)
        );
    }

    #[test]
    fn refuses_bad_command_lines() {
        for (line, kind) in [
            ("", ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand),
            ("bogus", ErrorKind::InvalidSubcommand),
            ("serve", ErrorKind::MissingRequiredArgument),
            ("serve --addr", ErrorKind::InvalidValue),
            ("serve --addr h:1 --bogus x", ErrorKind::UnknownArgument),
            ("serve --addr h:1 extra", ErrorKind::UnknownArgument),
            (
                "serve --addr h:1 --compression snappy",
                ErrorKind::UnknownArgument,
            ),
            (
                "serve --addr h:1 --max-conns many",
                ErrorKind::ValueValidation,
            ),
            (
                "serve --addr h:1 --max-message-size 4XB",
                ErrorKind::ValueValidation,
            ),
            (
                "serve --addr h:1 --flow-control on",
                ErrorKind::ValueValidation,
            ),
            ("client --addr h:1", ErrorKind::MissingRequiredArgument),
            (
                "client --addr h:1 --scenario nope",
                ErrorKind::ValueValidation,
            ),
            (
                "client --addr h:1 --scenario all,ping_pong",
                ErrorKind::ValueValidation,
            ),
            (
                "client --addr h:1 --scenario all --compression zstd",
                ErrorKind::ValueValidation,
            ),
            (
                "client --addr h:1 --scenario all -v",
                ErrorKind::UnknownArgument,
            ),
            (
                "bench --addr h:1 --size small",
                ErrorKind::MissingRequiredArgument,
            ),
            (
                "bench --addr h:1 --kind nope --size small",
                ErrorKind::ValueValidation,
            ),
            (
                "bench --addr h:1 --kind unary --size huge",
                ErrorKind::ValueValidation,
            ),
            (
                "bench --addr h:1 --kind unary --size small --duration soon",
                ErrorKind::ValueValidation,
            ),
            (
                "bench --addr h:1 --kind unary --size small --conc x",
                ErrorKind::ValueValidation,
            ),
            ("tcp-echo", ErrorKind::MissingRequiredArgument),
            (
                "tcp-bench --addr h:1 --mode bad --size small",
                ErrorKind::ValueValidation,
            ),
            (
                "tcp-bench --addr h:1 --mode oneway --size small --conc 2",
                ErrorKind::UnknownArgument,
            ),
            (
                "grpc-serve --addr h:1 --flow-control auto",
                ErrorKind::UnknownArgument,
            ),
            (
                "grpc-bench --addr h:1 --kind unary --size small --sequential",
                ErrorKind::ArgumentConflict,
            ),
            (
                "grpc-bench --addr h:1 --kind unary --size small --flow-control auto",
                ErrorKind::ArgumentConflict,
            ),
            (
                "grpc-bench --addr h:1 --kind unary --size small --compression snappy",
                ErrorKind::UnknownArgument,
            ),
        ] {
            assert_eq!(error_kind(line), kind, "{line:?}");
        }
    }

    #[test]
    fn help_is_not_an_error() {
        for line in ["help", "--help", "-h", "help serve", "serve --help"] {
            let e = parse(line).expect_err(line);
            assert!(!e.use_stderr(), "{line:?}: {:?}", e.kind());
        }
        let help = Cli::command().render_long_help().to_string();
        for text in [
            "serve",
            "client",
            "bench",
            "tcp-echo",
            "tcp-bench",
            "grpc-serve",
            "grpc-bench",
            "--flow-control off|auto|fork (default auto)",
            "serve --shared-port serves one port",
        ] {
            assert!(help.contains(text), "{text:?} not in:\n{help}");
        }
    }
}
