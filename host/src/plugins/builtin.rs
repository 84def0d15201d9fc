//! The plugins that ship inside the binary, so that a default configuration
//! needs no files besides strata.toml. They are the same `.wasm` files a user
//! could load by path (built by `scripts/build-plugins.sh`, committed in
//! `plugins/dist/`), run in the same sandbox: built-ins get no privilege.
//! `tests/plugins_builtin.rs` fails when one no longer matches its source.

/// Built-in plugin names, in the order the web page lists them.
pub const NAMES: [&str; 4] = ["bundles", "popularity", "size", "nixpkgs-source"];

/// The module of a built-in plugin.
pub fn wasm(name: &str) -> Option<&'static [u8]> {
    Some(match name {
        "bundles" => include_bytes!("../../../plugins/dist/bundles.wasm"),
        "popularity" => include_bytes!("../../../plugins/dist/popularity.wasm"),
        "size" => include_bytes!("../../../plugins/dist/size.wasm"),
        "nixpkgs-source" => include_bytes!("../../../plugins/dist/nixpkgs-source.wasm"),
        _ => return None,
    })
}
