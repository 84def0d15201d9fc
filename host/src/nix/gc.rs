//! The Nix part of `strata gc`: releases the GC roots (`nix-build` out
//! links under `<nix work dir>/gcroots/<key>/result*`) of images that are
//! gone, and deletes the store paths only they kept alive.
//!
//! Roots are local to a machine, so this part acts only on the directories
//! under this machine's work dir; records written by other replicas name
//! roots on their machines and only ever keep a directory here (never
//! release one).
//!
//! A root directory is released when
//! - no kept image record names it (one directory serves every image with the
//!   same top-level paths: two tags, two grouping plugins),
//! - no build holds its claim: a build writes its record only after
//!   `nix-build`, the closure query, packing and uploading, so it holds a
//!   shared lock on `<key>.lock` beside the directory ([`RootsClaim`](crate::nix::roots::RootsClaim)) from
//!   before `nix-build` until the record is written, and stamps the lock
//!   file's time when it lets go. A held claim, or one let go after gc
//!   started reading the records (that build's record may be one gc did not
//!   see), keeps the directory; gc takes the lock itself while it removes
//!   one, so no build starts on that directory meanwhile,
//! - its links are older than the window (a `strata inspect` just run, say,
//!   stays). A directory without a lock file (written before builds took
//!   claims) must also be older than the Nix timeout plus
//!   [`IN_FLIGHT_MARGIN`], as its age is all there is to go by,
//! - and not every path it roots belongs to a kept image (records written
//!   before images recorded their roots name none; their layers list their
//!   paths).
//!
//! Then the store paths are deleted with `nix-store --delete`, never
//! `nix-store --gc`: the host's Nix store may hold other things (profiles,
//! other users' builds) that are not this registry's to collect. The
//! candidates are what the released roots held and what built it: the
//! runtime closure of their targets, the derivations that produced those
//! paths, and the closure of the derivations (input derivations and input
//! sources, such as the files `builtins.path` copied into the store during
//! evaluation). Nix deletes a specific path only when nothing outside the
//! deleted set refers to it, so a derivation left behind keeps its input
//! sources (a build's own interpreter, say) alive for good, and so do the
//! derivations themselves pile up.
//!
//! Of the candidates, deleted are those Nix's own rule for `--delete`
//! allows (see [`plan`]): no root of the store (`nix-store --gc
//! --print-roots`: kept images' roots, profiles, and the temporary and
//! runtime roots of running Nix processes, which protect a build in
//! flight) holds them, no path outside the set refers to them, a
//! derivation's outputs go with it (`keep-derivations`), an output's
//! derivation with it (`keep-outputs`), and no kept image's layer names
//! them. Build-time-only outputs (a compiler built here) are not
//! candidates: they are not the image's, and `nix-store --gc` is the
//! store owner's to run. Nix refuses a `--delete` naming a path that turned
//! alive since (a build started using it) and stops there: that path and
//! what it keeps are dropped and the rest retried.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::error::Result;
use crate::nix::roots::{check_claim, scan, Claim};
use crate::nix::store::{
    candidates, drv_outputs, gc_settings, internal, nix_store, path_infos, query, root_targets_without, valid, GcSettings,
    PathInfo, CHUNK,
};

/// Time a build may take between `nix-build` and writing its image record
/// (closure query, packing, uploading), beyond the Nix timeout: how long a
/// root directory without a claim file stays.
pub const IN_FLIGHT_MARGIN: Duration = Duration::from_secs(3600);
/// `--delete` retries after Nix found a path alive.
const DELETE_ATTEMPTS: usize = 50;

/// What the kept images hold, from their records.
#[derive(Debug, Default, Clone)]
pub struct Kept {
    /// Root directories kept images record (any machine's).
    pub roots: HashSet<PathBuf>,
    /// Store paths of kept images' layers.
    pub paths: HashSet<String>,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// The Nix work dir (as `[nix] work_dir`); its `gcroots` are acted on.
    pub work_dir: PathBuf,
    /// The gc window.
    pub older_than: Duration,
    /// The Nix timeout (`[nix] timeout_secs`).
    pub nix_timeout: Duration,
    /// When gc began reading the image records: a build that let go of its
    /// claim after this may have written a record gc did not read.
    pub records_read_at: SystemTime,
}

