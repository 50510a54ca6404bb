//! Idempotent set-up: each step checks first and only does work that is missing.

use std::{
    ffi::OsString,
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{exec, require_root, step};

/// Debian packages the tests and demo use: `ip` for namespaces and veth, `ping` for the ping
/// test, `setpriv` and `unshare` for the missing-capability and API fuzzing tests, and Debian's
/// own Python with `venv` for the fuzzer (schemathesis) the API test runs, `curl` against a
/// real HTTP server in the connection-fault tests, and `ethtool` to turn checksum offload off
/// where the receiver's kernel must verify a corrupted datagram's checksum; podman, runc, the
/// CNI plugins and busybox-static for the container-targeting tests (real containers, an image
/// built from busybox with no registry).
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "util-linux",
    "python3",
    "python3-venv",
    "curl",
    "ethtool",
    "podman",
    "runc",
    "containernetworking-plugins",
    // The podman harness's network backend (tests/src/podman.rs); only a Recommends of podman.
    "netavark",
    "busybox-static",
    "containerd",
    "protobuf-compiler",
    // `cargo xtask image` checks that the binary it puts in a `FROM scratch` image is static.
    "file",
    // A real Prometheus for the stop-condition tests (tests/tests/stop.rs).
    "prometheus",
];
/// The OpenAPI fuzzer `tests/tests/openapi.rs` drives the daemon's API with, from PyPI.
const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// The manifest test `tests/tests/deploy.rs` checks `deploy/` with, offline, against every
/// Kubernetes version it carries schemas for (this release: 1.25 to 1.37); jsonschema checks
/// the example resources against the CRD's own schema.
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
const JSONSCHEMA_VERSION: &str = "4.26.0";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM majors bpf-linker 0.13 has a feature for.
const LLVM_MAJORS: std::ops::RangeInclusive<u32> = 21..=23;

/// Runs every step; returns a PATH with the project's bpf-linker in front.
pub fn run(root: &Path) -> Result<OsString> {
    apt_packages()?;
    nightly_components()?;
    stable_components()?;
    let linker_dir = bpf_linker(root)?;
    schemathesis(root)?;
    manifest_validators(root)?;
    vm_kernel(root)?;
    let mut path = OsString::from(linker_dir);
    if let Some(old) = std::env::var_os("PATH") {
        path.push(":");
        path.push(old);
    }
    Ok(path)
}

fn apt_packages() -> Result<()> {
    ensure_packages(APT_PACKAGES)
}

/// Installs whichever of `packages` are missing (apt-get), saying so.
pub fn ensure_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|pkg| !dpkg_installed(pkg))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    require_root("installing Debian packages")?;
    step(&format!(
        "installing Debian packages: {} (apt-get, ~30 s)",
        missing.join(" ")
    ));
    exec(Command::new("apt-get").args(["update", "-q"]))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
}

/// Nightly components: rust-src to build `core` for BPF, clippy to lint the eBPF crate.
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "clippy"];

fn nightly_components() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("running rustup (is the nightly toolchain installed?)")?;
    if !out.status.success() {
        bail!(
            "rustup cannot list nightly's components: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let installed = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&str> = NIGHTLY_COMPONENTS
        .iter()
        .copied()
        .filter(|c| !installed.lines().any(|l| l.starts_with(c)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!(
        "adding {} to the nightly toolchain",
        missing.join(", ")
    ));
    exec(
        Command::new("rustup")
            .args(["component", "add", "--toolchain", "nightly"])
            .args(&missing),
    )
}

/// rustfmt and clippy for the default (stable) toolchain: the lint step runs them.
fn stable_components() -> Result<()> {
    let out = Command::new("rustup")
        .args(["component", "list", "--installed"])
        .output()
        .context("running rustup")?;
    let installed = String::from_utf8_lossy(&out.stdout);
    let missing: Vec<&str> = ["rustfmt", "clippy"]
        .into_iter()
        .filter(|c| !installed.lines().any(|l| l.starts_with(c)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!(
        "adding {} to the default toolchain",
        missing.join(", ")
    ));
    exec(
        Command::new("rustup")
            .args(["component", "add"])
            .args(&missing),
    )
}

/// The LLVM major version of the nightly toolchain, which bpf-linker must link against.
fn nightly_llvm_major() -> Result<u32> {
    let out = Command::new("rustc").args(["+nightly", "-vV"]).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let major = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok())
        .context("rustc +nightly -vV names no LLVM version")?;
    if !LLVM_MAJORS.contains(&major) {
        bail!(
            "nightly uses LLVM {major}; bpf-linker {BPF_LINKER_VERSION} supports LLVM {}-{}",
            LLVM_MAJORS.start(),
            LLVM_MAJORS.end()
        );
    }
    Ok(major)
}

/// Builds bpf-linker into `.tools/bpf-linker` against the nightly toolchain's own libLLVM, so
/// the LLVM that compiles the eBPF crate and the one that links it are the same.
fn bpf_linker(root: &Path) -> Result<PathBuf> {
    let tools = root.join(".tools");
    let llvm_lib = tools.join("llvm/lib");
    let install_root = tools.join("bpf-linker");
    let bin_dir = install_root.join("bin");
    // The links are cheap and the binary's RUNPATH relies on them: (re)make them every time.
    link_nightly_llvm(&llvm_lib)?;
    if linker_works(&bin_dir.join("bpf-linker")) {
        return Ok(bin_dir);
    }
    let llvm = nightly_llvm_major()?;
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {llvm} into {} (about 70 s, once)",
        install_root.display()
    ));
    let started = Instant::now();
    exec(
        Command::new("cargo")
            .args([
                "+nightly",
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm}"),
            ])
            .args(["--force", "--root"])
            .arg(&install_root)
            .env("LLVM_PREFIX", tools.join("llvm")),
    )?;
    if !linker_works(&bin_dir.join("bpf-linker")) {
        bail!(
            "bpf-linker was built but does not run; see {}",
            bin_dir.display()
        );
    }
    step(&format!("bpf-linker ready after {:.0?}", started.elapsed()));
    Ok(bin_dir)
}

