//! The kernel side as seen from userspace: load the TC program, write rule sets, attach to an
//! interface, read counters. Dropping a [`Datapath`] detaches everything it attached.

use aya::{
    Ebpf, EbpfError, Pod,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, PerCpuValues, lpm_trie::Key},
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        tc::{NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError},
    },
    util::KernelVersion,
};
use chaos_common::{
    GenSettings, RuleAction, RuleCounters, RuntimeConfig,
    rules::{
        CONFIG_F_REVERSE_TCP_DELAY, FlowKey, Ipv4LpmData, Ipv4PrefixKey, Ipv6LpmData,
        Ipv6PrefixKey, LPM_GEN_BITS, MAX_RULES, PORTS, RuleMask, TABLE_DST4, TABLE_DST6,
        TABLE_SRC4, TABLE_SRC6,
    },
};
use ipnet::{Ipv4Net, Ipv6Net};
use thiserror::Error;
use tracing::{debug, info};

use crate::{
    clsact::{self, AddedClsact},
    compile::{CompiledRules, is_hashed},
    dist,
    qdisc::{self, Ifb, InstalledFq, QdiscError},
    rule::Direction,
};

/// How programs are attached to an interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// TCX on kernels 6.6 and newer, netlink cls_bpf before.
    #[default]
    Auto,
    /// A TCX link: detaches by itself when chaos's file descriptor closes.
    Tcx,
    /// A netlink cls_bpf filter on a clsact qdisc (added if missing, then removed again).
    Netlink,
}

impl AttachMode {
    fn resolve(self) -> Self {
        match self {
            // If the version cannot be read, TCX is tried and its error reported.
            Self::Auto => match KernelVersion::current() {
                Ok(v) if v < KernelVersion::new(6, 6, 0) => Self::Netlink,
                _ => Self::Tcx,
            },
            other => other,
        }
    }
}

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
    #[error(transparent)]
    Qdisc(#[from] QdiscError),
    #[error("restoring {iface}: {source}")]
    QdiscRestore {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("adding a clsact qdisc to {iface}: {source}")]
    Clsact {
        iface: String,
        #[source]
        source: TcError,
    },
    #[error("removing the clsact qdisc chaos added to {iface}: {source}")]
    ClsactRemove {
        iface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("detaching from {iface} ({direction}): {source}")]
    Detach {
        iface: String,
        direction: &'static str,
        #[source]
        source: ProgramError,
    },
}

type Result<T, E = DatapathError> = std::result::Result<T, E>;

struct Maps {
    config: Array<MapData, RuntimeConfig>,
    settings: Array<MapData, GenSettings>,
    dport: Array<MapData, RuleMask>,
    sport: Array<MapData, RuleMask>,
    src4: AddrTables<Ipv4Net>,
    dst4: AddrTables<Ipv4Net>,
    src6: AddrTables<Ipv6Net>,
    dst6: AddrTables<Ipv6Net>,
    actions: Array<MapData, RuleAction>,
    counters: PerCpuArray<MapData, RuleCounters>,
    dist_tables: Array<MapData, i16>,
    reverse_delay: HashMap<MapData, FlowKey, u32>,
    flow_departure: HashMap<MapData, FlowKey, u64>,
}

struct Attachment {
    iface: String,
    direction: Direction,
    link: SchedClassifierLinkId,
}

