//! What an image is made of, as bytes: layer tarballs and their
//! compression, the image config and manifests, and the SBOM.
//!
//! The folder owns determinism: the same store paths and settings give the
//! same bytes (and digests) on every replica, on any day. It offers the
//! build pure functions from data (store paths, a closure, package meta) to
//! blobs; it stores nothing and runs no Nix.
//! - `layers`: deterministic tar of store paths, compressed in one pass
//!   (`compress`), and a stored layer recompressed into another encoding;
//! - `manifest`: the image config, Docker and OCI manifests, indexes and
//!   the referrers' artifact manifests, with `oci-spec`;
//! - `sbom`: the SPDX document of a closure.

pub mod compress;
pub mod layers;
pub mod manifest;
pub mod sbom;
