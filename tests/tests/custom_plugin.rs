//! The operator's path: build the example grouping plugin in
//! examples/custom-plugin to WebAssembly with the repository's one build
//! command, swap it in by config, and pull. The image must hold exactly the
//! same files as with the default grouping, cut into different layers.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use strata_e2e::*;

/// Packages whose closures overlap (the shell bundle, git and hello share
/// libraries), so that the two strategies really cut differently.
const IMAGE: &str = "shell/git/hello";

/// Every entry of a root file system: path → (kind, mode, owner, content
/// digest or link target).
fn tree(root: &Path) -> BTreeMap<String, (char, u32, (u32, u32), String)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (char, u32, (u32, u32), String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for path in entries {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let owner = (meta.uid(), meta.gid());
            let mode = meta.permissions().mode() & 0o7777;
            let entry = if meta.file_type().is_symlink() {
                ('l', 0, owner, std::fs::read_link(&path).unwrap().to_string_lossy().into_owned())
            } else if meta.is_dir() {
                walk(root, &path, out);
                ('d', mode, owner, String::new())
            } else {
                ('f', mode, owner, sha256_digest(&std::fs::read(&path).unwrap()))
            };
            out.insert(rel, entry);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn pull(server: &Server, work: &Path, label: &str) -> (Vec<String>, Vec<String>, std::path::PathBuf) {
    let layout = work.join(format!("{label}-oci"));
    skopeo_copy(server, IMAGE, "latest", &layout, "t").assert_ok();
    let inspect = skopeo_inspect(server, IMAGE, "latest", &[]);
    let layers = inspect["Layers"].as_array().expect("Layers").iter().map(|l| l.as_str().unwrap().to_string()).collect();
    let config = skopeo_inspect(server, IMAGE, "latest", &["--config"]);
    let history = config["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| h["created_by"].as_str().unwrap_or_default().to_string())
        .collect();
    let rootfs = umoci_unpack(&layout, "t", &work.join(format!("{label}-bundle")));
    (layers, history, rootfs)
}

#[test]
fn example_grouping_plugin_built_swapped_in_and_pulled() {
    // Built the way the example's README says, from its source.
    let root = repo_root();
    // Given a crate, the script builds that crate only: the committed
    // built-ins are not rewritten.
    let dist = || -> Vec<(std::path::PathBuf, std::time::SystemTime)> {
        files_under(&root.join("plugins/dist"))
            .into_iter()
            .map(|f| {
                let modified = std::fs::metadata(&f).unwrap().modified().unwrap();
                (f, modified)
            })
            .collect()
    };
    let before = dist();
    let built = run(
        Command::new("bash").arg(root.join("scripts/build-plugins.sh")).arg("examples/custom-plugin").current_dir(&root),
        Duration::from_secs(900),
    )
    .assert_ok();
    let wasm = root.join("examples/custom-plugin/one_layer_per_package.wasm");
    assert!(wasm.is_file(), "{} was not written:\n{built}", wasm.display());
    assert_eq!(before, dist(), "plugins/dist/ was rewritten:\n{built}");

    // `strata plugin check` accepts it.
    let check = run(Command::new(strata_bin()).arg("plugin").arg("check").arg(&wasm), Duration::from_secs(120)).assert_ok();
    assert!(check.stdout.contains("group_layers"), "plugin check names the hook:\n{check}");

    let work = tempfile::tempdir().unwrap();
    let default = Server::start();
    let (default_layers, default_history, default_root) = pull(&default, work.path(), "default");
    drop(default);

    let custom = Server::start_with(ServerOptions {
        extra_toml: format!(
            "[plugins]\ngroup = \"one-layer-per-package\"\n\n[plugins.define.one-layer-per-package]\npath = \"{}\"\n",
            wasm.display()
        ),
        ..Default::default()
    });
    let (custom_layers, custom_history, custom_root) = pull(&custom, work.path(), "custom");

    // The strategy is named in the image's history.
    assert!(default_history[0].starts_with("strata size:"), "{default_history:?}");
    assert!(
        custom_history[..custom_history.len() - 1].iter().all(|h| h.starts_with("strata one-layer-per-package:")),
        "{custom_history:?}"
    );
    // One layer per requested package whose closure holds something of its
    // own, a shared base layer, and the symlink layer: 8 packages here.
    assert!(custom_layers.len() >= 3 && custom_layers.len() <= 8 + 2, "{custom_layers:?}");
    assert_ne!(default_layers, custom_layers, "another strategy, another layer layout");
    // Layers with the same paths are the same blobs whoever grouped them (a
    // small package alone in its layer under both); but each layout has
    // layers the other does not.
    let only_custom = custom_layers.iter().filter(|l| !default_layers.contains(l)).count();
    let only_default = default_layers.iter().filter(|l| !custom_layers.contains(l)).count();
    assert!(only_custom >= 1 && only_default >= 1, "default {default_layers:?}\ncustom {custom_layers:?}");

    // The same files, byte for byte, with the same modes and owners.
    let (a, b) = (tree(&default_root), tree(&custom_root));
    assert!(a.len() > 50, "a real image: {} entries", a.len());
    let differ: Vec<_> = a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).take(10).collect();
    assert!(differ.is_empty(), "entries that differ between the two layouts: {differ:?}");

    // And it runs.
    let hello = chroot(&custom_root, &["/bin/hello"]).assert_ok();
    assert_eq!(hello.stdout, "Hello, world!\n", "{hello}");
    assert!(custom.log().contains("one-layer-per-package"), "the start-up log names the plugins in use");
}
