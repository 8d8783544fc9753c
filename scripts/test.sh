#!/usr/bin/env bash
# Every test: the workspace's (unit, property, integration and crash tests, and the
# PostgreSQL backend's own tests), then the HTTP integration suite once more with
# every in-process server on PostgreSQL. The PostgreSQL tests start a throw-away
# cluster themselves (initdb and postgres from the PATH); nothing to install.
#
# The second pass leaves out the `postgres`, `postgres_faults`, `postgres_locks` and
# `postgres_model` modules: they always run on PostgreSQL (two nodes, faults, the
# backends side by side), so the first pass ran them already.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
TRUCE_TEST_BACKEND=postgres cargo test -p truce --test it -- --skip postgres:: --skip postgres_faults:: --skip postgres_model:: --skip postgres_locks::
