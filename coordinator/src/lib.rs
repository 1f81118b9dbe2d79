//! The lathe service library: HTTP API, sessions, futures, scheduling and placement.
//! It never does model math and never links the worker or kernels crates; only the `lathe`
//! binary (`src/main.rs`, `src/cli/`) composes them.

pub mod core;
