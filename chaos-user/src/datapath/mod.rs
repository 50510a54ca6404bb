//! The kernel program as seen from userspace: load it with maps sized for what it will hold,
//! write rule sets, attach it, read counters. Dropping a [`Datapath`] detaches its links.
//!
//! The host plumbing around it (fq, the ifb, clsact) is `crate::plumbing`'s; what ties the two
//! together for one interface is `crate::injector`.

mod links;
mod tables;

use aya::{
    Ebpf, EbpfError, EbpfLoader, Pod,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues, ProgramArray},
    programs::{ProgramError, SchedClassifier},
};
use chaos_common::{
    RuleCounters, RuntimeConfig,
    rules::{
        CONFIG_F_CLONES, CONFIG_F_REVERSE_TCP_DELAY, DIR_EGRESS, DIR_INGRESS, DistTable, FlowKey,
        MAX_CONNS, MAX_FLOWS, MAX_REVERSE_FLOWS, TABLES,
    },
    seed::MAX_SEEDED_FLOWS,
};
pub use links::AttachMode;
use links::Links;
use tables::{ADDR_MAPS, RuleMaps};
use thiserror::Error;
use tracing::debug;

use crate::{compile::MAX_PREFIXES_PER_SET, dist, rule::Direction, ruleset::RuleSet};

/// The compiled kernel program, embedded at build time by `build.rs`.
pub static PROGRAM_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/chaos"));

/// Name of the program entry for each direction.
pub const fn program_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "chaos_ingress",
        Direction::Egress => "chaos_egress",
    }
}

#[derive(Debug, Error)]
pub enum DatapathError {
    #[error("the kernel refused chaos's BPF object: {0}")]
    Load(#[source] EbpfError),
    #[error("the kernel refused program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("BPF object has no {0}: build mismatch between chaos-ebpf and chaos-user")]
    Missing(&'static str),
    #[error("attaching to {iface} ({direction}): {source}")]
    Attach {
        iface: String,
        direction: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("detaching from {iface} ({direction}): {source}")]
    Detach {
        iface: String,
        direction: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error(
        "address table {table} of the rule set hashes {needed} prefixes; the datapath was loaded for {room}"
    )]
    Capacity {
        table: usize,
        needed: usize,
        room: usize,
    },
}

type Result<T, E = DatapathError> = std::result::Result<T, E>;

/// How big the maps whose memory is set at load are. Hash maps allocate their buckets and LRU
/// maps their entries up front, so these decide most of the kernel memory one attachment holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Prefixes each address table's hash map holds per generation (`TABLE_*`); a rule set
    /// with more leaves its shorter lengths to the trie, which allocates per entry.
    pub hashed: [usize; TABLES],
    /// Flows whose order under delay is remembered (least recently used ones are forgotten).
    pub flows: u32,
    /// Local TCP connections whose returning packets carry a delay.
    pub reverse_flows: u32,
    /// Connections that connection rules (`conn-p`, `refuse`, `hang`, `reset`, ...) track.
    pub conns: u32,
    /// Flows whose packets seeded rules (`seed=`) count, each rule apart.
    pub seeded_flows: u32,
}

impl Capacity {
    /// Room for any rule set: what `chaos run` had before maps were sized (about 20 MB).
    pub const FULL: Self = Self {
        hashed: [MAX_PREFIXES_PER_SET; TABLES],
        flows: MAX_FLOWS,
        reverse_flows: MAX_REVERSE_FLOWS,
        conns: MAX_CONNS,
        seeded_flows: MAX_SEEDED_FLOWS,
    };

    /// Each interface of a daemon, whose rule sets come later: about 0.7 MiB in all. Delay
    /// under heavy flow counts forgets the order of the least recently seen flows first.
    pub const DAEMON: Self = Self {
        hashed: [512; TABLES],
        flows: 2048,
        reverse_flows: 1024,
        conns: 2048,
        // 64 KiB: seeded experiments replay exactly up to 512 live flows per interface.
        seeded_flows: 512,
    };

