//! The distribution spec's grammar for names, tags and digests, checked
//! before anything else sees a request: what passes here is all that can
//! reach plugins, Nix or the store.
//!
//! A crate of its own, with no dependencies, so that the fuzz targets
//! (`fuzz/`) build it in seconds instead of instrumenting the whole host;
//! the host turns an [`Invalid`] into its registry error (`NAME_INVALID`,
//! `DIGEST_INVALID`; a bad tag is `MANIFEST_UNKNOWN`).

/// Which rule a string broke, and a one-line reason that quotes at most a
/// bounded prefix of it (the reason reaches HTTP error bodies and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    Name(String),
    Tag(String),
    Digest(String),
}

type Result<T> = std::result::Result<T, Invalid>;

/// Longest repository name accepted (the spec's common limit).
pub const MAX_NAME_LEN: usize = 255;

/// A path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: ".", "_", "__" or a run of "-", always followed by
        // an alphanumeric (the last byte is one, checked above).
        let sep = match b[i] {
            b'.' => 1,
            b'_' if b.get(i + 1) == Some(&b'_') => 2,
            b'_' => 1,
            b'-' => b[i..].iter().take_while(|&&c| c == b'-').count(),
            _ => return false,
        };
        i += sep;
        if !b.get(i).copied().is_some_and(is_alnum) {
            return false;
        }
    }
    true
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// Validates a repository name; `max_segments` bounds the packages a name
/// can request before any plugin runs.
pub fn parse_name(name: &str, max_segments: usize) -> Result<Vec<&str>> {
    if name.is_empty() {
        return Err(Invalid::Name("empty name".into()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Invalid::Name(format!("name is {} characters, at most {MAX_NAME_LEN}", name.len())));
    }
    let segments: Vec<&str> = name.split('/').collect();
    if segments.len() > max_segments {
        return Err(Invalid::Name(format!(
            "name has {} components, at most {max_segments}",
            segments.len()
        )));
    }
    if let Some(bad) = segments.iter().find(|s| !valid_component(s)) {
        let shown: String = bad.chars().take(64).collect();
        return Err(Invalid::Name(format!(
            "component {shown:?} does not match [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*"
        )));
    }
    Ok(segments)
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn parse_tag(tag: &str) -> Result<&str> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(tag)
    } else {
        let shown: String = tag.chars().take(64).collect();
        Err(Invalid::Tag(format!("{shown:?} does not match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")))
    }
}

/// Only sha256 digests are produced here, so only they are accepted.
pub fn parse_digest(digest: &str) -> Result<&str> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) => {
            Ok(digest)
        }
        _ => {
            let shown: String = digest.chars().take(80).collect();
            Err(Invalid::Digest(format!("{shown:?} is not sha256:<64 lowercase hex>")))
        }
    }
}

/// A manifest reference: a digest if it has the form of one, else a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference<'a> {
    Tag(&'a str),
    Digest(&'a str),
}

pub fn parse_reference(r: &str) -> Result<Reference<'_>> {
    if r.contains(':') {
        parse_digest(r).map(Reference::Digest)
    } else {
        parse_tag(r).map(Reference::Tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["shell", "shell/git/htop", "xorg.xev", "haskellpackages.pandoc", "a__b", "a--b", "iana-etc", "7zip"] {
            assert!(parse_name(ok, 64).is_ok(), "{ok}");
        }
        let long = "a".repeat(300);
        let many = vec!["a"; 100].join("/");
        for bad in [
            "", "Shell", "a//b", "/a", "a/", "..", "a/../b", "%2e%2e", "a%2fb", "a\"b", "a${b}", "a;b", "a\\b",
            "a.", ".a", "a___b", "a_-b", "é", long.as_str(), many.as_str(), "a b",
        ] {
            assert!(matches!(parse_name(bad, 64), Err(Invalid::Name(_))), "{bad}");
        }
    }

    #[test]
    fn tags_and_digests() {
        assert!(parse_tag("latest").is_ok());
        assert!(parse_tag("v1.2_3-rc").is_ok());
        for bad in ["", ".x", "-x", "a/b", "a:b", &"x".repeat(129)] {
            assert!(matches!(parse_tag(bad), Err(Invalid::Tag(_))), "{bad}");
        }
        let d = format!("sha256:{}", "0a".repeat(32));
        assert!(parse_digest(&d).is_ok());
        for bad in ["sha256:", "sha256:ABC", "md5:00", &format!("sha256:{}", "g".repeat(64)), &format!("sha512:{}", "0".repeat(64))] {
            assert!(matches!(parse_digest(bad), Err(Invalid::Digest(_))), "{bad}");
        }
        assert!(matches!(parse_reference(&d), Ok(Reference::Digest(_))));
        assert!(matches!(parse_reference("latest"), Ok(Reference::Tag(_))));
    }
}
