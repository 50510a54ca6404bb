//! Workloads as targets: a container, a process, a cgroup or a namespace file, resolved to the
//! network namespace chaos enters and the interface it attaches to there.
//!
//! Resolution needs no runtime first: a container ID is found in `/proc/*/cgroup`, where
//! Docker, podman, containerd and CRI-O all put it. A container *name* is asked of the Docker
//! Engine API, which dockerd and podman's service both speak. Pods are asked of the node's CRI
//! runtime (`crate::cri`).
//!
//! A *selector* (`container=cart-*`, `pod=shop/cart-*`, `pods=app=cart`) names any number of
//! workloads, now and later: [`Target::resolve_all`] is asked again while it is faulted.

use std::{
    fmt,
    fs::{self, File},
    io::{self, Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use thiserror::Error;

use crate::selector::{Selector, glob_match};

/// What a user names with `--target KIND=VALUE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A network namespace file: `/proc/PID/ns/net`, `/run/netns/NAME`.
    Netns(PathBuf),
    /// The network namespace of a process.
    Pid(u32),
    /// The network namespace of the processes of a cgroup (v1 or v2 directory).
    Cgroup(PathBuf),
    /// A container by ID (or a unique prefix of at least 6 hex digits), or by name; a name
    /// with `*` or `?` is a glob over every container's name.
    Container(String),
    /// A pod by namespace and name (a glob in the name selects all it matches).
    Pod { namespace: String, name: String },
    /// The pods whose labels a selector matches, in one namespace (`default` unless given).
    Pods {
        namespace: String,
        selector: Selector,
    },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Netns(p) => write!(f, "netns={}", p.display()),
            Self::Pid(p) => write!(f, "pid={p}"),
            Self::Cgroup(p) => write!(f, "cgroup={}", p.display()),
            Self::Container(c) => write!(f, "container={c}"),
            Self::Pod { namespace, name } => write!(f, "pod={namespace}/{name}"),
            Self::Pods {
                namespace,
                selector,
            } => write!(f, "pods={selector} in namespace {namespace}"),
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TargetError {
    #[error(
        "--target {0}: expected KIND=VALUE with KIND one of container, pod, pods, pid, cgroup, netns"
    )]
    Syntax(String),
    #[error("--target {0}: expected pod=NAMESPACE/NAME")]
    PodSyntax(String),
    #[error("--target {target}: {reason}")]
    Selector { target: String, reason: String },
    #[error("--target pid={0}: expected a process ID")]
    BadPid(String),
    #[error("{target}: {reason}")]
    Unresolved { target: String, reason: String },
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (kind, value) = text
            .split_once('=')
            .filter(|(_, v)| !v.is_empty())
            .ok_or_else(|| TargetError::Syntax(text.to_owned()))?;
        match kind {
            "netns" => Ok(Self::Netns(value.into())),
            "pid" => match value.parse::<u32>() {
                Ok(pid) if pid > 0 => Ok(Self::Pid(pid)),
                _ => Err(TargetError::BadPid(value.to_owned())),
            },
            "cgroup" => Ok(Self::Cgroup(value.into())),
            "container" => Ok(Self::Container(value.to_owned())),
            "pod" => match value.split_once('/') {
                Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => {
                    Ok(Self::Pod {
                        namespace: namespace.to_owned(),
                        name: name.to_owned(),
                    })
                }
                _ => Err(TargetError::PodSyntax(text.to_owned())),
            },
            "pods" => Ok(Self::Pods {
                namespace: DEFAULT_NAMESPACE.to_owned(),
                selector: value.parse().map_err(|e: crate::selector::SelectorError| {
                    TargetError::Selector {
                        target: text.to_owned(),
                        reason: e.reason,
                    }
                })?,
            }),
            _ => Err(TargetError::Syntax(text.to_owned())),
        }
    }
}

/// The Kubernetes namespace `pods=` looks in unless told otherwise, as kubectl.
pub const DEFAULT_NAMESPACE: &str = "default";

/// A target found: its namespace, held open, and what to call it in messages.
#[derive(Debug)]
pub struct Resolved {
    /// What stays the same while it is the same workload (a container's or pod sandbox's ID,
    /// else its process or namespace file): a selector's matches are told apart by it.
    pub key: String,
    pub netns: File,
    pub netns_path: PathBuf,
    /// E.g. `container 3f2a9c1b7e0d (pid 4242)`.
    pub description: String,
    /// The process the namespace was found through (none for `netns=`).
    pub pid: Option<u32>,
    /// Its namespace is the host's (host networking): refused unless a rule says `force=yes`.
    pub host_network: bool,
}

