//! `chaos run`: inject faults on one interface in the foreground until stopped.

use std::{
    io::{IsTerminal as _, Read as _, Write as _},
    time::Duration,
};

use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::{
    InputError, caps,
    datapath::{AttachMode, Capacity, DatapathError, is_permission_error},
    duration::{self, Bounds},
    guard::{self, Guard},
    host,
    injector::{Injector, InjectorError},
    netns,
    report::{RuleReport, table},
    rule::{Direction, Rule},
    ruleset::{RuleOptions, RuleSet, RuleSetBuilder},
    target::Target,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table (refreshed live when stdout is a terminal).
    #[default]
    Text,
    /// One JSON object per rule, printed at exit.
    Json,
}

/// Inject faults on one interface until Ctrl-C, SIGTERM or the end of --duration.
#[derive(Debug, Args)]
#[command(after_help = RULE_HELP)]
pub struct RunArgs {
    /// Interface to attach to, e.g. eth0 or veth0. With --target, the default is the interface
    /// of the workload's default route (eth0 in nearly every container).
    #[arg(long, value_name = "IFACE", required_unless_present = "target")]
    pub iface: Option<String>,

    /// Run inside this named network namespace (as `ip netns exec NAME`).
    #[arg(long, value_name = "NAME", conflicts_with = "target")]
    pub netns: Option<String>,

    /// A workload to fault, in its own network namespace: container=ID-or-NAME (an ID prefix
    /// is looked up in /proc/*/cgroup, a name through the Docker Engine API of docker or
    /// podman: DOCKER_HOST, /run/docker.sock, /run/podman/podman.sock), pod=NAMESPACE/NAME
    /// (through the node's CRI runtime: CONTAINER_RUNTIME_ENDPOINT,
    /// /run/containerd/containerd.sock, /run/crio/crio.sock), pid=PID, cgroup=DIR, or
    /// netns=FILE (/proc/PID/ns/net, /run/netns/NAME). A glob (container=cart-*) or
    /// pods=LABELS must match exactly one workload here; `chaos apply` follows many. A
    /// workload on the host's network is refused unless a rule says force=yes.
    #[arg(long, value_name = "KIND=VALUE")]
    pub target: Option<Target>,

    /// The Kubernetes namespace a pods= target looks in (default: "default").
    #[arg(long, value_name = "NAMESPACE", requires = "target")]
    pub namespace: Option<String>,

    /// A fault rule; repeat for several. The first rule that matches a packet decides.
    #[arg(long = "rule", value_name = "RULE", required = true)]
    pub rules: Vec<String>,

    /// Stop after this long, e.g. 30s, 5m, 1h30m. Default: run until interrupted.
    #[arg(long, value_name = "DURATION", value_parser = duration::flag(Bounds::POSITIVE))]
    pub duration: Option<Duration>,

    /// Format of the report.
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,

    /// How to attach to the interface.
    #[arg(long, value_enum, default_value_t)]
    pub attach: AttachMode,

    /// TCP ports no rule faults unless it says force=yes (SSH, Kubernetes API, kubelet); up to 16.
    #[arg(long, value_name = "PORTS", value_delimiter = ',', default_values_t = guard::DEFAULT_EXCLUDED_PORTS)]
    pub exclude_ports: Vec<u16>,

    /// Only count what the rules match: no packet is dropped, delayed, paced or altered, and no
    /// connection is refused, reset or hung.
    #[arg(long)]
    pub dry_run: bool,

    /// The program stops injecting when chaos has not renewed this lease in time (it renews it
    /// every third of it): faults never outlive a killed or frozen chaos.
    /// At least 100ms.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = duration::flag(Bounds::LEASE))]
    pub lease: Duration,

    /// Seed every rule that leaves something to chance and has no seed= of its own: the same
    /// traffic then meets the same faults, run after run. Without it, and with no rule seeded,
    /// chaos picks a seed, prints it and puts it in each rule's report.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
}

