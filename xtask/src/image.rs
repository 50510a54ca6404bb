//! `cargo xtask image`: the agent's container image, `localhost/chaos:VERSION`, from a statically
//! linked `chaos` and `deploy/Containerfile` (`FROM scratch`), with podman (docker where podman
//! is absent). No registry: load it into a node's runtime with `podman save` and `ctr import`.
//!
//! The image carries the binary's SHA-256 as a label; when the tagged image already holds this
//! binary the build is skipped, so a second run costs only cargo's freshness check.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{bootstrap, exec, step};

/// The image's name; its tag is the workspace version, as in `deploy/daemonset.yaml`.
pub const IMAGE_NAME: &str = "localhost/chaos";
/// The label holding the binary's SHA-256, which tells a current image from a stale one.
const DIGEST_LABEL: &str = "dev.chaos.binary-sha256";

/// The tag `cargo xtask image` builds.
pub fn image_tag() -> String {
    format!("{IMAGE_NAME}:{}", env!("CARGO_PKG_VERSION"))
}

/// Bootstraps, builds the static binary, checks it is static and builds the image; prints the
/// image's tag and size. The container tool's own environment (`CONTAINERS_CONF`,
/// `CONTAINERS_STORAGE_CONF`) chooses the store, so a test can build into its own.
pub fn run(root: &Path, debug: bool) -> Result<()> {
    let path = bootstrap::run(root)?;
    let tool = container_tool()?;
    let binary = build_static(root, &path, debug)?;
    check_static(&binary)?;
    let digest = sha256(&binary)?;
    let tag = image_tag();
    if current_digest(tool, &tag).as_deref() == Some(digest.as_str()) {
        step(&format!(
            "{tag} already holds this binary (sha256 {}): not rebuilt",
            &digest[..12]
        ));
    } else {
        build_image(root, tool, &binary, &tag, &digest)?;
    }
    let size = image_size(tool, &tag)?;
    step(&format!(
        "image {tag} ready ({tool}, {:.1} MB); load it into a node with `{tool} save {tag}`",
        size as f64 / 1e6
    ));
    Ok(())
}

/// podman, else docker: the first one on PATH that answers `--version`.
fn container_tool() -> Result<&'static str> {
    ["podman", "docker"]
        .into_iter()
        .find(|tool| {
            Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .context(
            "building the image needs podman or docker and neither is on PATH \
             (`cargo xtask bootstrap` installs podman)",
        )
}

/// chaos-user's `chaos`, relinked with glibc in statically (`-C target-feature=+crt-static`,
/// given to the final link only through `cargo rustc`, so the dependencies already built for
/// the profile are reused: a relink, not a second build of the tree) and without debug info.
/// The binary replaces `target/PROFILE/chaos`; a later `cargo build` links it dynamically again.
fn build_static(root: &Path, path: &std::ffi::OsStr, debug: bool) -> Result<PathBuf> {
    let profile = if debug { "debug" } else { "release" };
    step(&format!(
        "linking a static chaos ({profile}, +crt-static; a full {profile} build the first time)"
    ));
    let started = Instant::now();
    let mut cargo = Command::new("cargo");
    cargo.args(["rustc", "-p", "chaos-user", "--bin", "chaos"]);
    if !debug {
        cargo.arg("--release");
    }
    exec(
        cargo
            .args([
                "--",
                "-C",
                "target-feature=+crt-static",
                "-C",
                "strip=debuginfo",
            ])
            .current_dir(root)
            .env("PATH", path),
    )?;
    let binary = root.join("target").join(profile).join("chaos");
    step(&format!(
        "static chaos linked in {:.1?}: {}",
        started.elapsed(),
        binary.display()
    ));
    Ok(binary)
}

/// Fails unless `file` calls the binary static (a `FROM scratch` image has no libc to load).
fn check_static(binary: &Path) -> Result<()> {
    let out = Command::new("file")
        .arg("--brief")
        .arg(binary)
        .output()
        .context("running file")?;
    let what = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let ldd = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let ldd_said = format!(
        "{}{}",
        String::from_utf8_lossy(&ldd.stdout),
        String::from_utf8_lossy(&ldd.stderr)
    );
    let static_file = what.contains("statically linked") || what.contains("static-pie linked");
    let static_ldd =
        ldd_said.contains("not a dynamic executable") || ldd_said.contains("statically linked");
    if !(static_file && static_ldd) {
        bail!(
            "{} is not static: file says `{what}`, ldd says `{}`",
            binary.display(),
            ldd_said.trim()
        );
    }
    step(&format!("checked: static ({what})"));
    Ok(())
}

fn sha256(file: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(file)
        .output()
        .context("running sha256sum")?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .filter(|d| out.status.success() && d.len() == 64)
        .map(str::to_owned)
        .with_context(|| format!("sha256sum {} failed", file.display()))
}

/// The binary digest the tagged image was built from, if there is such an image.
fn current_digest(tool: &str, tag: &str) -> Option<String> {
    let out = Command::new(tool)
        .args(["image", "inspect", "--format"])
        .arg(format!("{{{{index .Config.Labels \"{DIGEST_LABEL}\"}}}}"))
        .arg(tag)
        .output()
        .ok()?;
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && digest.len() == 64).then_some(digest)
}

/// A build context of the binary and `deploy/Containerfile` under `target/image`, then the build.
fn build_image(root: &Path, tool: &str, binary: &Path, tag: &str, digest: &str) -> Result<()> {
    let context = root.join("target/image");
    if context.exists() {
        fs::remove_dir_all(&context).with_context(|| format!("emptying {}", context.display()))?;
    }
    fs::create_dir_all(&context)?;
    let containerfile = root.join("deploy/Containerfile");
    fs::copy(&containerfile, context.join("Containerfile"))
        .with_context(|| format!("copying {}", containerfile.display()))?;
    fs::copy(binary, context.join("chaos"))
        .with_context(|| format!("copying {}", binary.display()))?;
    step(&format!(
        "building {tag} with {tool} from deploy/Containerfile"
    ));
    let started = Instant::now();
    exec(
        Command::new(tool)
            .arg("build")
            .args(["--file", "Containerfile", "--tag", tag])
            .arg("--label")
            .arg(format!("{DIGEST_LABEL}={digest}"))
            .arg(".")
            .current_dir(&context),
    )?;
    step(&format!("{tag} built in {:.1?}", started.elapsed()));
    Ok(())
}

fn image_size(tool: &str, tag: &str) -> Result<u64> {
    let out = Command::new(tool)
        .args(["image", "inspect", "--format", "{{.Size}}", tag])
        .output()
        .with_context(|| format!("{tool} image inspect"))?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| {
            format!(
                "{tool} image inspect {tag}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
}
