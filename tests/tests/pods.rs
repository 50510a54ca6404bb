//! Pods as targets, with real pod sandboxes: containerd's CRI plugin run by the harness
//! (`netlab::cri`), pods started with `RunPodSandbox` as a kubelet does, each in a network
//! namespace of its own on a CNI bridge inside 198.18.0.0/15. chaos finds them through
//! `CONTAINER_RUNTIME_ENDPOINT`. A sandbox runs only `sleep`, so what the application sees is
//! measured from the host with what the pod's kernel answers by itself: ICMP echo (ping), and
//! a TCP connect to a closed port (RST at once, `ConnectionRefused`; a timeout once chaos drops
//! the SYN). Run as root through `cargo xtask test`.

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::fs::MetadataExt as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use netlab::{
    ChaosExit, ChaosProcess, Daemon, READY, assert_binomial, chaos_bin,
    cri::{Cri, Pod},
    heavy_traffic,
};
use serde_json::Value;

/// A port nothing listens on in a sandbox: its kernel answers a SYN with RST.
const CLOSED: u16 = 9;
/// The fault the follow tests apply: SYNs to [`CLOSED`] dropped, so connecting times out.
const DROP_SYN: &str = "dir=ingress proto=tcp dport=9 drop=100%";
/// How long a connect may take before it counts as timed out. An unfaulted pod on the bridge
/// answers within a millisecond.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
const HOST_NETWORK: &str =
    "is on the host's network (its namespace is the node's): refused unless a rule says force=yes";

/// A containerd whose pods have a default route through the bridge, as a node's CNI gives
/// them: chaos attaches to the default route's interface.
fn runtime(tag: &str) -> Cri {
    Cri::new(tag)
}

/// `CONTAINER_RUNTIME_ENDPOINT` for our containerd.
fn endpoint(cri: &Cri) -> String {
    format!("unix://{}", cri.socket().display())
}

fn ip(pod: &Pod) -> IpAddr {
    pod.ip
        .unwrap_or_else(|| panic!("pod {}/{} has no IP", pod.namespace, pod.name))
}

/// `connect()` from the host to the pod's closed port: the error kind, or None if it connected.
fn connect(pod: &Pod) -> Option<ErrorKind> {
    let dst = SocketAddr::new(ip(pod), CLOSED);
    TcpStream::connect_timeout(&dst, CONNECT_TIMEOUT)
        .err()
        .map(|e| e.kind())
}

/// The pod's kernel answered (RST): nothing in the way.
fn answers(pod: &Pod) -> bool {
    connect(pod) == Some(ErrorKind::ConnectionRefused)
}

/// The SYN went unanswered: dropped.
fn times_out(pod: &Pod) -> bool {
    matches!(
        connect(pod),
        Some(ErrorKind::TimedOut | ErrorKind::WouldBlock)
    )
}