/// `llvm/lib/libLLVM.so` for the build, plus the versioned name the linked binary asks for.
fn link_nightly_llvm(llvm_lib: &Path) -> Result<()> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()?;
    if !out.status.success() {
        bail!("the nightly toolchain is missing: rustc +nightly --print sysroot failed");
    }
    let sysroot_lib = PathBuf::from(String::from_utf8(out.stdout)?.trim()).join("lib");
    let lib = fs::read_dir(&sysroot_lib)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .with_context(|| format!("no libLLVM.so.*-rust-* in {}", sysroot_lib.display()))?;
    fs::create_dir_all(llvm_lib)?;
    for name in [
        PathBuf::from("libLLVM.so"),
        PathBuf::from(lib.file_name().unwrap()),
    ] {
        let link = llvm_lib.join(name);
        if fs::read_link(&link).is_ok_and(|target| target == lib) {
            continue;
        }
        // A stale link from another nightly: replace it.
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link)?;
        }
        symlink(&lib, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(())
}

fn linker_works(bin: &Path) -> bool {
    Command::new(bin).arg("--version").output().is_ok_and(|o| {
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
    })
}

/// schemathesis in its own venv, `.tools/venv` (the API test runs `.tools/venv/bin/schemathesis`),
/// made with Debian's Python so another Python on PATH (pyenv, say) does not matter.
fn schemathesis(root: &Path) -> Result<()> {
    let venv = root.join(".tools/venv");
    let bin = venv.join("bin/schemathesis");
    let works = |bin: &Path| {
        Command::new(bin).arg("--version").output().is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(SCHEMATHESIS_VERSION)
        })
    };
    if works(&bin) {
        return Ok(());
    }
    step(&format!(
        "installing schemathesis {SCHEMATHESIS_VERSION} into {} (pip, ~30 s, once)",
        venv.display()
    ));
    if !venv.join("bin/pip").exists() {
        exec(
            Command::new("/usr/bin/python3")
                .args(["-m", "venv"])
                .arg(&venv),
        )?;
    }
    exec(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("schemathesis=={SCHEMATHESIS_VERSION}")),
    )?;
    if !works(&bin) {
        bail!(
            "schemathesis was installed but does not run; see {}",
            venv.display()
        );
    }
    Ok(())
}

/// kubernetes-validate and jsonschema in the same venv as schemathesis (made by [`schemathesis`]).
fn manifest_validators(root: &Path) -> Result<()> {
    let venv = root.join(".tools/venv");
    let installed = |package: &str, version: &str| {
        Command::new(venv.join("bin/python"))
            .args([
                "-c",
                &format!("import importlib.metadata as m; print(m.version('{package}'))"),
            ])
            .output()
            .is_ok_and(|o| {
                o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == version
            })
    };
    let wanted = [
        ("kubernetes-validate", KUBERNETES_VALIDATE_VERSION),
        ("jsonschema", JSONSCHEMA_VERSION),
    ];
    if wanted.iter().all(|(p, v)| installed(p, v)) {
        return Ok(());
    }
    step(&format!(
        "installing kubernetes-validate {KUBERNETES_VALIDATE_VERSION} and jsonschema \
         {JSONSCHEMA_VERSION} into {} (pip, ~10 s, once)",
        venv.display()
    ));
    exec(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(wanted.iter().map(|(p, v)| format!("{p}=={v}"))),
    )?;
    if let Some((p, _)) = wanted.iter().find(|(p, v)| !installed(p, v)) {
        bail!(
            "{p} was installed but cannot be found; see {}",
            venv.display()
        );
    }
    Ok(())
}

/// The second kernel the delay tests boot (Debian's 6.12, with sch_fq and sch_netem), qemu and
/// the initramfs: tests/vm/run-in-vm.sh --prepare caches them under target/vm, once.
fn vm_kernel(root: &Path) -> Result<()> {
    let cache = root.join("target/vm");
    // The script checks its own cache (and its initramfs version): cheap when all is there.
    if !cache.join("ready").exists() {
        require_root("installing qemu and the test kernel")?;
        step(&format!(
            "preparing the 6.12 test kernel and qemu in {} (apt-get and a ~110 MB download, about a minute, once)",
            cache.display()
        ));
    }
    exec(
        Command::new("bash")
            .arg(root.join("tests/vm/run-in-vm.sh"))
            .arg("--prepare")
            .env("VM_CACHE", &cache),
    )
}

/// Namespaces whose names start with `prefix`, still present.
pub fn leftover_namespaces(prefix: &str) -> Result<Vec<String>> {
    let dir = Path::new("/run/netns");
    if !dir.exists() {
        return Ok(Vec::new());
    }
    Ok(fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect())
}
