//! Layer assembly: deterministic tar → compressor(s) → digests in one
//! streaming pass.
//!
//! Determinism is what makes layers shareable: the same store paths must give
//! the same bytes on any replica, on any day, so entries are sorted, times
//! fixed, owners zeroed and no user names written; the compressors'
//! output depends only on their input and settings (see [`crate::image::compress`]).
//! Memory is bounded by the compressors' blocks in flight and the writers'
//! buffers, never by the size of a layer: files are streamed, not read whole.

use crate::image::compress::{self, Codec, Encoding};
use md5::Md5;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Nix sets every store file's mtime to 1; the layers do the same.
const MTIME: u64 = 1;

/// What the manifest and the image config need to know of a packed layer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerBlob {
    /// `sha256:<hex>` of the compressed bytes (the blob's name).
    pub digest: String,
    /// `sha256:<hex>` of the uncompressed tar (the image config's diff_id).
    pub diff_id: String,
    /// Compressed size.
    pub size: u64,
    /// Base64 md5 of the compressed bytes, for stores that check it.
    pub md5: String,
    /// How the bytes are compressed (records written before zstd: gzip).
    #[serde(default)]
    pub codec: Codec,
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    sha: Sha256,
    md5: Option<Md5>,
    len: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W, with_md5: bool) -> Self {
        Hashing { inner, sha: Sha256::new(), md5: with_md5.then(Md5::new), len: 0 }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        if let Some(m) = &mut self.md5 {
            m.update(&buf[..n]);
        }
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub use crate::storage::sha256_digest;

/// Writes everything to each of several writers: one tar stream, several
/// compressed forms.
struct Tee<E>(Vec<E>);

impl<E: Write> Write for Tee<E> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for w in &mut self.0 {
            w.write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.iter_mut().try_for_each(Write::flush)
    }
}

type Compressed<'a, W> = Box<dyn compress::Encoder<Hashing<W>> + 'a>;

/// Where the uncompressed layer is written: hashed (the diff_id), then
/// compressed once per encoding, each output hashed again (the digests).
type PlainSink<'a, W> = Hashing<Tee<Compressed<'a, W>>>;

/// The tar builder [`pack`]'s `fill` writes to.
type TarSink<'s, 'a, W> = tar::Builder<&'s mut PlainSink<'a, W>>;

/// Runs `fill` on a tar builder whose output is compressed into each of
/// `outs` (one per encoding, same order). Returns one blob per encoding and
/// the writers.
fn pack<'a, W: Write + 'a>(
    encodings: &[Encoding],
    outs: Vec<W>,
    fill: impl FnOnce(&mut TarSink<'_, 'a, W>) -> io::Result<()>,
) -> io::Result<(Vec<LayerBlob>, Vec<W>)> {
    compress_each(encodings, outs, |plain| {
        let mut builder = tar::Builder::new(plain);
        builder.mode(tar::HeaderMode::Deterministic);
        fill(&mut builder)?;
        builder.finish()
    })
}

/// Compresses what `fill` writes into each of `outs` (one per encoding,
/// same order), hashing both sides of the compressors.
fn compress_each<'a, W: Write + 'a>(
    encodings: &[Encoding],
    outs: Vec<W>,
    fill: impl FnOnce(&mut PlainSink<'a, W>) -> io::Result<()>,
) -> io::Result<(Vec<LayerBlob>, Vec<W>)> {
    assert_eq!(encodings.len(), outs.len(), "one writer per encoding");
    let encoders = encodings
        .iter()
        .zip(outs)
        .map(|(e, out)| compress::encoder(*e, Hashing::new(out, true)))
        .collect::<io::Result<Vec<_>>>()?;
    let mut plain = Hashing::new(Tee(encoders), false);
    fill(&mut plain)?;
    let diff_id = format!("sha256:{}", hex::encode(plain.sha.finalize_reset()));
    let mut blobs = Vec::new();
    let mut outs = Vec::new();
    for (encoder, encoding) in plain.inner.0.into_iter().zip(encodings) {
        let compressed = encoder.finish()?;
        blobs.push(LayerBlob {
            digest: format!("sha256:{}", hex::encode(compressed.sha.finalize())),
            diff_id: diff_id.clone(),
            size: compressed.len,
            md5: base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                compressed.md5.expect("md5 enabled").finalize(),
            ),
            codec: encoding.codec,
        });
        outs.push(compressed.inner);
    }
    Ok((blobs, outs))
}

