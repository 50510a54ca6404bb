//! The maps one generation of a rule set lives in, and writing or clearing a generation.

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, lpm_trie::Key},
};
use chaos_common::{
    GenSettings, RuleAction,
    rules::{
        AddrLookup, Ipv4PrefixKey, Ipv4TrieKey, Ipv6PrefixKey, Ipv6TrieKey, MAX_RULES, PORT_BLOCKS,
        PortClasses, RuleMask, TABLES, trie_prefix_len,
    },
};
use ipnet::IpNet;

use super::{DatapathError, Result, map_err, take};
use crate::{compile::is_hashed, ruleset::RuleSet};

/// Map names of each address table, by `TABLE_*`: (hashed lengths, trie).
pub const ADDR_MAPS: [(&str, &str); TABLES] = [
    ("CHAOS_SRC4_HASHED", "CHAOS_SRC4_RULES"),
    ("CHAOS_DST4_HASHED", "CHAOS_DST4_RULES"),
    ("CHAOS_SRC6_HASHED", "CHAOS_SRC6_RULES"),
    ("CHAOS_DST6_HASHED", "CHAOS_DST6_RULES"),
];

/// Map names of the port-class arrays, by `PORT_DST`/`PORT_SRC`.
const PORT_MAPS: [&str; 2] = ["CHAOS_DPORT_CLASSES", "CHAOS_SPORT_CLASSES"];

/// The maps a rule set is written into.
pub struct RuleMaps {
    settings: Array<MapData, GenSettings>,
    ports: [Array<MapData, PortClasses>; 2],
    addr: [AddrTable; TABLES],
    actions: Array<MapData, RuleAction>,
}

impl RuleMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        let ports = [take(ebpf, PORT_MAPS[0])?, take(ebpf, PORT_MAPS[1])?];
        let mut addr = Vec::with_capacity(TABLES);
        for (t, names) in ADDR_MAPS.iter().enumerate() {
            addr.push(AddrTable::take(ebpf, *names, t)?);
        }
        Ok(Self {
            settings: take(ebpf, "CHAOS_SETTINGS")?,
            ports,
            addr: addr
                .try_into()
                .map_err(|_| DatapathError::Missing("address maps"))?,
            actions: take(ebpf, "CHAOS_ACTIONS")?,
        })
    }

    /// Writes `set` into `generation`, which holds nothing (see [`RuleMaps::clear`]).
    pub fn write(&mut self, generation: u32, set: &RuleSet) -> Result<()> {
        self.settings
            .set(generation, set.settings(), 0)
            .map_err(map_err("CHAOS_SETTINGS"))?;
        for (field, map) in self.ports.iter_mut().enumerate() {
            for (block, classes) in set.port_blocks(field) {
                map.set(generation * PORT_BLOCKS + block, classes, 0)
                    .map_err(map_err(PORT_MAPS[field]))?;
            }
        }
        for (t, table) in self.addr.iter_mut().enumerate() {
            let plan = &set.settings().addr[t];
            for (net, mask) in set.prefixes(t) {
                table.set(generation, plan, *net, Some(*mask))?;
            }
        }
        for (i, action) in set.actions().iter().enumerate() {
            self.actions
                .set(generation * MAX_RULES + i as u32, action, 0)
                .map_err(map_err("CHAOS_ACTIONS"))?;
        }
        Ok(())
    }

    /// Removes what writing `old` into `generation` put there, so its entries cannot leak into
    /// the next set written there. Settings and actions are overwritten whole by `write`.
    pub fn clear(&mut self, generation: u32, old: &RuleSet) -> Result<()> {
        for (field, map) in self.ports.iter_mut().enumerate() {
            for (block, _) in old.port_blocks(field) {
                map.set(generation * PORT_BLOCKS + block, PortClasses::default(), 0)
                    .map_err(map_err(PORT_MAPS[field]))?;
            }
        }
        for (t, table) in self.addr.iter_mut().enumerate() {
            let plan = &old.settings().addr[t];
            for (net, _) in old.prefixes(t) {
                table.set(generation, plan, *net, None)?;
            }
        }
        Ok(())
    }
}

/// One address table (a field and a family): the hashed prefix lengths' map and the trie.
struct AddrTable {
    maps: AddrMaps,
    names: (&'static str, &'static str),
}

enum AddrMaps {
    V4 {
        hashed: HashMap<MapData, Ipv4PrefixKey, RuleMask>,
        trie: LpmTrie<MapData, Ipv4TrieKey, RuleMask>,
    },
    V6 {
        hashed: HashMap<MapData, Ipv6PrefixKey, RuleMask>,
        trie: LpmTrie<MapData, Ipv6TrieKey, RuleMask>,
    },
}

impl AddrTable {
    fn take(ebpf: &mut Ebpf, names: (&'static str, &'static str), table: usize) -> Result<Self> {
        let maps = if table < chaos_common::rules::TABLE_SRC6 {
            AddrMaps::V4 {
                hashed: take(ebpf, names.0)?,
                trie: take(ebpf, names.1)?,
            }
        } else {
            AddrMaps::V6 {
                hashed: take(ebpf, names.0)?,
                trie: take(ebpf, names.1)?,
            }
        };
        Ok(Self { maps, names })
    }

    /// Inserts (`Some(mask)`) or removes (`None`) the entry of `net` in `generation`, in the
    /// hash map or the trie as `plan` says.
    fn set(
        &mut self,
        generation: u32,
        plan: &AddrLookup,
        net: IpNet,
        mask: Option<RuleMask>,
    ) -> Result<()> {
        let generation = generation as u8;
        let hashed = is_hashed(plan, net.prefix_len());
        let name = if hashed { self.names.0 } else { self.names.1 };
        let len = net.prefix_len();
        let result = match (&mut self.maps, net) {
            (AddrMaps::V4 { hashed: h, trie }, IpNet::V4(n)) => {
                let addr = n.network();
                if hashed {
                    let key = Ipv4PrefixKey::new(generation, len, addr.to_bits());
                    write(h, &key, mask)
                } else {
                    let key = Key::new(
                        trie_prefix_len(len),
                        Ipv4TrieKey::new(generation, addr.octets()),
                    );
                    write_trie(trie, &key, mask)
                }
            }
            (AddrMaps::V6 { hashed: h, trie }, IpNet::V6(n)) => {
                let addr = n.network();
                if hashed {
                    let bits = addr.to_bits();
                    let halves = ((bits >> 64) as u64, bits as u64);
                    let key = Ipv6PrefixKey::new(generation, len, halves);
                    write(h, &key, mask)
                } else {
                    let key = Key::new(
                        trie_prefix_len(len),
                        Ipv6TrieKey::new(generation, addr.octets()),
                    );
                    write_trie(trie, &key, mask)
                }
            }
            _ => unreachable!("compile puts each family's prefixes in its own tables"),
        };
        result.map_err(map_err(name))
    }
}

fn write<K: aya::Pod>(
    map: &mut HashMap<MapData, K, RuleMask>,
    key: &K,
    mask: Option<RuleMask>,
) -> std::result::Result<(), MapError> {
    match mask {
        Some(mask) => map.insert(key, mask, 0),
        None => map.remove(key),
    }
}

fn write_trie<K: aya::Pod>(
    map: &mut LpmTrie<MapData, K, RuleMask>,
    key: &Key<K>,
    mask: Option<RuleMask>,
) -> std::result::Result<(), MapError> {
    match mask {
        Some(mask) => map.insert(key, mask, 0),
        None => map.remove(key),
    }
}
