//! The balancing example: three servers, one stopped and restarted, calls
//! going on throughout; exits 0.

use std::process::Command;

#[test]
fn balance_example_survives_a_restart() {
    let output = Command::new(env!("CARGO_BIN_EXE_balance"))
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
        "server-1 stopped",
        "all three answered before the stop: true",
        "all three answered after the restart: true",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line:?} in\n{stdout}"
        );
    }
    // While it was down, server-1 answered no call that started then.
    let down = stdout
        .lines()
        .find(|l| l.starts_with("server-1 stopped "))
        .expect("the row of the down phase");
    let columns: Vec<&str> = down.split_whitespace().collect();
    assert_eq!(columns[columns.len() - 2], "0", "{down}");
}