/// A stored layer in another encoding: `blob` (compressed as `from`)
/// decompressed and compressed again into `out`. The tar inside is the
/// one the layer was packed from, so the result is byte for byte what
/// packing the same store paths in `to` gives, without the paths: any
/// replica can make it, whether or not its Nix store holds them. Fails if
/// the tar is not the one `diff_id` names.
pub fn recompress<W: Write>(
    blob: impl io::Read,
    from: Codec,
    diff_id: &str,
    to: Encoding,
    out: W,
    progress: &mut dyn FnMut(u64),
) -> io::Result<(LayerBlob, W)> {
    let mut input = compress::decoder(from, blob)?;
    let (mut blobs, mut outs) = compress_each(&[to], vec![out], |plain| {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            plain.write_all(&buf[..n])?;
            progress(n as u64);
        }
    })?;
    let blob = blobs.pop().expect("one encoding");
    if blob.diff_id != diff_id {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a stored layer decompresses to {}, not the {diff_id} its image names", blob.diff_id),
        ));
    }
    Ok((blob, outs.pop().expect("one writer")))
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn append_dir<W: Write>(b: &mut tar::Builder<W>, path: &str, mode: u32) -> io::Result<()> {
    let mut h = header(tar::EntryType::Directory, mode, 0);
    b.append_data(&mut h, format!("{path}/"), io::empty())
}

fn append_symlink<W: Write>(b: &mut tar::Builder<W>, path: &str, target: &Path) -> io::Result<()> {
    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
    b.append_link(&mut h, path, target)
}

/// Packs whole store paths (each with everything under it) into one layer.
/// Files that are hard links of each other inside the layer become tar hard
/// links, as `nix-store --optimise` makes many of them.
/// `progress` hears the number of file bytes read, as they are read.
/// One blob per entry of `encodings`, written to the writer at the same
/// place in `outs`.
pub fn pack_store_paths<'a, W: Write + 'a>(
    paths: &[String],
    encodings: &[Encoding],
    outs: Vec<W>,
    progress: &mut dyn FnMut(u64),
) -> io::Result<(Vec<LayerBlob>, Vec<W>)> {
    let mut sorted: Vec<&String> = paths.iter().collect();
    sorted.sort();
    pack(encodings, outs, |b| {
        append_dir(b, "nix", 0o755)?;
        append_dir(b, "nix/store", 0o755)?;
        let mut seen = HashMap::new();
        for p in sorted {
            let rel = p.trim_start_matches('/');
            append_tree(b, Path::new(p), rel, &mut seen, progress)?;
        }
        Ok(())
    })
}

