//! The GC roots of builds: one directory per set of top-level paths, under
//! `<work dir>/gcroots`, and the claim a build holds on it (see `gc`).

pub use crate::nix::gc::RootsClaim;

/// A stable name for a set of roots (FNV-1a, 64 bits): stable across
/// restarts and Rust versions, unlike `DefaultHasher`, so that a restarted
/// server overwrites its old links instead of adding new ones.
pub fn roots_key(roots: &[String]) -> String {
    let mut sorted: Vec<&str> = roots.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in sorted.join("\n").bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "/nix/store/5423hxkw5pa6pncpm7xn2b6qi36z1fvj-hello-2.12.1";
    const BUSYBOX: &str = "/nix/store/r9zgkzc5zab416qddj283jlsvp18ydzr-busybox-static";

    #[test]
    fn roots_key_ignores_order() {
        let a = roots_key(&[HELLO.into(), BUSYBOX.into()]);
        assert_eq!(a, roots_key(&[BUSYBOX.into(), HELLO.into()]));
        assert_ne!(a, roots_key(&[HELLO.into()]));
    }
}
