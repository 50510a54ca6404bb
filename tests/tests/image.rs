//! The agent's image (`cargo xtask image`: a static chaos in a `FROM scratch` image) really
//! injects faults: run with podman (`--privileged --pid host --network host`) as
//! `chaos run --target container=ID`, it refuses connections to another container from the
//! host while it runs, and they work again once it stops.
//!
//! The image is built by `cargo xtask image` itself, into the test's own podman store (the
//! harness's `CONTAINERS_CONF` and `CONTAINERS_STORAGE_CONF`), so image and containers share one
//! store. The static build is cargo's freshness check when nothing changed. Run as root.

use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use netlab::{READY, podman::Podman};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests lives in the workspace")
        .to_path_buf()
}

/// podman with the harness's configuration and store (those files of `Podman::dir`), for the
/// commands `Podman::ok` does not cover: the image build's environment, a container's logs
/// with stdout and stderr apart, and a removal that must not panic.
fn podman_env<'a>(cmd: &'a mut Command, dir: &Path) -> &'a mut Command {
    cmd.env("CONTAINERS_CONF", dir.join("containers.conf"))
        .env("CONTAINERS_STORAGE_CONF", dir.join("storage.conf"))
        .env_remove("DOCKER_CONFIG")
}

fn podman(dir: &Path, args: &[&str]) -> Output {
    podman_env(&mut Command::new("podman"), dir)
        .args(args)
        .output()
        .expect("podman")
}

/// `connect()` from the host to `ip:port`: the error kind, or None when it connected.
fn connect(ip: &str, port: u16) -> Option<ErrorKind> {
    let dst: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    TcpStream::connect_timeout(&dst, Duration::from_secs(3))
        .err()
        .map(|e| e.kind())
}

/// The chaos container: removed when dropped, also when the test panics.
struct Running<'a> {
    dir: &'a Path,
    id: String,
}

impl Running<'_> {
    /// Its stdout and stderr so far.
    fn logs(&self) -> (String, String) {
        let out = podman(self.dir, &["logs", &self.id]);
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn state(&self) -> String {
        let out = podman(
            self.dir,
            &[
                "inspect",
                "-f",
                "{{.State.Status}} {{.State.ExitCode}}",
                &self.id,
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        // Best effort, and never a panic while the test's own panic unwinds.
        podman(self.dir, &["rm", "-f", "-t", "0", &self.id]);
    }
}

#[test]
fn the_image_refuses_connections_to_a_container() {
    let started = Instant::now();
    let podman_ = Podman::new("img");
    let dir = podman_.dir().to_path_buf();

    // The same path as a user's `cargo xtask image`, with the harness's store.
    let build = Instant::now();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = podman_env(&mut Command::new(cargo), &dir)
        // The debug build the tests use, relinked static: seconds, where a release build of
        // the tree would take minutes.
        .args([
            "run",
            "--quiet",
            "--package",
            "xtask",
            "--",
            "image",
            "--debug",
        ])
        .current_dir(root())
        .status()
        .expect("running cargo xtask image");
    assert!(status.success(), "cargo xtask image: {status}");
    let tag = format!("localhost/chaos:{}", env!("CARGO_PKG_VERSION"));
    let size = podman_.ok(&["image", "inspect", "--format", "{{.Size}}", &tag]);
    println!(
        "image: cargo xtask image took {:.1?}; {tag} is {size} bytes",
        build.elapsed()
    );

    let target = podman_.run(&format!("chaos-img-{}", std::process::id()));
    assert_eq!(connect(&target.ip, 8080), None, "it serves before chaos");

    let id = podman_.ok(&[
        "run",
        "-d",
        "--name",
        &format!("chaos-agent-img-{}", std::process::id()),
        "--privileged",
        "--pid",
        "host",
        "--network",
        "host",
        &tag,
        "run",
        "--target",
        &format!("container={}", &target.id[..12]),
        "--rule",
        "dir=ingress proto=tcp dport=8080 refuse=yes",
        "--output",
        "json",
    ]);
    let chaos = Running { dir: &dir, id };
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        let (_, stderr) = chaos.logs();
        if let Some(line) = stderr.lines().find(|l| l.starts_with(READY)) {
            break line.to_owned();
        }
        let state = chaos.state();
        assert!(
            state.starts_with("running") && Instant::now() < deadline,
            "chaos in the image never got ready ({state}): {stderr}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(ready.contains("injecting on eth0"), "{ready}");

    let during = connect(&target.ip, 8080);
    podman_.ok(&["stop", "-t", "10", &chaos.id]);
    let (stdout, stderr) = chaos.logs();
    assert_eq!(chaos.state(), "exited 0", "{stderr}");
    assert_eq!(
        during,
        Some(ErrorKind::ConnectionRefused),
        "refused by chaos in the image ({ready})"
    );
    let report: serde_json::Value = serde_json::from_str(
        stdout
            .lines()
            .next()
            .unwrap_or_else(|| panic!("no report: {stderr}")),
    )
    .unwrap();
    assert_eq!(report["conns_refused"], 1, "{report}");
    assert_eq!(
        connect(&target.ip, 8080),
        None,
        "restored after chaos stopped"
    );
    println!("image: the test took {:.1?}", started.elapsed());
}
