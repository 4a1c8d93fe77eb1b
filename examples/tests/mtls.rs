//! The mutual TLS example: a client with a certificate is served and
//! named by it, one without is refused; exits 0.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn mtls_example_names_the_client_and_refuses_one_without_a_certificate() {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_mtls"))
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
        "client: Hello, world! You are greeter-client.",
        "client without a certificate refused: true",
        "server stopped",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line:?} in\n{stdout}"
        );
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("server: call from 127.0.0.1:")
                && l.ends_with("with a chain of 2 certificates, CN=greeter-client")),
        "the server saw the client's certificate:\n{stdout}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}
