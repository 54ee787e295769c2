//! The `portcullis` command, built with the end-to-end tests so that they can run it as a
//! process of its own (`CARGO_BIN_EXE_portcullis-e2e`): the same code as the binary's `main`.

fn main() -> std::process::ExitCode {
    portcullis::command::main()
}
