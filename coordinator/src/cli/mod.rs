//! The `lathe` command line. This module tree belongs to the binary, not the coordinator
//! library: it is where coordinator, worker and kernels are composed.

pub mod bench;
pub mod catalog;
pub mod coordinator;
pub mod fetch;
pub mod load_monitor;
pub mod models;
pub mod serve;
pub mod worker;
pub mod worker_metrics;
