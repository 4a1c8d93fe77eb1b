//! The mutual TLS example: a client with a certificate is served and
//! named by it, one without is refused; exits 0.

mod common;

use common::{assert_lines, run_example};
use std::time::{Duration, Instant};

#[test]
fn mtls_example_names_the_client_and_refuses_one_without_a_certificate() {
    let started = Instant::now();
    let stdout = run_example(env!("CARGO_BIN_EXE_mtls"));
    assert_lines(
        &stdout,
        [
            "client: Hello, world! You are greeter-client.",
            "client without a certificate refused: true",
            "server stopped",
        ],
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("server: call from 127.0.0.1:")
                && l.ends_with("with a chain of 2 certificates, CN=greeter-client")),
        "the server saw the client's certificate:\n{stdout}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}
