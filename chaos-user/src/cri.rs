//! Pods through the node's CRI runtime (containerd's CRI plugin, or CRI-O), over the Kubernetes
//! runtime v1 API on the runtime's unix socket, as a kubelet or crictl talks to it.
//!
//! The API here is blocking. Each call runs its gRPC exchange on a fresh thread with its own
//! current-thread tokio runtime and joins it, so it works from plain threads and from inside a
//! tokio runtime's `spawn_blocking` alike (a runtime cannot be entered twice on one thread).
//!
//! A pod's process and network namespace come from the verbose `PodSandboxStatus`: containerd
//! and CRI-O both put a JSON object under `info["info"]` with the sandbox's `pid` and its OCI
//! `runtimeSpec`, whose network namespace entry has the namespace file's path. CRI-O without
//! an infra container (`drop_infra_ctr`) gives no `pid`, only the spec.

use std::{
    collections::{BTreeMap, HashMap},
    error::Error as _,
    future::Future,
    path::{Path, PathBuf},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    ListPodSandboxRequest, NamespaceMode, PodSandboxFilter, PodSandboxState, PodSandboxStateValue,
    PodSandboxStatusRequest, PodSandboxStatusResponse,
    runtime_service_client::RuntimeServiceClient,
};
use thiserror::Error;
use tonic::{
    Code, Status,
    transport::{Channel, Endpoint, Uri},
};

/// The environment variable crictl and kubelet's tooling read for the runtime's socket.
pub const ENDPOINT_VAR: &str = "CONTAINER_RUNTIME_ENDPOINT";
/// Where containerd and CRI-O listen by default, tried in this order.
pub const DEFAULT_ENDPOINTS: [&str; 2] = ["/run/containerd/containerd.sock", "/run/crio/crio.sock"];

/// Connecting to a socket (and the HTTP/2 handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Each call. Listing and status are memory lookups in both runtimes: milliseconds.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer accepted: a node's full sandbox list with labels stays far below it.
const MAX_MESSAGE: usize = 64 << 20;

/// A ready pod sandbox as the runtime describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// The sandbox ID (the runtime's, not the Kubernetes UID).
    pub id: String,
    pub name: String,
    pub namespace: String,
    /// The Kubernetes object's UID.
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// The pod shares the node's network namespace (`hostNetwork: true`).
    pub host_network: bool,
    pub ready: bool,
    /// The sandbox's network namespace file (e.g. `/var/run/netns/cni-...`); none for host
    /// networking or when the runtime does not say.
    pub netns_path: Option<PathBuf>,
    /// The sandbox's process (the pause or infra process), when the runtime says.
    pub pid: Option<u32>,
}