fn append_tree<W: Write>(
    b: &mut tar::Builder<W>,
    src: &Path,
    name: &str,
    seen: &mut HashMap<(u64, u64), String>,
    progress: &mut dyn FnMut(u64),
) -> io::Result<()> {
    let meta = fs::symlink_metadata(src)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        append_symlink(b, name, &fs::read_link(src)?)
    } else if ft.is_dir() {
        append_dir(b, name, 0o555)?;
        let mut children: Vec<_> = fs::read_dir(src)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        children.sort();
        for child in children {
            let child_name = format!("{name}/{}", child.to_string_lossy());
            append_tree(b, &src.join(&child), &child_name, seen, progress)?;
        }
        Ok(())
    } else if ft.is_file() {
        let mode = if meta.permissions().mode() & 0o111 != 0 { 0o555 } else { 0o444 };
        if meta.nlink() > 1 {
            let key = (meta.dev(), meta.ino());
            if let Some(first) = seen.get(&key) {
                let mut h = header(tar::EntryType::Link, mode, 0);
                return b.append_link(&mut h, name, first);
            }
            seen.insert(key, name.to_string());
        }
        let mut h = header(tar::EntryType::Regular, mode, meta.len());
        // Large reads: `io::copy` then hands the compressors 256 KiB at a
        // time instead of 8 KiB.
        let file = io::BufReader::with_capacity(256 * 1024, fs::File::open(src)?);
        b.append_data(&mut h, name, file)?;
        progress(meta.len());
        Ok(())
    } else {
        Err(io::Error::other(format!("{}: not a file, directory or symlink", src.display())))
    }
}

/// One entry of the host-built final layer.
#[derive(Debug, Clone)]
enum Entry {
    Dir(u32),
    /// A directory owned by a user of the image (its home).
    OwnedDir { mode: u32, uid: u32, gid: u32 },
    Link(String),
    File(Vec<u8>, u32),
}

/// The final layer: the symlink forest of the requested packages plus what
/// users expect of any image (`/tmp`, `/etc/passwd`, `/etc/group`,
/// `/usr/bin/env` and `/bin/sh` for scripts' shebangs).
pub struct FinalLayer {
    entries: BTreeMap<String, Entry>,
}

impl FinalLayer {
    /// Merges the top-level store paths as `symlinkJoin` would: directories
    /// become real directories, everything else a symlink into the store;
    /// on a clash the package named first wins. `closure` (the image's
    /// whole runtime closure) is where `/usr/bin/env` and `/bin/sh` are
    /// looked for when no requested package brings them.
    pub fn new(roots: &[String], closure: &[String]) -> io::Result<FinalLayer> {
        let mut layer = FinalLayer { entries: BTreeMap::new() };
        for root in roots {
            if fs::symlink_metadata(root)?.is_dir() {
                layer.merge_dir(Path::new(root), "")?;
            }
        }
        layer.add_defaults();
        layer.add_shebang_links(closure);
        Ok(layer)
    }

    /// `#!/usr/bin/env python3` and `#!/bin/sh` are what scripts expect of
    /// any Unix (Nixery's #109, #133): a link to the image's own `env`
    /// (the forest's `bin/env`, else coreutils' from the closure) and
    /// shell (the forest's `bin/sh`, else its `bash` or `busybox`, else
    /// bash's or busybox's from the closure). Added only where the forest
    /// has nothing: a package's own file is never shadowed.
    fn add_shebang_links(&mut self, closure: &[String]) {
        let forest = |layer: &FinalLayer, path: &str| match layer.entries.get(path) {
            Some(Entry::Link(target)) => Some(target.clone()),
            _ => None,
        };
        let in_closure = |names: &[&str], file: &str| {
            closure
                .iter()
                .filter(|p| {
                    let name = strata_plugin_sdk::store_name(p);
                    names.iter().any(|n| name.strip_prefix(n).is_some_and(|rest| rest.starts_with('-')))
                })
                .map(|p| format!("{p}/{file}"))
                .find(|f| fs::metadata(f).is_ok_and(|m| m.is_file()))
        };
        let env = forest(self, "bin/env").or_else(|| in_closure(&["coreutils", "coreutils-full"], "bin/env"));
        if let Some(target) = env {
            self.add_link("usr/bin/env", target);
        }
        let sh = forest(self, "bin/sh")
            .or_else(|| forest(self, "bin/bash"))
            .or_else(|| forest(self, "bin/busybox"))
            .or_else(|| in_closure(&["bash", "bash-interactive"], "bin/bash"))
            .or_else(|| in_closure(&["busybox"], "bin/busybox"));
        if let Some(target) = sh {
            self.add_link("bin/sh", target);
        }
    }

