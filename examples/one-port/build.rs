//! Generates the Greeter (the quick start's proto) with tonic's code, the
//! gRPC adapter and the service's descriptors, for the HTTP/JSON bridge.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    drpc_codegen::configure()
        .grpc_adapter(true)
        .service_descriptors(true)
        .compile_protos(&["../proto/greeter.proto"], &["../proto"])?;
    Ok(())
}
