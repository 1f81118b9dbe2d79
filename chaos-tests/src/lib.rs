//! Simulation and fault scenarios (later issues) and the workspace's structural checks (`tests/tidy.rs`).