    /// A link at `path`, its parent directories made as needed; nothing
    /// when the path, or a parent that is not a directory, is taken.
    fn add_link(&mut self, path: &str, target: String) {
        if self.entries.contains_key(path) {
            return;
        }
        let mut parent = String::new();
        for part in path.split('/').collect::<Vec<_>>().split_last().map(|(_, dirs)| dirs).unwrap_or_default() {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            match self.entries.get(&parent) {
                Some(Entry::Dir(_) | Entry::OwnedDir { .. }) => {}
                Some(_) => return,
                None => {
                    self.entries.insert(parent.clone(), Entry::Dir(0o755));
                }
            }
        }
        self.entries.insert(path.to_string(), Entry::Link(target));
    }

    /// A user beside root: a line in `/etc/passwd` and `/etc/group` (when
    /// they are the host's, not a package's own) and a home it owns.
    pub fn add_account(&mut self, a: &strata_plugin_sdk::Account) {
        let lines = [
            ("etc/passwd", format!("{}:x:{}:{}:{}:{}:/bin/sh\n", a.name, a.uid, a.gid, a.name, a.home)),
            ("etc/group", format!("{}:x:{}:\n", a.name, a.gid)),
        ];
        for (file, line) in lines {
            if let Some(Entry::File(bytes, _)) = self.entries.get_mut(file) {
                bytes.extend_from_slice(line.as_bytes());
            }
        }
        let home = a.home.trim_matches('/');
        let mut path = String::new();
        for part in home.split('/') {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(part);
            let entry = self.entries.entry(path.clone()).or_insert(Entry::Dir(0o755));
            if !matches!(entry, Entry::Dir(_) | Entry::OwnedDir { .. }) {
                return;
            }
        }
        self.entries.insert(path, Entry::OwnedDir { mode: 0o755, uid: a.uid, gid: a.gid });
    }

    fn merge_dir(&mut self, src: &Path, rel: &str) -> io::Result<()> {
        let mut children: Vec<_> = fs::read_dir(src)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        children.sort();
        for child in children {
            let name = child.to_string_lossy();
            let path = if rel.is_empty() { name.to_string() } else { format!("{rel}/{name}") };
            let full = src.join(&child);
            let is_dir = fs::symlink_metadata(&full)?.is_dir();
            match self.entries.get(&path) {
                Some(Entry::Dir(_)) if is_dir => self.merge_dir(&full, &path)?,
                Some(_) => {} // first package wins
                None if is_dir => {
                    self.entries.insert(path.clone(), Entry::Dir(0o755));
                    self.merge_dir(&full, &path)?;
                }
                None => {
                    self.entries.insert(path, Entry::Link(full.to_string_lossy().into_owned()));
                }
            }
        }
        Ok(())
    }

    fn add_defaults(&mut self) {
        self.entries.entry("tmp".into()).or_insert(Entry::Dir(0o1777));
        self.entries.entry("etc".into()).or_insert(Entry::Dir(0o755));
        if matches!(self.entries.get("etc"), Some(Entry::Dir(_))) {
            self.entries.entry("etc/passwd".into()).or_insert(Entry::File(
                b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/var/empty:/bin/false\n".to_vec(),
                0o644,
            ));
            self.entries.entry("etc/group".into()).or_insert(Entry::File(
                b"root:x:0:\nnobody:x:65534:\n".to_vec(),
                0o644,
            ));
        }
        self.entries.entry("root".into()).or_insert(Entry::Dir(0o700));
    }

    /// Where a CA bundle ends up, if a package brought one.
    pub fn ca_bundle(&self) -> Option<String> {
        ["etc/ssl/certs/ca-bundle.crt", "etc/ssl/certs/ca-certificates.crt"]
            .iter()
            .find(|p| self.entries.contains_key(**p))
            .map(|p| format!("/{p}"))
    }

