//! The sandbox: one engine for the process, one compiled module per plugin,
//! and a fresh store and instance for every call.
//!
//! A plugin is untrusted code. Everything here assumes the module may loop
//! forever, allocate without end, trap anywhere, or hand back a pointer and
//! length that mean nothing; each of those becomes a one-line reason and never
//! a panic, a hang or a host allocation the plugin chose the size of.

use strata_plugin_sdk::validate::clean_message;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use crate::error::PluginCode;
use strata_plugin_sdk::{Envelope, HOOKS};
use wasmtime::{
    Config, Engine, ExternType, FuncType, Instance, InstancePre, Linker, Module, OptLevel,
    ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Strategy, Trap, WasmBacktrace,
};

const MIB: u64 = 1024 * 1024;

/// Exports every plugin must have, with their signatures (params, results).
const REQUIRED: [(&str, &[&str], &[&str]); 4] = [
    ("strata_abi_version", &[], &["i32"]),
    ("strata_alloc", &["i32"], &["i32"]),
    ("strata_dealloc", &["i32", "i32"], &[]),
    ("strata_plugin_info", &[], &["i64"]),
];
const HOOK_PARAMS: &[&str] = &["i32", "i32"];
const HOOK_RESULTS: &[&str] = &["i64"];

/// The export implementing a hook, by the hook's wire name.
pub(crate) fn hook_export(hook: &str) -> Option<&'static str> {
    match hook {
        "expand_names" => Some("strata_expand_names"),
        "group_layers" => Some("strata_group_layers"),
        "render_source" => Some("strata_render_source"),
        _ => None,
    }
}

/// One engine for the whole process: compiled code is only valid in the
/// engine that compiled it, and sharing it lets a plugin loaded by
/// `strata plugin check` behave exactly like one loaded by the server.
/// Nothing per-deployment lives in the engine (fuel and memory caps are per
/// store), so the configuration can be fixed here.
pub(crate) fn engine() -> anyhow::Result<&'static Engine> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut config = Config::new();
            config
                .strategy(Strategy::Cranelift)
                .cranelift_opt_level(OptLevel::Speed)
                // Fuel rather than epochs: deterministic (the same input stops
                // at the same point on every machine) and needs no ticker
                // thread.
                .consume_fuel(true);
            Engine::new(&config).map_err(|e| format!("{e:#}"))
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("cannot create the WebAssembly engine: {e}"))
}

/// Per-call resource caps, from `[plugins]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub fuel: u64,
    pub memory_bytes: usize,
    pub output_bytes: usize,
}

impl Limits {
    pub fn from_config(cfg: &crate::config::PluginsConfig) -> anyhow::Result<Limits> {
        if cfg.fuel == 0 {
            anyhow::bail!("plugins.fuel: must be at least 1");
        }
        // wasm32 memory cannot exceed 4 GiB; a larger cap would only hide a typo.
        if cfg.memory_mib == 0 || cfg.memory_mib > 4096 {
            anyhow::bail!("plugins.memory_mib: must be between 1 and 4096, not {}", cfg.memory_mib);
        }
        if cfg.output_mib == 0 || cfg.output_mib > 4096 {
            anyhow::bail!("plugins.output_mib: must be between 1 and 4096, not {}", cfg.output_mib);
        }
        Ok(Limits {
            fuel: cfg.fuel,
            memory_bytes: (cfg.memory_mib * MIB) as usize,
            output_bytes: (cfg.output_mib * MIB) as usize,
        })
    }

    fn memory_mib(&self) -> u64 {
        self.memory_bytes as u64 / MIB
    }
}

/// What one call cost; reported by `strata plugin check` and the benchmark,
/// and logged at debug level so fuel budgets can be set from real calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStats {
    /// Fuel consumed, instantiation (data segments, start function) included.
    pub fuel: u64,
    /// Wall time of store creation, instantiation, input copy, the call and
    /// output copy (not JSON encoding or decoding).
    pub wasm_time: Duration,
    /// The guest's linear memory when the call returned (it never shrinks,
    /// so this is the peak): what `memory_mib` must leave room for.
    pub memory_bytes: usize,
}

