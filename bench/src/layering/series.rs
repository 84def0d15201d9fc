//! The images a team pulls in order, and the package set they come from.
//!
//! The set is `examples/demo-pkgs/with-generated.nix`: the demo packages
//! (what the `shell` bundle needs, git) plus about 300 generated ones of
//! realistic sizes with deep shared dependencies. The last step is pulled
//! from a second *release* of the set in which a low-level library (zlib)
//! has a new version, as after a channel update: every package above it has
//! a new store path. The two releases are two package sources (two
//! entry-point files), served by two builders sharing one blob store, as an
//! operator moving a registry to the new channel would have.

use std::path::{Path, PathBuf};

/// Which release of the package set an image is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    Current,
    /// A low-level library bumped (`generated.nix`'s `bump = 1`, and
    /// `bumpLib`).
    Bumped,
}

/// One pull of the series.
#[derive(Debug, Clone)]
pub struct Step {
    /// Column heading in the table.
    pub label: String,
    /// Image name, packages separated by `/`.
    pub image: String,
    pub release: Release,
}

/// The base tool set: the `shell` bundle, git, curl, sqlite, libxml2, a
/// compiler (ghc, 100 MiB at scale 1) and two applications.
pub const BASE: &str = "shell/git/curl/sqlite/libxml2/ghc/app-tuloba/app-lofeko";
/// The package added in the second step: new libraries of its own, and
/// most of its closure already in the base.
pub const ADDED: &str = "app-kolodu";
/// The application of the third step: almost all of its dependencies are
/// in the base already.
pub const OTHER: &str = "app-gevedu";
/// The low-level library whose version the last step bumps.
pub const BUMP_LIB: &str = "zlib";

/// The series of issue 5: base tool set, one package more, another app
/// sharing most dependencies, then the second image again after a version
/// bump of a low-level library. `added` and `other` are image name
/// segments (one package or several, `/`-separated).
pub fn series(base: &str, added: &str, other: &str, bump_lib: &str) -> Vec<Step> {
    let step = |label: &str, image: String, release| Step { label: label.into(), image, release };
    vec![
        step("base tools", base.to_string(), Release::Current),
        step(&format!("+ {added}"), format!("{base}/{added}"), Release::Current),
        step(&format!("+ {other}"), format!("{base}/{other}"), Release::Current),
        step(&format!("{bump_lib} bumped"), format!("{base}/{added}"), Release::Bumped),
    ]
}

/// A series of the caller's own: one image per entry, pulled in order; an
/// entry written `bumped:NAME` is built from the release with the library
/// bumped. Labels are the images themselves, or what each adds to the
/// first image when it starts with it.
pub fn custom_series(images: &[String]) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    for entry in images {
        let (image, release) = match entry.strip_prefix("bumped:") {
            Some(rest) => (rest, Release::Bumped),
            None => (entry.as_str(), Release::Current),
        };
        if image.is_empty() {
            return Err(format!("{entry:?} names no image"));
        }
        let label = match steps.first() {
            Some(Step { image: first, .. }) => match image.strip_prefix(first.as_str()).and_then(|r| r.strip_prefix('/')) {
                Some(added) => format!("+ {added}"),
                None => image.to_string(),
            },
            None => image.to_string(),
        };
        let label = if release == Release::Bumped { format!("{label}, bumped") } else { label };
        steps.push(Step { label, image: image.to_string(), release });
    }
    if steps.is_empty() {
        return Err("a series needs at least one image".into());
    }
    Ok(steps)
}

/// [`series`] with the packages above.
pub fn default_series() -> Vec<Step> {
    series(BASE, ADDED, OTHER, BUMP_LIB)
}

/// The package set files, embedded so that the benchmark runs from any
/// directory; written next to each other because they import each other.
const FILES: [(&str, &str); 3] = [
    ("default.nix", include_str!("../../../examples/demo-pkgs/default.nix")),
    ("generated.nix", include_str!("../../../examples/demo-pkgs/generated.nix")),
    ("with-generated.nix", include_str!("../../../examples/demo-pkgs/with-generated.nix")),
];