    /// Exactly what `set` needs (`chaos run`, whose rule set is known before loading).
    pub fn for_rule_set(set: &RuleSet) -> Self {
        let holds = set.holds();
        Self {
            hashed: set.hashed_counts(),
            flows: if holds.any() { MAX_FLOWS } else { 1 },
            reverse_flows: if holds.reverse_tcp_delay {
                MAX_REVERSE_FLOWS
            } else {
                1
            },
            conns: if set.tracks_connections() {
                MAX_CONNS
            } else {
                1
            },
            seeded_flows: if set.seeded() { MAX_SEEDED_FLOWS } else { 1 },
        }
    }
}

/// Maps the loader writes besides the rule set's.
struct Maps {
    config: Array<MapData, RuntimeConfig>,
    rules: RuleMaps,
    counters: PerCpuArray<MapData, RuleCounters>,
    reverse_delay: HashMap<MapData, FlowKey, u32>,
    flow_departure: HashMap<MapData, FlowKey, u64>,
    /// Per counter slot: connections chosen under `max-conns`, and the Gilbert-Elliott state.
    conn_quota: Array<MapData, u64>,
    ge_state: Array<MapData, u32>,
    /// The fault programs by `DIR_*`, once a rule set needed them.
    jump: ProgramArray<MapData>,
    faults_loaded: bool,
    /// Kept open: the fault programs, loaded later, refer to it too.
    _dist_tables: Array<MapData, DistTable>,
}

/// The loaded program and its maps.
pub struct Datapath {
    // Maps before the object: fields drop in order, and the object owns the programs and links.
    maps: Maps,
    links: Links,
    ebpf: Ebpf,
    capacity: Capacity,
    /// What the kernel's single config entry holds; written whole on every change.
    config: RuntimeConfig,
    written: [Option<RuleSet>; 2],
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T> {
    let map = ebpf.take_map(name).ok_or(DatapathError::Missing(name))?;
    T::try_from(map).map_err(|source| DatapathError::Map { name, source })
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::Missing(name))?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

impl Datapath {
    /// Loads the object with room for any rule set ([`Capacity::FULL`]).
    pub fn load() -> Result<Self> {
        Self::load_with(Capacity::FULL)
    }

    /// Loads the object and both programs (running the verifier) with maps sized by
    /// `capacity`; attaches nothing.
    pub fn load_with(capacity: Capacity) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        for (t, (hashed, _)) in ADDR_MAPS.iter().enumerate() {
            // Both generations live in one map; a map needs room for one entry at least.
            let entries = (2 * capacity.hashed[t]).clamp(1, 2 * MAX_PREFIXES_PER_SET);
            loader.map_max_entries(hashed, entries as u32);
        }
        loader.map_max_entries("CHAOS_FLOW_DEPARTURE", capacity.flows.max(1));
        loader.map_max_entries("CHAOS_REVERSE_DELAY", capacity.reverse_flows.max(1));
        loader.map_max_entries("CHAOS_CONNS", capacity.conns.max(1));
        loader.map_max_entries("CHAOS_SEED_INDEX", capacity.seeded_flows.max(1));
        let mut ebpf = loader.load(PROGRAM_OBJECT).map_err(DatapathError::Load)?;
        for direction in [Direction::Ingress, Direction::Egress] {
            let name = program_name(direction);
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        let jump: ProgramArray<MapData> = take(&mut ebpf, "CHAOS_JUMP")?;
        let mut dist_tables: Array<MapData, DistTable> = take(&mut ebpf, "CHAOS_DIST_TABLES")?;
        for (t, table) in dist::tables().iter().enumerate() {
            dist_tables
                .set(t as u32, table, 0)
                .map_err(map_err("CHAOS_DIST_TABLES"))?;
        }
        let maps = Maps {
            config: take(&mut ebpf, "CHAOS_CONFIG")?,
            rules: RuleMaps::take(&mut ebpf)?,
            counters: take(&mut ebpf, "CHAOS_COUNTERS")?,
            reverse_delay: take(&mut ebpf, "CHAOS_REVERSE_DELAY")?,
            flow_departure: take(&mut ebpf, "CHAOS_FLOW_DEPARTURE")?,
            conn_quota: take(&mut ebpf, "CHAOS_CONN_QUOTA")?,
            ge_state: take(&mut ebpf, "CHAOS_GE_STATE")?,
            jump,
            faults_loaded: false,
            _dist_tables: dist_tables,
        };
        Ok(Self {
            maps,
            links: Links::default(),
            ebpf,
            capacity,
            config: RuntimeConfig::default(),
            written: [None, None],
        })
    }