impl Resolved {
    /// Whether the workload is gone: its process ended, or is no longer in the namespace held
    /// open (a PID used again). A `netns=` target is never gone while chaos holds it.
    pub fn is_gone(&self) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        let Some(pid) = self.pid else {
            return false;
        };
        let Ok(held) = self.netns.metadata() else {
            return false;
        };
        match fs::metadata(proc_netns(pid)) {
            Ok(now) => (now.dev(), now.ino()) != (held.dev(), held.ino()),
            Err(_) => true,
        }
    }
}

impl Target {
    /// Whether it names any number of workloads, found again while faulted.
    pub fn is_selector(&self) -> bool {
        match self {
            Self::Container(name) | Self::Pod { name, .. } => is_glob(name),
            Self::Pods { .. } => true,
            _ => false,
        }
    }

    /// Looks `pods=` up in `namespace` instead of the default.
    pub fn in_namespace(self, namespace: &str) -> Self {
        match self {
            Self::Pods { selector, .. } => Self::Pods {
                namespace: namespace.to_owned(),
                selector,
            },
            other => other,
        }
    }

    /// Finds the one workload the target names and opens its network namespace. A selector
    /// must match exactly one.
    pub fn resolve(&self) -> Result<Resolved, TargetError> {
        let mut all = self.resolve_all()?;
        match all.len() {
            1 => Ok(all.remove(0)),
            0 => Err(self.fail(format!("nothing matches {self}"))),
            n => {
                let names: Vec<&str> = all.iter().map(|r| r.description.as_str()).collect();
                Err(self.fail(format!(
                    "{n} workloads match ({}); one is faulted at a time here: the daemon \
                     (chaos apply) faults every match",
                    names.join(", ")
                )))
            }
        }
    }

    /// Every workload the target names now, each with its namespace open. A selector may
    /// match none; any other target fails if it cannot be found.
    pub fn resolve_all(&self) -> Result<Vec<Resolved>, TargetError> {
        let found = match self {
            Self::Netns(path) => vec![Found {
                key: path.display().to_string(),
                pid: None,
                path: Some(path.clone()),
                description: format!("netns {}", path.display()),
                host_network: false,
            }],
            Self::Pid(pid) => vec![Found::process(pid.to_string(), *pid, format!("pid {pid}"))],
            Self::Cgroup(dir) => {
                let pid = cgroup_pid(dir).map_err(|e| self.fail(e))?;
                vec![Found::process(
                    dir.display().to_string(),
                    pid,
                    format!("cgroup {} (pid {pid})", dir.display()),
                )]
            }
            Self::Container(name) if is_glob(name) => containers_by_glob(name)
                .map_err(|e| self.fail(e))?
                .into_iter()
                .map(|(id, name, pid)| {
                    Found::process(
                        id.clone(),
                        pid,
                        format!("container {name} {} (pid {pid})", short(&id)),
                    )
                })
                .collect(),
            Self::Container(key) => {
                let (id, pid) = container_pid(key).map_err(|e| self.fail(e))?;
                vec![Found::process(
                    id.clone(),
                    pid,
                    format!("container {} (pid {pid})", short(&id)),
                )]
            }
            Self::Pod { namespace, name } => {
                let pods = crate::cri::list_pods().map_err(|e| self.fail(e.to_string()))?;
                let found: Vec<Found> = pods
                    .into_iter()
                    .filter(|p| &p.namespace == namespace && glob_match(name, &p.name))
                    .map(Found::pod)
                    .collect();
                if found.is_empty() && !is_glob(name) {
                    return Err(self.fail(format!(
                        "no ready pod {namespace}/{name} in the CRI runtime"
                    )));
                }
                found
            }
            Self::Pods {
                namespace,
                selector,
            } => crate::cri::list_pods()
                .map_err(|e| self.fail(e.to_string()))?
                .into_iter()
                .filter(|p| &p.namespace == namespace && selector.matches(&p.labels))
                .map(Found::pod)
                .collect(),
        };
        let selector = self.is_selector();
        let mut resolved = Vec::new();
        for f in found {
            match f.open() {
                Ok(r) => resolved.push(r),
                // A selector's match that ended while we looked is simply not a match.
                Err(_) if selector => {}
                Err(e) => return Err(self.fail(e)),
            }
        }
        Ok(resolved)
    }

