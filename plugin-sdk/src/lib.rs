//! The one crate both sides of Strata's plugin boundary compile.
//!
//! A plugin author writes plain functions over the types in [`types`] and
//! names them in [`export_plugin!`]; the macro produces the module's exports.
//! The same functions are called directly in native tests, so a plugin's
//! logic is tested without any WebAssembly.
//!
//! # ABI (version [`ABI_VERSION`])
//! A core WebAssembly module for `wasm32-unknown-unknown`, with no imports,
//! exporting `memory` and:
//! - `strata_abi_version() -> i32`
//! - `strata_alloc(len: i32) -> i32` and `strata_dealloc(ptr: i32, len: i32)`
//! - `strata_plugin_info() -> i64`
//! - `strata_<hook>(ptr: i32, len: i32) -> i64` for each implemented hook
//!
//! The host allocates the input with `strata_alloc`, writes the hook's input
//! there (JSON, or for `group_layers` the compact form of [`wire`]) and calls
//! the hook, which takes ownership of the input.
//! A call returns `(ptr << 32) | len` of a JSON [`Envelope`] in guest memory.
//! `docs/plugins.md` is the full contract.

pub mod graph;
#[cfg(feature = "schema")]
pub mod schema;
pub mod types;
pub mod validate;
pub mod wire;

pub use types::*;

#[doc(hidden)]
pub mod guest;

#[doc(hidden)]
pub use serde_json as __serde_json;

/// Exports a plugin's hooks and identity.
///
/// ```ignore
/// strata_plugin_sdk::export_plugin! {
///     name: "my-grouping",
///     group_layers: my_group_fn,
/// }
/// ```
/// Each hook is `fn(Input) -> Result<Output, PluginError>` with the hook's
/// types. Outside `wasm32` the macro generates nothing, so several plugins
/// can be linked into one native test binary.
#[macro_export]
macro_rules! export_plugin {
    (name: $name:expr, $($hook:ident : $func:path),+ $(,)?) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            #[no_mangle]
            pub extern "C" fn strata_abi_version() -> i32 {
                $crate::ABI_VERSION as i32
            }

            #[no_mangle]
            pub extern "C" fn strata_alloc(len: i32) -> i32 {
                $crate::guest::alloc(len)
            }

            #[no_mangle]
            pub unsafe extern "C" fn strata_dealloc(ptr: i32, len: i32) {
                $crate::guest::dealloc(ptr, len)
            }

            #[no_mangle]
            pub extern "C" fn strata_plugin_info() -> i64 {
                let info = $crate::PluginInfo {
                    name: ($name).to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    hooks: vec![$(stringify!($hook).to_string()),+],
                };
                $crate::guest::respond::<$crate::PluginInfo>(Ok(info))
            }

            $( $crate::__export_hook!($hook, $func); )+
        };
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __export_hook {
    (expand_names, $func:path) => {
        #[no_mangle]
        pub unsafe extern "C" fn strata_expand_names(ptr: i32, len: i32) -> i64 {
            $crate::guest::call::<$crate::ExpandInput, $crate::ExpandOutput>(ptr, len, $func)
        }
    };
    (group_layers, $func:path) => {
        #[no_mangle]
        pub unsafe extern "C" fn strata_group_layers(ptr: i32, len: i32) -> i64 {
            $crate::guest::call::<$crate::GroupInput, $crate::Layers>(ptr, len, $func)
        }
    };
    (render_source, $func:path) => {
        #[no_mangle]
        pub unsafe extern "C" fn strata_render_source(ptr: i32, len: i32) -> i64 {
            $crate::guest::call::<$crate::SourceInput, $crate::SourceOutput>(ptr, len, $func)
        }
    };
}

/// Reads a plugin's configuration table into the plugin's own config type,
/// treating `null` (no table given) as the type's default.
pub fn config<T: serde::de::DeserializeOwned + Default>(
    value: &serde_json::Value,
) -> Result<T, PluginError> {
    if value.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(value.clone())
        .map_err(|e| PluginError::new(format!("invalid plugin configuration: {e}")))
}
