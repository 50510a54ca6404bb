//! Servers the tests start and probe: a free port, a process ended when dropped, and Python's
//! `http.server` as a health check that can be made to fail.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// A port nothing listens on now, on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a loopback port")
        .local_addr()
        .expect("its address")
        .port()
}

/// A child process a test started: killed (by its handle) and reaped when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

/// The HTTP status of a GET of `url` (`000` when nothing answers within 2 s).
pub fn http_status(url: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "2",
            url,
        ])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Python's `http.server` on loopback answering `url` with 200 until [`HealthCheck::fail`]
/// makes it 404.
pub struct HealthCheck {
    pub url: String,
    _server: KillOnDrop,
    dir: tempfile::TempDir,
}

impl HealthCheck {
    /// Starts it and waits until it answers 200.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("a directory to serve");
        std::fs::write(dir.path().join("health"), "ok").expect("write health");
        let port = free_port();
        let server = KillOnDrop(
            Command::new("python3")
                .args([
                    "-m",
                    "http.server",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                ])
                .arg("--directory")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("python3"),
        );
        let url = format!("http://127.0.0.1:{port}/health");
        super::wait_until("http.server up", Duration::from_secs(10), || {
            http_status(&url) == "200"
        });
        Self {
            url,
            _server: server,
            dir,
        }
    }

    /// From now on it answers 404.
    pub fn fail(&self) {
        std::fs::remove_file(self.dir.path().join("health")).expect("remove health");
    }
}