/// What the Nix part found, and removed unless it was a dry run.
#[derive(Debug, Default, Clone)]
pub struct NixReport {
    pub deleted: bool,
    pub gcroots: PathBuf,
    /// `false`: no gcroots directory here (nothing was ever built on this
    /// machine with this work dir).
    pub present: bool,
    /// Directories a kept image names or whose paths kept images hold.
    pub roots_kept: usize,
    /// Directories no kept image names but young: perhaps a build under way.
    pub roots_young: usize,
    pub roots_released: Vec<PathBuf>,
    /// Candidates (what released roots held, and the derivations that built
    /// it) that stay: rooted elsewhere, used by kept images, or referred to
    /// by other store paths.
    pub paths_shared: usize,
    /// Paths deleted (or to delete), and their NAR bytes.
    pub paths_freed: usize,
    pub bytes_freed: u64,
    /// Of `paths_freed`, derivations (`.drv` files).
    pub drvs_freed: usize,
    /// Paths Nix found alive when deleting them (a running Nix process
    /// started using them during the run), with what they keep: they stay.
    pub paths_alive: usize,
}

/// The store graph around the candidates that [`plan`] reasons over.
#[derive(Debug, Default)]
struct Graph {
    /// The candidates.
    infos: HashMap<String, PathInfo>,
    /// Each candidate derivation's outputs (all of them, valid or not).
    outputs: HashMap<String, Vec<String>>,
    /// Candidate derivations whose file did not read as one: their outputs
    /// are unknown, so they stay.
    opaque: HashSet<String>,
    settings: GcSettings,
}

impl Graph {
    /// Marks `seeds` (those that are candidates) as staying, with what
    /// Nix then keeps too: what a staying path refers to, the derivation
    /// that built it (keep-derivations), a staying derivation's outputs
    /// (keep-outputs). Returns the paths newly kept.
    fn keep(&self, kept: &mut HashSet<String>, seeds: impl IntoIterator<Item = String>) -> usize {
        let before = kept.len();
        let mut todo: Vec<String> = Vec::new();
        let add = |p: &String, kept: &mut HashSet<String>, todo: &mut Vec<String>| {
            if self.infos.contains_key(p) && kept.insert(p.clone()) {
                todo.push(p.clone());
            }
        };
        for s in seeds {
            add(&s, kept, &mut todo);
        }
        while let Some(p) = todo.pop() {
            let info = &self.infos[&p];
            for r in &info.references {
                add(r, kept, &mut todo);
            }
            if self.settings.keep_derivations {
                if let Some(d) = &info.deriver {
                    add(d, kept, &mut todo);
                }
            }
            if self.settings.keep_outputs {
                for o in self.outputs.get(&p).into_iter().flatten() {
                    add(o, kept, &mut todo);
                }
            }
        }
        kept.len() - before
    }

    /// `doomed` in the order `nix-store --delete` can take them a chunk at
    /// a time: every path no earlier than all its referrers among them (Nix
    /// keeps a path whose referrer is neither deleted before it nor with
    /// it), a derivation together with the outputs it built (under
    /// keep-derivations and keep-outputs each keeps the other). One unit per
    /// derivation and its outputs; a unit is never split across chunks.
    fn deletion_units(&self, doomed: &HashSet<String>) -> Vec<Vec<String>> {
        let doomed: BTreeSet<&String> = doomed.iter().filter(|p| self.infos.contains_key(*p)).collect();
        // A path's unit is its deriver's when that goes too.
        let unit_of = |p: &String| -> String {
            match &self.infos[p].deriver {
                Some(d) if doomed.contains(d) => d.clone(),
                _ => p.clone(),
            }
        };
        let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in &doomed {
            members.entry(unit_of(p)).or_default().push((*p).clone());
        }
        // Edges referrer unit → referenced unit; Kahn's order, starting from
        // the units nothing doomed refers to.
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut indegree: BTreeMap<String, usize> = members.keys().map(|u| (u.clone(), 0)).collect();
        for p in &doomed {
            let from = unit_of(p);
            for r in self.infos[*p].references.iter().filter(|r| doomed.contains(r)) {
                let to = unit_of(r);
                if to != from && edges.entry(from.clone()).or_default().insert(to.clone()) {
                    *indegree.get_mut(&to).expect("a unit") += 1;
                }
            }
        }
        let mut ready: Vec<String> = indegree.iter().filter(|(_, n)| **n == 0).map(|(u, _)| u.clone()).rev().collect();
        let mut order = Vec::new();
        while let Some(u) = ready.pop() {
            for to in edges.get(&u).into_iter().flatten() {
                let n = indegree.get_mut(to).expect("a unit");
                *n -= 1;
                if *n == 0 {
                    ready.push(to.clone());
                }
            }
            order.push(u);
        }
        // A cycle (none in a sound store): the rest in any order; Nix
        // refuses what it must and the retry drops that.
        let placed: HashSet<String> = order.iter().cloned().collect();
        order.extend(members.keys().filter(|u| !placed.contains(*u)).cloned().collect::<Vec<_>>());
        order.into_iter().map(|u| members.remove(&u).unwrap_or_default()).collect()
    }
}

