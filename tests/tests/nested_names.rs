//! Names that are nested attribute paths (`xorg.xev`) and camelCase
//! attributes asked for in lower case (`haskellpackages.pandoc`,
//! `pythonfull`), as the distribution grammar forces them to be.

use strata_e2e::*;

#[test]
fn nested_and_camel_case_names_pull_with_skopeo() {
    let server = Server::start();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("oci");
    let name = "xorg.xev/haskellpackages.pandoc/pythonfull";
    skopeo_copy(&server, name, "latest", &layout, "latest").assert_ok();
    let rootfs = umoci_unpack(&layout, "latest", &work.path().join("bundle"));

    let pandoc = chroot(&rootfs, &["/bin/pandoc"]).assert_ok();
    assert_eq!(pandoc.stdout.trim(), "pandoc 3.1.9", "{pandoc}");
    let python = chroot(&rootfs, &["/bin/python3"]).assert_ok();
    assert_eq!(python.stdout.trim(), "Python 3.11.6", "{python}");
    // xev exists and runs (there is no display, so it says so).
    let xev = chroot(&rootfs, &["/bin/xev"]);
    assert!(xev.stderr.contains("unable to open display"), "{xev}");
    // libX11 came along as xev's runtime dependency.
    let store = std::fs::read_dir(rootfs.join("nix/store")).unwrap();
    let names: Vec<String> = store.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    for want in ["-xev-1.2.5", "-libX11-1.8.7", "-pandoc-3.1.9", "-gmp-6.3.0", "-python3-3.11.6", "-zlib-1.3"] {
        assert!(names.iter().any(|n| n.ends_with(want)), "{want} in the image's store: {names:?}");
    }
}
