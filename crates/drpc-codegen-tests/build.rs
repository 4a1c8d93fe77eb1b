//! Generates the test services with the build-script API.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = "../drpc-codegen/tests/protos";
    drpc_codegen::configure()
        .grpc_adapter(true)
        .compile_protos(
            &[
                format!("{protos}/echo.proto"),
                format!("{protos}/bare.proto"),
                format!("{protos}/keywords.proto"),
            ],
            &[protos],
        )?;
    // tonic's own code for a service named `Self` has warnings.
    drpc_codegen::configure()
        .compile_protos(&[format!("{protos}/self_service.proto")], &[protos])?;
    Ok(())
}
