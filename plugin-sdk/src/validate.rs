//! Checks on what plugins return. The host never trusts a plugin's output:
//! a grouping decides which files go into which tarball, so a path outside
//! the closure, or a closure path left out, would make a wrong image.
//!
//! Here rather than in the host because they are about these wire types
//! only: a plugin author can run the host's verdict in a native test, and
//! fuzz/ builds them without the host's dependencies.

use crate::{Account, ClosureGraph, Expansion, Layers, SourceOutput};

/// Longest plugin-supplied text put into a reason or an image history entry.
const MAX_TEXT: usize = 1000;

/// Makes plugin-supplied text safe to put into a log line or an HTTP error:
/// one line, bounded length.
pub fn clean_message(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(MAX_TEXT)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.chars().nth(MAX_TEXT).is_some() {
        out.push('…');
    }
    out
}

/// Checks that `layers` is a partition of `graph` within `budget`; returns
/// the reason it is not, starting with "returned an invalid grouping".
pub fn grouping(graph: &ClosureGraph, budget: u32, layers: &Layers) -> Result<(), String> {
    grouping_problem(graph, budget, layers).map_err(|p| format!("returned an invalid grouping: {p}"))
}

fn grouping_problem(graph: &ClosureGraph, budget: u32, out: &Layers) -> Result<(), String> {
    if out.strategy.len() > 200 || out.strategy.chars().any(char::is_control) {
        return Err("the strategy name must be at most 200 characters on one line".into());
    }
    if out.layers.len() > budget as usize {
        return Err(format!("{} layers, over the budget of {budget}", out.layers.len()));
    }
    let n = graph.paths.len();
    let mut placed: Vec<Option<usize>> = vec![None; n];
    for (l, layer) in out.layers.iter().enumerate() {
        if layer.is_empty() {
            return Err(format!("layer {l} is empty"));
        }
        for &i in layer {
            let Some(slot) = placed.get_mut(i as usize) else {
                return Err(format!("layer {l} names path {i}, but the closure has {n} paths"));
            };
            let path = &graph.paths[i as usize].path;
            if let Some(first) = *slot {
                return Err(if first == l {
                    format!("path {i} ({path}) appears twice in layer {l}")
                } else {
                    format!("path {i} ({path}) is in both layer {first} and layer {l}")
                });
            }
            *slot = Some(l);
        }
    }
    if let Some(i) = placed.iter().position(Option::is_none) {
        let missing = placed.iter().filter(|p| p.is_none()).count();
        let more = if missing > 1 { format!(" (and {} more)", missing - 1) } else { String::new() };
        return Err(format!("path {i} ({}) is missing{more}", graph.paths[i].path));
    }
    Ok(())
}

/// Checks what an expansion plugin handed on; the next plugin and the build
/// rely on it.
pub fn expansion(e: &Expansion) -> Result<(), String> {
    expansion_problem(e).map_err(|p| format!("returned an invalid expansion: {p}"))
}

fn expansion_problem(e: &Expansion) -> Result<(), String> {
    if e.arch != "amd64" && e.arch != "arm64" {
        return Err(format!("arch `{}` is neither amd64 nor arm64", clean_message(&e.arch)));
    }
    for p in e.packages.iter().chain(&e.optional) {
        if p.is_empty() || p.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(format!("package name {:?} is empty or contains whitespace", clean_message(p)));
        }
    }
    for var in &e.image.env {
        match var.split_once('=') {
            Some((key, _)) if !key.is_empty() => {}
            _ => return Err(format!("environment entry {:?} is not KEY=value", clean_message(var))),
        }
    }
    if let Some(a) = &e.image.account {
        account_problem(a)?;
    }
    Ok(())
}

/// The account becomes a line of `/etc/passwd` and a directory: a name or
/// home that could break the line (`:`, a newline) or leave the image's
/// root (`..`) is refused, as are root's and nobody's ids.
fn account_problem(a: &Account) -> Result<(), String> {
    let name_ok = (1..=32).contains(&a.name.len())
        && a.name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && a.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !name_ok || a.name == "root" || a.name == "nobody" {
        return Err(format!(
            "account name {:?} must be 1 to 32 of a-z, 0-9, _ and -, start with a letter or _, and not be root or nobody",
            clean_message(&a.name)
        ));
    }
    for (what, id) in [("uid", a.uid), ("gid", a.gid)] {
        if id == 0 || id == 65534 {
            return Err(format!("account {what} {id} is root's or nobody's"));
        }
    }
    let parts: Vec<&str> = a.home.strip_prefix('/').map(|h| h.split('/').collect()).unwrap_or_default();
    let home_ok = a.home.len() <= 200
        && !parts.is_empty()
        && parts.iter().all(|p| !p.is_empty() && *p != "." && *p != "..")
        && !a.home.chars().any(|c| c == ':' || c.is_control());
    if !home_ok {
        return Err(format!(
            "account home {:?} must be an absolute path below / without `.`, `..`, `:` or empty parts",
            clean_message(&a.home)
        ));
    }
    Ok(())
}

