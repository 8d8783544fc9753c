//! Integration tests: real servers on random loopback ports, spoken to over HTTP.
//!
//! One test binary with a module per part of the contract keeps link times low.

mod auth;
mod bench;
mod changes;
mod cli;
mod client;
mod client_locks;
mod client_txn;
mod collections;
mod common;
mod concurrency;
mod conflict_stream;
mod conflicts;
mod cors;
mod disk_full;
mod fuzz_corpus;
mod idempotency;
mod locks;
mod openapi;
mod pg_cluster;
mod postgres;
mod postgres_faults;
mod postgres_locks;
mod postgres_model;
mod preconditions;
mod problems;
mod process;
mod rate_limits;
mod resources;
mod retention;
mod rules;
mod tcp_proxy;
mod txn;
mod txn_interactive;
mod webhooks;