/// Store data: `StoreLimits` does the limiting; the wrapper only remembers
/// that a memory grow was refused, because the resulting error is not a
/// `Trap` and its text is not a stable thing to match on.
struct State {
    limits: StoreLimits,
    memory_cap: usize,
    memory_denied: bool,
    memory_peak: usize,
}

impl ResourceLimiter for State {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_cap {
            self.memory_denied = true;
        }
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.memory_peak = self.memory_peak.max(desired);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// Inside a call: either wasmtime stopped the guest, or the host refused
/// what the guest did (a reason ready to show).
enum CallError {
    Wasm(wasmtime::Error),
    Refused(String),
}

impl From<wasmtime::Error> for CallError {
    fn from(e: wasmtime::Error) -> Self {
        CallError::Wasm(e)
    }
}

/// A compiled, checked plugin module, ready to instantiate.
pub(crate) struct Loaded {
    pre: InstancePre<State>,
    limits: Limits,
    /// Hooks the module exports, by wire name, in `HOOKS` order.
    pub hooks: Vec<&'static str>,
}

impl Loaded {
    /// Compiles (or loads from the cache), checks the module's shape and
    /// ABI version. Errors are one line, without the plugin's name (the
    /// caller knows how the user referred to it).
    pub fn new(wasm: &[u8], digest: &str, limits: Limits, cache_dir: Option<&Path>) -> anyhow::Result<Loaded> {
        let engine = engine()?;
        let module = compile(engine, wasm, digest, cache_dir)?;
        let hooks = check_shape(&module).map_err(anyhow::Error::msg)?;
        // An empty linker: the module was checked to import nothing, so this
        // cannot fail, and nothing the guest could call exists.
        let pre = Linker::<State>::new(engine)
            .instantiate_pre(&module)
            .map_err(|e| anyhow::anyhow!("cannot prepare instantiation: {e:#}"))?;
        let loaded = Loaded { pre, limits, hooks };
        let (version, _) = loaded
            .with_instance(|store, instance| {
                let f = instance.get_typed_func::<(), i32>(&mut *store, "strata_abi_version")?;
                Ok(f.call(&mut *store, ())?)
            })
            .map_err(|reason| anyhow::anyhow!("strata_abi_version {reason}"))?;
        let expected = strata_plugin_sdk::ABI_VERSION;
        if version as i64 != expected as i64 {
            anyhow::bail!(
                "built for plugin ABI version {version}, but this Strata speaks version {expected}; \
                 rebuild the plugin against a strata-plugin-sdk that speaks ABI {expected}"
            );
        }
        Ok(loaded)
    }

    /// Runs `f` on a brand-new instance under this module's limits. The
    /// store, and with it everything the guest did, is dropped on return,
    /// trap or not: a trapped instance may have a corrupted heap.
    fn with_instance<R>(
        &self,
        f: impl FnOnce(&mut Store<State>, &Instance) -> Result<R, CallError>,
    ) -> Result<(R, CallStats), String> {
        let start = Instant::now();
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.memory_bytes)
            .table_elements(1 << 20)
            .instances(1)
            .memories(1)
            .tables(8)
            .trap_on_grow_failure(true)
            .build();
        let state = State { limits, memory_cap: self.limits.memory_bytes, memory_denied: false, memory_peak: 0 };
        let mut store = Store::new(self.pre.module().engine(), state);
        store.limiter(|s| s);
        store.set_fuel(self.limits.fuel).expect("the engine consumes fuel");
        let result = match self.pre.instantiate(&mut store) {
            Ok(instance) => f(&mut store, &instance),
            Err(e) => Err(CallError::Wasm(e)),
        };
        let fuel = self.limits.fuel - store.get_fuel().unwrap_or(0);
        let memory_bytes = store.data().memory_peak;
        let stats = CallStats { fuel, wasm_time: start.elapsed(), memory_bytes };
        match result {
            Ok(r) => Ok((r, stats)),
            Err(CallError::Refused(reason)) => Err(reason),
            Err(CallError::Wasm(e)) => Err(self.explain(&store, &e)),
        }
    }

