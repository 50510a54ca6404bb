//! `chaos daemon`: holds experiments for every interface and namespace of the host, controlled
//! over the HTTP API (a unix socket; TCP with a bearer token when asked) and a config file.

use std::{
    net::SocketAddr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, Result};
use clap::Args;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

use crate::{
    InputError, caps,
    daemon::{
        api,
        state::{ApiError, Manager, Policy},
    },
    duration::{self, Bounds},
    experiment::{ExperimentFile, ExperimentSpec},
    guard::Guard,
};

/// Where the API listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/chaos/chaos.sock";

/// Run the chaos daemon: experiments on any interface and namespace, controlled over an API.
#[derive(Debug, Args)]
#[command(after_help = DAEMON_HELP)]
pub struct DaemonArgs {
    /// Unix socket of the API; created mode 0600 (root only).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Also serve the API on this TCP address; every request must then carry the token.
    #[arg(long, value_name = "ADDR", requires = "token_file")]
    pub listen: Option<SocketAddr>,

    /// File holding the bearer token for --listen.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Experiments and campaigns to run, as TOML `[[experiment]]` and `[[campaign]]` tables;
    /// validated whole before anything is applied. SIGHUP reloads it; a bad file leaves the running set untouched.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// TCP ports no rule faults unless it says force=yes (SSH, Kubernetes API, kubelet); up to 16.
    #[arg(long, value_name = "PORTS", value_delimiter = ',', default_values_t = crate::guard::DEFAULT_EXCLUDED_PORTS)]
    pub exclude_ports: Vec<u16>,

    /// Longest experiment allowed; experiments without a duration end after this.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = duration::flag(Bounds::POSITIVE))]
    pub max_duration: std::time::Duration,

    /// The program stops injecting when the daemon has not renewed this lease in time (every
    /// third of it): faults never outlive a killed or frozen daemon. At least 100ms.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = duration::flag(Bounds::LEASE))]
    pub lease: std::time::Duration,

    /// Append every change (create, update, delete, start, end, halt, ...) with who asked, as
    /// JSON lines, to this file (created mode 0600). `chaos history` shows the recent ones.
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<PathBuf>,

    /// Serve GET /metrics alone (no token, read-only) on this TCP address, for Prometheus.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Also act as the Kubernetes node agent: apply the NetworkFault resources (chaos.dev/v1alpha1)
    /// to the pods they pick on this node, through the node's CRI runtime, and write each
    /// resource's status and Events. Uses the in-cluster service account (or KUBECONFIG).
    #[arg(long)]
    pub kubernetes: bool,

    /// This node's name, as Kubernetes knows it (the DaemonSet passes spec.nodeName).
    #[arg(
        long,
        value_name = "NAME",
        env = "NODE_NAME",
        required_if_eq("kubernetes", "true")
    )]
    pub node_name: Option<String>,
}

const DAEMON_HELP: &str = "\
Experiments are managed with `chaos apply`, `chaos list`, `chaos get`, `chaos delete`,
`chaos pause`, `chaos resume` and `chaos status`, or over HTTP (docs/openapi.json):
  curl --unix-socket /run/chaos/chaos.sock http://chaos/v1/experiments