/// The identity names what was built in cache keys and on the web page.
pub fn source(out: &SourceOutput) -> Result<(), String> {
    let id = &out.identity;
    if id.is_empty() || id.len() > MAX_TEXT || id.chars().any(char::is_control) {
        return Err("returned an invalid source: the identity must be one non-empty line of at most 1000 bytes".into());
    }
    if let Some(crate::AllowUnfree::Names(names)) = &out.allow_unfree {
        if let Some(bad) = names.iter().find(|n| n.is_empty() || n.len() > 200 || n.chars().any(|c| c.is_whitespace() || c.is_control())) {
            return Err(format!("returned an invalid source: allow_unfree name {:?} is empty or has whitespace", clean_message(bad)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StorePath;

    #[test]
    fn accounts_must_fit_a_passwd_line() {
        let with = |name: &str, uid: u32, home: &str| Expansion {
            packages: vec!["git".into()],
            arch: "amd64".into(),
            image: crate::ImageSettings {
                account: Some(Account { name: name.into(), uid, gid: uid, home: home.into() }),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(expansion(&with("user", 1000, "/home/user")), Ok(()));
        assert_eq!(expansion(&with("_ci-1", 1001, "/srv/ci")), Ok(()));
        for (name, uid, home) in [
            ("root", 1000, "/root2"),
            ("nobody", 1000, "/home/n"),
            ("User", 1000, "/home/u"),
            ("a:b", 1000, "/home/u"),
            ("", 1000, "/home/u"),
            ("user", 0, "/home/user"),
            ("user", 65534, "/home/user"),
            ("user", 1000, "home/user"),
            ("user", 1000, "/"),
            ("user", 1000, "/home/../etc"),
            ("user", 1000, "/home//user"),
            ("user", 1000, "/home/us:er"),
            ("user", 1000, "/home/user\n"),
        ] {
            let home = home.replace("\\n", "\n");
            assert!(expansion(&with(name, uid, &home)).is_err(), "{name} {uid} {home:?}");
        }
    }

    fn graph(names: &[&str]) -> ClosureGraph {
        ClosureGraph {
            roots: vec![0],
            paths: names
                .iter()
                .map(|n| StorePath {
                    path: format!("/nix/store/{n}"),
                    nar_size: 1,
                    references: vec![],
                    popularity: 0,
                })
                .collect(),
        }
    }

    fn layers(l: &[&[u32]]) -> Layers {
        Layers { strategy: "t".into(), layers: l.iter().map(|l| l.to_vec()).collect() }
    }

    #[test]
    fn partitions() {
        let g = graph(&["a", "b", "c"]);
        assert_eq!(grouping(&g, 2, &layers(&[&[0], &[1, 2]])), Ok(()));
        let err = |l: &[&[u32]], budget| grouping(&g, budget, &layers(l)).unwrap_err();
        assert!(err(&[&[0], &[1]], 3).ends_with("path 2 (/nix/store/c) is missing"));
        assert!(err(&[&[0], &[1, 2, 0]], 3).contains("in both layer 0 and layer 1"));
        assert!(err(&[&[0, 0, 1, 2]], 3).contains("appears twice in layer 0"));
        assert!(err(&[&[0, 1, 2, 3]], 3).contains("layer 0 names path 3, but the closure has 3 paths"));
        assert!(err(&[&[0, 1, 2, u32::MAX]], 3).contains("names path 4294967295"));
        assert!(err(&[&[0], &[1], &[2]], 2).contains("3 layers, over the budget of 2"));
        assert!(err(&[&[0, 1, 2], &[]], 2).contains("layer 1 is empty"));
        assert_eq!(grouping(&graph(&["a"]), 0, &layers(&[&[0]])).unwrap_err(),
            "returned an invalid grouping: 1 layers, over the budget of 0");
        let strategy = Layers { strategy: "a\nb".into(), layers: vec![vec![0, 1, 2]] };
        assert!(grouping(&g, 2, &strategy).unwrap_err().contains("strategy name"));
    }

    #[test]
    fn empty_closure_needs_no_layer() {
        let g = ClosureGraph::default();
        assert_eq!(grouping(&g, 0, &Layers::default()), Ok(()));
    }

    #[test]
    fn messages_are_one_bounded_line() {
        let m = clean_message(&format!("a\nb{}", "x".repeat(5000)));
        assert!(!m.contains('\n'));
        assert!(m.chars().count() <= MAX_TEXT + 1);
    }

    #[test]
    fn expansions() {
        let mut e = Expansion { packages: vec!["git".into(), "xorg.xev".into()], arch: "arm64".into(), ..Default::default() };
        assert_eq!(expansion(&e), Ok(()));
        e.arch = "x86".into();
        assert!(expansion(&e).unwrap_err().contains("arch `x86`"));
        e.arch = "amd64".into();
        e.packages.push("a b".into());
        assert!(expansion(&e).is_err());
        e.packages.pop();
        e.optional.push("new\nline".into());
        assert!(expansion(&e).is_err());
        e.optional.clear();
        e.image.env.push("NOEQUALS".into());
        assert!(expansion(&e).is_err());
    }
}