/// Which candidates stay, by Nix's rule for `nix-store --delete` of
/// specific paths: one stays when it is a root (`roots`: the targets of
/// the store's other roots), a kept image's (`kept_paths`), referred to by
/// a path outside the candidates (`outside_referrers`, each with its
/// references), a derivation that built a valid path outside the
/// candidates (`outside_derivers`, under keep-derivations) or one whose
/// outputs are unknown; and with each, what [`Graph::keep`] keeps. The
/// rest can go together.
fn plan(
    graph: &Graph,
    roots: &HashSet<String>,
    kept_paths: &HashSet<String>,
    outside_referrers: &HashMap<String, PathInfo>,
    outside_derivers: &HashSet<String>,
) -> HashSet<String> {
    let seeds = graph
        .infos
        .keys()
        .filter(|p| roots.contains(*p) || kept_paths.contains(*p))
        .chain(outside_referrers.values().flat_map(|i| &i.references))
        .chain(outside_derivers)
        .chain(&graph.opaque)
        .cloned();
    let mut staying = HashSet::new();
    graph.keep(&mut staying, seeds);
    staying
}

/// The path Nix 2.8 names in `Cannot delete path '…' since it is still alive`.
fn alive_path(stderr: &str) -> Option<String> {
    let start = stderr.find("elete path '")? + "elete path '".len();
    let rest = &stderr[start..];
    let end = rest.find('\'')?;
    rest[end..].contains("still alive").then(|| rest[..end].to_string())
}

/// The facts [`plan`] needs from outside the candidates. Read for the
/// candidates not already `staying` (by roots and kept images): only
/// those's referrers can change the answer, and this spares asking for the
/// thousands of referrers of a path every image shares.
async fn outside_facts(graph: &Graph, staying: &HashSet<String>) -> Result<(HashMap<String, PathInfo>, HashSet<String>)> {
    let rest: Vec<String> = graph.infos.keys().filter(|p| !staying.contains(*p)).cloned().collect();
    // Paths outside the candidates referring to one of the rest.
    let mut referrers: Vec<String> =
        query(&["--query", "--referrers"], &rest).await?.into_iter().filter(|r| !graph.infos.contains_key(r)).collect();
    referrers.sort();
    referrers.dedup();
    let outside_referrers = path_infos(&valid(&referrers).await?).await?;
    // Derivations among the rest that built a valid path outside them.
    let mut outside_derivers = HashSet::new();
    if graph.settings.keep_derivations {
        let mut outputs: Vec<String> = rest
            .iter()
            .flat_map(|d| graph.outputs.get(d).into_iter().flatten())
            .filter(|o| !graph.infos.contains_key(*o))
            .cloned()
            .collect();
        outputs.sort();
        outputs.dedup();
        for info in path_infos(&valid(&outputs).await?).await?.into_values() {
            outside_derivers.extend(info.deriver.filter(|d| graph.infos.contains_key(d)));
        }
    }
    Ok((outside_referrers, outside_derivers))
}

