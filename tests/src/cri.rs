//! A real containerd with its CRI plugin, for the pod tests: its own configuration, store, state
//! and socket under a temporary folder, a sandbox image made from Debian's busybox-static with
//! no registry, and a CNI bridge network on a subnet inside 198.18.0.0/15 whose gateway is the
//! host, so a pod's address is reachable from the host.
//!
//! Pods are run with `RunPodSandbox` through the `k8s-cri` client, as a kubelet does; a pod is
//! its sandbox, whose process is busybox `sleep` (the image's default command). Everything made
//! is removed when the value drops, also when a test panics: the pods, the containerd we
//! started (by its PID), the bridge, the CNI cache entries and the folder. The settings are the
//! ones `../shared/CONTAINERS.md` found to work on these machines.
//!
//! Compiled with the `cri` feature only (the tests turn it on): its client's build needs
//! protoc, which `cargo xtask bootstrap` installs, and xtask links this crate before that.
#![cfg(feature = "cri")]

use std::{
    future::Future,
    net::IpAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StopPodSandboxRequest, VersionRequest,
    runtime_service_client::RuntimeServiceClient,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// The sandbox image: busybox, running `sleep` for as long as the pod lives.
const IMAGE: &str = "localhost/chaos-cri-sandbox:1";
/// The third octet of our subnets, 198.19.X.0/24 (podman.rs uses 20-219).
const SUBNETS: std::ops::RangeInclusive<u32> = 220..=250;
const START_WITHIN: Duration = Duration::from_secs(30);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// containerd's own clean shutdown; SIGKILL after.
const STOP_WITHIN: Duration = Duration::from_secs(10);

/// Outside our folder, deepest first: the shims' sockets (containerd 1.6 keeps them under
/// /run/containerd whatever its `state`) and libcni's result cache.
const SHARED_DIRS: [&str; 4] = [
    "/run/containerd/s",
    "/run/containerd",
    "/var/lib/cni/results",
    "/var/lib/cni",
];

static INSTANCES: AtomicU64 = AtomicU64::new(0);

/// A containerd we started, with the CRI plugin and a bridge network.
pub struct Cri {
    dir: tempfile::TempDir,
    socket: PathBuf,
    /// The CNI network's name (unique to this value).
    pub network: String,
    /// The bridge device on the host.
    pub bridge: String,
    /// 198.19.X.0/24.
    pub subnet: String,
    /// The bridge's address, 198.19.X.1: the pods' gateway, and the host's address for them.
    pub gateway: String,
    containerd: Option<Child>,
    /// Shared directories containerd and libcni create on first use, which did not exist
    /// before us: removed on drop if empty (deepest first).
    made_dirs: Vec<&'static Path>,
    pods: Mutex<Vec<String>>,
    pod_count: AtomicU64,
}

/// A pod sandbox started by [`Cri::run_pod`].
#[derive(Clone, Debug)]
pub struct Pod {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// From `PodSandboxStatus` (none for host networking).
    pub ip: Option<IpAddr>,
    /// The sandbox's process, as containerd's task list has it.
    pub pid: u32,
    /// The network namespace file from the sandbox container's OCI spec (none for host
    /// networking).
    pub netns_path: Option<PathBuf>,
}

impl Cri {
    /// Starts containerd with its configuration under a new temporary folder, waits until the
    /// CRI API answers and imports the sandbox image. `tag` makes names readable.
    pub fn new(tag: &str) -> Self {
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let me = std::process::id();
        let dir = tempfile::Builder::new()
            .prefix("chaos-cri-")
            .tempdir()
            .expect("a temporary folder");
        let root = dir.path().to_owned();
        // Interface names have 15 bytes at most.
        let bridge = format!("chcri{}x{n}", me % 100_000);
        let third = claim_subnet(&bridge, me, n);
        let mut cri = Self {
            socket: root.join("containerd.sock"),
            network: format!("chaos-cri-{tag}-{me}-{n}"),
            bridge,
            subnet: format!("198.19.{third}.0/24"),
            gateway: format!("198.19.{third}.1"),
            dir,
            containerd: None,
            made_dirs: SHARED_DIRS
                .iter()
                .map(Path::new)
                .filter(|d| !d.exists())
                .collect(),
            pods: Mutex::new(Vec::new()),
            pod_count: AtomicU64::new(0),
        };
        cri.write_config();
        let image = cri.build_image();
        cri.start();
        cri.ctr(&["images", "import", image.to_str().unwrap()]);
        cri
    }

    /// containerd's gRPC socket (for `CONTAINER_RUNTIME_ENDPOINT`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The containerd process we started.
    pub fn containerd_pid(&self) -> u32 {
        self.containerd.as_ref().map_or(0, Child::id)
    }

    fn write_config(&self) {
        let root = self.dir.path();
        for sub in ["cni", "ipam", "logs"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        let config = format!(
            r#"version = 2
root = "{root}/root"
state = "{root}/state"

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{root}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{root}/cni"
"#,
            root = root.display(),
            socket = self.socket.display(),
        );
        std::fs::write(root.join("config.toml"), config).unwrap();
        let conflist = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": self.network,
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                "isDefaultGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "dataDir": root.join("ipam"),
                    "ranges": [[{"subnet": self.subnet, "gateway": self.gateway}]],
                },
            }],
        });
        std::fs::write(
            root.join("cni/10-chaos.conflist"),
            serde_json::to_string_pretty(&conflist).unwrap(),
        )
        .unwrap();
    }

    /// The sandbox image as a docker-archive: busybox-static's applets imported into a podman
    /// store of our own (no registry), saved for `ctr images import`.
    fn build_image(&self) -> PathBuf {
        let root = self.dir.path();
        let rootfs = root.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
            .expect("/bin/busybox (Debian's busybox-static)");
        for applet in ["sh", "sleep", "ip"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        let tar = root.join("rootfs.tar");
        run(Command::new("tar").args([
            "-C",
            rootfs.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ]));
        std::fs::write(
            root.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{0}/podman/graph\"\nrunroot = \"{0}/podman/run\"\n",
                root.display()
            ),
        )
        .unwrap();
        std::fs::write(
            root.join("containers.conf"),
            "[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )
        .unwrap();
        let podman = || {
            let mut c = Command::new("podman");
            c.env("CONTAINERS_CONF", root.join("containers.conf"))
                .env("CONTAINERS_STORAGE_CONF", root.join("storage.conf"))
                .env_remove("DOCKER_CONFIG");
            c
        };
        // A pod's sandbox runs the image's default command, which must keep running.
        run(podman().args([
            "import",
            "--change",
            r#"CMD ["/bin/sleep", "2147483647"]"#,
            tar.to_str().unwrap(),
            IMAGE,
        ]));
        let archive = root.join("sandbox-image.tar");
        run(podman().args([
            "save",
            "--format",
            "docker-archive",
            "-o",
            archive.to_str().unwrap(),
            IMAGE,
        ]));
        // The image is in the archive now; podman's store (vfs layers) is not needed.
        run(podman().args(["rmi", "-f", IMAGE]));
        archive
    }

    /// Starts containerd and waits (bounded) until its CRI API answers.
    fn start(&mut self) {
        let log = self.dir.path().join("containerd.log");
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .expect("containerd (cargo xtask bootstrap installs it)");
        self.containerd = Some(child);
        let deadline = Instant::now() + START_WITHIN;
        let mut last = String::new();
        loop {
            if let Some(status) = self.containerd.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "containerd exited ({status}) before answering:\n{}",
                    tail(&log)
                );
            }
            if self.socket.exists() {
                let version = self.call(|mut c| async move {
                    c.version(VersionRequest::default())
                        .await
                        .map(|r| r.into_inner())
                });
                match version {
                    Ok(v) if !v.runtime_name.is_empty() => return,
                    Ok(v) => last = format!("{v:?}"),
                    Err(e) => last = e,
                }
            }
            assert!(
                Instant::now() < deadline,
                "containerd's CRI API did not answer within {START_WITHIN:?} (last: {last}):\n{}",
                tail(&log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `ctr` against our containerd in the CRI's `k8s.io` namespace; its stdout.
    pub fn ctr(&self, args: &[&str]) -> String {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .expect("ctr (from Debian's containerd)");
        assert!(
            out.status.success(),
            "ctr {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One RuntimeService exchange: `work` gets a client connected to our socket and runs on a
    /// thread of its own with its own runtime (so this works inside a test's runtime too).
    fn call<T, F>(
        &self,
        work: impl FnOnce(RuntimeServiceClient<Channel>) -> F + Send + 'static,
    ) -> Result<T, String>
    where
        F: Future<Output = Result<T, tonic::Status>>,
        T: Send + 'static,
    {
        let socket = self.socket.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("tokio runtime: {e}"))?;
            runtime.block_on(async move {
                let connector = tower::service_fn(move |_: Uri| {
                    let socket = socket.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(socket).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                });
                let endpoint = Endpoint::from_static("http://localhost");
                let connect = endpoint.connect_with_connector(connector);
                let channel = tokio::time::timeout(CALL_TIMEOUT, connect)
                    .await
                    .map_err(|_| "connect: timed out".to_owned())?
                    .map_err(|e| format!("connect: {e:?}"))?;
                tokio::time::timeout(CALL_TIMEOUT, work(RuntimeServiceClient::new(channel)))
                    .await
                    .map_err(|_| format!("no answer within {CALL_TIMEOUT:?}"))?
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
            })
        })
        .join()
        .expect("the CRI client thread panicked")
    }

    /// Runs a pod sandbox (`RunPodSandbox`) named `namespace/name` with `labels`, in a network
    /// namespace of its own on the bridge or (`host_network`) in the host's.
    pub fn run_pod(
        &self,
        name: &str,
        namespace: &str,
        labels: &[(&str, &str)],
        host_network: bool,
    ) -> Pod {
        let n = self.pod_count.fetch_add(1, Ordering::Relaxed);
        let uid = format!("chaos-{}-{n}", std::process::id());
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_owned(),
                uid: uid.clone(),
                namespace: namespace.to_owned(),
                attempt: 0,
            }),
            hostname: if host_network {
                String::new()
            } else {
                name.to_owned()
            },
            log_directory: self
                .dir
                .path()
                .join("logs")
                .join(&uid)
                .display()
                .to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: if host_network {
                            NamespaceMode::Node
                        } else {
                            NamespaceMode::Pod
                        }
                        .into(),
                        pid: NamespaceMode::Container.into(),
                        ipc: NamespaceMode::Pod.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = self
            .call(|mut c| async move {
                c.run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: String::new(),
                })
                .await
                .map(|r| r.into_inner().pod_sandbox_id)
            })
            .unwrap_or_else(|e| {
                panic!(
                    "RunPodSandbox {namespace}/{name}: {e}\n{}",
                    tail(&self.dir.path().join("containerd.log"))
                )
            });
        self.pods.lock().unwrap().push(id.clone());
        let request = PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        };
        let status = self
            .call(
                |mut c| async move { c.pod_sandbox_status(request).await.map(|r| r.into_inner()) },
            )
            .unwrap_or_else(|e| panic!("PodSandboxStatus {id}: {e}"));
        let ip = status
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty())
            .map(|ip| ip.parse().unwrap_or_else(|e| panic!("pod IP {ip:?}: {e}")));
        Pod {
            pid: self.task_pid(&id),
            netns_path: self.spec_netns(&id),
            id,
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            uid,
            ip,
        }
    }

    /// The sandbox's process from `ctr tasks ls` (TASK PID STATUS).
    fn task_pid(&self, id: &str) -> u32 {
        let list = self.ctr(&["tasks", "ls"]);
        list.lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(id)).then(|| f.next()?.parse().ok())?
            })
            .next()
            .unwrap_or_else(|| panic!("no task for sandbox {id} in:\n{list}"))
    }

    /// The network namespace path in the sandbox container's OCI spec (`ctr containers info`).
    fn spec_netns(&self, id: &str) -> Option<PathBuf> {
        let info: serde_json::Value = serde_json::from_str(&self.ctr(&["containers", "info", id]))
            .expect("ctr containers info gives JSON");
        info["Spec"]["linux"]["namespaces"]
            .as_array()
            .expect("an OCI spec with namespaces")
            .iter()
            .find(|ns| ns["type"] == "network")
            .and_then(|ns| ns["path"].as_str())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    }

    /// Stops and removes a pod (`StopPodSandbox`, `RemovePodSandbox`).
    pub fn remove_pod(&self, id: &str) {
        self.try_remove_pod(id)
            .unwrap_or_else(|e| panic!("removing pod {id}: {e}"));
    }

    fn try_remove_pod(&self, id: &str) -> Result<(), String> {
        let owned = id.to_owned();
        self.call(|mut c| async move {
            c.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: owned.clone(),
            })
            .await?;
            c.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: owned,
            })
            .await?;
            Ok(())
        })?;
        self.pods.lock().unwrap().retain(|p| p != id);
        Ok(())
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        // Best effort, and never a panic while a test's own panic unwinds.
        let pods = self.pods.lock().map(|p| p.clone()).unwrap_or_default();
        if self.containerd.is_some() {
            for id in pods {
                if let Err(e) = self.try_remove_pod(&id) {
                    eprintln!("cri: removing pod {id}: {e}");
                }
            }
        }
        if let Some(child) = self.containerd.take() {
            stop(child);
        }
        match Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(Stdio::null())
            .status()
        {
            Ok(_) => {}
            Err(e) => eprintln!("cri: ip link del {}: {e}", self.bridge),
        }
        // libcni's cache of our network's results (normally gone with each pod).
        if let Ok(entries) = std::fs::read_dir("/var/lib/cni/results") {
            let prefix = format!("{}-", self.network);
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix)
                    && let Err(e) = std::fs::remove_file(entry.path())
                {
                    eprintln!("cri: removing {}: {e}", entry.path().display());
                }
            }
        }
        for dir in &self.made_dirs {
            // Fails, as it should, while another runtime still uses it.
            std::fs::remove_dir(dir).ok();
        }
    }
}