/// Probes every 50 ms until a connect times out, or `limit` passes: how long after the call the
/// first probe that timed out was sent.
fn faulted_within(limit: Duration, pod: &Pod) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        let sent = start.elapsed();
        if times_out(pod) {
            return Some(sent);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Polls `done` every 50 ms until it holds or `limit` passes: how long it took, if it held.
fn within(limit: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// `chaos run --target TARGET --output json` with `rules`, asking our containerd.
fn chaos(cri: &Cri, target: &str, rules: &[&str]) -> ChaosProcess {
    let mut command = Command::new(chaos_bin());
    command.args(["run", "--target", target, "--output", "json"]);
    for r in rules {
        command.args(["--rule", r]);
    }
    command.env("CONTAINER_RUNTIME_ENDPOINT", endpoint(cri));
    ChaosProcess::spawn_command(command, READY)
}

/// `chaos ARGS` to completion, asking our containerd.
fn chaos_output(cri: &Cri, args: &[&str]) -> ChaosExit {
    let out = Command::new(chaos_bin())
        .args(args)
        .env("CONTAINER_RUNTIME_ENDPOINT", endpoint(cri))
        .output()
        .expect("run chaos");
    ChaosExit {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A daemon asking our containerd.
fn daemon(cri: &Cri) -> Daemon {
    Daemon::start_with_env(&[], &[("CONTAINER_RUNTIME_ENDPOINT", &endpoint(cri))])
}

/// `chaos get NAME --output json`.
fn get(d: &Daemon, name: &str) -> Value {
    let out = d.ctl(&["get", name, "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    serde_json::from_str(&out.stdout).expect("JSON")
}

fn targets(view: &Value) -> Vec<Value> {
    view["targets"]
        .as_array()
        .unwrap_or_else(|| panic!("no targets: {view}"))
        .clone()
}

/// The entry of `targets` for `pod`, by its description (`pod NS/NAME (pid N)`).
fn entry<'a>(targets: &'a [Value], pod: &Pod) -> &'a Value {
    let want = format!("pod {}/{} (pid {})", pod.namespace, pod.name, pod.pid);
    targets
        .iter()
        .find(|t| t["workload"] == want.as_str())
        .unwrap_or_else(|| panic!("{want} not among the targets: {targets:?}"))
}

/// The device and inode of a namespace file: equal for the same namespace.
fn ns_id(path: &Path) -> (u64, u64) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.dev(), m.ino())
}

/// `pod`'s entry says attached on eth0, with a namespace file that is the pod's namespace.
fn assert_attached(targets: &[Value], pod: &Pod) {
    let t = entry(targets, pod);
    assert_eq!(t["state"], "attached", "{t}");
    assert_eq!(t["iface"], "eth0", "{t}");
    let netns = t["netns"].as_str().expect("a netns path");
    let own = pod.netns_path.as_deref().expect("the pod's netns path");
    assert_eq!(
        ns_id(Path::new(netns)),
        ns_id(own),
        "{t}: not the namespace of the pod ({})",
        own.display()
    );
}

fn apply(d: &Daemon, name: &str, target: &str, namespace: &str, rule: &str) {
    let out = d.ctl(&[
        "apply",
        "--name",
        name,
        "--target",
        target,
        "--namespace",
        namespace,
        "--rule",
        rule,
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

/// `pod=NAMESPACE/NAME` with 30 % loss on what goes to the host: 2,000 pings from the host, the
/// replies dropped on the pod's egress within 4σ, a second pod losing none, and chaos's own
/// count of drops equal to the loss the application saw.
#[test]
fn loss_on_a_pod_measured_by_ping_from_the_host() {
    let _traffic = heavy_traffic();
    let cri = runtime("loss");
    let me = std::process::id();
    let a = cri.run_pod(&format!("ping-a-{me}"), "shop", &[("app", "ping")], false);
    let b = cri.run_pod(&format!("ping-b-{me}"), "shop", &[("app", "ping")], false);
    let c = chaos(
        &cri,
        &format!("pod=shop/{}", a.name),
        // Only what goes to the host: the pod's own IPv6 chatter is not the pings'.
        &[&format!("dst={}/32 drop=30%", cri.gateway)],
    );
    let ready = c.stderr_lines.last().cloned().unwrap_or_default();
    assert!(ready.contains("injecting on eth0"), "{ready}");
    let received = |pod: &Pod| {
        let out = Command::new("ping")
            .args(["-c", "2000", "-i", "0.002", "-W", "1", "-q"])
            .arg(ip(pod).to_string())
            .output()
            .expect("ping");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split(", ")
            .find_map(|p| p.strip_suffix(" received"))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("ping said: {text}"))
    };
    let (got_a, got_b) = (received(&a), received(&b));
    let exit = c.stop(libc::SIGINT);
    assert_eq!(exit.code, Some(0), "{}", exit.stderr);
    eprintln!("pod a: {got_a}/2000 replies; pod b: {got_b}/2000");
    assert_binomial("drop=30% on a pod", 2000 - got_a, 2000, 0.3);
    assert_eq!(got_b, 2000, "the other pod loses nothing");
    let report = &exit.json()[0];
    assert_eq!(report["dropped_packets"], 2000 - got_a, "{report}");
}

/// The daemon follows `pods=app=cart` in namespace shop: only the matching pod of that
/// namespace is faulted (not one with other labels, not one with the same labels in another
/// namespace), `chaos get` lists it with eth0 and its namespace, a pod started later that
/// matches is faulted within 2 s of `RunPodSandbox` returning, a removed one is released
/// while the other stays faulted, and deleting the experiment restores traffic.
#[test]
fn the_daemon_follows_pods_matching_a_label_selector() {
    let cri = runtime("follow");
    let me = std::process::id();
    let cart1 = cri.run_pod(&format!("cart-1-{me}"), "shop", &[("app", "cart")], false);
    let other = cri.run_pod(&format!("other-{me}"), "shop", &[("app", "db")], false);
    let elsewhere = cri.run_pod(&format!("cart-x-{me}"), "web", &[("app", "cart")], false);
    for p in [&cart1, &other, &elsewhere] {
        assert!(answers(p), "{} answers before chaos", p.name);
    }
    let d = daemon(&cri);
    apply(&d, "carts", "pods=app=cart", "shop", DROP_SYN);
    assert!(times_out(&cart1), "the matching pod is faulted");
    assert!(answers(&other), "a pod with other labels is untouched");
    assert!(
        answers(&elsewhere),
        "a pod of another namespace is untouched"
    );
    let view = get(&d, "carts");
    assert_eq!(view["phase"], "active", "{view}");
    let list = targets(&view);
    assert_eq!(list.len(), 1, "{view}");
    assert_attached(&list, &cart1);
    let text = d.ctl(&["get", "carts"]);
    assert!(
        text.stdout.contains("WORKLOAD") && text.stdout.contains(&cart1.name),
        "{}",
        text.stdout
    );

    // A new match: faulted within 2 s of RunPodSandbox returning.
    let cart2 = cri.run_pod(&format!("cart-2-{me}"), "shop", &[("app", "cart")], false);
    let took = faulted_within(Duration::from_secs(2), &cart2);
    assert!(
        took.is_some(),
        "a new matching pod was not faulted within 2 s: {}",
        get(&d, "carts")
    );
    eprintln!(
        "a new matching pod faulted {:?} after RunPodSandbox returned",
        took.unwrap()
    );
    assert_attached(&targets(&get(&d, "carts")), &cart2);

    // One removed: released; the other stays faulted.
    cri.remove_pod(&cart1.id);
    let released = within(Duration::from_secs(3), || {
        targets(&get(&d, "carts")).len() == 1
    });
    let view = get(&d, "carts");
    assert!(released.is_some(), "cart-1 not released within 3 s: {view}");
    eprintln!("a removed pod released after {:?}", released.unwrap());
    assert_eq!(view["phase"], "active", "{view}");
    assert_attached(&targets(&view), &cart2);
    assert!(times_out(&cart2), "the remaining match stays faulted");
    assert!(answers(&other) && answers(&elsewhere));

    let delete = d.ctl(&["delete", "carts"]);
    assert_eq!(delete.code, Some(0), "{}", delete.stderr);
    assert!(answers(&cart2), "deleted: the faults are gone");
    assert_eq!(d.stop().code, Some(0));
}

/// A selector with `!=`: `app=cart,tier!=canary` takes the cart pods without tier=canary (a
/// pod with no tier label at all included, as Kubernetes has it) and skips the canary.
#[test]
fn a_not_equal_selector_skips_the_canary() {
    let cri = runtime("canary");
    let me = std::process::id();
    let web = cri.run_pod(
        &format!("cart-web-{me}"),
        "shop",
        &[("app", "cart"), ("tier", "web")],
        false,
    );
    let bare = cri.run_pod(&format!("cart-{me}"), "shop", &[("app", "cart")], false);
    let canary = cri.run_pod(
        &format!("cart-canary-{me}"),
        "shop",
        &[("app", "cart"), ("tier", "canary")],
        false,
    );
    let d = daemon(&cri);
    apply(
        &d,
        "no-canary",
        "pods=app=cart,tier!=canary",
        "shop",
        DROP_SYN,
    );
    assert!(
        times_out(&web) && times_out(&bare),
        "the matches are faulted"
    );
    assert!(answers(&canary), "the canary is untouched");
    let list = targets(&get(&d, "no-canary"));
    assert_eq!(list.len(), 2, "{list:?}");
    assert_attached(&list, &web);
    assert_attached(&list, &bare);
    let delete = d.ctl(&["delete", "no-canary"]);
    assert_eq!(delete.code, Some(0), "{}", delete.stderr);
    assert!(
        answers(&web) && answers(&bare),
        "deleted: the faults are gone"
    );
    assert_eq!(d.stop().code, Some(0));
}

/// A pod on the host's network shares the node's namespace: `chaos run --target pod=...`
/// refuses it (exit 2), and a daemon selector matching it lists it refused while attaching the
/// other match.
#[test]
fn a_host_network_pod_is_refused() {
    let cri = runtime("hostnet");
    let me = std::process::id();
    let host = cri.run_pod(&format!("agent-h-{me}"), "infra", &[("app", "agent")], true);
    let own = cri.run_pod(
        &format!("agent-p-{me}"),
        "infra",
        &[("app", "agent")],
        false,
    );
    let target = format!("pod=infra/{}", host.name);
    // A duration, so that a chaos that wrongly attaches still ends.
    let exit = chaos_output(
        &cri,
        &[
            "run",
            "--target",
            &target,
            "--rule",
            "drop=1%",
            "--duration",
            "5s",
        ],
    );
    assert_eq!(exit.code, Some(2), "{}", exit.stderr);
    assert!(exit.stderr.contains(HOST_NETWORK), "{}", exit.stderr);

    let d = daemon(&cri);
    apply(&d, "agents", "pods=app=agent", "infra", DROP_SYN);
    let list = targets(&get(&d, "agents"));
    assert_eq!(list.len(), 2, "{list:?}");
    let refused = entry(&list, &host);
    let state = refused["state"].as_str().unwrap_or_default();
    assert!(
        state.starts_with("refused: on the host's network"),
        "{refused}"
    );
    assert_eq!(refused["iface"], "", "{refused}");
    assert_attached(&list, &own);
    assert!(times_out(&own), "the other match is faulted");
    let delete = d.ctl(&["delete", "agents"]);
    assert_eq!(delete.code, Some(0), "{}", delete.stderr);
    assert!(answers(&own), "deleted: the faults are gone");
    assert_eq!(d.stop().code, Some(0));
}

/// `chaos run` faults exactly one pod: a selector matching none, one matching two, and a pod
/// that does not exist are refused with exit status 2 and a reason, before anything is
/// attached.
#[test]
fn pod_targets_that_match_nothing_or_too_much_are_refused() {
    let cri = runtime("none");
    let me = std::process::id();
    let a = cri.run_pod(
        &format!("cart-a-{me}"),
        "default",
        &[("app", "cart")],
        false,
    );
    let b = cri.run_pod(
        &format!("cart-b-{me}"),
        "default",
        &[("app", "cart")],
        false,
    );
    let cases = [
        (
            "pods=app=nothing".to_owned(),
            "nothing matches pods=app=nothing in namespace default".to_owned(),
        ),
        (
            "pod=shop/missing".to_owned(),
            "no ready pod shop/missing".to_owned(),
        ),
        ("pods=app=cart".to_owned(), "2 workloads match".to_owned()),
    ];
    for (target, want) in &cases {
        let exit = chaos_output(
            &cri,
            &[
                "run",
                "--target",
                target,
                "--rule",
                DROP_SYN,
                "--duration",
                "5s",
            ],
        );
        assert_eq!(exit.code, Some(2), "{target}: {}", exit.stderr);
        assert!(
            exit.stderr.contains(want.as_str()),
            "{target}: {}",
            exit.stderr
        );
    }
    assert!(answers(&a) && answers(&b), "nothing was attached");
}