    /// What the maps were sized for.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }

    /// Loads the stage programs (connection faults; duplicates, corruption, burst loss) and
    /// puts them where the main programs jump. Only rule sets with such faults need them, and
    /// their verification takes the kernel a while: plain rule sets never wait for it.
    fn load_fault_programs(&mut self) -> Result<()> {
        if self.maps.faults_loaded {
            return Ok(());
        }
        // CHAOS_JUMP's slots: the fault stage by `DIR_*`, then the connection stage.
        for (index, name) in [
            (DIR_INGRESS, "chaos_faults_ingress"),
            (DIR_EGRESS, "chaos_faults_egress"),
            (2 + DIR_INGRESS, "chaos_conn_ingress"),
            (2 + DIR_EGRESS, "chaos_conn_egress"),
        ] {
            let program = classifier(&mut self.ebpf, name)?;
            program
                .load()
                .map_err(|source| DatapathError::Program { name, source })?;
            let fd = program
                .fd()
                .map_err(|source| DatapathError::Program { name, source })?;
            self.maps
                .jump
                .set(index as u32, fd, 0)
                .map_err(map_err("CHAOS_JUMP"))?;
        }
        self.maps.faults_loaded = true;
        Ok(())
    }

    /// Makes `set` the live rule set: writes the idle generation whole, then flips the
    /// active-generation slot, so a packet sees either the old set or the new one.
    pub fn apply(&mut self, set: &RuleSet) -> Result<()> {
        if set.needs_fault_programs() {
            self.load_fault_programs()?;
        }
        for (table, (needed, room)) in set
            .hashed_counts()
            .into_iter()
            .zip(self.capacity.hashed)
            .enumerate()
        {
            if needed > room {
                return Err(DatapathError::Capacity {
                    table,
                    needed,
                    room,
                });
            }
        }
        let generation = 1 - self.config.active_gen;
        let slot = generation as usize;
        if let Some(old) = &self.written[slot] {
            // Until the clear succeeds the old entries may still be there: it stays on record.
            self.maps.rules.clear(generation, old)?;
        }
        // Recorded before writing, so a failure half-way is cleared by the next apply.
        self.written[slot] = Some(set.clone());
        self.maps.rules.write(generation, set)?;
        let clones = if set.makes_packets() {
            CONFIG_F_CLONES
        } else {
            0
        };
        self.write_config(RuntimeConfig {
            active_gen: generation,
            flags: self.config.flags & !CONFIG_F_CLONES | clones,
            ..self.config
        })?;
        // Per-flow state belongs to the old rule set: returning packets must not keep a deleted
        // rule's delay, nor new flows wait behind an old rule's departure times.
        clear_map(&mut self.maps.reverse_delay, "CHAOS_REVERSE_DELAY")?;
        clear_map(&mut self.maps.flow_departure, "CHAOS_FLOW_DEPARTURE")?;
        debug!(generation, "rule set live");
        Ok(())
    }

    fn write_config(&mut self, config: RuntimeConfig) -> Result<()> {
        self.maps
            .config
            .set(0, config, 0)
            .map_err(map_err("CHAOS_CONFIG"))?;
        self.config = config;
        Ok(())
    }

    /// Renews the controller's lease: unless renewed again within `lease`, the program passes
    /// every packet (a dead or frozen controller's faults end by themselves).
    pub fn set_lease(&mut self, lease: std::time::Duration) -> Result<()> {
        self.write_config(RuntimeConfig {
            lease_until_ns: crate::host::monotonic_after(lease),
            ..self.config
        })
    }

    /// Where packets held on ingress go (the ifb's index, 0 for none), and whether locally sent
    /// TCP is delayed through its returning packets (`CONFIG_F_REVERSE_TCP_DELAY`, which needs
    /// the ingress program attached and an ifb).
    pub fn set_holds(&mut self, ifb_ifindex: u32, reverse_tcp_delay: bool) -> Result<()> {
        let mut flags = self.config.flags & !CONFIG_F_REVERSE_TCP_DELAY;
        if reverse_tcp_delay {
            flags |= CONFIG_F_REVERSE_TCP_DELAY;
        }
        self.write_config(RuntimeConfig {
            ifb_ifindex,
            flags,
            ..self.config
        })
    }

