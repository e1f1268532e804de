//! A cluster's nodes: their names, the addresses and ids derived from them, and the number
//! each one's owner ids carry.
//!
//! A node name is `warren@host:port`, the port being the node's cluster port (25672 when
//! left out, as RabbitMQ's inter-node port). Memberships (openraft's `BasicNode`) hold names,
//! so that every node, a node that joined later included, knows every other's name and
//! where to reach it from the membership alone.

use sha2::{Digest, Sha256};

/// The inter-node port when a node name leaves it out (RabbitMQ's).
pub const DEFAULT_PORT: u16 = 25672;

/// `warren@host:port` → `host:port` (the port defaults to [`DEFAULT_PORT`]).
pub fn node_address(name: &str) -> Result<String, String> {
    let bad = || format!("'{name}' is not a node name: expected warren@host:port");
    let (prefix, host) = name.split_once('@').ok_or_else(bad)?;
    if prefix.is_empty() || host.is_empty() {
        return Err(bad());
    }
    Ok(match host.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => host.to_string(),
        _ => format!("{host}:{DEFAULT_PORT}"),
    })
}

/// Where to reach the node named `name` (a name that does not parse is taken as an address).
pub(crate) fn link_addr(name: &str) -> String {
    node_address(name).unwrap_or_else(|_| name.to_string())
}

/// A node's Raft id: derived from its name, so every node computes the same.
pub fn node_id(name: &str) -> u64 {
    let h = Sha256::digest(name.as_bytes());
    u64::from_le_bytes(h[..8].try_into().expect("8 bytes")) >> 1
}

/// The number node `id`'s owner ids carry (`crate::node::OWNER_BITS`): from its id, so
/// that every node computes the same whatever nodes it was configured with or has seen
/// join. 1 to 65,535 (0 is no node's).
pub(crate) fn number_of(id: u64) -> u64 {
    1 + id % 0xFFFF
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_give_addresses_ids_and_numbers() {
        assert_eq!(node_address("warren@h1:25673").unwrap(), "h1:25673");
        assert_eq!(node_address("warren@h1").unwrap(), "h1:25672");
        assert!(node_address("h1:25673").is_err());
        assert!(node_address("@h1").is_err());
        assert_eq!(link_addr("warren@h1"), "h1:25672");
        assert_ne!(node_id("warren@a:1"), node_id("warren@a:2"));
        for n in ["warren@a:1", "warren@b:2", "x@y"] {
            assert!((1..=0xFFFF).contains(&number_of(node_id(n))));
        }
    }
}
