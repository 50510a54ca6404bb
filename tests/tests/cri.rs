//! Pods through a real CRI runtime: the containerd harness (`netlab::cri`) runs pod sandboxes as
//! a kubelet would, and chaos's CRI client (`chaos_user::cri`) finds them again with their
//! labels, host networking, process and network namespace. Run as root through
//! `cargo xtask test`.

use std::{
    collections::BTreeMap, os::unix::fs::MetadataExt as _, path::Path, process::Command,
    time::Instant,
};

use chaos_user::{cri, selector::Selector};
use netlab::cri::Cri;

/// The device and inode of a namespace file: equal for the same namespace.
fn ns_id(path: &Path) -> (u64, u64) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.dev(), m.ino())
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Two pods (one with host networking) run by containerd's CRI plugin are listed by
/// `chaos_user::cri::list_pods` with everything chaos targets them by, the pod on the bridge
/// answers pings from the host, and a removed pod is no longer listed.
#[test]
fn list_pods_finds_what_the_runtime_runs() {
    let started = Instant::now();
    let runtime = Cri::new("list");
    eprintln!(
        "containerd with the CRI plugin up, image imported: {:?}",
        started.elapsed()
    );
    // This is the file's only test, and no thread of ours reads the environment meanwhile.
    // SAFETY: set before list_pods reads it; the harness's threads do not read it.
    unsafe {
        std::env::set_var(
            cri::ENDPOINT_VAR,
            format!("unix://{}", runtime.socket().display()),
        )
    };
    assert_eq!(cri::endpoints(), vec![runtime.socket().to_owned()]);

    let web_labels = [("app", "cart"), ("tier", "web")];
    let agent_labels = [("app", "agent"), ("tier", "infra")];
    let started = Instant::now();
    let web = runtime.run_pod("cart-7f9c", "shop", &web_labels, false);
    eprintln!(
        "RunPodSandbox (own netns, CNI bridge): {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let agent = runtime.run_pod("node-agent", "infra", &agent_labels, true);
    eprintln!("RunPodSandbox (host network): {:?}", started.elapsed());

    let started = Instant::now();
    let pods = cri::list_pods().unwrap_or_else(|e| panic!("list_pods: {e}"));
    eprintln!("list_pods ({} pods): {:?}", pods.len(), started.elapsed());
    assert_eq!(pods.len(), 2, "{pods:#?}");
    let find = |id: &str| {
        pods.iter()
            .find(|p| p.id == id)
            .unwrap_or_else(|| panic!("pod {id} not listed: {pods:#?}"))
    };

    let w = find(&web.id);
    assert_eq!(
        (w.name.as_str(), w.namespace.as_str()),
        ("cart-7f9c", "shop")
    );
    assert_eq!(w.uid, web.uid);
    assert_eq!(w.labels, labels(&web_labels));
    assert!(!w.host_network && w.ready, "{w:?}");
    assert_eq!(w.pid, Some(web.pid));
    let netns = w.netns_path.as_deref().expect("the pod's netns path");
    assert_eq!(Some(netns), web.netns_path.as_deref());
    assert_eq!(
        ns_id(netns),
        ns_id(&Path::new("/proc").join(web.pid.to_string()).join("ns/net")),
        "the netns file is the sandbox process's namespace"
    );
    assert_ne!(ns_id(netns), ns_id(Path::new("/proc/self/ns/net")));

    let a = find(&agent.id);
    assert_eq!(
        (a.name.as_str(), a.namespace.as_str()),
        ("node-agent", "infra")
    );
    assert_eq!(a.labels, labels(&agent_labels));
    assert!(a.host_network && a.ready, "{a:?}");
    assert_eq!(a.pid, Some(agent.pid));
    assert_eq!(
        a.netns_path, None,
        "host networking has no netns file of its own"
    );
    assert_eq!(
        ns_id(
            &Path::new("/proc")
                .join(agent.pid.to_string())
                .join("ns/net")
        ),
        ns_id(Path::new("/proc/self/ns/net")),
        "a host-network pod is in the host's namespace"
    );

    // What `--target pods=...` will do with the list.
    let selected: Vec<&str> = pods
        .iter()
        .filter(|p| {
            "tier!=infra,app in (cart,shop)"
                .parse::<Selector>()
                .unwrap()
                .matches(&p.labels)
        })
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(selected, ["cart-7f9c"]);

    let ip = web.ip.expect("the pod's IP").to_string();
    assert!(
        ip.starts_with(runtime.subnet.trim_end_matches("0/24")),
        "{ip} in {}",
        runtime.subnet
    );
    let ping = Command::new("ping")
        .args(["-c", "3", "-W", "1", &ip])
        .output()
        .expect("ping (iputils-ping)");
    assert!(
        ping.status.success(),
        "ping {ip} from the host: {}{}",
        String::from_utf8_lossy(&ping.stdout),
        String::from_utf8_lossy(&ping.stderr)
    );

    runtime.remove_pod(&agent.id);
    let left: Vec<String> = cri::list_pods()
        .unwrap_or_else(|e| panic!("list_pods: {e}"))
        .into_iter()
        .map(|p| p.id)
        .collect();
    assert_eq!(left, [web.id.as_str()]);
    assert!(
        !Path::new("/proc").join(agent.pid.to_string()).exists(),
        "the removed pod's process is gone"
    );

    // Dropping the harness leaves nothing: its pods, containerd, the bridge and the folder.
    let (containerd, bridge, dir) = (
        runtime.containerd_pid(),
        runtime.bridge.clone(),
        runtime.dir().to_owned(),
    );
    let started = Instant::now();
    drop(runtime);
    eprintln!(
        "harness dropped (pods, containerd, bridge, folder): {:?}",
        started.elapsed()
    );
    for gone in [
        Path::new("/proc").join(web.pid.to_string()),
        Path::new("/proc").join(containerd.to_string()),
        Path::new("/sys/class/net").join(&bridge),
        netns.to_owned(),
        dir,
    ] {
        assert!(!gone.exists(), "{} left behind", gone.display());
    }
}