/// Ends our containerd: SIGTERM, then SIGKILL if it lingers; reaps it.
fn stop(mut child: Child) {
    let pid = child.id() as i32;
    // SAFETY: kill(2) on our own child's PID, not reaped yet.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        eprintln!(
            "cri: SIGTERM containerd: {}",
            std::io::Error::last_os_error()
        );
    }
    if !crate::wait_for_exit(pid, STOP_WITHIN) {
        eprintln!("cri: containerd still up {STOP_WITHIN:?} after SIGTERM: SIGKILL");
        if let Err(e) = child.kill() {
            eprintln!("cri: SIGKILL containerd: {e}");
        }
    }
    if let Err(e) = child.wait() {
        eprintln!("cri: reaping containerd: {e}");
    }
}

/// Picks X for 198.19.X.0/24 that no host interface uses, and claims it at once by creating
/// `bridge` with the gateway address (the CNI bridge plugin takes the bridge as it finds it).
fn claim_subnet(bridge: &str, pid: u32, n: u64) -> u32 {
    static CLAIM: Mutex<()> = Mutex::new(());
    let _one_at_a_time = CLAIM
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .expect("ip (iproute2)");
    let used = String::from_utf8_lossy(&out.stdout).into_owned();
    let span = SUBNETS.end() - SUBNETS.start() + 1;
    let first = (pid.wrapping_mul(7) as u64 + n) % u64::from(span);
    let third = (0..span)
        .map(|i| SUBNETS.start() + ((first as u32 + i) % span))
        .find(|x| !used.contains(&format!(" 198.19.{x}.")))
        .unwrap_or_else(|| panic!("every subnet 198.19.{SUBNETS:?}.0/24 is in use"));
    crate::ip(&["link", "add", bridge, "type", "bridge"]);
    crate::ip(&[
        "addr",
        "add",
        &format!("198.19.{third}.1/24"),
        "dev",
        bridge,
    ]);
    crate::ip(&["link", "set", bridge, "up"]);
    third
}

fn run(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The last lines of a log, for a panic message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
