//! The coordinator's pure core: every decision that needs no I/O (request ordering, futures,
//! sessions and their expiry, the checkpoint catalogue, tenants, URL signing, id and sampling
//! validation). Time is always an argument; nothing here reads a clock, a socket or a file.

pub mod api;
pub mod catalog;
pub mod engine;
mod front;
pub mod futures;
pub mod ids;
pub mod jobs;
mod parallel;
mod restore;
mod samplers;
pub mod sampling;
pub mod sequencer;
pub mod sessions;
pub mod signing;
pub mod tenants;
#[cfg(test)]
mod tests;
pub mod time;
mod views;
pub mod workers;
