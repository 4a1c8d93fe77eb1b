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
//!
//! RPC paths are `/pkg.Svc/Method` from the proto names, exactly as Go's
//! generator builds them (`/Svc/Method` without a package). Proto comments
//! become rustdoc. The generated code refers to the `drpc-conn` (client)
//! and `drpc-mux` (server) crates, which the using crate depends on.
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
#[derive(Debug)]
pub struct Builder {
    emit: Emit,
    grpc: bool,
    out_dir: Option<PathBuf>,
    prost: prost_build::Config,
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
    /// path from gRPC (default `false`; needs the `grpc` feature; the
    /// using crate depends on `tonic`, `tonic-prost` and `drpc-mux` with its
    /// `grpc` feature).
    #[cfg(feature = "grpc")]
    pub fn grpc_adapter(mut self, enable: bool) -> Self {
        self.grpc = enable;
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
    /// In a build script, also tells cargo to rerun when they change.
    pub fn compile_protos(
        mut self,
        protos: &[impl AsRef<Path>],
        includes: &[impl AsRef<Path>],
    ) -> Result<(), Error> {
        let fds = protox::compile(protos, includes)?;
        if std::env::var_os("CARGO").is_some() {
            for file in protos {
                println!("cargo:rerun-if-changed={}", file.as_ref().display());
            }
        }
        if let Some(dir) = &self.out_dir {
            self.prost.out_dir(dir);
        }
        let grpc = self.grpc_generator();
        self.prost.service_generator(Box::new(DrpcServiceGenerator {
            emit: self.emit,
            grpc,
        }));
        self.prost.compile_fds(fds)?;
        Ok(())
    }
}
