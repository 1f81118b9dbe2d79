//! The `lathe` binary: composes coordinator, worker and kernels behind one CLI.
fn main() {}
