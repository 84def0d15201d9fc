//! Keeping a registry running for months: `strata gc` (which images stay,
//! which blobs, records and Nix store paths go) and the Prometheus metrics.
//!
//! The folder decides gc from the store's records alone (it never asks the
//! builder), so `strata gc` runs as well from a cron job on another machine
//! as on the schedule inside `strata serve`. It offers [`gc::run`] and
//! [`gc::spawn_schedule`], and the metrics' recording functions, which the
//! build and the registry call.

pub mod gc;
pub mod metrics;
