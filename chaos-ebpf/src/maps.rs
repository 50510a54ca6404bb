//! Every map of the program, in one place. Names carry the `CHAOS_` prefix so `bpftool map`
//! shows whose they are; the loader looks them up by these names.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
};
use chaos_common::{
    GenSettings, RuleAction, RuleCounters, RuntimeConfig,
    rules::{
        ConnEntry, DIST_TABLES, DistTable, FlowKey, GENERATIONS, Ipv4PrefixKey, Ipv4TrieKey,
        Ipv6PrefixKey, Ipv6TrieKey, MAX_CONNS, MAX_FLOWS, MAX_PREFIXES, MAX_REVERSE_FLOWS,
        MAX_RULES, PORT_BLOCKS, PortClasses, RateState, RuleMask,
    },
    seed::{MAX_SEEDED_FLOWS, SeedEntry, SeedKey},
};

/// Single entry: which generation is live.
#[map]
pub static CHAOS_CONFIG: Array<RuntimeConfig> = Array::with_max_entries(1, 0);

/// Per-generation masks that no packet field keys: direction, protocol, "any" defaults.
#[map]
pub static CHAOS_SETTINGS: Array<GenSettings> = Array::with_max_entries(GENERATIONS, 0);

/// The class of each destination port (see `PortClasses`); its mask is in the settings.
#[map]
pub static CHAOS_DPORT_CLASSES: Array<PortClasses> =
    Array::with_max_entries(GENERATIONS * PORT_BLOCKS, 0);

/// The class of each source port.
#[map]
pub static CHAOS_SPORT_CLASSES: Array<PortClasses> =
    Array::with_max_entries(GENERATIONS * PORT_BLOCKS, 0);

/// IPv4 source prefixes shorter than the hashed lengths: each value holds every rule whose
/// prefix contains the key's.
#[map]
pub static CHAOS_SRC4_RULES: LpmTrie<Ipv4TrieKey, RuleMask> =
    LpmTrie::with_max_entries(MAX_PREFIXES, 0);

/// IPv4 destination prefixes.
#[map]
pub static CHAOS_DST4_RULES: LpmTrie<Ipv4TrieKey, RuleMask> =
    LpmTrie::with_max_entries(MAX_PREFIXES, 0);

/// IPv6 source prefixes.
#[map]
pub static CHAOS_SRC6_RULES: LpmTrie<Ipv6TrieKey, RuleMask> =
    LpmTrie::with_max_entries(MAX_PREFIXES, 0);

/// IPv6 destination prefixes.
#[map]
pub static CHAOS_DST6_RULES: LpmTrie<Ipv6TrieKey, RuleMask> =
    LpmTrie::with_max_entries(MAX_PREFIXES, 0);

/// IPv4 source prefixes of the hashed lengths (see `AddrLookup`), by generation, length and
/// address; the same values the trie would hold. The loader sizes the hashed tables at load
/// (a hash map allocates its buckets for `max_entries` up front).
#[map]
pub static CHAOS_SRC4_HASHED: HashMap<Ipv4PrefixKey, RuleMask> =
    HashMap::with_max_entries(MAX_PREFIXES, BPF_F_NO_PREALLOC);

/// IPv4 destination prefixes of the hashed lengths.
#[map]
pub static CHAOS_DST4_HASHED: HashMap<Ipv4PrefixKey, RuleMask> =
    HashMap::with_max_entries(MAX_PREFIXES, BPF_F_NO_PREALLOC);

/// IPv6 source prefixes of the hashed lengths.
#[map]
pub static CHAOS_SRC6_HASHED: HashMap<Ipv6PrefixKey, RuleMask> =
    HashMap::with_max_entries(MAX_PREFIXES, BPF_F_NO_PREALLOC);

/// IPv6 destination prefixes of the hashed lengths.
#[map]
pub static CHAOS_DST6_HASHED: HashMap<Ipv6PrefixKey, RuleMask> =
    HashMap::with_max_entries(MAX_PREFIXES, BPF_F_NO_PREALLOC);

/// What each rule does: `gen * MAX_RULES + rule`.
#[map]
pub static CHAOS_ACTIONS: Array<RuleAction> = Array::with_max_entries(GENERATIONS * MAX_RULES, 0);

/// Per-CPU counters by counter slot; the loader sums the CPUs.
#[map]
pub static CHAOS_COUNTERS: PerCpuArray<RuleCounters> = PerCpuArray::with_max_entries(MAX_RULES, 0);

/// Delay distributions (normal, Pareto, Pareto-normal); filled once by the loader, as netem's
/// tables.
#[map]
pub static CHAOS_DIST_TABLES: Array<DistTable> = Array::with_max_entries(DIST_TABLES, 0);

/// Pacing state of each rule's `rate=` by counter slot. Shared by all CPUs: a race between two
/// CPUs can let two packets share a slot, as in Cilium's EDT rate limiter.
#[map]
pub static CHAOS_RATE: Array<RateState> = Array::with_max_entries(MAX_RULES, 0);

/// Last departure time given to each flow, so a later packet never leaves before an earlier
/// delayed one (fq sends by departure time, not by arrival). An LRU map is preallocated whole:
/// the loader sizes it to what the rule set can hold (one entry when nothing is held).
#[map]
pub static CHAOS_FLOW_DEPARTURE: LruHashMap<FlowKey, u64> =
    LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// Returning flows of local TCP connections that a delay rule matched on egress, keyed as they
/// arrive, with the index (`generation * MAX_RULES + rule`) of the rule whose delay they carry.
#[map]
pub static CHAOS_REVERSE_DELAY: LruHashMap<FlowKey, u32> =
    LruHashMap::with_max_entries(MAX_REVERSE_FLOWS, 0);

/// Connections that connection rules (`conn-p`, `refuse`, `hang`, `reset`, ...) have seen, keyed
/// the way the rule matched them. Only such rules look it up; the loader sizes it at load (one
/// entry when the rule set has none).
#[map]
pub static CHAOS_CONNS: LruHashMap<FlowKey, ConnEntry> = LruHashMap::with_max_entries(MAX_CONNS, 0);

/// Connections each rule has chosen so far, by counter slot: `max-conns` stops there.
#[map]
pub static CHAOS_CONN_QUOTA: Array<u64> = Array::with_max_entries(MAX_RULES, 0);

/// Gilbert-Elliott state of each rule by counter slot: 0 good, 1 bad. Shared by all CPUs, as
/// netem's is by its one queue.
#[map]
pub static CHAOS_GE_STATE: Array<u32> = Array::with_max_entries(MAX_RULES, 0);

/// How many packets of each flow each seeded rule (`seed=`) has seen: the index a packet's draws
/// derive from. Only seeded rules look it up; the loader sizes it at load (one entry when no
/// rule is seeded).
#[map]
pub static CHAOS_SEED_INDEX: LruHashMap<SeedKey, SeedEntry> =
    LruHashMap::with_max_entries(MAX_SEEDED_FLOWS, 0);

/// Room to sum a stretch of packet bytes that may lie outside the linear buffer.
#[map]
pub static CHAOS_SCRATCH: PerCpuArray<[u8; crate::craft::SCRATCH]> =
    PerCpuArray::with_max_entries(1, 0);

/// The tail-called stages (see `stages`): `chaos_faults_*` by `DIR_*`, then `chaos_conn_*`.
#[map]
pub static CHAOS_JUMP: ProgramArray = ProgramArray::with_max_entries(4, 0);