    /// Zeroes the counters of `slot` on every CPU, and its connection quota and loss state,
    /// before a new rule takes the slot over.
    pub fn reset_counters(&mut self, slot: u32) -> Result<()> {
        self.maps
            .conn_quota
            .set(slot, 0, 0)
            .map_err(map_err("CHAOS_CONN_QUOTA"))?;
        self.maps
            .ge_state
            .set(slot, 0, 0)
            .map_err(map_err("CHAOS_GE_STATE"))?;
        let io = |e| DatapathError::Map {
            name: "CHAOS_COUNTERS",
            source: MapError::IoError(e),
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| io(e))?;
        let zeros = PerCpuValues::try_from(vec![RuleCounters::default(); cpus]).map_err(io)?;
        self.maps
            .counters
            .set(slot, zeros, 0)
            .map_err(map_err("CHAOS_COUNTERS"))
    }

    /// Counters of one slot, summed over CPUs.
    pub fn counters_of(&self, slot: u32) -> Result<RuleCounters> {
        let per_cpu = self
            .maps
            .counters
            .get(&slot, 0)
            .map_err(map_err("CHAOS_COUNTERS"))?;
        Ok(per_cpu.iter().fold(RuleCounters::default(), |mut acc, c| {
            acc.accumulate(c);
            acc
        }))
    }

    /// Counters of the slots `0..slots`, summed over CPUs.
    pub fn counters(&self, slots: u32) -> Result<Vec<RuleCounters>> {
        (0..slots).map(|slot| self.counters_of(slot)).collect()
    }

    /// Attaches the program for `direction` to `iface`. A netlink attachment needs clsact on
    /// the interface first (`crate::plumbing::Plumbing::ensure_clsact`).
    pub fn attach(&mut self, iface: &str, direction: Direction, mode: AttachMode) -> Result<()> {
        self.attach_tagged(0, iface, direction, mode)
    }

    /// As [`Datapath::attach`], in attachment group `tag` (one workload's interface).
    pub fn attach_tagged(
        &mut self,
        tag: u32,
        iface: &str,
        direction: Direction,
        mode: AttachMode,
    ) -> Result<()> {
        self.links
            .attach(&mut self.ebpf, tag, iface, direction, mode)
    }

    /// Detaches group `tag` (from its namespace, for a netlink attachment).
    pub fn detach_tag(&mut self, tag: u32) -> Result<()> {
        self.links.detach_tag(&mut self.ebpf, tag)
    }

    /// Detaches every attachment, reporting the first failure after trying them all.
    pub fn detach_all(&mut self) -> Result<()> {
        self.links.detach_all(&mut self.ebpf)
    }

    /// The loaded program for `direction`, for BPF_PROG_TEST_RUN in tests and benches.
    pub fn program(&mut self, direction: Direction) -> Result<&mut SchedClassifier> {
        classifier(&mut self.ebpf, program_name(direction))
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        if let Err(e) = self.detach_all() {
            tracing::error!("{e}");
        }
    }
}

/// Removes every entry of a hash map.
fn clear_map<V: Pod>(map: &mut HashMap<MapData, FlowKey, V>, name: &'static str) -> Result<()> {
    let keys: Vec<FlowKey> = map
        .keys()
        .collect::<std::result::Result<_, _>>()
        .map_err(map_err(name))?;
    for key in keys {
        match map.remove(&key) {
            // Evicted or removed meanwhile by the LRU: already gone.
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(name)(e)),
        }
    }
    Ok(())
}

/// Whether an error means the caller lacks privilege, so the CLI can name the capability.
pub fn is_permission_error(err: &DatapathError) -> bool {
    let io = match err {
        DatapathError::Load(EbpfError::MapError(MapError::CreateError { io_error, .. })) => {
            io_error
        }
        DatapathError::Program {
            source: ProgramError::LoadError { io_error, .. },
            ..
        } => io_error,
        _ => return false,
    };
    // EACCES is the verifier's refusal; only EPERM means a missing capability.
    io.raw_os_error() == Some(libc::EPERM)
}
