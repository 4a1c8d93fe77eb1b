//! Generates typed DRPC clients and server traits from `.proto` files.
//!
//! Two ways in, one generator:
//!
//! * **build.rs** ([`configure`] → [`Builder::compile_protos`]): parses the
//!   protos with [protox](https://docs.rs/protox) (no protoc needed),
//!   generates prost messages and the DRPC service code into `OUT_DIR`,
//!   one file per proto package.
//! * **protoc plugin** (`protoc-gen-rust-drpc`, so `protoc
//!   --rust-drpc_out=DIR`): the same output, for those who run protoc
//!   themselves ([`plugin::generate`] is its library form).
//!
//! For each service `Svc` of package `pkg` it generates, next to the
//! messages:
//!
//! * `SvcDrpcClient<C>`: one async method per RPC, generic over the
//!   connection ([`drpc_conn::Invoker`](https://docs.rs/drpc-conn)):
//!   unary returns the response; server streaming a `Responses` stream;
//!   client streaming a `ClientStream` (send, then `close_and_recv`); bidi
//!   the sending half and the `Responses`. Each has a `_with` variant
//!   taking `CallOptions`.
//! * `SvcDrpcServer`: a trait with one async method per RPC (native async
//!   functions in traits; boxing happens only at the mux boundary), each
//!   defaulting to code 12, `Unimplemented`.
//! * `SVC_DRPC_METHODS` (the method table, in declaration order),
//!   `SvcDrpcDescription` and `register_svc_drpc(mux, server)`.
//! * when asked ([`Builder::service_descriptors`]), `SVC_DESCRIPTOR_SET`:
//!   the service's protobuf descriptors, from which the HTTP/JSON bridge
//!   (`drpc-http`) maps its messages to and from proto3 JSON.
//!
//! RPC paths are `/pkg.Svc/Method` from the proto names, exactly as Go's
//! generator builds them (`/Svc/Method` without a package). Proto comments
//! become rustdoc. The generated code refers to the `drpc-conn` (client)
//! and `drpc-mux` (server) crates, which the using crate depends on. It is
//! built with `quote!` and formatted with `prettyplease`, as tonic-build's.
//!
//! # Rust names
//!
//! Methods are named as prost and tonic name them: in snake case, a
//! keyword as a raw identifier (`rpc Type` is `r#type`), and `self`,
//! `super`, `crate`, `extern` and `Self`, which cannot be raw, with a `_`
//! after them (`rpc Self` is `self_`); a method that would clash with the
//! client's `new`, `get_ref` or `into_inner` gets `_rpc` after its name.
//! The variant with call options is the bare word followed by `_with`
//! (`type_with`, `self_with`). A service `Self` gives `SelfDrpcClient`,
//! `SelfDrpcServer` and `register_self_drpc`. All of it compiles without
//! warnings under the default lints (tonic's own code for a service
//! `Self`, generated with the gRPC adapter, does not: `self__server`).
//!
//! # Rebuilds
//!
//! [`Builder::compile_protos`] tells cargo to run the build script again
//! when any file the proto compiler read changes: the protos listed and
//! every file they import, transitively, as found in the include paths.
//! [`Builder::compile`] does the same work without printing, and returns
//! those files.
//!
//! # gRPC adapters
//!
//! With the `grpc` feature, [`Builder::grpc_adapter`] also generates
//! tonic's code and, for each service, a `SvcGrpcAdapter` serving the same
//! `SvcDrpcServer` implementation over gRPC. Built with
//! `SvcGrpcAdapter::from_mux(server, &mux)`, it runs the interceptor and
//! `tower` layers of the DRPC mux on every gRPC call too, so that both
//! protocols enforce the same checks (`SvcGrpcAdapter::new(server)` has
//! none). With [`Builder::service_descriptors`] it also emits the
//! service's descriptors, for the HTTP/JSON bridge. Three things must be on:
//!
//! * the `grpc` feature of `drpc-codegen`, in `[build-dependencies]`:
//!   without it, calling `grpc_adapter` is a compile error saying so;
//! * the `grpc` feature of `drpc-mux`, in `[dependencies]`: without it the
//!   generated adapter fails to compile at its first use of
//!   `drpc_mux::grpc`, with rustc's note that the module is "gated behind
//!   the `grpc` feature";
//! * `tonic` and `tonic-prost` in `[dependencies]`, which tonic's
//!   generated code uses.
//!
//! ```toml
//! [dependencies]
//! drpc-mux = { path = "../drpc-rs/crates/drpc-mux", features = ["grpc"] }
//! tonic = "0.14"
//! tonic-prost = "0.14"
//!
//! [build-dependencies]
//! drpc-codegen = { path = "../drpc-rs/crates/drpc-codegen", features = ["grpc"] }
//! ```
//!
//! # Example
//!
//! ```no_run
//! // build.rs
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     drpc_codegen::configure().compile_protos(&["proto/service.proto"], &["proto"])?;
//!     Ok(())
//! }
//! ```
//!
//! ```text
//! // src/lib.rs
//! pub mod service {
//!     include!(concat!(env!("OUT_DIR"), "/service.rs"));
//! }
//! ```

