//! Builds the eBPF object with aya-build so a plain `cargo build` produces a `chaos` binary with
//! its kernel program embedded. Needs the nightly toolchain with rust-src and bpf-linker on PATH;
//! `cargo xtask` installs both.

use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // aya-build tracks chaos-ebpf; the shared types it compiles in live in chaos-common.
    println!("cargo:rerun-if-changed=../chaos-common/src");
    println!("cargo:rerun-if-env-changed=PATH");
    let ebpf = Package {
        name: "chaos-ebpf",
        root_dir: "../chaos-ebpf",
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::default())
        .context("building chaos-ebpf (run `cargo xtask build` to install its toolchain)")
}