A config file holds the same fields as the API:
  [[experiment]]
  name = \"slow-redis\"
  iface = \"eth0\"
  rules = [\"proto=tcp dport=6379 drop=5% delay=200ms delay-p=20%\"]
  duration = \"5m\"

Rules are `chaos run`'s language (`chaos run --help`), connection faults included, e.g.
  rules = [\"proto=tcp dport=8080 reset=yes after=2s conn-p=30%\"]
Each rule's counters (GET /v1/experiments/NAME, /metrics) include connections seen, chosen,
refused, reset and hung, and packets lost to them, duplicated and corrupted.

Overlapping experiments on one interface: higher `priority` first, then the older one; the
first rule that matches a packet decides. On SIGINT/SIGTERM every interface is restored.";

/// Reads and validates a config file.
fn load_config(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let experiments =
        ExperimentFile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let campaigns =
        ExperimentFile::parse_campaigns(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Config {
        experiments: experiments.into_iter().map(|e| e.spec).collect(),
        campaigns,
    })
}

/// What a config file holds.
struct Config {
    experiments: Vec<ExperimentSpec>,
    campaigns: Vec<crate::campaign::CampaignSpec>,
}

/// Applies a config file's experiments, then its campaigns.
async fn apply_config(manager: &Arc<Manager>, config: Config) -> Result<(), ApiError> {
    // Campaigns are checked against the policy before anything changes.
    for spec in &config.campaigns {
        manager
            .admit_campaign(spec.clone())
            .map_err(ApiError::Invalid)?;
    }
    manager.replace_config(config.experiments).await?;
    manager.replace_config_campaigns(config.campaigns).await
}

pub fn run(args: DaemonArgs) -> Result<()> {
    let effective = caps::effective().context("reading capabilities")?;
    if let Some(cap) = caps::missing_for_run(effective, false).first() {
        return Err(InputError(format!(
            "missing capability {} ({}); run as root or grant it",
            cap.name, cap.why
        ))
        .into());
    }
    let initial = args
        .config
        .as_deref()
        .map(load_config)
        .transpose()
        .map_err(InputError)?;
    let token = match &args.token_file {
        Some(path) => {
            let token = std::fs::read_to_string(path)
                .map_err(|e| InputError(format!("--token-file {}: {e}", path.display())))?;
            let token = token.trim().to_owned();
            if token.len() < 16 {
                return Err(InputError(
                    "--token-file: the token needs 16 characters or more".into(),
                )
                .into());
            }
            Some(token)
        }
        None => None,
    };
    // The daemon's own API traffic is never faulted.
    let api_ports: Vec<u16> = args.listen.iter().map(SocketAddr::port).collect();
    let guard = Guard::new(&args.exclude_ports, &api_ports).map_err(InputError)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(args, initial, token, guard))
}

async fn serve(
    args: DaemonArgs,
    initial: Option<Config>,
    token: Option<String>,
    guard: Guard,
) -> Result<()> {
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    // What an earlier, killed instance left: removed before anything new is attached.
    match crate::recover::clean(true) {
        Ok(removed) => {
            for r in removed {
                tracing::warn!("removed a leftover of an earlier chaos: {r}");
            }
        }
        Err(e) => error!("looking for leftovers of an earlier chaos: {e}"),
    }
    let audit = match &args.audit_log {
        Some(path) => crate::daemon::audit::Audit::to_file(path)
            .map_err(|e| InputError(format!("--audit-log {}: {e}", path.display())))?,
        None => crate::daemon::audit::Audit::default(),
    };
    let manager = Manager::with_audit(
        Policy {
            lease: args.lease,
            guard,
            max_duration: args.max_duration,
        },
        audit,
    );
    if let Some(config) = initial
        && let Err(e) = apply_config(&manager, config).await
    {
        manager.shutdown().await;
        return Err(InputError(format!("--config: {}", describe(&e))).into());
    }
    let listener = bind_socket(&args.socket)?;
    let unix = tokio::spawn(
        axum::serve(
            listener,
            api::router(manager.clone(), None).into_make_service_with_connect_info::<api::Peer>(),
        )
        .into_future(),
    );
    let tcp = match args.listen {
        Some(addr) => {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| InputError(format!("--listen {addr}: {e}")))?;
            Some(tokio::spawn(
                axum::serve(
                    tcp,
                    api::router(manager.clone(), token)
                        .into_make_service_with_connect_info::<api::Peer>(),
                )
                .into_future(),
            ))
        }
        None => None,
    };
    let metrics = match args.metrics_listen {
        Some(addr) => {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| InputError(format!("--metrics-listen {addr}: {e}")))?;
            Some(tokio::spawn(
                axum::serve(tcp, api::metrics_router(manager.clone())).into_future(),
            ))
        }
        None => None,
    };
    let agent = match (args.kubernetes, &args.node_name) {
        (true, Some(node)) => {
            let client = kube::Client::try_default()
                .await
                .map_err(|e| InputError(format!("--kubernetes: no cluster to talk to: {e}")))?;
            let config = crate::k8s::agent::Config {
                node: node.clone(),
                max_duration: args.max_duration,
            };
            // Every change of the daemon's, whoever asked, is also an Event on this Node.
            tokio::spawn(crate::k8s::events::publish_audit(
                client.clone(),
                node.clone(),
                manager.audit_feed(),
            ));
            let manager = manager.clone();
            Some(tokio::spawn(async move {
                if let Err(e) = crate::k8s::agent::run(client, manager, config).await {
                    error!("the kubernetes agent stopped: {e:#}");
                }
            }))
        }
        _ => None,
    };
    // Scripts and tests wait for this line: the API answers once it is printed.
    eprintln!("chaos: daemon listening on {}", args.socket.display());
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = hangup.recv() => reload(&manager, args.config.as_deref()).await,
        }
    }
    info!("stopping: restoring every interface");
    unix.abort();
    for task in [tcp, metrics].into_iter().flatten() {
        task.abort();
    }
    if let Some(agent) = agent {
        agent.abort();
    }
    manager.shutdown().await;
    if let Err(e) = std::fs::remove_file(&args.socket) {
        error!("removing {}: {e}", args.socket.display());
    }
    Ok(())
}

async fn reload(manager: &Arc<Manager>, config: Option<&Path>) {
    let Some(path) = config else {
        info!("SIGHUP without --config: nothing to reload");
        return;
    };
    let result = match load_config(path) {
        Ok(config) => apply_config(manager, config)
            .await
            .map_err(|e| describe(&e)),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => info!(config = %path.display(), "reloaded"),
        Err(e) => error!("reload refused, the running experiments are unchanged: {e}"),
    }
}

fn describe(e: &ApiError) -> String {
    e.to_string()
}

/// Binds the API socket, root-only from the first moment (umask), after making sure no other
/// daemon answers on it.
fn bind_socket(path: &Path) -> Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(InputError(format!(
                "a chaos daemon is already listening on {}",
                path.display()
            ))
            .into());
        }
        // Left by a daemon that was killed.
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = tokio::net::UnixListener::bind(path);
    // SAFETY: as above, restoring it.
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}
