//! What the fuzz targets check, as plain functions: each takes the
//! fuzzer's bytes, runs one of the host's validators, and compares its
//! verdict with an independent statement of the rule (a regular expression
//! for the grammars, a set comparison for layer partitions). A panic is a
//! finding: a validator that crashes, or one that accepts what the rule
//! refuses (or the reverse).

use arbitrary::{Arbitrary, Unstructured};
use regex::Regex;
use std::collections::BTreeSet;
use std::sync::OnceLock;
use strata_plugin_sdk::{validate, ClosureGraph, Expansion, Layers, SourceOutput, StorePath};
use strata_reference::{self as reference, Invalid, Reference};

fn re(cell: &'static OnceLock<Regex>, pattern: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pattern).expect("valid pattern"))
}

/// The distribution spec's grammar, written as the spec writes it.
fn name_re() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$")
}

fn tag_re() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
}

fn digest_re() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    re(&R, r"^sha256:[a-f0-9]{64}$")
}

/// Names, tags, digests and references: the first byte picks the segment
/// limit, the rest is the text (as the registry would see it in a path).
pub fn check_reference(data: &[u8]) {
    let (max_segments, text) = match data.split_first() {
        Some((b, rest)) => (1 + usize::from(*b % 70), String::from_utf8_lossy(rest).into_owned()),
        None => (64, String::new()),
    };
    let s = text.as_str();

    let expected = name_re().is_match(s) && s.len() <= reference::MAX_NAME_LEN && s.split('/').count() <= max_segments;
    match reference::parse_name(s, max_segments) {
        Ok(segments) => {
            assert!(expected, "name accepted against the grammar: {s:?}");
            assert_eq!(segments.join("/"), s);
            // What may reach a plugin or Nix: no traversal, no quoting,
            // nothing but the grammar's bytes.
            assert!(!s.contains("..") && !s.starts_with('/') && !s.contains("//"));
            assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)));
        }
        Err(e) => {
            assert!(!expected, "name refused against the grammar: {s:?}");
            assert!(matches!(e, Invalid::Name(_)), "{e:?}");
        }
    }

    let tag_ok = tag_re().is_match(s);
    match reference::parse_tag(s) {
        Ok(t) => assert!(tag_ok && t == s, "tag {s:?}"),
        Err(e) => assert!(!tag_ok && matches!(e, Invalid::Tag(_)), "tag refused against the grammar: {s:?}: {e:?}"),
    }
    let digest_ok = digest_re().is_match(s);
    match reference::parse_digest(s) {
        Ok(d) => assert!(digest_ok && d == s, "digest {s:?}"),
        Err(e) => {
            assert!(!digest_ok, "digest refused against the grammar: {s:?}");
            assert!(matches!(e, Invalid::Digest(_)), "{e:?}");
        }
    }
    match reference::parse_reference(s) {
        Ok(Reference::Tag(t)) => assert!(tag_ok && t == s),
        Ok(Reference::Digest(d)) => assert!(digest_ok && d == s),
        Err(_) => assert!(!tag_ok && !digest_ok, "reference refused: {s:?}"),
    }
}

fn grouping_case(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    // A closure as Nix reports it: distinct paths, sorted.
    let n = u.int_in_range(0..=8u32)?;
    let graph = ClosureGraph {
        roots: if n > 0 { vec![0] } else { vec![] },
        paths: (0..n)
            .map(|i| StorePath { path: format!("/nix/store/{i:04}-p{i}"), nar_size: 1, references: vec![], popularity: 0 })
            .collect(),
    };
    // A grouping: mostly the closure's own indices, shuffled into layers,
    // sometimes with one left out, repeated or out of range.
    let mut layers: Vec<Vec<u32>> = vec![Vec::new(); u.int_in_range(0..=4)?];
    for p in 0..n {
        if layers.is_empty() || u.ratio(1, 16)? {
            continue;
        }
        let l = u.choose_index(layers.len())?;
        layers[l].push(p);
    }
    for _ in 0..u.int_in_range(0..=2)? {
        if layers.is_empty() {
            break;
        }
        let l = u.choose_index(layers.len())?;
        let extra = if n > 0 && u.arbitrary()? { u.int_in_range(0..=n - 1)? } else { u32::arbitrary(u)? };
        layers[l].push(extra);
    }
    let strategy = if u.ratio(1, 8)? { String::arbitrary(u)? } else { "fuzz".to_string() };
    let budget = u32::from(u.int_in_range(0..=5u8)?);
    let out = Layers { strategy: strategy.clone(), layers: layers.clone() };

    let entries: Vec<u32> = layers.iter().flatten().copied().collect();
    let distinct: BTreeSet<u32> = entries.iter().copied().collect();
    let expected = strategy.len() <= 200
        && !strategy.chars().any(char::is_control)
        && layers.len() <= budget as usize
        && layers.iter().all(|l| !l.is_empty())
        && distinct.len() == entries.len()
        && distinct.into_iter().eq(0..n);
    let verdict = validate::grouping(&graph, budget, &out);
    assert_eq!(verdict.is_ok(), expected, "{n} paths, budget {budget}, layers {layers:?}: {verdict:?}");
    if let Err(reason) = verdict {
        assert!(reason.starts_with("returned an invalid grouping: "), "{reason}");
        assert!(reason.len() < 4096, "an unbounded reason ({} bytes)", reason.len());
    }
    Ok(())
}

/// A plugin's raw output, decoded as the host decodes it, then validated:
/// decoding and validation must never panic, and what passes must hold.
fn decoded_case(kind: u8, json: &[u8]) {
    match kind % 3 {
        0 => {
            if let Ok(e) = serde_json::from_slice::<Expansion>(json) {
                if validate::expansion(&e).is_ok() {
                    assert!(e.arch == "amd64" || e.arch == "arm64");
                    assert!(e.packages.iter().all(|p| !p.is_empty() && !p.chars().any(|c| c.is_whitespace() || c.is_control())));
                    assert!(e.image.env.iter().all(|v| v.split_once('=').is_some_and(|(k, _)| !k.is_empty())));
                }
            }
        }
        1 => {
            if let Ok(s) = serde_json::from_slice::<SourceOutput>(json) {
                if validate::source(&s).is_ok() {
                    assert!(!s.identity.is_empty() && s.identity.len() <= 1000 && !s.identity.chars().any(char::is_control));
                }
            }
        }
        _ => {
            if let Ok(l) = serde_json::from_slice::<Layers>(json) {
                let graph = ClosureGraph {
                    roots: vec![0],
                    paths: vec![StorePath {
                        path: "/nix/store/aaaa-hello-2.12".into(),
                        nar_size: 1,
                        references: vec![],
                        popularity: 0,
                    }],
                };
                if validate::grouping(&graph, 3, &l).is_ok() {
                    assert_eq!(l.layers.concat(), vec![0]);
                }
            }
        }
    }
}

/// The plugin output validator: structured groupings against the rule, or
/// (first byte odd) raw JSON as a plugin could return it.
pub fn check_plugin_output(data: &[u8]) {
    match data.split_first() {
        Some((b, rest)) if b % 2 == 1 => decoded_case(b / 2, rest),
        Some((_, rest)) => {
            let _ = grouping_case(&mut Unstructured::new(rest));
        }
        None => {}
    }
}