    fn fail(&self, reason: String) -> TargetError {
        TargetError::Unresolved {
            target: self.to_string(),
            reason,
        }
    }
}

/// A workload found, before its namespace is opened.
struct Found {
    key: String,
    pid: Option<u32>,
    /// Its namespace file when not `/proc/PID/ns/net`.
    path: Option<PathBuf>,
    description: String,
    host_network: bool,
}

impl Found {
    fn process(key: String, pid: u32, description: String) -> Self {
        Self {
            key,
            pid: Some(pid),
            path: None,
            description,
            host_network: false,
        }
    }

    fn pod(pod: crate::cri::Pod) -> Self {
        let description = match pod.pid {
            Some(pid) => format!("pod {}/{} (pid {pid})", pod.namespace, pod.name),
            None => format!("pod {}/{}", pod.namespace, pod.name),
        };
        Self {
            key: pod.id,
            path: pod.netns_path.filter(|_| pod.pid.is_none()),
            pid: pod.pid,
            description,
            host_network: pod.host_network,
        }
    }

    fn open(self) -> Result<Resolved, String> {
        use std::os::unix::fs::MetadataExt as _;
        let path = match (self.path, self.pid) {
            (Some(path), _) => path,
            (None, Some(pid)) => proc_netns(pid),
            (None, None) => {
                return Err(format!("{}: no process and no namespace", self.description));
            }
        };
        let netns = File::open(&path).map_err(|e| match (e.kind(), self.pid) {
            (io::ErrorKind::NotFound, Some(pid)) => format!("no process {pid} (it may have ended)"),
            _ => format!("{}: {e}", path.display()),
        })?;
        // The host's namespace: PID 1's (chaos in a DaemonSet sees the node's with hostPID),
        // and chaos's own process's (on a host, or a DaemonSet with host networking); PID 1's
        // cannot always be opened (a sandbox's init).
        let id = |p: &str| fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
        let mine = netns.metadata().map(|m| (m.dev(), m.ino())).ok();
        let host = [id("/proc/1/ns/net"), id("/proc/self/ns/net")];
        Ok(Resolved {
            key: self.key,
            netns,
            netns_path: path,
            description: self.description,
            pid: self.pid,
            host_network: self.host_network || (mine.is_some() && host.contains(&mine)),
        })
    }
}

fn is_glob(text: &str) -> bool {
    text.contains(['*', '?'])
}

fn proc_netns(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// A process of the cgroup at `dir` (its lowest PID: the workload's first process).
fn cgroup_pid(dir: &Path) -> Result<u32, String> {
    let procs = dir.join("cgroup.procs");
    let text = fs::read_to_string(&procs).map_err(|e| format!("{}: {e}", procs.display()))?;
    text.lines()
        .filter_map(|l| l.trim().parse::<u32>().ok())
        .min()
        .ok_or_else(|| format!("no process in {}", dir.display()))
}

/// The container whose ID starts with `key` (found in `/proc/*/cgroup`), else the one the
/// Docker Engine API knows by that name: its full ID and a process of it.
fn container_pid(key: &str) -> Result<(String, u32), String> {
    let hex = key.len() >= 6 && key.bytes().all(|b| b.is_ascii_hexdigit());
    if hex {
        let found = containers_by_id_prefix(&key.to_ascii_lowercase());
        match found.len() {
            0 => {}
            1 => return Ok(found.into_iter().next().unwrap()),
            n => {
                let ids: Vec<&str> = found.iter().map(|(id, _)| short(id)).collect();
                return Err(format!(
                    "{n} containers have IDs starting with {key}: {}",
                    ids.join(", ")
                ));
            }
        }
    }
    container_by_name(key).map_err(|api| {
        if hex {
            format!("no running container's cgroup names an ID starting with {key}, and {api}")
        } else {
            api
        }
    })
}

/// Containers whose 64-hex-digit ID (in a path component of a process's cgroup, as every
/// runtime writes it: `docker/<id>`, `libpod-<id>`, `cri-containerd-<id>.scope`, `<id>`)
/// starts with `prefix`, each with its lowest PID in a namespace other than chaos's own. A
/// runtime's helper can sit in the container's cgroup for a moment while still in the host's
/// namespace (seen with podman starting another container): the container's own processes are
/// the ones in its namespace. A container on the host's network has only those.
fn containers_by_id_prefix(prefix: &str) -> Vec<(String, u32)> {
    containers_where(&|part| part.starts_with(prefix))
}

/// As [`containers_by_id_prefix`], for the IDs `wanted` accepts.
fn containers_where(wanted: &dyn Fn(&str) -> bool) -> Vec<(String, u32)> {
    use std::os::unix::fs::MetadataExt as _;
    let own = fs::metadata("/proc/thread-self/ns/net")
        .map(|m| (m.dev(), m.ino()))
        .ok();
    // By ID: the lowest PID in another namespace, and the lowest in any.
    let mut by_id: Vec<(String, Option<u32>, u32)> = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may end while we look: skip what cannot be read.
        let Ok(text) = fs::read_to_string(entry.path().join("cgroup")) else {
            continue;
        };
        let Some(id) = container_id_in(&text, wanted) else {
            continue;
        };
        let elsewhere = fs::metadata(entry.path().join("ns/net"))
            .map(|m| Some((m.dev(), m.ino())) != own)
            .unwrap_or(false);
        let inner = elsewhere.then_some(pid);
        match by_id.iter_mut().find(|(known, _, _)| *known == id) {
            Some((_, lowest_inner, lowest)) => {
                *lowest = (*lowest).min(pid);
                *lowest_inner = match (*lowest_inner, inner) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            None => by_id.push((id, inner, pid)),
        }
    }
    by_id
        .into_iter()
        .map(|(id, inner, any)| (id, inner.unwrap_or(any)))
        .collect()
}

/// The first 64-hex-digit run in a `/proc/PID/cgroup` text that `wanted` accepts.
fn container_id_in(cgroup: &str, wanted: &dyn Fn(&str) -> bool) -> Option<String> {
    for line in cgroup.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or_default();
        for part in path.split(['/', '-', '.']) {
            if part.len() == 64 && part.bytes().all(|b| b.is_ascii_hexdigit()) && wanted(part) {
                return Some(part.to_owned());
            }
        }
    }
    None
}

