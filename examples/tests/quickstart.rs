//! The README's first command: the quick start runs every RPC shape and
//! exits 0.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn quickstart_exercises_every_shape_and_exits_cleanly() {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_quickstart"))
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
        "unary:            Hello, world!",
        "with metadata:    Bonjour, le monde!",
        "error with code:  code InvalidArgument (name must not be empty)",
        "server streaming: [5, 4, 3, 2, 1]",
        "client streaming: sum 10 of 4 numbers",
        "bidi:             you said \"hi\"",
        "bidi:             you said \"bye\"",
        "cancelled call:   deadline exceeded = true",
        "still connected:  Hello, again!",
        "server stopped",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line:?} in\n{stdout}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(30));
}
