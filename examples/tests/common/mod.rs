//! What the tests of the example binaries share: run one to its end, and
//! look for lines of its output.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::process::Command;

/// Runs the example binary at `path` (`env!("CARGO_BIN_EXE_…")`), checks
/// that it exited 0, and returns its standard output.
pub(crate) fn run_example(path: &str) -> String {
    let output = Command::new(path).output().expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "exit {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Checks that each of `lines` is a whole line of `stdout`.
pub(crate) fn assert_lines<S: AsRef<str>>(stdout: &str, lines: impl IntoIterator<Item = S>) {
    for line in lines {
        let line = line.as_ref();
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line:?} in\n{stdout}"
        );
    }
}