#[derive(Debug, Error)]
pub enum CriError {
    /// No endpoint could be reached or answered the CRI v1 API.
    #[error("no CRI runtime answered: tried {tried}; {hint}")]
    NoRuntime { tried: String, hint: &'static str },
    /// The runtime answered, then a call failed.
    #[error("CRI runtime at {}: {call}: {reason}", socket.display())]
    Call {
        socket: PathBuf,
        call: String,
        reason: String,
    },
    /// The client's own thread or runtime could not run.
    #[error("CRI client: {0}")]
    Client(String),
}

/// The sockets to try: `CONTAINER_RUNTIME_ENDPOINT` alone when set (with or without
/// `unix://`), else containerd's then CRI-O's default.
pub fn endpoints() -> Vec<PathBuf> {
    match std::env::var_os(ENDPOINT_VAR) {
        Some(value) if !value.is_empty() => vec![endpoint_path(&value.to_string_lossy())],
        _ => DEFAULT_ENDPOINTS.iter().map(PathBuf::from).collect(),
    }
}

fn endpoint_path(value: &str) -> PathBuf {
    PathBuf::from(value.strip_prefix("unix://").unwrap_or(value))
}

/// Every ready pod sandbox of the first runtime that answers, each with its status.
pub fn list_pods() -> Result<Vec<Pod>, CriError> {
    let hint = if std::env::var_os(ENDPOINT_VAR).is_some_and(|v| !v.is_empty()) {
        "is CONTAINER_RUNTIME_ENDPOINT right?"
    } else {
        "set CONTAINER_RUNTIME_ENDPOINT"
    };
    list_pods_at(endpoints(), hint)
}

/// [`list_pods`] over the given sockets.
fn list_pods_at(sockets: Vec<PathBuf>, hint: &'static str) -> Result<Vec<Pod>, CriError> {
    on_own_runtime(move || async move {
        let mut tried = Vec::new();
        for socket in sockets {
            let (mut client, sandboxes) = match list_ready(&socket).await {
                Ok(found) => found,
                Err(reason) => {
                    tried.push(format!("{} ({reason})", socket.display()));
                    continue;
                }
            };
            let mut pods = Vec::with_capacity(sandboxes.len());
            for id in sandboxes {
                let request = PodSandboxStatusRequest {
                    pod_sandbox_id: id.clone(),
                    verbose: true,
                };
                match call(client.pod_sandbox_status(request)).await {
                    Ok(status) => pods.extend(pod_from_status(status)),
                    // Removed since it was listed: not a pod any more.
                    Err(CallError::Status(s)) if s.code() == Code::NotFound => {}
                    Err(e) => {
                        return Err(CriError::Call {
                            socket,
                            call: format!("PodSandboxStatus {id}"),
                            reason: e.to_string(),
                        });
                    }
                }
            }
            return Ok(pods);
        }
        Err(CriError::NoRuntime {
            tried: tried.join(", "),
            hint,
        })
    })?
}

/// Connects to `socket` and lists its ready sandboxes' IDs; why not, when it cannot.
async fn list_ready(socket: &Path) -> Result<(RuntimeServiceClient<Channel>, Vec<String>), String> {
    let mut client = connect(socket).await?;
    let request = ListPodSandboxRequest {
        filter: Some(PodSandboxFilter {
            state: Some(PodSandboxStateValue {
                state: PodSandboxState::SandboxReady.into(),
            }),
            ..Default::default()
        }),
    };
    let list = call(client.list_pod_sandbox(request))
        .await
        .map_err(|e| match e {
            CallError::Status(s) if s.code() == Code::Unimplemented => {
                format!("answered, but not the CRI v1 API: {}", s.message())
            }
            e => e.to_string(),
        })?;
    Ok((client, list.items.into_iter().map(|s| s.id).collect()))
}

/// A gRPC client on the runtime's unix socket.
async fn connect(socket: &Path) -> Result<RuntimeServiceClient<Channel>, String> {
    if !socket.is_absolute() {
        return Err("not a unix socket path (only unix:// endpoints are supported)".to_owned());
    }
    let path = socket.to_owned();
    let connector = tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move {
            let stream = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, std::io::Error>(TokioIo::new(stream))
        }
    });
    // The URI is tonic's formality: every connection goes to the socket. Runtimes ignore the
    // authority, as they do crictl's "localhost". The timeouts are ours, around each await
    // (tonic's own would only say "Timeout expired").
    let endpoint = Endpoint::from_static("http://localhost");
    let channel = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect_with_connector(connector))
        .await
        .map_err(|_| format!("no answer within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| innermost(&e))?;
    Ok(RuntimeServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE))
}

/// Why a call failed.
#[derive(Debug, Error)]
enum CallError {
    #[error("no answer within {CALL_TIMEOUT:?}")]
    Timeout,
    #[error("{}", describe(.0))]
    Status(Status),
}

/// Awaits one call with [`CALL_TIMEOUT`] and unwraps its answer.
async fn call<T>(
    request: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(CALL_TIMEOUT, request).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(CallError::Status(status)),
        Err(_) => Err(CallError::Timeout),
    }
}

/// A status as `Code: message`, with the transport's own cause when there is one (a refused
/// connection, a peer that does not speak HTTP/2).
fn describe(status: &Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(source) = status.source() {
        let cause = innermost(source);
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

/// The deepest cause of an error, without the `(os error N)` suffix: for a socket that does
/// not exist, "No such file or directory".
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut deepest = error;
    while let Some(next) = deepest.source() {
        deepest = next;
    }
    let text = deepest.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text,
    }
}

