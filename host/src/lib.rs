//! Strata: a container registry that builds images from Nix packages on
//! demand. The host owns mechanism (registry protocol, Nix, layers, storage);
//! every policy decision is a WebAssembly plugin (see `plugins`).
//!
//! The pull path, top to bottom, is `build::Builder::build`.

pub mod auth;
pub mod bench;
pub mod bench_layering;
pub mod build;
pub mod compress;
pub mod config;
pub mod error;
pub mod export;
pub mod gc;
pub mod layers;
pub mod limits;
pub mod lease;
pub mod manifest;
pub mod metrics;
pub mod nix;
pub mod nixgc;
pub mod plugins;
pub mod preflight;
pub mod reference;
pub mod sbom;
pub mod registry;
pub mod storage;
pub mod web;