/// The entry points of the two releases: what a `path` source names.
#[derive(Debug, Clone)]
pub struct PackageSets {
    pub current: PathBuf,
    pub bumped: PathBuf,
}

impl PackageSets {
    pub fn path(&self, release: Release) -> &Path {
        match release {
            Release::Current => &self.current,
            Release::Bumped => &self.bumped,
        }
    }
}

/// Writes the set and one entry point per release into `dir`. `scale`
/// multiplies every package size (`generated.nix`'s knob); it must be
/// positive. The bumped release bumps `bump_lib` (a core library of
/// `generated.nix`: zlib, openssl, ncurses, libpng, ...).
pub fn write_package_sets(dir: &Path, scale: f64, bump_lib: &str) -> std::io::Result<PackageSets> {
    if !(scale.is_finite() && scale > 0.0) {
        return Err(std::io::Error::other(format!("scale {scale} is not a positive number")));
    }
    if bump_lib.is_empty() || !bump_lib.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(std::io::Error::other(format!("{bump_lib:?} is not a package name")));
    }
    std::fs::create_dir_all(dir)?;
    let dir = std::path::absolute(dir)?;
    for (name, text) in FILES {
        std::fs::write(dir.join(name), text)?;
    }
    let entry = |file: &str, bump: u32| -> std::io::Result<PathBuf> {
        let path = dir.join(file);
        // `{:?}` prints an f64 with a decimal point, which Nix reads as a
        // float; whole numbers too (`1.0`).
        let text = format!(
            "# Written by `strata-bench layering`.\n\
             {{ system ? builtins.currentSystem }}:\n\
             import ./with-generated.nix {{ inherit system; scale = {scale:?}; bump = {bump}; bumpLib = \"{bump_lib}\"; }}\n"
        );
        std::fs::write(&path, text)?;
        Ok(path)
    };
    Ok(PackageSets { current: entry("current.nix", 0)?, bumped: entry("bumped.nix", 1)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_adds_one_package_then_bumps_it() {
        let s = default_series();
        assert_eq!(s.len(), 4);
        assert_eq!(s[1].image, format!("{}/{ADDED}", s[0].image));
        assert_eq!(s[3].image, s[1].image);
        assert_eq!(s[3].release, Release::Bumped);
        assert!(s[..3].iter().all(|st| st.release == Release::Current));
    }

    #[test]
    fn custom_series_labels_what_each_image_adds() {
        let images = ["shell/git", "shell/git/jq", "hello", "bumped:shell/git/jq"].map(String::from);
        let s = custom_series(&images).unwrap();
        let labels: Vec<&str> = s.iter().map(|st| st.label.as_str()).collect();
        assert_eq!(labels, ["shell/git", "+ jq", "hello", "+ jq, bumped"]);
        assert_eq!(s[3].image, "shell/git/jq");
        assert_eq!(s[3].release, Release::Bumped);
        assert!(s[..3].iter().all(|st| st.release == Release::Current));
        assert!(custom_series(&[]).is_err());
        assert!(custom_series(&["bumped:".into()]).is_err());
    }

    #[test]
    fn entry_points_fix_scale_and_bump() {
        let dir = std::env::temp_dir().join(format!("strata-series-test-{}", std::process::id()));
        let sets = write_package_sets(&dir, 0.25, "openssl").unwrap();
        let current = std::fs::read_to_string(&sets.current).unwrap();
        assert!(current.contains("scale = 0.25; bump = 0;"), "{current}");
        let bumped = std::fs::read_to_string(sets.path(Release::Bumped)).unwrap();
        assert!(bumped.contains("bump = 1; bumpLib = \"openssl\";"), "{bumped}");
        assert!(std::fs::read_to_string(dir.join("with-generated.nix")).unwrap().contains("generated.nix"));
        assert!(write_package_sets(&dir, 0.0, "zlib").is_err());
        assert!(write_package_sets(&dir, 1.0, "zlib\"; x = \"").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
