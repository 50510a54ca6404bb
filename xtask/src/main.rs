//! Project tasks: `cargo xtask bootstrap | build | test | demo | bench | image`. Each installs
//! what it needs first, so a fresh machine needs nothing but this checkout and the Rust
//! toolchains.

mod bootstrap;
mod demo;
mod image;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "chaos project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need: Debian packages, nightly rust-src, bpf-linker.
    Bootstrap,
    /// Bootstrap, then build every crate including the eBPF program.
    Build,
    /// Bootstrap, build, then run unit and integration tests (as root, on this kernel).
    Test {
        /// Extra arguments for `cargo test`, e.g. `-- loss` to filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Bootstrap, build a static chaos and the agent's image localhost/chaos:VERSION (podman,
    /// or docker) from deploy/Containerfile.
    Image {
        /// Put the debug build in the image (relinks the test build: seconds, not minutes).
        #[arg(long)]
        debug: bool,
    },
    /// Build, then show chaos dropping packets to one port of one host in a sandbox.
    Demo,
    /// Bootstrap, build (release), then measure cost, scale, fidelity and kernel memory against
    /// a no-op program, a userspace proxy and netem; writes bench/latest.json and bench/latest.md.
    Bench {
        /// Arguments for the bench: `--quick` (fewer rounds, not for publishing), `--only
        /// micro,live,e2e,proxy,fidelity,vm,control,memory,targets`, `--out DIR`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.task {
        Task::Bootstrap => bootstrap::run(&root).map(drop),
        Task::Build => build(&root).map(drop),
        Task::Test { args } => test(&root, &args),
        Task::Demo => {
            let env = build(&root)?;
            demo::run(&env)
        }
        Task::Bench { args } => bench(&root, &args),
        Task::Image { debug } => image::run(&root, debug),
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// What later steps need from bootstrap and build.
pub struct BuildEnv {
    pub root: PathBuf,
    /// PATH with bpf-linker in front.
    pub path: std::ffi::OsString,
    pub chaos_bin: PathBuf,
}

fn build(root: &Path) -> Result<BuildEnv> {
    let path = bootstrap::run(root)?;
    step("building chaos (eBPF program + binary; the first build takes a minute or two)");
    exec(
        Command::new("cargo")
            .args(["build", "--bins"])
            .current_dir(root)
            .env("PATH", &path),
    )?;
    Ok(BuildEnv {
        root: root.to_path_buf(),
        path,
        chaos_bin: root.join("target/debug/chaos"),
    })
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    require_root("the tests create network namespaces and load BPF programs")?;
    let env = build(root)?;
    lint(&env)?;
    step("running tests (unit, BPF_PROG_TEST_RUN verdicts, live traffic in namespaces)");
    // This run's namespaces only: another run or a demo may be going on beside it.
    let prefix = format!("chaos-t{}", std::process::id());
    exec(
        Command::new("cargo")
            // The default members: chaos-ebpf only builds for the BPF target, through chaos-user.
            .arg("test")
            .args(extra)
            .current_dir(root)
            .env("PATH", &env.path)
            .env("CHAOS_BIN", &env.chaos_bin)
            .env(netlab::NETNS_PREFIX_VAR, &prefix),
    )?;
    no_namespaces_left(&prefix, "tests")?;
    step("checking that no filter, qdisc or ifb of chaos's is left in any namespace");
    let out = Command::new(&env.chaos_bin)
        .args(["cleanup", "--all-netns", "--output", "json"])
        .output()
        .context("running chaos cleanup")?;
    let removed = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || removed.trim() != "[]" {
        bail!(
            "tests left chaos state behind (now removed): {} {}",
            removed.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Packages the bench uses: socat as the userspace proxy hop, a font for its plot's labels.
const BENCH_PACKAGES: &[&str] = &["socat", "fonts-dejavu-core"];

fn bench(root: &Path, extra: &[String]) -> Result<()> {
    require_root("the bench creates network namespaces and loads BPF programs")?;
    let env = build(root)?;
    bootstrap::ensure_packages(BENCH_PACKAGES)?;
    step("building chaos in release mode for the bench (a minute the first time)");
    exec(
        Command::new("cargo")
            .args(["build", "--release", "--bins"])
            .current_dir(root)
            .env("PATH", &env.path),
    )?;
    step("running the bench (a full run takes several minutes; progress below)");
    let prefix = format!("chaos-b{}", std::process::id());
    let mut args = vec![
        "--out".to_owned(),
        root.join("bench").display().to_string(),
        "--readme".to_owned(),
        root.join("README.md").display().to_string(),
    ];
    args.extend(extra.iter().cloned());
    exec(
        Command::new("cargo")
            .args(["bench", "-p", "tests", "--bench", "chaos", "--"])
            .args(&args)
            .current_dir(root)
            .env("PATH", &env.path)
            .env("CHAOS_BIN", root.join("target/release/chaos"))
            .env(netlab::NETNS_PREFIX_VAR, &prefix),
    )?;
    no_namespaces_left(&prefix, "the bench")?;
    Ok(())
}

/// Fails if namespaces named with this run's `prefix` are still there after `who` ran.
fn no_namespaces_left(prefix: &str, who: &str) -> Result<()> {
    let leftovers = bootstrap::leftover_namespaces(prefix)?;
    if !leftovers.is_empty() {
        bail!(
            "{who} left network namespaces behind: {}",
            leftovers.join(", ")
        );
    }
    Ok(())
}

/// rustfmt and clippy over the host crates and the eBPF crate: CI fails on any finding.
fn lint(env: &BuildEnv) -> Result<()> {
    step("checking formatting and clippy (host crates and the eBPF crate)");
    exec(
        Command::new("cargo")
            .args(["fmt", "--all", "--", "--check"])
            .current_dir(&env.root),
    )?;
    exec(
        Command::new("cargo")
            .args(["clippy", "--all-targets", "--", "-D", "warnings"])
            .current_dir(&env.root)
            .env("PATH", &env.path),
    )?;
    exec(
        Command::new("cargo")
            .args([
                "+nightly",
                "clippy",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
            ])
            .args(["--release", "--", "-D", "warnings"])
            .current_dir(env.root.join("chaos-ebpf"))
            .env("PATH", &env.path),
    )
}

pub fn require_root(why: &str) -> Result<()> {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this task must run as root: {why}");
    }
    Ok(())
}

/// Prints a progress line for a step.
pub fn step(what: &str) {
    eprintln!("xtask: {what}");
}

/// Runs a command, failing with its description if it does not succeed.
pub fn exec(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