/// Runs `work` to completion on a new thread with a current-thread runtime of its own.
fn on_own_runtime<T, F>(work: impl FnOnce() -> F + Send + 'static) -> Result<T, CriError>
where
    F: Future<Output = T>,
    T: Send + 'static,
{
    std::thread::Builder::new()
        .name("chaos-cri".to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| CriError::Client(format!("tokio runtime: {e}")))?;
            Ok(runtime.block_on(work()))
        })
        .map_err(|e| CriError::Client(format!("spawning its thread: {e}")))?
        .join()
        .map_err(|_| CriError::Client("its thread panicked".to_owned()))?
}

/// A [`Pod`] from a verbose status; none without a status.
fn pod_from_status(response: PodSandboxStatusResponse) -> Option<Pod> {
    let status = response.status?;
    let metadata = status.metadata.clone().unwrap_or_default();
    let host_network = status
        .linux
        .as_ref()
        .and_then(|l| l.namespaces.as_ref())
        .and_then(|n| n.options.as_ref())
        .is_some_and(|o| o.network() == NamespaceMode::Node);
    let (pid, netns_path) = verbose_info(&response.info);
    Some(Pod {
        ready: status.state() == PodSandboxState::SandboxReady,
        id: status.id,
        name: metadata.name,
        namespace: metadata.namespace,
        uid: metadata.uid,
        labels: status.labels.into_iter().collect(),
        host_network,
        netns_path,
        pid,
    })
}

