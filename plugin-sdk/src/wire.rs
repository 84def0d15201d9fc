//! How each hook's input crosses into the guest: one definition for both
//! sides, so the host's encoder and the guest's decoder cannot drift apart.
//!
//! `expand_names` and `render_source` take JSON: their inputs are a few
//! hundred bytes, and JSON is what any language can read. `group_layers`
//! takes the compact form below: a 10,000-path closure is 1.3 MB of JSON,
//! and parsing it inside the sandbox cost more than the grouping itself
//! (9 ms of a 28 ms call). Every answer is JSON (an [`crate::Envelope`]).
//!
//! The compact form is the [postcard] encoding (wire format 1.0: unsigned
//! integers as LEB128 varints, a string or sequence as its varint length
//! followed by its elements, struct fields in declaration order) of the
//! tuple `(config, budget, graph)`, where `config` is the plugin's
//! configuration as JSON text and `graph` a [`crate::ClosureGraph`]:
//! `roots` (sequence of u32), then `paths`, each `path` (string),
//! `nar_size` (u64), `references` (sequence of u32), `popularity` (u64).
//!
//! [postcard]: https://postcard.jamesmunns.com/wire-format

use crate::{ClosureGraph, ExpandInput, GroupInput, SourceInput};

/// A hook input's encoding on the wire.
pub trait WireInput: Sized {
    fn encode(&self) -> Result<Vec<u8>, String>;
    fn decode(bytes: &[u8]) -> Result<Self, String>;
}

macro_rules! json_input {
    ($($t:ty),+) => {$(
        impl WireInput for $t {
            fn encode(&self) -> Result<Vec<u8>, String> {
                serde_json::to_vec(self).map_err(|e| e.to_string())
            }

            fn decode(bytes: &[u8]) -> Result<Self, String> {
                serde_json::from_slice(bytes).map_err(|e| e.to_string())
            }
        }
    )+};
}

json_input!(ExpandInput, SourceInput);

impl WireInput for GroupInput {
    fn encode(&self) -> Result<Vec<u8>, String> {
        let config = serde_json::to_string(&self.config).map_err(|e| e.to_string())?;
        postcard::to_allocvec(&(config, self.budget, &self.graph)).map_err(|e| e.to_string())
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let ((config, budget, graph), rest): ((&str, u32, ClosureGraph), _) =
            postcard::take_from_bytes(bytes).map_err(|e| format!("compact input: {e}"))?;
        if !rest.is_empty() {
            return Err(format!("compact input: {} bytes after the end", rest.len()));
        }
        let config = serde_json::from_str(config).map_err(|e| format!("configuration: {e}"))?;
        Ok(GroupInput { config, graph, budget })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StorePath;

    #[test]
    fn group_input_round_trips_and_refuses_garbage() {
        let input = GroupInput {
            config: serde_json::json!({ "large_threshold": 5 }),
            graph: ClosureGraph {
                roots: vec![1],
                paths: vec![
                    StorePath { path: "/nix/store/a-x".into(), nar_size: 300, references: vec![], popularity: 7 },
                    StorePath { path: "/nix/store/b-y".into(), nar_size: 1 << 40, references: vec![0, 1], popularity: 0 },
                ],
            },
            budget: 94,
        };
        let bytes = input.encode().unwrap();
        assert_eq!(GroupInput::decode(&bytes).unwrap(), input);
        // The documented layout: config text first, then the budget.
        let config = br#"{"large_threshold":5}"#;
        assert_eq!(bytes[0] as usize, config.len());
        assert_eq!(&bytes[1..1 + config.len()], config);
        let rest = &bytes[1 + config.len()..];
        // Budget 94, then the roots: one, index 1.
        assert_eq!(rest[..3], [94, 1, 1]);
        assert!(GroupInput::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(GroupInput::decode(&longer).unwrap_err().contains("after the end"));
        assert!(GroupInput::decode(b"{\"graph\":{}}").is_err());
    }
}
