//! Integration tests: real servers on random loopback ports, spoken to over HTTP.
//!
//! One test binary with a module per part of the contract keeps link times low.

mod common;
mod preconditions;
mod resources;