/// The sandbox's PID and network namespace path from the verbose `info["info"]` JSON; each
/// none when missing, zero or empty.
fn verbose_info(info: &HashMap<String, String>) -> (Option<u32>, Option<PathBuf>) {
    let Some(json) = info
        .get("info")
        .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
    else {
        return (None, None);
    };
    let pid = json["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .filter(|&p| p > 0);
    let netns = json["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|ns| ns["type"] == "network")
        .and_then(|ns| ns["path"].as_str())
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    (pid, netns)
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use k8s_cri::v1::{
        LinuxPodSandboxStatus, Namespace, NamespaceOption, PodSandboxMetadata, PodSandboxStatus,
    };

    use super::*;

    /// A folder of this test's own under the system's temporary one.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("chaos-cri-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn endpoint_values() {
        assert_eq!(
            endpoint_path("unix:///run/k3s/containerd/containerd.sock"),
            Path::new("/run/k3s/containerd/containerd.sock")
        );
        assert_eq!(
            endpoint_path("/run/crio/crio.sock"),
            Path::new("/run/crio/crio.sock")
        );
    }

    #[test]
    fn containerd_and_crio_verbose_info() {
        let containerd = r#"{"pid":4242,"processStatus":"running","netNamespaceClosed":false,
            "runtimeSpec":{"linux":{"namespaces":[{"type":"pid"},{"type":"ipc"},{"type":"uts"},
            {"type":"mount"},{"type":"network","path":"/var/run/netns/cni-1b2c"}]}}}"#;
        let info = HashMap::from([("info".to_owned(), containerd.to_owned())]);
        assert_eq!(
            verbose_info(&info),
            (Some(4242), Some("/var/run/netns/cni-1b2c".into()))
        );
        // CRI-O: image, pid and the spec; host networking has no network namespace entry.
        let crio = r#"{"image":"registry.k8s.io/pause:3.9","pid":77,
            "runtimeSpec":{"linux":{"namespaces":[{"type":"pid"},{"type":"mount"}]}}}"#;
        let info = HashMap::from([("info".to_owned(), crio.to_owned())]);
        assert_eq!(verbose_info(&info), (Some(77), None));
        // CRI-O without an infra container: the spec only.
        let spoofed = r#"{"runtimeSpec":{"linux":{"namespaces":[{"type":"network",
            "path":"/var/run/netns/5d1e"}]}}}"#;
        let info = HashMap::from([("info".to_owned(), spoofed.to_owned())]);
        assert_eq!(
            verbose_info(&info),
            (None, Some("/var/run/netns/5d1e".into()))
        );
        for odd in ["{}", "not json", r#"{"pid":0,"runtimeSpec":null}"#, "[]"] {
            let info = HashMap::from([("info".to_owned(), odd.to_owned())]);
            assert_eq!(verbose_info(&info), (None, None), "{odd}");
        }
        assert_eq!(verbose_info(&HashMap::new()), (None, None));
    }

    #[test]
    fn pod_from_a_status() {
        let status = |network: NamespaceMode| PodSandboxStatusResponse {
            status: Some(PodSandboxStatus {
                id: "5f0c".into(),
                metadata: Some(PodSandboxMetadata {
                    name: "cart-7f9c".into(),
                    uid: "u-1".into(),
                    namespace: "shop".into(),
                    attempt: 0,
                }),
                state: PodSandboxState::SandboxReady.into(),
                linux: Some(LinuxPodSandboxStatus {
                    namespaces: Some(Namespace {
                        options: Some(NamespaceOption {
                            network: network.into(),
                            ..Default::default()
                        }),
                    }),
                }),
                labels: HashMap::from([("app".into(), "cart".into())]),
                ..Default::default()
            }),
            info: HashMap::from([("info".into(), r#"{"pid":9}"#.into())]),
            ..Default::default()
        };
        let pod = pod_from_status(status(NamespaceMode::Pod)).unwrap();
        assert_eq!(
            pod,
            Pod {
                id: "5f0c".into(),
                name: "cart-7f9c".into(),
                namespace: "shop".into(),
                uid: "u-1".into(),
                labels: BTreeMap::from([("app".into(), "cart".into())]),
                host_network: false,
                ready: true,
                netns_path: None,
                pid: Some(9),
            }
        );
        assert!(
            pod_from_status(status(NamespaceMode::Node))
                .unwrap()
                .host_network
        );
        assert_eq!(pod_from_status(PodSandboxStatusResponse::default()), None);
    }

    #[test]
    fn no_runtime_names_every_socket_tried() {
        let dir = scratch("none");
        let missing = dir.join("missing.sock");
        // A socket file nobody listens on any more.
        let stale = dir.join("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        let err = list_pods_at(
            vec![missing.clone(), stale.clone()],
            "set CONTAINER_RUNTIME_ENDPOINT",
        )
        .unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "no CRI runtime answered: tried {} (No such file or directory), {} (Connection refused); set CONTAINER_RUNTIME_ENDPOINT",
                missing.display(),
                stale.display()
            )
        );
        let err = list_pods_at(vec!["tcp://10.0.0.1:1234".into()], "hint").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no CRI runtime answered: tried tcp://10.0.0.1:1234 (not a unix socket path (only unix:// endpoints are supported)); hint"
        );
    }

    /// A socket whose peer accepts and says nothing: the call times out, bounded.
    #[test]
    fn a_silent_socket_is_given_up_on() {
        let dir = scratch("silent");
        let socket = dir.join("silent.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let held = std::thread::spawn(move || listener.accept().map(|(conn, _)| conn));
        let started = std::time::Instant::now();
        let err = list_pods_at(vec![socket.clone()], "hint").unwrap_err();
        let took = started.elapsed();
        std::fs::remove_dir_all(&dir).unwrap();
        drop(held.join());
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "no CRI runtime answered: tried {} (",
                socket.display()
            )),
            "{text}"
        );
        assert!(
            took < CONNECT_TIMEOUT + CALL_TIMEOUT + Duration::from_secs(2),
            "{took:?}"
        );
    }

    /// The blocking API works from inside a tokio runtime (as from `spawn_blocking`).
    #[test]
    fn callable_inside_a_runtime() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err =
            runtime.block_on(async { list_pods_at(vec!["/nonexistent/cri.sock".into()], "hint") });
        assert!(matches!(err, Err(CriError::NoRuntime { .. })), "{err:?}");
    }
}