/// One collection of this machine's roots; removes them and deletes the
/// paths only they kept alive when `delete`, else reports what it would.
pub async fn collect(opts: &Options, kept: &Kept, delete: bool) -> Result<NixReport> {
    let work_dir = std::path::absolute(&opts.work_dir).map_err(|e| internal("work dir", e))?;
    let gcroots = work_dir.join("gcroots");
    let mut report = NixReport { deleted: delete, gcroots: gcroots.clone(), ..Default::default() };
    if !gcroots.is_dir() {
        return Ok(report);
    }
    report.present = true;
    let kept_here: HashSet<&std::ffi::OsStr> =
        kept.roots.iter().filter(|r| r.parent() == Some(gcroots.as_path())).filter_map(|r| r.file_name()).collect();
    let now = SystemTime::now();
    let ago = |d: Duration| now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH);
    let window_cutoff = ago(opts.older_than);
    let unclaimed_cutoff = ago(opts.older_than.max(opts.nix_timeout + IN_FLIGHT_MARGIN));

    let dirs = scan(&gcroots)?;
    let all_targets: Vec<String> = {
        let mut t: Vec<String> = dirs.iter().flat_map(|d| d.targets.iter().cloned()).collect();
        t.sort();
        t.dedup();
        t
    };
    let valid_targets: HashSet<String> = valid(&all_targets).await?.into_iter().collect();
    let mut released = Vec::new();
    let mut released_targets = Vec::new();
    // The locks of the directories to release, held until they are gone.
    let mut locks = Vec::new();
    for d in dirs {
        let named = d.dir.file_name().is_some_and(|n| kept_here.contains(n));
        let held_by_images = !d.targets.is_empty() && d.targets.iter().all(|t| kept.paths.contains(t));
        if named || held_by_images {
            report.roots_kept += 1;
            continue;
        }
        let young = match check_claim(&d.dir) {
            Claim::Held => true,
            Claim::Free(_, let_go) if let_go >= opts.records_read_at => true,
            Claim::Free(lock, _) => {
                let young = d.newest >= window_cutoff;
                if !young {
                    locks.push(lock);
                }
                young
            }
            Claim::Unknown => d.newest >= unclaimed_cutoff,
        };
        if young {
            report.roots_young += 1;
        } else {
            released_targets.extend(d.targets.iter().filter(|t| valid_targets.contains(*t)).cloned());
            released.push(d.dir);
        }
    }
    released_targets.sort();
    released_targets.dedup();
    report.roots_released = released.clone();

    let mut graph = Graph::default();
    let mut staying = HashSet::new();
    if !released_targets.is_empty() {
        graph.infos = candidates(&released_targets).await?;
        graph.settings = gc_settings().await;
        for drv in graph.infos.keys().filter(|p| p.ends_with(".drv")) {
            match std::fs::read_to_string(drv).ok().as_deref().and_then(drv_outputs) {
                Some(outputs) => {
                    graph.outputs.insert(drv.clone(), outputs);
                }
                None => {
                    graph.opaque.insert(drv.clone());
                }
            }
        }
        let roots = root_targets_without(&released).await?;
        let (none, nothing) = (HashMap::new(), HashSet::new());
        let first = plan(&graph, &roots, &kept.paths, &none, &nothing);
        let (outside_referrers, outside_derivers) = outside_facts(&graph, &first).await?;
        staying = plan(&graph, &roots, &kept.paths, &outside_referrers, &outside_derivers);
    }
    report.paths_shared = staying.len();
    let doomed: HashSet<String> = graph.infos.keys().filter(|p| !staying.contains(*p)).cloned().collect();
    let count = |freed: &mut dyn Iterator<Item = &String>, report: &mut NixReport| {
        for p in freed {
            report.paths_freed += 1;
            report.bytes_freed += graph.infos[p].nar_size;
            report.drvs_freed += usize::from(p.ends_with(".drv"));
        }
    };

    if !delete {
        count(&mut doomed.iter(), &mut report);
        return Ok(report);
    }

    for dir in &released {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(internal(&format!("removing {}", dir.display()), e));
            }
        }
        tracing::info!(root = %dir.display(), "released Nix GC root");
    }
    // A build of one of these may start now: it makes its links anew, and
    // Nix refuses to delete what they root (handled below).
    drop(locks);
    let mut left = doomed.clone();
    for _ in 0..DELETE_ATTEMPTS {
        if left.is_empty() {
            break;
        }
        let mut failed = None;
        for chunk in chunks(graph.deletion_units(&left)) {
            let mut args: Vec<OsString> = vec!["--delete".into()];
            args.extend(chunk.iter().map(OsString::from));
            let (ok, _, err) = nix_store(&args).await?;
            if !ok {
                failed = Some(err);
                break;
            }
        }
        let Some(err) = failed else { break };
        // Nix stopped at a path it found alive (deleting what it had
        // taken before): it stays, with what it keeps; the rest is retried.
        let still: HashSet<String> = valid(&left.iter().cloned().collect::<Vec<_>>()).await?.into_iter().collect();
        match alive_path(&err) {
            Some(p) if still.contains(&p) => {
                let mut alive = HashSet::new();
                graph.keep(&mut alive, [p.clone()]);
                let alive: HashSet<String> = alive.intersection(&still).cloned().collect();
                tracing::info!(path = %p, with = alive.len() - 1, "a store path gc released is in use again; it stays, with what it keeps");
                report.paths_alive += alive.len();
                left = still.difference(&alive).cloned().collect();
            }
            _ => return Err(internal("nix-store --delete", err.trim())),
        }
    }
    let mut doomed: Vec<String> = doomed.into_iter().collect();
    doomed.sort();
    let still: HashSet<String> = valid(&doomed).await?.into_iter().collect();
    count(&mut doomed.iter().filter(|p| !still.contains(*p)), &mut report);
    Ok(report)
}