    /// Top-level directories of the forest that hold programs, for `PATH`.
    pub fn has_dir(&self, path: &str) -> bool {
        matches!(self.entries.get(path), Some(Entry::Dir(_)))
    }

    pub fn pack<'a, W: Write + 'a>(&self, encodings: &[Encoding], outs: Vec<W>) -> io::Result<(Vec<LayerBlob>, Vec<W>)> {
        pack(encodings, outs, |b| {
            for (path, entry) in &self.entries {
                match entry {
                    Entry::Dir(mode) => append_dir(b, path, *mode)?,
                    Entry::OwnedDir { mode, uid, gid } => {
                        let mut h = header(tar::EntryType::Directory, *mode, 0);
                        h.set_uid((*uid).into());
                        h.set_gid((*gid).into());
                        b.append_data(&mut h, format!("{path}/"), io::empty())?;
                    }
                    Entry::Link(target) => append_symlink(b, path, Path::new(target))?,
                    Entry::File(bytes, mode) => {
                        let mut h = header(tar::EntryType::Regular, *mode, bytes.len() as u64);
                        b.append_data(&mut h, path, bytes.as_slice())?;
                    }
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unpack_names(gz: &[u8]) -> Vec<(String, tar::EntryType, u64)> {
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(gz));
        ar.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (e.path().unwrap().to_string_lossy().into_owned(), h.entry_type(), h.mtime().unwrap())
            })
            .collect()
    }

    #[test]
    fn store_layer_is_deterministic_sorted_and_hashes_match() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("aaa-pkg");
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::write(root.join("bin/z"), b"zzz").unwrap();
        fs::write(root.join("bin/a"), b"aaa").unwrap();
        fs::set_permissions(root.join("bin/a"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::hard_link(root.join("bin/z"), root.join("bin/zz")).unwrap();
        std::os::unix::fs::symlink("a", root.join("bin/link")).unwrap();
        let p = vec![root.to_string_lossy().into_owned()];

        let gz = [Encoding::gzip(6)];
        let one = |e: &[Encoding]| {
            let (mut blobs, mut outs) = pack_store_paths(&p, e, vec![Vec::new(); e.len()], &mut |_| {}).unwrap();
            (blobs.remove(0), outs.remove(0))
        };
        let (blob1, bytes1) = one(&gz);
        let (blob2, bytes2) = one(&gz);
        assert_eq!(bytes1, bytes2);
        assert_eq!(blob1, blob2);
        assert_eq!(blob1.digest, sha256_digest(&bytes1));
        assert_eq!(blob1.size, bytes1.len() as u64);
        let mut plain = Vec::new();
        io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes1[..]), &mut plain).unwrap();
        assert_eq!(blob1.diff_id, sha256_digest(&plain));

        let names = unpack_names(&bytes1);
        let rel = root.to_string_lossy().trim_start_matches('/').to_string();
        let just: Vec<&str> = names.iter().map(|n| n.0.as_str()).collect();
        assert_eq!(just[0], "nix/");
        assert!(just.contains(&format!("{rel}/bin/a").as_str()));
        let zz = names.iter().find(|n| n.0.ends_with("bin/zz")).unwrap();
        assert_eq!(zz.1, tar::EntryType::Link);
        let link = names.iter().find(|n| n.0.ends_with("bin/link")).unwrap();
        assert_eq!(link.1, tar::EntryType::Symlink);
        assert!(names.iter().all(|n| n.2 == MTIME));

        // zstd and gzip from one pass: the same tar inside both.
        let both = [Encoding::zstd(3), Encoding::gzip(6)];
        let (blobs, outs) = pack_store_paths(&p, &both, vec![Vec::new(), Vec::new()], &mut |_| {}).unwrap();
        assert_eq!(blobs[1], blob1);
        assert_eq!(outs[1], bytes1);
        assert_eq!(blobs[0].codec, Codec::Zstd);
        assert_eq!(blobs[0].diff_id, blob1.diff_id);
        assert_eq!(blobs[0].digest, sha256_digest(&outs[0]));
        assert_eq!(zstd::decode_all(&outs[0][..]).unwrap(), plain);
    }

    /// A schema 2 copy made later from the stored zstd blob is the blob
    /// packing the paths in gzip gives, byte for byte (several gzip blocks
    /// and zstd jobs here); a blob that is not the named tar is refused.
    #[test]
    fn recompressing_a_stored_layer_gives_the_packed_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("bbb-pkg");
        fs::create_dir_all(&root).unwrap();
        let text: Vec<u8> = (0..5_000_000u32).map(|i| b"strata layers "[(i % 14) as usize] ^ ((i / 997) % 3) as u8).collect();
        fs::write(root.join("data"), &text).unwrap();
        let p = vec![root.to_string_lossy().into_owned()];
        let pack = |e: Encoding| {
            let (mut blobs, mut outs) = pack_store_paths(&p, &[e], vec![Vec::new()], &mut |_| {}).unwrap();
            (blobs.remove(0), outs.remove(0))
        };
        let (zst, zst_bytes) = pack(Encoding::zstd(3));
        let (gz, gz_bytes) = pack(Encoding::gzip(6));
        let mut seen = 0;
        let (copy, copy_bytes) =
            recompress(&zst_bytes[..], Codec::Zstd, &zst.diff_id, Encoding::gzip(6), Vec::new(), &mut |n| seen += n).unwrap();
        assert_eq!(copy, gz);
        assert_eq!(copy_bytes, gz_bytes);
        assert!(seen > text.len() as u64, "progress hears the tar's bytes: {seen}");

        let wrong = recompress(&zst_bytes[..], Codec::Zstd, &sha256_digest(b"x"), Encoding::gzip(6), Vec::new(), &mut |_| {});
        assert_eq!(wrong.unwrap_err().kind(), io::ErrorKind::InvalidData);
        let truncated = &zst_bytes[..zst_bytes.len() / 2];
        assert!(recompress(truncated, Codec::Zstd, &zst.diff_id, Encoding::gzip(6), Vec::new(), &mut |_| {}).is_err());
    }

