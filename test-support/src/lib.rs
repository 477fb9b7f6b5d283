//! What every cairn test needs, once: polling with a limit instead of sleeping ([`poll`](mod@poll)),
//! free loopback ports for peers that cannot listen on port 0 themselves ([`ports`]), child
//! processes that end with their test even when it panics ([`process`]), and a real
//! `cairn-hub` on port 0 with its own data directory ([`hub`]).
//!
//! Owns: those helpers, and where a test finds the workspace's binaries ([`workspace_bin`]).
//! Must not: be anything but a dev-dependency; depend on a cairn crate (the hub's own tests
//! use it, so linking `cairn-hub` here would build the hub twice and tie the launcher to its
//! internals: the launcher drives the binary, as an operator does); hold per-crate fixtures
//! (BMC emulators, network namespaces, guest images stay with the tests that use them); send
//! traffic anywhere but loopback.

pub mod hub;
pub mod poll;
pub mod ports;
pub mod process;

pub use poll::{Poll, Polling, poll, poll_async};
pub use process::ChildGuard;

use std::path::{Path, PathBuf};

/// `target/<profile>/` of this test run: the test executable lives in its `deps/`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the target directory")
        .to_path_buf()
}

/// A binary of the workspace in [`profile_dir`], for binaries of another package, which Cargo
/// does not pass as `CARGO_BIN_EXE_<name>`; fails the test with how to build it when missing.
pub fn workspace_bin(name: &str, package: &str) -> PathBuf {
    let path = profile_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first with `cargo build -p {package}` (same target dir); \
         `make test` builds every workspace binary",
        path.display()
    );
    path
}