    fn explain(&self, store: &Store<State>, e: &wasmtime::Error) -> String {
        if store.data().memory_denied {
            return format!("exceeded its memory limit ({} MiB)", self.limits.memory_mib());
        }
        match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => format!("ran out of fuel (limit {})", self.limits.fuel),
            Some(trap) => {
                let text = trap.to_string();
                let mut reason = format!("trapped: {}", text.strip_prefix("wasm trap: ").unwrap_or(&text));
                if let Some(bt) = e.downcast_ref::<WasmBacktrace>() {
                    let mut names: Vec<&str> = bt.frames().iter().filter_map(|f| f.func_name()).collect();
                    names.dedup();
                    names.truncate(4);
                    if !names.is_empty() {
                        reason.push_str(&format!(" in {}", names.join(" < ")));
                    }
                }
                reason
            }
            None => format!("failed: {}", clean_message(&format!("{e:#}"))),
        }
    }

    /// Calls a hook (`strata_<hook>`) with `input` and returns the bytes the
    /// guest answered with, copied out of its memory.
    pub fn call(&self, export: &str, input: &[u8]) -> Result<(Vec<u8>, CallStats), String> {
        let len = i32::try_from(input.len())
            .map_err(|_| format!("input of {} bytes is too large for a plugin", input.len()))?;
        self.with_instance(|store, instance| {
            let memory = instance
                .get_memory(&mut *store, "memory")
                .ok_or_else(|| CallError::Refused("has no memory export".into()))?;
            let alloc = instance.get_typed_func::<i32, i32>(&mut *store, "strata_alloc")?;
            let hook = instance.get_typed_func::<(i32, i32), i64>(&mut *store, export)?;
            let ptr = alloc.call(&mut *store, len)?;
            // Null is where C allocators say "no memory"; writing there
            // would overwrite the guest's own data. The ABI's way to fail
            // is to trap.
            if ptr == 0 && len > 0 {
                return Err(CallError::Refused(format!(
                    "strata_alloc({len}) returned 0 (null); a plugin that cannot allocate must trap"
                )));
            }
            let range = in_bounds(ptr as u32, len as u32, memory.data_size(&*store)).ok_or_else(|| {
                CallError::Refused(format!(
                    "strata_alloc({len}) returned {ptr:#x}, outside its {} bytes of memory",
                    memory.data_size(&*store)
                ))
            })?;
            memory.data_mut(&mut *store)[range].copy_from_slice(input);
            let packed = hook.call(&mut *store, (ptr, len))?;
            self.read_output(store, &memory, packed)
        })
    }

    /// Calls `strata_plugin_info` and decodes it.
    pub fn info(&self) -> Result<strata_plugin_sdk::PluginInfo, String> {
        decode(&self.info_bytes()?)
    }

    /// `strata_plugin_info`'s answer as the module wrote it.
    pub fn info_bytes(&self) -> Result<Vec<u8>, String> {
        let (bytes, _) = self.with_instance(|store, instance| {
            let memory = instance
                .get_memory(&mut *store, "memory")
                .ok_or_else(|| CallError::Refused("has no memory export".into()))?;
            let f = instance.get_typed_func::<(), i64>(&mut *store, "strata_plugin_info")?;
            let packed = f.call(&mut *store, ())?;
            self.read_output(store, &memory, packed)
        })?;
        Ok(bytes)
    }

    fn read_output(
        &self,
        store: &mut Store<State>,
        memory: &wasmtime::Memory,
        packed: i64,
    ) -> Result<Vec<u8>, CallError> {
        let ptr = (packed as u64 >> 32) as u32;
        let len = packed as u64 as u32;
        if len as usize > self.limits.output_bytes {
            return Err(CallError::Refused(format!(
                "returned {len} bytes, over its output limit ({} MiB)",
                self.limits.output_bytes as u64 / MIB
            )));
        }
        let data = memory.data(&*store);
        let range = in_bounds(ptr, len, data.len()).ok_or_else(|| {
            CallError::Refused(format!(
                "returned a buffer outside its memory ({len} bytes at {ptr:#x}, memory is {} bytes)",
                data.len()
            ))
        })?;
        Ok(data[range].to_vec())
    }

    /// Creates a store and instance and drops them, to measure what every
    /// call pays before the guest runs.
    pub fn instantiate_only(&self) -> Result<CallStats, String> {
        self.with_instance(|_, _| Ok(())).map(|(_, stats)| stats)
    }
}

