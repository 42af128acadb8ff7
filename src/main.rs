//! The `podar` command line: parses arguments, opens files, prints. All work is in the library; the
//! command line itself is `cli/`.

#[cfg(not(target_arch = "wasm32"))]
mod cli;

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    cli::main()
}