/// The loaded program and its maps.
pub struct Datapath {
    // Maps before the object: fields drop in order, and the object owns the programs and links.
    maps: Maps,
    ebpf: Ebpf,
    /// What the kernel's single config entry holds; written whole on every change.
    config: RuntimeConfig,
    written: [Option<CompiledRules>; 2],
    attachments: Vec<Attachment>,
    /// clsact qdiscs chaos added for netlink attachments; removed after the programs detach.
    added_qdiscs: Vec<AddedClsact>,
    /// fq root qdiscs chaos installed for delay and rate; removed after the programs detach.
    installed_fq: Vec<InstalledFq>,
    /// ifb devices chaos created for ingress holds; deleted after the programs detach.
    ifbs: Vec<Ifb>,
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

impl Datapath {
    /// Loads the object and both programs (running the verifier); attaches nothing.
    pub fn load() -> Result<Self> {
        let mut ebpf = Ebpf::load(PROGRAM_OBJECT).map_err(DatapathError::Load)?;
        for direction in [Direction::Ingress, Direction::Egress] {
            let name = program_name(direction);
            classifier(&mut ebpf, name)?
                .load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        let mut maps = Maps {
            config: take(&mut ebpf, "CHAOS_CONFIG")?,
            settings: take(&mut ebpf, "CHAOS_SETTINGS")?,
            dport: take(&mut ebpf, "CHAOS_DPORT_RULES")?,
            sport: take(&mut ebpf, "CHAOS_SPORT_RULES")?,
            src4: AddrTables::take(
                &mut ebpf,
                ("CHAOS_SRC4_HASHED", "CHAOS_SRC4_RULES"),
                TABLE_SRC4,
            )?,
            dst4: AddrTables::take(
                &mut ebpf,
                ("CHAOS_DST4_HASHED", "CHAOS_DST4_RULES"),
                TABLE_DST4,
            )?,
            src6: AddrTables::take(
                &mut ebpf,
                ("CHAOS_SRC6_HASHED", "CHAOS_SRC6_RULES"),
                TABLE_SRC6,
            )?,
            dst6: AddrTables::take(
                &mut ebpf,
                ("CHAOS_DST6_HASHED", "CHAOS_DST6_RULES"),
                TABLE_DST6,
            )?,
            actions: take(&mut ebpf, "CHAOS_ACTIONS")?,
            counters: take(&mut ebpf, "CHAOS_COUNTERS")?,
            dist_tables: take(&mut ebpf, "CHAOS_DIST_TABLES")?,
            reverse_delay: take(&mut ebpf, "CHAOS_REVERSE_DELAY")?,
            flow_departure: take(&mut ebpf, "CHAOS_FLOW_DEPARTURE")?,
        };
        for (t, table) in dist::tables().iter().enumerate() {
            for (i, entry) in table.iter().enumerate() {
                maps.dist_tables
                    .set((t * table.len() + i) as u32, entry, 0)
                    .map_err(map_err("CHAOS_DIST_TABLES"))?;
            }
        }
        Ok(Self {
            maps,
            ebpf,
            config: RuntimeConfig::default(),
            written: [None, None],
            attachments: Vec::new(),
            added_qdiscs: Vec::new(),
            installed_fq: Vec::new(),
            ifbs: Vec::new(),
        })
    }

    /// Makes `rules` the live rule set: writes the idle generation whole, then flips the
    /// active-generation slot, so a packet sees either the old set or the new one.
    pub fn apply(&mut self, rules: &CompiledRules) -> Result<()> {
        let generation = 1 - self.config.active_gen;
        if let Some(old) = self.written[generation as usize].take() {
            // Until the clear succeeds the old entries may still be there: keep them on record.
            self.written[generation as usize] = Some(old.clone());
            self.clear(generation, &old)?;
        }
        // Recorded before writing, so a failure half-way is cleared by the next apply.
        self.written[generation as usize] = Some(rules.clone());
        self.write(generation, rules)?;
        self.write_config(RuntimeConfig {
            active_gen: generation,
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

    /// Delays locally sent TCP through its returning packets (`CONFIG_F_REVERSE_TCP_DELAY`);
    /// needs the ingress program attached and an ifb.
    pub fn enable_reverse_tcp_delay(&mut self) -> Result<()> {
        self.write_config(RuntimeConfig {
            flags: self.config.flags | CONFIG_F_REVERSE_TCP_DELAY,
            ..self.config
        })
    }

    /// Creates chaos's ifb for `iface`, with fq at its root, for packets held on ingress;
    /// deleted by [`Datapath::detach_all`].
    pub fn create_ifb(
        &mut self,
        iface: &str,
        ifindex: u32,
        horizon: std::time::Duration,
    ) -> Result<()> {
        let ifb = qdisc::create_ifb(ifindex, horizon)?;
        info!(iface, ifb = ifb.name, "created ifb for ingress holds");
        self.write_config(RuntimeConfig {
            ifb_ifindex: ifb.ifindex,
            ..self.config
        })?;
        self.ifbs.push(ifb);
        Ok(())
    }

    fn write(&mut self, generation: u32, rules: &CompiledRules) -> Result<()> {
        let m = &mut self.maps;
        m.settings
            .set(generation, rules.settings, 0)
            .map_err(map_err("CHAOS_SETTINGS"))?;
        set_ports(&mut m.dport, "CHAOS_DPORT_RULES", generation, &rules.dport)?;
        set_ports(&mut m.sport, "CHAOS_SPORT_RULES", generation, &rules.sport)?;
        m.src4.insert(generation, &rules.settings, &rules.src4)?;
        m.dst4.insert(generation, &rules.settings, &rules.dst4)?;
        m.src6.insert(generation, &rules.settings, &rules.src6)?;
        m.dst6.insert(generation, &rules.settings, &rules.dst6)?;
        for (i, action) in rules.actions.iter().enumerate() {
            m.actions
                .set(generation * MAX_RULES + i as u32, action, 0)
                .map_err(map_err("CHAOS_ACTIONS"))?;
        }
        Ok(())
    }

    /// Zeroes what an earlier `write` put into `generation`, so stale entries cannot leak into
    /// the next set written there. Settings and actions are overwritten whole by `write`.
    fn clear(&mut self, generation: u32, old: &CompiledRules) -> Result<()> {
        let m = &mut self.maps;
        let zero = |entries: &[(u16, RuleMask)]| -> Vec<(u16, RuleMask)> {
            entries.iter().map(|(port, _)| (*port, 0)).collect()
        };
        set_ports(
            &mut m.dport,
            "CHAOS_DPORT_RULES",
            generation,
            &zero(&old.dport),
        )?;
        set_ports(
            &mut m.sport,
            "CHAOS_SPORT_RULES",
            generation,
            &zero(&old.sport),
        )?;
        m.src4.remove(generation, &old.settings, &old.src4)?;
        m.dst4.remove(generation, &old.settings, &old.dst4)?;
        m.src6.remove(generation, &old.settings, &old.src6)?;
        m.dst6.remove(generation, &old.settings, &old.dst6)?;
        Ok(())
    }

    /// Puts fq at the root of `iface` so stamped departure times are honoured; undone by
    /// [`Datapath::detach_all`].
    pub fn install_fq(
        &mut self,
        iface: &str,
        ifindex: u32,
        horizon: std::time::Duration,
    ) -> Result<()> {
        let fq = qdisc::install_fq(iface, ifindex, horizon)?;
        info!(iface, ?horizon, "installed fq");
        // Installing again (a longer horizon) replaces chaos's own fq in place.
        if !self.installed_fq.iter().any(|f| f.iface == iface) {
            self.installed_fq.push(fq);
        }
        Ok(())
    }

    /// Zeroes the counters of `slot` on every CPU, before a new rule takes the slot over.
    pub fn reset_counters(&mut self, slot: u32) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Map {
            name: "CHAOS_COUNTERS",
            source: MapError::IoError(e),
        })?;
        let zeros = PerCpuValues::try_from(vec![RuleCounters::default(); cpus]).map_err(|e| {
            DatapathError::Map {
                name: "CHAOS_COUNTERS",
                source: MapError::IoError(e),
            }
        })?;
        self.maps
            .counters
            .set(slot, zeros, 0)
            .map_err(map_err("CHAOS_COUNTERS"))
    }

    /// Attaches the program for `direction` to `iface` (index `ifindex`).
    pub fn attach(
        &mut self,
        iface: &str,
        ifindex: u32,
        direction: Direction,
        mode: AttachMode,
    ) -> Result<()> {
        let attach_type = match direction {
            Direction::Ingress => TcAttachType::Ingress,
            Direction::Egress => TcAttachType::Egress,
        };
        let options = match mode.resolve() {
            AttachMode::Netlink => {
                if !self.added_qdiscs.iter().any(|q| q.iface == iface) {
                    let added =
                        clsact::ensure(iface, ifindex).map_err(|source| DatapathError::Clsact {
                            iface: iface.to_owned(),
                            source,
                        })?;
                    self.added_qdiscs.extend(added);
                }
                TcAttachOptions::Netlink(NlOptions::default())
            }
            // First in the chain: a program before chaos could redirect or drop packets before
            // the faults apply.
            _ => TcAttachOptions::TcxOrder(LinkOrder::first()),
        };
        let link = classifier(&mut self.ebpf, program_name(direction))?
            .attach_with_options(iface, attach_type, options)
            .map_err(|source| DatapathError::Attach {
                iface: iface.to_owned(),
                direction: direction.as_str(),
                source,
            })?;
        info!(iface, direction = direction.as_str(), ?mode, "attached");
        self.attachments.push(Attachment {
            iface: iface.to_owned(),
            direction,
            link,
        });
        Ok(())
    }

    /// Detaches every attachment and removes the qdiscs chaos added, reporting the first failure
    /// after trying them all.
    pub fn detach_all(&mut self) -> Result<()> {
        let mut first_error = None;
        for Attachment {
            iface,
            direction,
            link,
        } in self.attachments.drain(..)
        {
            let result = classifier(&mut self.ebpf, program_name(direction)).and_then(|prog| {
                prog.detach(link).map_err(|source| DatapathError::Detach {
                    iface: iface.clone(),
                    direction: direction.as_str(),
                    source,
                })
            });
            match result {
                Ok(()) => info!(iface, direction = direction.as_str(), "detached"),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        for ifb in self.ifbs.drain(..) {
            let name = ifb.name.clone();
            match ifb.delete() {
                Ok(()) => info!(ifb = name, "deleted ifb"),
                Err(source) => {
                    first_error.get_or_insert(DatapathError::QdiscRestore {
                        iface: name,
                        source,
                    });
                }
            }
        }
        for fq in self.installed_fq.drain(..) {
            let iface = fq.iface.clone();
            match fq.restore() {
                Ok(()) => info!(iface, "removed fq; the default root qdisc is back"),
                Err(source) => {
                    first_error.get_or_insert(DatapathError::QdiscRestore { iface, source });
                }
            }
        }
        for qdisc in self.added_qdiscs.drain(..) {
            let iface = qdisc.iface.clone();
            match qdisc.remove() {
                Ok(()) => info!(iface, "removed the clsact qdisc chaos added"),
                Err(source) => {
                    first_error.get_or_insert(DatapathError::ClsactRemove { iface, source });
                }
            }
        }
        first_error.map_or(Ok(()), Err)
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

    /// Counters of `slots` rule slots, summed over CPUs.
    pub fn counters(&self, slots: u32) -> Result<Vec<RuleCounters>> {
        (0..slots)
            .map(|slot| {
                let per_cpu = self
                    .maps
                    .counters
                    .get(&slot, 0)
                    .map_err(map_err("CHAOS_COUNTERS"))?;
                Ok(per_cpu.iter().fold(RuleCounters::default(), |mut acc, c| {
                    acc.accumulate(c);
                    acc
                }))
            })
            .collect()
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

fn set_ports(
    map: &mut Array<MapData, RuleMask>,
    name: &'static str,
    generation: u32,
    entries: &[(u16, RuleMask)],
) -> Result<()> {
    for (port, mask) in entries {
        map.set(generation * PORTS + u32::from(*port), mask, 0)
            .map_err(map_err(name))?;
    }
    Ok(())
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::Missing(name))?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

/// A prefix type the address tables hold (see `chaos_common::rules::AddrLookup`).
trait TableNet: Copy {
    /// Key of the hashed lengths' map.
    type Hashed: Pod;
    /// Key data of the trie: the generation byte, then the address in network order.
    type Data: Pod;
    fn len(&self) -> u8;
    fn hashed(&self, generation: u32) -> Self::Hashed;
    fn data(&self, generation: u32) -> Self::Data;
}

impl TableNet for Ipv4Net {
    type Hashed = Ipv4PrefixKey;
    type Data = Ipv4LpmData;
    fn len(&self) -> u8 {
        self.prefix_len()
    }
    fn hashed(&self, generation: u32) -> Ipv4PrefixKey {
        let o = self.network().octets();
        [
            generation as u8,
            self.prefix_len(),
            0,
            0,
            o[0],
            o[1],
            o[2],
            o[3],
        ]
    }
    fn data(&self, generation: u32) -> Ipv4LpmData {
        let o = self.addr().octets();
        [generation as u8, o[0], o[1], o[2], o[3]]
    }
}

impl TableNet for Ipv6Net {
    type Hashed = Ipv6PrefixKey;
    type Data = Ipv6LpmData;
    fn len(&self) -> u8 {
        self.prefix_len()
    }
    fn hashed(&self, generation: u32) -> Ipv6PrefixKey {
        let mut key = [0; 20];
        key[0] = generation as u8;
        key[1] = self.prefix_len();
        key[4..].copy_from_slice(&self.network().octets());
        key
    }
    fn data(&self, generation: u32) -> Ipv6LpmData {
        let mut data = [0; 17];
        data[0] = generation as u8;
        data[1..].copy_from_slice(&self.addr().octets());
        data
    }
}

/// One field's tables for one family: the hashed prefix lengths' map and the trie, and which
/// of `GenSettings::addr` says where each prefix goes.
struct AddrTables<N: TableNet> {
    hashed: HashMap<MapData, N::Hashed, RuleMask>,
    trie: LpmTrie<MapData, N::Data, RuleMask>,
    names: (&'static str, &'static str),
    table: usize,
}

impl<N: TableNet> AddrTables<N> {
    /// Takes the (hashed, trie) maps named `names` from the object, for `GenSettings::addr`
    /// entry `table`.
    fn take(ebpf: &mut Ebpf, names: (&'static str, &'static str), table: usize) -> Result<Self> {
        Ok(Self {
            hashed: take(ebpf, names.0)?,
            trie: take(ebpf, names.1)?,
            names,
            table,
        })
    }

    fn insert(
        &mut self,
        generation: u32,
        settings: &GenSettings,
        entries: &[(N, RuleMask)],
    ) -> Result<()> {
        let plan = &settings.addr[self.table];
        for (net, mask) in entries {
            if is_hashed(plan, net.len()) {
                self.hashed
                    .insert(net.hashed(generation), mask, 0)
                    .map_err(map_err(self.names.0))?;
            } else {
                self.trie
                    .insert(&trie_key(generation, net), mask, 0)
                    .map_err(map_err(self.names.1))?;
            }
        }
        Ok(())
    }

    /// Removes `entries`, written by `insert` with the same `settings`.
    fn remove(
        &mut self,
        generation: u32,
        settings: &GenSettings,
        entries: &[(N, RuleMask)],
    ) -> Result<()> {
        let plan = &settings.addr[self.table];
        for (net, _) in entries {
            if is_hashed(plan, net.len()) {
                self.hashed
                    .remove(&net.hashed(generation))
                    .map_err(map_err(self.names.0))?;
            } else {
                self.trie
                    .remove(&trie_key(generation, net))
                    .map_err(map_err(self.names.1))?;
            }
        }
        Ok(())
    }
}

fn trie_key<N: TableNet>(generation: u32, net: &N) -> Key<N::Data> {
    Key::new(LPM_GEN_BITS + u32::from(net.len()), net.data(generation))
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
