//! The balancing example: three servers, one stopped and restarted, calls
//! going on throughout; exits 0.

mod common;

use common::{assert_lines, run_example};

#[test]
fn balance_example_survives_a_restart() {
    let stdout = run_example(env!("CARGO_BIN_EXE_balance"));
    assert_lines(
        &stdout,
        [
            "server-1 stopped",
            "all three answered before the stop: true",
            "all three answered after the restart: true",
        ],
    );
    // While it was down, server-1 answered no call that started then.
    let down = stdout
        .lines()
        .find(|l| l.starts_with("server-1 stopped "))
        .expect("the row of the down phase");
    let columns: Vec<&str> = down.split_whitespace().collect();
    assert_eq!(columns[columns.len() - 2], "0", "{down}");
}