/// Deletion units packed into chunks of about [`CHUNK`] paths, in order.
fn chunks(units: Vec<Vec<String>>) -> Vec<Vec<String>> {
    let mut chunks: Vec<Vec<String>> = Vec::new();
    for unit in units {
        match chunks.last_mut() {
            Some(last) if last.len() + unit.len() <= CHUNK => last.extend(unit),
            _ => chunks.push(unit),
        }
    }
    chunks
}

impl fmt::Display for NixReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.present {
            return write!(f, "nix:           no GC roots here ({}): nothing was built on this machine", self.gcroots.display());
        }
        let (released, freed) = if self.deleted { ("released", "deleted") } else { ("to release", "to delete") };
        writeln!(
            f,
            "nix roots:     {} kept, {} young (perhaps a build under way), {} {released} ({})",
            self.roots_kept,
            self.roots_young,
            self.roots_released.len(),
            self.gcroots.display()
        )?;
        write!(
            f,
            "nix store:     {} paths {freed} ({} derivations), {} freed ({} bytes, NAR size); {} stay (rooted elsewhere, used by kept images or by other store paths)",
            self.paths_freed,
            self.drvs_freed,
            indicatif::HumanBytes(self.bytes_freed),
            self.bytes_freed,
            self.paths_shared
        )?;
        if self.paths_alive > 0 {
            write!(f, "\n               {} in use again by a running Nix process, kept", self.paths_alive)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_path_nix_found_alive() {
        let err = "finding garbage collector roots...\nerror: Cannot delete path '/nix/store/79xs-a' since it is still alive. To find out why, use: nix-store --query --roots\n";
        assert_eq!(alive_path(err).as_deref(), Some("/nix/store/79xs-a"));
        assert_eq!(alive_path("error: something else"), None);
    }

    fn info(size: u64, deriver: Option<&str>, refs: &[&str]) -> PathInfo {
        PathInfo { nar_size: size, deriver: deriver.map(str::to_string), references: refs.iter().map(|r| r.to_string()).collect() }
    }

    fn set(paths: &[&str]) -> HashSet<String> {
        paths.iter().map(|p| p.to_string()).collect()
    }

    /// The test package set's shape: `gca` runs a script whose interpreter
    /// is a source `builtins.path` copied (`bb`), and uses `shared`; each was
    /// built by a derivation, and `gca.drv` names `bb` as an input source.
    fn graph(settings: GcSettings) -> Graph {
        let infos = [
            ("gca", info(500, Some("gca.drv"), &["bb", "shared"])),
            ("shared", info(60, Some("shared.drv"), &[])),
            ("bb", info(2000, None, &[])),
            ("gca.drv", info(1, None, &["bb", "shared.drv"])),
            ("shared.drv", info(1, None, &[])),
        ];
        Graph {
            infos: infos.into_iter().map(|(p, i)| (p.to_string(), i)).collect(),
            outputs: [("gca.drv", vec!["gca".to_string()]), ("shared.drv", vec!["shared".to_string()])]
                .into_iter()
                .map(|(d, o)| (d.to_string(), o))
                .collect(),
            opaque: HashSet::new(),
            settings,
        }
    }

    /// With its derivations among the candidates, the whole image goes: the
    /// interpreter's only other referrer is `gca.drv`, which goes too (the
    /// defect was leaving it, and so the interpreter, behind).
    #[test]
    fn an_image_goes_with_its_derivations() {
        let g = graph(GcSettings::default());
        let none = (HashMap::new(), HashSet::new());
        let staying = plan(&g, &HashSet::new(), &HashSet::new(), &none.0, &none.1);
        assert!(staying.is_empty(), "{staying:?}");
        let units = g.deletion_units(&g.infos.keys().cloned().collect());
        let position = |p: &str| units.iter().position(|u| u.iter().any(|m| m == p)).unwrap();
        assert_eq!(position("gca"), position("gca.drv"), "a derivation goes with its output: {units:?}");
        assert!(position("gca") < position("shared") && position("gca.drv") < position("bb"), "referrers first: {units:?}");
        assert!(position("gca.drv") < position("shared.drv"), "{units:?}");
    }

    /// A kept image's derivation refers to the interpreter and to
    /// `shared.drv`, and its output to `shared`: those stay, and so does
    /// `shared.drv` (keep-derivations: its output stays).
    #[test]
    fn what_another_path_refers_to_stays() {
        let g = graph(GcSettings::default());
        let outside = HashMap::from([
            ("gcb".to_string(), info(100, Some("gcb.drv"), &["bb", "shared"])),
            ("gcb.drv".to_string(), info(1, None, &["bb", "shared.drv"])),
        ]);
        let staying = plan(&g, &HashSet::new(), &HashSet::new(), &outside, &HashSet::new());
        assert_eq!(staying, set(&["bb", "shared", "shared.drv"]));
        let without_keep_derivations = GcSettings { keep_derivations: false, keep_outputs: false };
        let g = graph(without_keep_derivations);
        let outside = HashMap::from([("gcb".to_string(), info(100, None, &["shared"]))]);
        assert_eq!(plan(&g, &HashSet::new(), &HashSet::new(), &outside, &HashSet::new()), set(&["shared"]));
    }

    #[test]
    fn roots_kept_images_and_outside_outputs_keep_their_paths() {
        let g = graph(GcSettings::default());
        let none = HashMap::new();
        // A root on `gca` keeps the runtime closure and, with it, gca.drv and
        // what gca.drv refers to.
        let staying = plan(&g, &set(&["gca"]), &HashSet::new(), &none, &HashSet::new());
        assert_eq!(staying, set(&["gca", "bb", "shared", "gca.drv", "shared.drv"]));
        assert_eq!(plan(&g, &HashSet::new(), &set(&["shared"]), &none, &HashSet::new()), set(&["shared", "shared.drv"]));
        // shared.drv also built a valid output no candidate is.
        assert_eq!(plan(&g, &HashSet::new(), &HashSet::new(), &none, &set(&["shared.drv"])), set(&["shared.drv"]));
        // keep-outputs: a staying derivation keeps its outputs.
        let g = graph(GcSettings { keep_derivations: true, keep_outputs: true });
        assert_eq!(plan(&g, &HashSet::new(), &HashSet::new(), &none, &set(&["shared.drv"])), set(&["shared.drv", "shared"]));
        // A derivation that does not read as one stays, with its closure.
        let mut g = graph(GcSettings::default());
        g.opaque.insert("gca.drv".into());
        assert_eq!(plan(&g, &HashSet::new(), &HashSet::new(), &none, &HashSet::new()), set(&["gca.drv", "bb", "shared.drv"]));
    }

    #[test]
    fn chunks_never_split_a_unit() {
        let unit = |n: usize, tag: &str| (0..n).map(|i| format!("{tag}{i}")).collect::<Vec<_>>();
        let packed = chunks(vec![unit(CHUNK - 1, "a"), unit(2, "b"), unit(3, "c")]);
        assert_eq!(packed.iter().map(Vec::len).collect::<Vec<_>>(), [CHUNK - 1, 5]);
    }
}