fn in_bounds(ptr: u32, len: u32, size: usize) -> Option<std::ops::Range<usize>> {
    let start = ptr as usize;
    let end = start.checked_add(len as usize)?;
    (end <= size).then_some(start..end)
}

/// Decodes an envelope into the hook's output, or the reason it is not one.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    decode_refusal(bytes).map_err(|(reason, _)| reason)
}

/// [`decode`], and the registry code of an `err` envelope naming one the
/// host knows: the reason is then the plugin's message alone, for the
/// client to read as it is.
pub(crate) fn decode_refusal<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, (String, Option<PluginCode>)> {
    match serde_json::from_slice::<Envelope<T>>(bytes) {
        Ok(Envelope::Ok(value)) => Ok(value),
        Ok(Envelope::Err(e)) => Err(match e.code.as_deref().map(|c| (c, PluginCode::from_wire(c))) {
            Some((_, Some(code))) => (clean_message(&e.message), Some(code)),
            Some((unknown, None)) => (
                format!("reported an error with an unknown code {:?}: {}", clean_message(unknown), clean_message(&e.message)),
                None,
            ),
            None => (format!("reported an error: {}", clean_message(&e.message)), None),
        }),
        Err(e) => Err((format!("returned malformed JSON: {e}"), None)),
    }
}

/// Refuses any import, checks the required exports and their signatures, and
/// returns the hooks the module exports.
fn check_shape(module: &Module) -> Result<Vec<&'static str>, String> {
    if let Some(import) = module.imports().next() {
        let count = module.imports().len();
        let more = if count > 1 { format!(" (and {} more)", count - 1) } else { String::new() };
        return Err(format!(
            "imports `{}::{}`{more}; a plugin may import nothing: Strata provides no WASI and no host \
             functions (build for wasm32-unknown-unknown)",
            import.module(),
            import.name()
        ));
    }
    match module.get_export("memory") {
        Some(ExternType::Memory(m)) if m.is_64() => {
            return Err("exports a 64-bit `memory` (memory64); the ABI needs a 32-bit one".into())
        }
        Some(ExternType::Memory(m)) if m.is_shared() => {
            return Err("exports a shared `memory` (threads); the ABI needs an unshared one".into())
        }
        Some(ExternType::Memory(_)) => {}
        Some(_) => return Err("exports `memory`, but not as a memory".into()),
        None => return Err("does not export `memory`".into()),
    }
    // Instantiation would fail on the store's limit of one memory anyway;
    // refusing here names the cause.
    let memories = module.resources_required().num_memories;
    if memories > 1 {
        return Err(format!("declares {memories} memories (multi-memory); a plugin has exactly one, `memory`"));
    }
    for (name, params, results) in REQUIRED {
        check_func(module, name, params, results)?
            .ok_or_else(|| format!("does not export `{name}`; is it built with strata_plugin_sdk::export_plugin!?"))?;
    }
    let mut hooks = Vec::new();
    for hook in HOOKS {
        let export = hook_export(hook).expect("every hook has an export");
        if check_func(module, export, HOOK_PARAMS, HOOK_RESULTS)?.is_some() {
            hooks.push(hook);
        }
    }
    if hooks.is_empty() {
        return Err(format!("exports none of the hooks ({})", HOOKS.map(|h| format!("strata_{h}")).join(", ")));
    }
    Ok(hooks)
}

/// `Ok(None)` when the export is absent, an error when it has the wrong
/// type or signature.
fn check_func(module: &Module, name: &str, params: &[&str], results: &[&str]) -> Result<Option<()>, String> {
    let ty: FuncType = match module.get_export(name) {
        None => return Ok(None),
        Some(ExternType::Func(ty)) => ty,
        Some(_) => return Err(format!("exports `{name}`, but not as a function")),
    };
    let got_params: Vec<String> = ty.params().map(|t| t.to_string()).collect();
    let got_results: Vec<String> = ty.results().map(|t| t.to_string()).collect();
    if got_params != params || got_results != results {
        return Err(format!(
            "exports `{name}` as ({}) -> ({}), the ABI needs ({}) -> ({})",
            got_params.join(", "),
            got_results.join(", "),
            params.join(", "),
            results.join(", ")
        ));
    }
    Ok(Some(()))
}