const RULE_HELP: &str = "\
RULE is space-separated key=value pairs:
  dir=egress|ingress     direction (default egress)
  proto=tcp|udp|any      protocol (default any; with ports, any means tcp or udp)
  dport=N | dport=N-M    destination port or inclusive range (1-65535)
  sport=N | sport=N-M    source port or range
  dst=CIDR  src=CIDR     IPv4 or IPv6 prefix, or a list: dst=10.0.0.5,10.0.1.0/24;
                         a bare address means that host
  drop=P                 share of wire packets lost: 0..1 or a percentage (30%)
  delay=D jitter=D dist=uniform|normal|pareto|paretonormal delay-p=P
                         added latency (EDT + fq), its spread, the share delayed
  rate=R                 pace the rule's traffic: 500kbit, 10mbit, 2gbit
  reorder=yes            let jittered packets overtake earlier ones of their flow
  duplicate=P            share of packets sent twice
  corrupt=P              share of packets with one TCP/UDP payload bit flipped; checksum valid
  loss=ge:P/R[/H[/K]]    Gilbert-Elliott burst loss instead of drop (below)
  conn-p=P               share of connections (TCP, or UDP flows) chosen at their first packet
  refuse=yes             answer a chosen connection's SYN with a RST: ECONNREFUSED (tcp)
  hang=yes               from the connection's first data, lose its packets both ways
  reset=yes              at the connection's first data, send both ends a RST (tcp)
  after=D                start hang or reset at the first packet D after the connection's first
  after-bytes=N          start hang or reset once exactly N payload bytes passed the rule's way
  connect-delay=D        hold a chosen connection's first packet (the SYN) for D (needs fq)
  max-conns=N            choose only the rule's first N connections
  seed=N                 draw from N instead of the kernel's generator (below; 0 to 2^64-1)
  force=yes              allow matching an excluded TCP port (--exclude-ports)

Examples:
  chaos run --iface veth0 --rule 'proto=udp dport=9000 dst=198.18.0.2/32 drop=30%' --duration 10s
  chaos run --iface veth0 --rule 'proto=tcp dport=8080 reset=yes after=2s conn-p=30%'

