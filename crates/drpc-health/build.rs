//! Generates the `grpc.health.v1` code with drpc-codegen: the messages,
//! the DRPC client and server trait and, with the `grpc` feature, tonic's
//! code and the gRPC adapter.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let builder = drpc_codegen::configure();
    #[cfg(feature = "grpc")]
    let builder = builder.grpc_adapter(true);
    builder.compile_protos(&["proto/grpc/health/v1/health.proto"], &["proto"])?;
    Ok(())
}