/// Compiles a module, going through `cache_dir` when one is configured.
///
/// Deserialising precompiled code is `unsafe` in wasmtime because the file is
/// trusted to be machine code wasmtime wrote; so only files this host could
/// have written are read: named by the sha256 of the wasm and a hash of the
/// engine's compilation settings (which include the wasmtime version), owned
/// by this user and writable by no one else. Any cache problem falls back to
/// compiling; the cache never makes a start fail.
///
/// Within a process, each distinct module (and cache location) is compiled
/// once (a `Module` is a
/// cheap handle): the same file under two names, or `PluginSet::load` run
/// again, costs nothing, and concurrent loads of one module wait for the
/// first instead of compiling it again.
fn compile(engine: &Engine, wasm: &[u8], digest: &str, cache_dir: Option<&Path>) -> anyhow::Result<Module> {
    type Slot = Arc<OnceLock<Result<Module, String>>>;
    type Key = (String, Option<PathBuf>);
    static COMPILED: OnceLock<std::sync::Mutex<std::collections::HashMap<Key, Slot>>> = OnceLock::new();
    let slot: Slot = COMPILED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry((digest.to_string(), cache_dir.map(Path::to_path_buf)))
        .or_default()
        .clone();
    slot.get_or_init(|| compile_uncached(engine, wasm, digest, cache_dir).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn compile_uncached(engine: &Engine, wasm: &[u8], digest: &str, cache_dir: Option<&Path>) -> anyhow::Result<Module> {
    let cached = cache_dir.map(|dir| dir.join(format!("{digest}-{}.cwasm", engine_key(engine))));
    if let Some(path) = &cached {
        if trusted(path) {
            // Read, not `deserialize_file`: that maps the file, and a file
            // truncated under a mapping kills the process with SIGBUS.
            let bytes = std::fs::read(path).unwrap_or_default();
            // SAFETY: see above; the file is one this host wrote with
            // `Module::serialize` for this engine configuration, and wasmtime
            // still checks its header (version and settings) before use.
            match unsafe { Module::deserialize(engine, &bytes) } {
                Ok(module) => return Ok(module),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "ignoring unusable cached plugin");
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
    let module = Module::new(engine, wasm).map_err(|e| {
        anyhow::anyhow!("is not a valid WebAssembly module: {}", clean_message(&format!("{e:#}")))
    })?;
    if let Some(path) = &cached {
        if let Err(e) = store_cached(&module, path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot cache compiled plugin");
        }
    }
    Ok(module)
}

/// A hash of everything that makes precompiled code incompatible: target,
/// Cranelift flags, tunables, wasm features and the wasmtime version.
fn engine_key(engine: &Engine) -> String {
    struct ShaHasher(Sha256);
    impl std::hash::Hasher for ShaHasher {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            unreachable!("only the sha256 is read")
        }
    }
    let mut hasher = ShaHasher(Sha256::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut hasher);
    hex::encode(&hasher.0.finalize()[..12])
}

#[cfg(unix)]
fn trusted(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let me = unsafe { libc::geteuid() };
            meta.file_type().is_file() && meta.uid() == me && meta.mode() & 0o022 == 0
        }
        Err(_) => false,
    }
}

#[cfg(not(unix))]
fn trusted(path: &Path) -> bool {
    path.is_file()
}

fn store_cached(module: &Module, path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let bytes = module.serialize()?;
    // Unique per process and per call: two loads of one module at once
    // must not write into the same temporary file.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp: PathBuf = dir.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("plugin"),
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    {
        use std::io::Write;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut file = opts.open(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    // Rename so a concurrent start never reads half a file.
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Caps how many plugin calls run at once. Each call may use up to
/// `memory_mib` of linear memory, and tokio's blocking pool would otherwise
/// let hundreds of concurrent pulls multiply that.
pub(crate) fn call_slots() -> Arc<tokio::sync::Semaphore> {
    static SLOTS: OnceLock<Arc<tokio::sync::Semaphore>> = OnceLock::new();
    SLOTS
        .get_or_init(|| {
            let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
            Arc::new(tokio::sync::Semaphore::new((cores * 2).max(4)))
        })
        .clone()
}