    #[test]
    fn final_layer_merges_first_wins_and_adds_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        fs::create_dir_all(a.join("bin")).unwrap();
        fs::create_dir_all(b.join("bin")).unwrap();
        fs::create_dir_all(b.join("etc/ssl/certs")).unwrap();
        fs::write(a.join("bin/hello"), b"").unwrap();
        fs::write(b.join("bin/hello"), b"").unwrap();
        fs::write(b.join("bin/other"), b"").unwrap();
        fs::write(b.join("etc/ssl/certs/ca-bundle.crt"), b"").unwrap();
        let roots = vec![a.to_string_lossy().into_owned(), b.to_string_lossy().into_owned()];
        let layer = FinalLayer::new(&roots, &roots).unwrap();
        match layer.entries.get("bin/hello") {
            Some(Entry::Link(t)) => assert!(t.starts_with(&roots[0])),
            other => panic!("{other:?}"),
        }
        assert!(matches!(layer.entries.get("tmp"), Some(Entry::Dir(0o1777))));
        assert!(layer.entries.contains_key("etc/passwd"));
        assert_eq!(layer.ca_bundle().as_deref(), Some("/etc/ssl/certs/ca-bundle.crt"));
        let (_, bytes) = layer.pack(&[Encoding::gzip(6)], vec![Vec::new()]).unwrap();
        let names = unpack_names(&bytes[0]);
        let mut sorted = names.clone();
        sorted.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(names, sorted);
    }

    #[test]
    fn shebang_links_come_from_the_forest_then_the_closure_and_never_shadow() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |name: &str, files: &[&str]| {
            let root = dir.path().join(name);
            for f in files {
                let p = root.join(f);
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                fs::write(p, b"").unwrap();
            }
            root.to_string_lossy().into_owned()
        };
        let coreutils = mk("aaa-coreutils-9.3", &["bin/env", "bin/ls"]);
        let bash = mk("bbb-bash-5.2", &["bin/bash"]);
        let app = mk("ccc-app-1.0", &["bin/app"]);
        let link = |layer: &FinalLayer, p: &str| match layer.entries.get(p) {
            Some(Entry::Link(t)) => Some(t.clone()),
            _ => None,
        };

        // From the closure only: the app brings neither.
        let closure = vec![coreutils.clone(), bash.clone(), app.clone()];
        let layer = FinalLayer::new(std::slice::from_ref(&app), &closure).unwrap();
        assert_eq!(link(&layer, "usr/bin/env"), Some(format!("{coreutils}/bin/env")));
        assert_eq!(link(&layer, "bin/sh"), Some(format!("{bash}/bin/bash")));
        assert!(matches!(layer.entries.get("usr/bin"), Some(Entry::Dir(0o755))));

        // From the forest: the requested package's own env and bash.
        let layer = FinalLayer::new(&[coreutils.clone(), bash.clone()], &[]).unwrap();
        assert_eq!(link(&layer, "usr/bin/env"), Some(format!("{coreutils}/bin/env")));
        assert_eq!(link(&layer, "bin/sh"), Some(format!("{bash}/bin/bash")));

        // A package's own /bin/sh and /usr/bin/env stay.
        let own = mk("ddd-own-1", &["bin/sh", "usr/bin/env"]);
        let layer = FinalLayer::new(std::slice::from_ref(&own), &closure).unwrap();
        assert_eq!(link(&layer, "bin/sh"), Some(format!("{own}/bin/sh")));
        assert_eq!(link(&layer, "usr/bin/env"), Some(format!("{own}/usr/bin/env")));

        // No env or shell anywhere: nothing made up.
        let layer = FinalLayer::new(std::slice::from_ref(&app), std::slice::from_ref(&app)).unwrap();
        assert!(!layer.entries.contains_key("usr/bin/env") && !layer.entries.contains_key("bin/sh"));
        assert!(!layer.entries.contains_key("usr"));
    }

    #[test]
    fn an_account_gets_passwd_group_and_an_owned_home() {
        let layer = |account: Option<&strata_plugin_sdk::Account>| {
            let mut l = FinalLayer::new(&[], &[]).unwrap();
            if let Some(a) = account {
                l.add_account(a);
            }
            let (_, bytes) = l.pack(&[Encoding::gzip(6)], vec![Vec::new()]).unwrap();
            let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[0][..]));
            let mut out = BTreeMap::new();
            for e in ar.entries().unwrap() {
                let mut e = e.unwrap();
                let h = e.header().clone();
                let mut text = String::new();
                io::Read::read_to_string(&mut e, &mut text).unwrap();
                let path = e.path().unwrap().to_string_lossy().trim_end_matches('/').to_string();
                out.insert(path, (h.uid().unwrap(), h.gid().unwrap(), h.mode().unwrap(), text));
            }
            out
        };
        let a = strata_plugin_sdk::Account { name: "user".into(), uid: 1000, gid: 1001, home: "/home/user".into() };
        let with = layer(Some(&a));
        assert!(with["etc/passwd"].3.ends_with("user:x:1000:1001:user:/home/user:/bin/sh\n"), "{:?}", with["etc/passwd"]);
        assert!(with["etc/passwd"].3.starts_with("root:x:0:0:"));
        assert!(with["etc/group"].3.ends_with("user:x:1001:\n"));
        assert_eq!((with["home/user"].0, with["home/user"].1, with["home/user"].2), (1000, 1001, 0o755));
        assert_eq!((with["home"].0, with["home"].2), (0, 0o755));
        assert_eq!(with["tmp"].2, 0o1777);
        let without = layer(None);
        assert!(!without.contains_key("home/user") && !without["etc/passwd"].3.contains("user:"));
    }
}
