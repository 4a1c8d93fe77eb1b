//! The README's first command: the quick start runs every RPC shape and
//! exits 0.

mod common;

use common::{assert_lines, run_example};
use std::time::{Duration, Instant};

#[test]
fn quickstart_exercises_every_shape_and_exits_cleanly() {
    let started = Instant::now();
    let stdout = run_example(env!("CARGO_BIN_EXE_quickstart"));
    assert_lines(
        &stdout,
        [
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
        ],
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}
