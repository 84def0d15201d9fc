//! Strata: a container registry that builds images from Nix packages on
//! demand. The host owns mechanism (registry protocol, Nix, layers, storage);
//! every policy decision is a WebAssembly plugin (see `plugins`).
//!
//! One folder per concern, imports pointing down (docs/architecture.md; the
//! `architecture` test in host/tests enforces it):
//!
//! ```text
//! preflight → web → registry → build → ops → plugins → image → storage → nix → config, error
//! ```
//!
//! The pull path, top to bottom, is `build::Builder::image` in
//! `build/mod.rs`.

pub mod build;
pub mod config;
pub mod error;
pub mod image;
pub mod nix;
pub mod ops;
pub mod plugins;
pub mod preflight;
pub mod registry;
pub mod storage;
pub mod web;
