//! The plugins that ship inside the binary, so that a default configuration
//! needs no files besides strata.toml. They are the same `.wasm` files a user
//! could load by path (built by `scripts/build-plugins.sh`, committed in
//! `plugins/dist/`), run in the same sandbox: built-ins get no privilege.

/// Built-in plugin names, in the order the web page lists them.
pub const NAMES: [&str; 4] = ["bundles", "popularity", "size", "nixpkgs-source"];

/// The module of a built-in plugin.
pub fn wasm(name: &str) -> Option<&'static [u8]> {
    // TEMPORARY: plugins/dist/ does not exist yet; switched to include_bytes!
    // as soon as the plugin builds are committed.
    let _ = name;
    None
}