/// The sockets the Docker Engine API is asked on, in order.
fn engine_sockets() -> Vec<PathBuf> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) => vec![PathBuf::from(host.strip_prefix("unix://").unwrap_or(&host))],
        Err(_) => vec![
            PathBuf::from("/run/docker.sock"),
            PathBuf::from("/run/podman/podman.sock"),
        ],
    }
}

/// `GET /containers/NAME/json` on each Engine API socket in turn: the container's ID and PID.
fn container_by_name(name: &str) -> Result<(String, u32), String> {
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    {
        return Err(format!("'{name}' is not a container name or ID"));
    }
    let sockets = engine_sockets();
    let mut tried = Vec::new();
    for socket in &sockets {
        match engine_get(socket, &format!("/containers/{name}/json")) {
            Ok((200, body)) => {
                let v: serde_json::Value = serde_json::from_str(&body)
                    .map_err(|e| format!("{}: bad answer: {e}", socket.display()))?;
                let pid = v["State"]["Pid"].as_u64().unwrap_or(0) as u32;
                let id = v["Id"].as_str().unwrap_or(name).to_owned();
                if pid == 0 {
                    return Err(format!("container {name} is not running"));
                }
                return Ok((id, pid));
            }
            Ok((404, _)) => {
                return Err(format!("no container named {name} ({})", socket.display()));
            }
            Ok((status, _)) => tried.push(format!("{} (HTTP {status})", socket.display())),
            Err(e) => tried.push(format!("{} ({e})", socket.display())),
        }
    }
    Err(format!(
        "no Docker Engine API answered to look up the name: tried {}; set DOCKER_HOST",
        tried.join(", ")
    ))
}

/// Running containers whose name matches `pattern`: their names and IDs through the Docker
/// Engine API's list, their processes from one pass over `/proc` (as `container=ID` finds
/// them; asking the API for each container's PID would cost a request per match). (ID, name,
/// PID) each.
fn containers_by_glob(pattern: &str) -> Result<Vec<(String, String, u32)>, String> {
    let mut tried = Vec::new();
    for socket in engine_sockets() {
        let body = match engine_get(&socket, "/containers/json") {
            Ok((200, body)) => body,
            Ok((status, _)) => {
                tried.push(format!("{} (HTTP {status})", socket.display()));
                continue;
            }
            Err(e) => {
                tried.push(format!("{} ({e})", socket.display()));
                continue;
            }
        };
        let list: Vec<serde_json::Value> = serde_json::from_str(&body)
            .map_err(|e| format!("{}: bad answer: {e}", socket.display()))?;
        let named: Vec<(String, String)> = list
            .iter()
            .filter_map(|c| {
                let id = c["Id"].as_str()?.to_ascii_lowercase();
                let name = c["Names"]
                    .as_array()?
                    .iter()
                    .filter_map(|n| n.as_str())
                    .map(|n| n.trim_start_matches('/'))
                    .find(|n| glob_match(pattern, n))?;
                Some((id, name.to_owned()))
            })
            .collect();
        if named.is_empty() {
            return Ok(Vec::new());
        }
        // Every container's process, by ID: one pass.
        let wanted: Vec<&str> = named.iter().map(|(id, _)| id.as_str()).collect();
        let pids = containers_where(&|part| wanted.contains(&part));
        return Ok(named
            .into_iter()
            .filter_map(|(id, name)| {
                let pid = pids.iter().find(|(known, _)| *known == id)?.1;
                Some((id, name, pid))
            })
            .collect());
    }
    Err(format!(
        "no Docker Engine API answered to list containers: tried {}; set DOCKER_HOST",
        tried.join(", ")
    ))
}

