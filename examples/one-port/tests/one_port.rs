//! The one-port example: DRPC (with and without the migration header),
//! gRPC and HTTP/JSON answered on one port, the interceptor refusing
//! calls without a client id on each; exits 0.

use std::process::Command;

#[test]
fn one_port_example_serves_drpc_grpc_and_http() {
    let output = Command::new(env!("CARGO_BIN_EXE_one_port"))
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "exit {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "drpc: Hello, world!",
        "drpc without client-id: Some(Unauthenticated)",
        "drpc with the header: Hello, world!",
        "grpc: Hello, world!",
        "grpc without client-id: Unauthenticated",
        r#"http: 200 {"message":"Hello, world!"}"#,
        r#"http error: 400 {"code":"invalid_argument","msg":"name must not be empty"}"#,
        "server stopped",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line:?} in\n{stdout}"
        );
    }
}