Connection keys need proto=tcp or proto=udp (refuse and reset: tcp). A rule with conn-p or
max-conns applies all its faults to the chosen connections only. 'First data' is the first
packet with payload or FIN either way (a UDP flow's first datagram). loss=ge:P/R[/H[/K]]:
P good to bad, R bad to good, H delivered when bad (default 0), K when good (default 1);
mean loss P/(P+R)*(1-H) + R/(P+R)*(1-K), bad runs of 1/R packets on average.

Replay: a seeded rule's every draw (drop, delay-p, jitter, conn-p, duplicate, corrupt,
Gilbert-Elliott) is a function of the seed, the packet's flow (addresses, ports, protocol) and
its index in that flow, so the same datagrams meet the same faults run after run. chaos run
seeds every rule that leaves something to chance with --seed N, or, when neither --seed nor
any rule gives one, with a seed it picks and prints ('chaos: seed N (replay with --seed N)';
in the report, the rule's spec and the JSON 'seed' field). TCP replays only as far as the
sender repeats its packets: timing changes how it batches and resends them.

Loss is silent as on a wire: senders are not told. A TCP super-packet (GSO) is lost whole,
with probability P, so TCP bulk traffic loses the share P of its segments in bursts.
Guard rails: TCP to or from the excluded ports (--exclude-ports, by default 22 SSH, 6443
Kubernetes API, 10250 kubelet) is never faulted unless the rule says force=yes; a rule that
names only excluded ports is refused.
Needs CAP_NET_ADMIN, CAP_BPF and CAP_PERFMON (and CAP_SYS_ADMIN with --netns). Exit status 2
means bad input or an unfit environment; nothing was attached.";

/// Everything validated before the kernel is touched.
#[derive(Debug)]
struct Plan {
    set: RuleSet,
    directions: Vec<Direction>,
    /// The seed of the rules that took the run's (`--seed` or picked), to print.
    seed: Option<u64>,
}

/// `picked` seeds the rules that draw when neither `--seed` nor any rule gives a seed.
fn plan(args: &RunArgs, picked: u64) -> Result<Plan, InputError> {
    let rules: Vec<Rule> = args
        .rules
        .iter()
        .map(|text| {
            text.parse::<Rule>()
                .map_err(|e| InputError(format!("--rule '{text}': {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let own_seed = rules.iter().any(|r| r.seed.is_some());
    let seed = match args.seed {
        Some(seed) => Some(seed),
        None if !own_seed => Some(picked),
        None => None,
    };
    let rules: Vec<Rule> = match seed {
        Some(seed) => rules.into_iter().map(|r| r.seeded_with(seed)).collect(),
        None => rules,
    };
    // Printed only if some rule took it: a run without chance has nothing to replay.
    let seed = seed.filter(|s| rules.iter().any(|r| r.seed == Some(*s)));
    let guard = Guard::new(&args.exclude_ports, &[]).map_err(InputError)?;
    for (rule, text) in rules.iter().zip(&args.rules) {
        guard
            .check(rule)
            .map_err(|e| InputError(format!("--rule '{text}': {e}")))?;
    }
    // The program ends the faults itself at the deadline, even if chaos is frozen.
    let options = RuleOptions {
        expires_at: args.duration.map(|d| std::time::Instant::now() + d),
        dry_run: args.dry_run,
        slot: None,
    };
    let set = rules
        .into_iter()
        .fold(RuleSetBuilder::new(&guard), |b, rule| b.rule(rule, options))
        .build()
        .map_err(|e| InputError(e.to_string()))?;
    Ok(Plan {
        directions: set.directions(),
        set,
        seed,
    })
}

/// A seed for a run that was given none: below 2^53, so that a JSON reader holding numbers as
/// doubles (JavaScript, jq) reads back exactly the seed that replays the run.
fn pick_seed() -> Result<u64> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for a seed")?;
    Ok(u64::from_ne_bytes(bytes) >> 11)
}

/// Validates, enters the namespace, loads and attaches, then runs until stopped. Must run
/// before any other thread exists (see `netns::enter`).
pub fn run(args: RunArgs) -> Result<()> {
    let plan = plan(&args, pick_seed()?)?;
    let effective = caps::effective().context("reading capabilities")?;
    let enters = args.netns.is_some() || args.target.is_some();
    if let Some(cap) = caps::missing_for_run(effective, enters).first() {
        return Err(InputError(format!(
            "missing capability {} ({}); run as root or grant it",
            cap.name, cap.why
        ))
        .into());
    }
    if let Some(name) = &args.netns {
        netns::enter(name).map_err(|e| InputError(e.to_string()))?;
    }
    // The workload's namespace stays open (the file) for as long as chaos runs in it.
    let workload = match &args.target {
        Some(target) => {
            let target = match &args.namespace {
                Some(ns) => target.clone().in_namespace(ns),
                None => target.clone(),
            };
            let found = target.resolve().map_err(|e| InputError(e.to_string()))?;
            if found.host_network && !plan.set.rules().iter().any(|r| r.force) {
                return Err(InputError(format!(
                    "{target}: {} is on the host's network (its namespace is the node's): \
                     refused unless a rule says force=yes",
                    found.description
                ))
                .into());
            }
            netns::enter_file(&found.netns, &found.description)
                .map_err(|e| InputError(e.to_string()))?;
            Some(found)
        }
        None => None,
    };
    let place = match (&args.netns, &workload) {
        (Some(n), _) => format!("network namespace '{n}'"),
        (None, Some(w)) => format!("the network namespace of {}", w.description),
        (None, None) => "this network namespace".to_owned(),
    };
    let iface = match &args.iface {
        Some(iface) => iface.clone(),
        None => netns::default_route_iface()
            .context("reading routes")?
            .ok_or_else(|| InputError(format!("no default route in {place}: give --iface")))?,
    };
    let Some(ifindex) = netns::if_index(&iface) else {
        return Err(InputError(format!("interface '{iface}' not found in {place}")).into());
    };
    host::check_link_type(&iface, ifindex).map_err(InputError)?;

    // Signal handlers before the kernel is touched: from here on Ctrl-C or SIGTERM is a clean
    // stop (noticed once set-up is done), never a kill halfway through it.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let _runtime = runtime.enter();
    let mut stop = StopSignals::install()?;

    // Maps sized to this rule set: it is known before loading and never changes.
    let capacity = Capacity::for_rule_set(&plan.set);
    let mut injector = Injector::load(&iface, ifindex, capacity).map_err(load_error)?;
    // The lease before the attachment: it is how another chaos cleaning up tells this run's
    // netlink filter from a leftover (`crate::recover`).
    injector
        .renew_lease(args.lease)
        .context("writing the lease")?;
    // Rules (and the fq or ifb they hold packets with) before anything is attached: a kernel
    // without fq or ifb must leave the interface untouched.
    injector.apply(&plan.set, &[]).map_err(|e| match e {
        InjectorError::Plumbing(e) => anyhow::Error::from(InputError(e.to_string())),
        e => anyhow::Error::from(e).context("writing rules"),
    })?;
    // On failure the injector's drop detaches whatever was attached before.
    injector
        .attach(&plan.directions, args.attach)
        .map_err(|e| InputError(first_line(&e.to_string()).to_owned()))?;
    let place = match (&args.netns, &workload) {
        (Some(n), _) => format!(" in netns {n}"),
        (None, Some(w)) => format!(" in {}", w.description),
        (None, None) => String::new(),
    };
    if let Some(seed) = plan.seed {
        eprintln!("chaos: seed {seed} (replay with --seed {seed})");
    }
    announce(&args, &iface, &place, &plan.directions);

    let live = args.output == Output::Text && std::io::stdout().is_terminal();
    let rules = plan.set.rules();
    let gone = || workload.as_ref().is_some_and(|w| w.is_gone());
    let waited = runtime.block_on(wait(
        &mut injector,
        (args.lease, &gone),
        rules,
        args.duration,
        live,
        &mut stop,
    ));
    // Detach before reporting, and even if waiting failed: the interface must be left clean.
    let closed = injector.close().context("detaching");
    let reports = reports(&injector, rules)?;
    // A workload that is gone took its interface with it: nothing was left to detach.
    if waited? == Ended::Gone {
        print_final(&reports, rules, args.output)?;
        let what = workload
            .as_ref()
            .map_or("the target", |w| w.description.as_str());
        anyhow::bail!("{what} is gone (its process ended): stopped");
    }
    closed?;
    print_final(&reports, rules, args.output)
}

/// Why the wait ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Ctrl-C, SIGTERM or the end of --duration.
    Stopped,
    /// The workload targeted is gone.
    Gone,
}

/// A load failure as the user can act on it.
fn load_error(e: InjectorError) -> InputError {
    // The verifier's log can run to thousands of lines: keep it for -vv.
    tracing::debug!("load failure: {e:?}");
    let message = e.to_string();
    let summary = first_line(&message);
    match e {
        InjectorError::Datapath(ref d) if is_permission_error(d) => InputError(format!(
            "{summary}: missing privilege (needs CAP_BPF and CAP_NET_ADMIN)"
        )),
        InjectorError::Datapath(ref d)
            if matches!(**d, DatapathError::Load(_) | DatapathError::Program { .. }) =>
        {
            InputError(format!(
                "this kernel cannot run chaos's TC program (needs BPF, BTF and clsact/TCX): {summary}"
            ))
        }
        _ => InputError(summary.to_owned()),
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

/// SIGINT and SIGTERM, caught from set-up on.
struct StopSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl StopSignals {
    /// Needs a Tokio runtime context.
    fn install() -> Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
        })
    }
}

fn announce(args: &RunArgs, iface: &str, place: &str, directions: &[Direction]) {
    let dirs: Vec<&str> = directions.iter().map(|d| d.as_str()).collect();
    let until = args.duration.map_or("Ctrl-C".to_owned(), |d| {
        format!("{} or Ctrl-C", humantime::format_duration(d))
    });
    // Scripts and tests wait for this line: the rules are live once it is printed.
    eprintln!(
        "chaos: injecting on {iface} ({}){place}; stopping at {until}",
        dirs.join(", ")
    );
}

fn reports(injector: &Injector, rules: &[Rule]) -> Result<Vec<RuleReport>> {
    let slots: Vec<u32> = (0..rules.len() as u32).collect();
    let counters = injector.counters(&slots).context("reading counters")?;
    Ok(rules
        .iter()
        .zip(&counters)
        .enumerate()
        .map(|(i, (rule, c))| RuleReport::new(i, rule, c))
        .collect())
}

async fn wait(
    injector: &mut Injector,
    (lease, gone): (Duration, &dyn Fn() -> bool),
    rules: &[Rule],
    duration: Option<Duration>,
    live: bool,
    stop: &mut StopSignals,
) -> Result<Ended> {
    let deadline = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut renew = tokio::time::interval(lease / 3);
    let mut drawn_lines = 0;
    let mut ended = Ended::Stopped;
    loop {
        tokio::select! {
            _ = stop.interrupt.recv() => break,
            _ = stop.terminate.recv() => break,
            () = &mut deadline => break,
            _ = renew.tick() => {
                // Looked at as often as the lease is renewed: a stopped container is noticed
                // within a third of the lease.
                if gone() {
                    ended = Ended::Gone;
                    break;
                }
                injector.renew_lease(lease).context("renewing the lease")?;
            }
            _ = tick.tick(), if live => {
                let text = table(&reports(injector, rules)?);
                drawn_lines = redraw(&text, drawn_lines)?;
            }
        }
    }
    if live {
        // Leave the last live frame for the final table to replace.
        redraw("", drawn_lines)?;
    }
    Ok(ended)
}

/// Replaces the previous frame of `previous_lines` lines with `text`.
fn redraw(text: &str, previous_lines: usize) -> Result<usize> {
    let mut out = std::io::stdout().lock();
    if previous_lines > 0 {
        // Cursor up, then clear to the end of the screen.
        write!(out, "\x1b[{previous_lines}A\x1b[J")?;
    }
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(text.lines().count())
}

/// A rule's JSON line: its counters and the seed its draws came from (null: the kernel's
/// generator, or nothing left to chance).
#[derive(Serialize)]
struct JsonLine<'a> {
    #[serde(flatten)]
    report: &'a RuleReport,
    seed: Option<u64>,
}

fn json_lines(reports: &[RuleReport], rules: &[Rule]) -> serde_json::Result<String> {
    let mut out = String::new();
    for (report, rule) in reports.iter().zip(rules) {
        out.push_str(&serde_json::to_string(&JsonLine {
            report,
            seed: rule.seed,
        })?);
        out.push('\n');
    }
    Ok(out)
}

fn print_final(reports: &[RuleReport], rules: &[Rule], output: Output) -> Result<()> {
    let text = match output {
        Output::Text => table(reports),
        Output::Json => json_lines(reports, rules)?,
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(rules: &[&str]) -> RunArgs {
        RunArgs {
            iface: Some("lo".into()),
            netns: None,
            target: None,
            namespace: None,
            rules: rules.iter().map(|r| (*r).to_owned()).collect(),
            duration: None,
            output: Output::Text,
            attach: AttachMode::Auto,
            lease: Duration::from_secs(3),
            exclude_ports: guard::DEFAULT_EXCLUDED_PORTS.to_vec(),
            dry_run: false,
            seed: None,
        }
    }

    #[test]
    fn plan_collects_directions_in_order() {
        let p = plan(
            &args(&["dir=ingress drop=1", "drop=1", "dir=ingress dport=1"]),
            0,
        )
        .unwrap();
        assert_eq!(p.directions, vec![Direction::Ingress, Direction::Egress]);
    }

    #[test]
    fn plan_names_the_bad_rule() {
        let err = plan(&args(&["drop=1", "dport=0"]), 0)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "--rule 'dport=0': dport=0: ports are 1-65535");
    }

    #[test]
    fn seeds_for_the_run() {
        let seeds = |a: &RunArgs| {
            let p = plan(a, 99).unwrap();
            let texts: Vec<String> = p.set.rules().iter().map(|r| r.text.clone()).collect();
            (p.seed, texts)
        };
        // Picked for the rules that draw when nothing gives a seed, and printed.
        assert_eq!(
            seeds(&args(&["drop=30%", "drop=100%"])),
            (
                Some(99),
                vec!["drop=30% seed=99".into(), "drop=100%".into()]
            )
        );
        // Nothing left to chance: nothing to print.
        assert_eq!(
            seeds(&args(&["drop=100%"])),
            (None, vec!["drop=100%".into()])
        );
        // A rule's own seed: the run picks none, the other rules draw as they did.
        assert_eq!(
            seeds(&args(&["drop=30% seed=7", "drop=20%"])),
            (None, vec!["drop=30% seed=7".into(), "drop=20%".into()])
        );
        // --seed: every rule that draws and has no seed of its own.
        let mut given = args(&["drop=30% seed=7", "delay=5ms jitter=1ms"]);
        given.seed = Some(5);
        assert_eq!(
            seeds(&given),
            (
                Some(5),
                vec![
                    "drop=30% seed=7".into(),
                    "delay=5ms jitter=1ms seed=5".into()
                ]
            )
        );
    }

    #[test]
    fn json_lines_carry_each_rule_seed() {
        let rules: Vec<Rule> = ["drop=30% seed=7", "drop=1"]
            .iter()
            .map(|t| t.parse().unwrap())
            .collect();
        let reports: Vec<RuleReport> = rules
            .iter()
            .enumerate()
            .map(|(i, r)| RuleReport::new(i, r, &Default::default()))
            .collect();
        let lines: Vec<serde_json::Value> = json_lines(&reports, &rules)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["seed"], 7);
        assert_eq!(lines[0]["spec"], "drop=30% seed=7");
        assert_eq!(
            lines[0]["matched_packets"], 0,
            "the counters are flattened in"
        );
        assert!(lines[1]["seed"].is_null());
    }

    #[test]
    fn a_picked_seed_survives_a_json_double() {
        for _ in 0..100 {
            let seed = pick_seed().unwrap();
            assert_eq!(seed as f64 as u64, seed);
        }
    }

    #[test]
    fn durations_are_bounded_where_zero_makes_no_sense() {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        let parse = |extra: &[&str]| {
            let mut argv = vec!["chaos", "--iface", "lo", "--rule", "drop=1"];
            argv.extend(extra);
            Cli::try_parse_from(argv).map(|c| c.run)
        };
        let run = parse(&["--duration", "1m30s", "--lease", "1.5s"]).unwrap();
        assert_eq!(run.duration, Some(Duration::from_secs(90)));
        assert_eq!(run.lease, Duration::from_millis(1500));
        let err = |extra: &[&str]| parse(extra).err().unwrap().to_string();
        assert!(
            err(&["--lease", "2ns"]).contains(
                "2ns is shorter than the minimum 100ms (the lease is renewed every third of it)"
            ),
            "{}",
            err(&["--lease", "2ns"])
        );
        assert!(err(&["--lease", "0s"]).contains("0s is shorter than the minimum 100ms"));
        assert!(
            err(&["--duration", "0s"])
                .contains("0s is shorter than the minimum 1ns (a zero-length fault does nothing)")
        );
        assert!(err(&["--duration", "soon"]).contains("'soon' is not a duration"));
    }
}