mod generator;
pub mod plugin;

use std::path::{Path, PathBuf};

use generator::{DrpcServiceGenerator, Emit};

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The protos did not parse or resolve.
    #[error("parsing protos: {0}")]
    Parse(#[from] protox::Error),
    /// Writing the output failed.
    #[error("generating code: {0}")]
    Io(#[from] std::io::Error),
    /// The plugin request could not be decoded.
    #[error("decoding the plugin request: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Starts a build-script configuration with the defaults: clients and
/// servers, output in `OUT_DIR`.
pub fn configure() -> Builder {
    Builder {
        emit: Emit {
            client: true,
            server: true,
        },
        grpc: false,
        descriptors: false,
        out_dir: None,
        prost: prost_build::Config::new(),
    }
}

impl Builder {
    #[cfg(feature = "grpc")]
    fn grpc_generator(&self) -> Option<Box<dyn prost_build::ServiceGenerator>> {
        self.grpc.then(|| {
            tonic_prost_build::configure()
                .build_client(self.emit.client)
                .build_server(self.emit.server)
                .service_generator()
        })
    }

    #[cfg(not(feature = "grpc"))]
    fn grpc_generator(&self) -> Option<Box<dyn prost_build::ServiceGenerator>> {
        let _ = self.grpc;
        None
    }
}

/// Configures code generation from a build script (in the style of
/// prost-build and tonic-build).
///
/// [`grpc_adapter`](Builder::grpc_adapter) needs the `grpc` feature of
/// this crate (see [the crate documentation](crate#grpc-adapters) for what
/// else it needs); without it, calling it is a compile error that names
/// the feature.
#[derive(Debug)]
pub struct Builder {
    emit: Emit,
    grpc: bool,
    descriptors: bool,
    out_dir: Option<PathBuf>,
    prost: prost_build::Config,
}

/// What [`Builder::compile`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Compiled {
    /// Every file the proto compiler read from disk: the protos listed and
    /// all they import, transitively, each once, a file after those it
    /// imports. Each is its include path joined with its proto name
    /// (`proto/greeter.proto`). protox's built-in copies of the well-known
    /// types (`google/protobuf/*.proto`, when no include path has them)
    /// are not files and are not listed.
    pub inputs: Vec<PathBuf>,
}

impl Compiled {
    /// The instructions that make cargo run the build script again when
    /// an input changes: one `cargo:rerun-if-changed=PATH` per input, what
    /// [`Builder::compile_protos`] prints.
    pub fn rerun_if_changed(&self) -> impl Iterator<Item = String> + '_ {
        self.inputs
            .iter()
            .map(|path| format!("cargo:rerun-if-changed={}", path.display()))
    }
}

/// `fds` without its comments and source positions, which a descriptor
/// embedded in code has no use for.
fn without_source_info(fds: &prost_types::FileDescriptorSet) -> prost_types::FileDescriptorSet {
    let mut fds = fds.clone();
    for file in &mut fds.file {
        file.source_code_info = None;
    }
    fds
}

/// Stands in for `bool` in [`Builder::grpc_adapter`] when the `grpc`
/// feature is off. Nothing implements it, so that calling the method is a
/// compile error that names the feature, rather than "no method named
/// `grpc_adapter`":
///
/// ```compile_fail,E0277
/// drpc_codegen::configure().grpc_adapter(true);
/// ```
#[cfg(not(feature = "grpc"))]
#[diagnostic::on_unimplemented(
    message = "`Builder::grpc_adapter` needs the `grpc` feature of drpc-codegen",
    label = "gRPC adapters are not compiled in",
    note = "enable it where drpc-codegen is a build dependency: \
            `drpc-codegen = {{ ..., features = [\"grpc\"] }}`",
    note = "the crate that includes the generated code also needs drpc-mux with its \
            `grpc` feature, tonic and tonic-prost"
)]
pub trait GrpcFeature: sealed::Sealed {}

