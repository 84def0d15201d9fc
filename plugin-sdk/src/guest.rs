//! Guest-side glue behind [`crate::export_plugin!`]: moving bytes across
//! linear memory. Kept out of plugin authors' sight; compiled on every target
//! so that it is type-checked by native builds too.

use crate::wire::WireInput;
use crate::{Envelope, PluginError};
use serde::Serialize;

/// Hands the host a buffer of `len` bytes. The buffer is leaked until the
/// guest takes it back (`take`, when a hook is called) or the host calls `strata_dealloc`.
pub fn alloc(len: i32) -> i32 {
    let len = len.max(0) as usize;
    let mut buf = Vec::<u8>::with_capacity(len);
    let ptr = buf.as_mut_ptr();
    std::mem::forget(buf);
    ptr as usize as i32
}

/// # Safety
/// `ptr`/`len` must come from [`alloc`] (or a response) and not be used again.
pub unsafe fn dealloc(ptr: i32, len: i32) {
    drop(Vec::from_raw_parts(ptr as usize as *mut u8, 0, len.max(0) as usize));
}

/// # Safety
/// `ptr`/`len` must be a buffer from [`alloc`] that the host filled.
unsafe fn take(ptr: i32, len: i32) -> Vec<u8> {
    let len = len.max(0) as usize;
    Vec::from_raw_parts(ptr as usize as *mut u8, len, len)
}

/// Serialises a result as an [`Envelope`] and leaks it for the host to read;
/// returns `(ptr << 32) | len`.
pub fn respond<T: Serialize>(result: Result<T, PluginError>) -> i64 {
    let envelope = match result {
        Ok(v) => Envelope::Ok(v),
        Err(e) => Envelope::Err(e),
    };
    let bytes = serde_json::to_vec(&envelope).unwrap_or_else(|e| {
        serde_json::to_vec(&Envelope::<()>::Err(PluginError::new(format!(
            "plugin could not serialise its output: {e}"
        ))))
        .expect("an error envelope always serialises")
    });
    let mut bytes = bytes.into_boxed_slice();
    let ptr = bytes.as_mut_ptr() as usize as u64;
    let len = bytes.len() as u64;
    std::mem::forget(bytes);
    ((ptr << 32) | len) as i64
}

/// Decodes the input, runs the hook, encodes the answer.
///
/// # Safety
/// `ptr`/`len` must be a buffer from [`alloc`] that the host filled.
pub unsafe fn call<I: WireInput, O: Serialize>(
    ptr: i32,
    len: i32,
    hook: fn(I) -> Result<O, PluginError>,
) -> i64 {
    let bytes = take(ptr, len);
    let result = I::decode(&bytes)
        .map_err(|e| PluginError::new(format!("plugin could not parse its input: {e}")))
        .and_then(|input| {
            drop(bytes);
            hook(input)
        });
    respond(result)
}
