//! The distribution spec's grammar for names, tags and digests (the
//! `strata-reference` crate, which fuzz/ builds without the host), and how
//! its refusals answer a client.

use crate::error::Error;

pub use strata_reference::{parse_digest, parse_name, parse_reference, parse_tag, Invalid, Reference, MAX_NAME_LEN};

/// What a client is told: the spec's code for the rule that was broken
/// (`NAME_INVALID`, `DIGEST_INVALID`; a tag outside the grammar names no
/// manifest, `MANIFEST_UNKNOWN`, as the spec has no code for it), with the
/// reason.
impl From<Invalid> for Error {
    fn from(e: Invalid) -> Self {
        match e {
            Invalid::Name(reason) => Error::NameInvalid(reason),
            Invalid::Tag(reason) => Error::TagInvalid(reason),
            Invalid::Digest(reason) => Error::DigestInvalid(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(e: Invalid) -> (&'static str, u16, String) {
        let e = Error::from(e);
        let (code, status) = e.code_and_status();
        (code, status.as_u16(), e.to_string())
    }

    #[test]
    fn refusals_are_the_specs_errors() {
        let (code, status, text) = answer(parse_name("a/../b", 64).unwrap_err());
        assert_eq!((code, status), ("NAME_INVALID", 400));
        assert!(text.starts_with("invalid repository name: component \"..\""), "{text}");
        let (code, status, text) = answer(parse_tag(".x").unwrap_err());
        assert_eq!((code, status), ("MANIFEST_UNKNOWN", 404));
        assert!(text.starts_with("invalid tag: \".x\""), "{text}");
        let (code, status, text) = answer(parse_digest("sha256:ABC").unwrap_err());
        assert_eq!((code, status), ("DIGEST_INVALID", 400));
        assert!(text.starts_with("invalid digest: \"sha256:ABC\""), "{text}");
        // A reference with a colon is held to the digest grammar, not the tag's.
        assert_eq!(answer(parse_reference("a:b").unwrap_err()).0, "DIGEST_INVALID");
        assert_eq!(answer(parse_reference("-x").unwrap_err()).0, "MANIFEST_UNKNOWN");
    }
}
