//! The README's code runs: every shape through the channel, through
//! `tower` layers and through an interceptor, against the Greeter service
//! on loopback; exits 0.

mod common;

use common::run_example;

#[test]
fn the_readme_code_runs_every_shape() {
    let stdout = run_example(env!("CARGO_BIN_EXE_shapes"));
    for client in ["channel", "layered", "intercepted"] {
        for line in [
            format!("{client} unary: Hello, Ada! Bonjour, Ada!"),
            format!(
                "{client} server streaming: [Tick {{ value: 3 }}, Tick {{ value: 2 }}, \
                 Tick {{ value: 1 }}] [2, 1]"
            ),
            format!("{client} client streaming: sum 10 of 4"),
            format!(
                "{client} bidi: [\"you said \\\"hi\\\"\", \"you said \\\"bye\\\"\"], then 0 more"
            ),
        ] {
            assert!(
                stdout.lines().any(|l| l == line),
                "missing {line:?} in\n{stdout}"
            );
        }
        // Matched on Code::InvalidArgument; Display shows code, message
        // and stream. The method the server left out is Unimplemented.
        let prefix = format!(
            "{client} errors: bad request: InvalidArgument: name must not be empty (stream "
        );
        let errors = stdout
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("missing {prefix:?} in\n{stdout}"));
        assert!(errors.ends_with("); wait: Some(Unimplemented)"), "{errors}");
    }
}