/// One HTTP/1.0 GET on a unix socket: the status and the body. HTTP/1.0 makes the server close
/// the connection after its answer, so the body is everything after the headers.
fn engine_get(socket: &Path, path: &str) -> io::Result<(u16, String)> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.take(16 << 20).read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP header"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no HTTP status"))?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_refuse_by_name() {
        assert_eq!("pid=42".parse(), Ok(Target::Pid(42)));
        assert_eq!(
            "container=redis".parse(),
            Ok(Target::Container("redis".into()))
        );
        assert_eq!(
            "netns=/proc/1/ns/net".parse(),
            Ok(Target::Netns("/proc/1/ns/net".into()))
        );
        let cases = [
            (
                "redis",
                "--target redis: expected KIND=VALUE with KIND one of container, pod, pods, pid, cgroup, netns",
            ),
            ("pid=0", "--target pid=0: expected a process ID"),
            ("pid=x", "--target pid=x: expected a process ID"),
            (
                "vm=1",
                "--target vm=1: expected KIND=VALUE with KIND one of container, pod, pods, pid, cgroup, netns",
            ),
            (
                "container=",
                "--target container=: expected KIND=VALUE with KIND one of container, pod, pods, pid, cgroup, netns",
            ),
            ("pod=cart", "--target pod=cart: expected pod=NAMESPACE/NAME"),
            (
                "pod=shop/",
                "--target pod=shop/: expected pod=NAMESPACE/NAME",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(
                text.parse::<Target>().unwrap_err().to_string(),
                want,
                "{text}"
            );
        }
    }

    #[test]
    fn pods_and_globs_are_selectors() {
        let pod: Target = "pod=shop/cart-7d9c".parse().unwrap();
        assert_eq!(
            pod,
            Target::Pod {
                namespace: "shop".into(),
                name: "cart-7d9c".into()
            }
        );
        assert!(!pod.is_selector());
        assert!("pod=shop/cart-*".parse::<Target>().unwrap().is_selector());
        assert!("container=cart-?".parse::<Target>().unwrap().is_selector());
        assert!(!"container=cart".parse::<Target>().unwrap().is_selector());
        let pods = "pods=app=cart,tier!=canary"
            .parse::<Target>()
            .unwrap()
            .in_namespace("shop");
        assert!(pods.is_selector());
        assert_eq!(
            pods.to_string(),
            "pods=app=cart,tier!=canary in namespace shop"
        );
        let default = "pods=app=cart".parse::<Target>().unwrap();
        assert_eq!(default.to_string(), "pods=app=cart in namespace default");
    }

    #[test]
    fn container_ids_are_found_in_every_runtimes_cgroup_layout() {
        let id = "3f2a9c1b7e0d".to_owned() + &"a".repeat(52);
        for path in [
            format!("0::/libpod_parent/libpod-{id}"),
            format!("12:memory:/docker/{id}"),
            format!("0::/system.slice/cri-containerd-{id}.scope"),
            format!("0::/k8s.io/{id}"),
            format!("0::/kubepods/besteffort/pod1234/{id}"),
        ] {
            let prefix = |p: &str| p.starts_with("3f2a9c");
            assert_eq!(container_id_in(&path, &prefix), Some(id.clone()), "{path}");
        }
        let other = |p: &str| p.starts_with("3f2a9d");
        assert_eq!(container_id_in(&format!("0::/docker/{id}"), &other), None);
        let any = |p: &str| p.starts_with("3f2a9c");
        assert_eq!(container_id_in("0::/user.slice", &any), None);
    }
}