#[cfg(not(feature = "grpc"))]
mod sealed {
    /// Keeps [`GrpcFeature`](super::GrpcFeature) unimplemented.
    pub trait Sealed {}
}

impl Builder {
    /// Whether to generate clients (default `true`).
    pub fn build_client(mut self, enable: bool) -> Self {
        self.emit.client = enable;
        self
    }

    /// Whether to generate server traits (default `true`).
    pub fn build_server(mut self, enable: bool) -> Self {
        self.emit.server = enable;
        self
    }

    /// Also generate tonic's gRPC client and server code, and for each
    /// service a `SvcGrpcAdapter` that serves the DRPC server trait over
    /// gRPC: one implementation answering both protocols, the migration
    /// path from gRPC (default `false`).
    ///
    /// Needs the `grpc` feature of this crate. The crate using the
    /// generated code depends on `tonic`, `tonic-prost` and `drpc-mux`
    /// with its `grpc` feature (see [the crate
    /// documentation](crate#grpc-adapters)).
    #[cfg(feature = "grpc")]
    pub fn grpc_adapter(mut self, enable: bool) -> Self {
        self.grpc = enable;
        self
    }

    /// Would generate gRPC adapters, but the `grpc` feature of this crate
    /// is off: a call does not compile, and the error names the feature
    /// (see [`GrpcFeature`]).
    #[cfg(not(feature = "grpc"))]
    pub fn grpc_adapter(self, enable: impl GrpcFeature) -> Self {
        let _ = enable;
        self
    }

    /// Also emit, for each service `Svc`, `SVC_DESCRIPTOR_SET`: the encoded
    /// `FileDescriptorSet` of its proto file and of everything that file
    /// imports (default `false`). The HTTP/JSON bridge (`drpc-http`) reads
    /// it to map the service's messages to and from proto3 JSON, so that
    /// nothing but this constant is generated for JSON support.
    pub fn service_descriptors(mut self, enable: bool) -> Self {
        self.descriptors = enable;
        self
    }

    /// Where to write the files (default: `OUT_DIR`).
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// Adjusts the underlying prost-build configuration (type attributes,
    /// extern paths, bytes fields...).
    pub fn prost_config(mut self, f: impl FnOnce(&mut prost_build::Config)) -> Self {
        f(&mut self.prost);
        self
    }

    /// Parses `protos` (searching `includes`) and writes one Rust file per
    /// proto package: `pkg.rs`, or `_.rs` for protos without a package.
    ///
    /// In a build script (when `CARGO` is set), also tells cargo to run it
    /// again when any file the compiler read changes: the protos and
    /// everything they import ([`Compiled::rerun_if_changed`]).
    pub fn compile_protos(
        self,
        protos: &[impl AsRef<Path>],
        includes: &[impl AsRef<Path>],
    ) -> Result<(), Error> {
        let compiled = self.compile(protos, includes)?;
        if std::env::var_os("CARGO").is_some() {
            for line in compiled.rerun_if_changed() {
                println!("{line}");
            }
        }
        Ok(())
    }

    /// As [`compile_protos`](Self::compile_protos), printing nothing:
    /// returns the files the compiler read, for a build script that tells
    /// cargo itself.
    pub fn compile(
        mut self,
        protos: &[impl AsRef<Path>],
        includes: &[impl AsRef<Path>],
    ) -> Result<Compiled, Error> {
        let mut compiler = protox::Compiler::new(includes)?;
        compiler
            .include_source_info(true)
            .include_imports(true)
            .open_files(protos)?;
        let inputs = compiler
            .files()
            .filter_map(|file| file.path())
            .map(Path::to_path_buf)
            .collect();
        let fds = compiler.file_descriptor_set();
        if let Some(dir) = &self.out_dir {
            self.prost.out_dir(dir);
        }
        let grpc = self.grpc_generator();
        let descriptors = self.descriptors.then(|| without_source_info(&fds));
        self.prost.service_generator(Box::new(DrpcServiceGenerator {
            emit: self.emit,
            grpc,
            descriptors,
        }));
        self.prost.compile_fds(fds)?;
        Ok(Compiled { inputs })
    }
}
