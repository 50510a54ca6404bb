//! `cargo xtask bench`: chaos's per-packet cost, scale and fidelity, beside the alternatives.
//!
//! Every figure is taken in one run and reported as a ratio or a difference against a baseline
//! measured in the same run, interleaved with it: absolute times on shared 2-core machines drift
//! from run to run. Each section returns machine-readable data (`bench/latest.json`, schema in
//! `bench/README.md`), markdown tables (`bench/latest.md`) and the targets it checks.
//!
//! Arguments: `--out DIR` (default `bench`), `--only a,b` (sections by id), `--quick` (fewer
//! rounds and packets, for trying the harness out; its figures are not for publishing),
//! `--readme FILE` (after a full run of every section, put the summary between the bench
//! markers in FILE).
//! `--vm-part FILE` is internal: the VM section runs this binary inside the 6.12 kernel with it.

mod control;
mod e2e;
mod fidelity;
mod live;
mod memory;
mod micro;
mod plot;
mod proxy;
mod report;
mod scale;
mod stats;
mod targets;
mod vm;

use std::{path::PathBuf, time::Instant};

use report::{Report, Section};

/// What every section gets: how hard to try.
pub struct Ctx {
    /// Fewer rounds and packets: for developing the harness, not for publishing.
    pub quick: bool,
}

impl Ctx {
    /// `full` normally, `quick` with `--quick`.
    pub fn scale<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
}

type SectionFn = fn(&Ctx) -> Section;

const SECTIONS: &[(&str, SectionFn)] = &[
    ("micro", micro::run),
    ("live", live::run),
    ("e2e", e2e::run),
    ("proxy", proxy::run),
    ("fidelity", fidelity::run),
    ("vm", vm::run),
    ("control", control::run),
    ("memory", memory::run),
    ("targets", targets::run),
];

fn main() {
    let mut out = PathBuf::from("bench");
    let mut only: Option<Vec<String>> = None;
    let mut quick = false;
    let mut readme: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--out" => out = args.next().expect("--out DIR").into(),
            "--only" => {
                only = Some(
                    args.next()
                        .expect("--only SECTION,...")
                        .split(',')
                        .map(str::to_owned)
                        .collect(),
                );
            }
            "--quick" => quick = true,
            "--readme" => readme = Some(args.next().expect("--readme FILE").into()),
            "--vm-part" => {
                let file = args.next().expect("--vm-part FILE");
                vm::inside(&Ctx { quick }, &PathBuf::from(file));
                return;
            }
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            other => panic!("unknown argument {other:?} (try --out, --only, --quick)"),
        }
    }
    if let Some(only) = &only {
        for id in only {
            assert!(
                SECTIONS.iter().any(|(s, _)| s == id),
                "no section {id:?}; sections: {}",
                SECTIONS
                    .iter()
                    .map(|(s, _)| *s)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let ctx = Ctx { quick };
    let mut report = Report::new(quick);
    let started = Instant::now();
    for (id, run) in SECTIONS {
        if only.as_ref().is_some_and(|o| !o.iter().any(|s| s == id)) {
            continue;
        }
        eprintln!(
            "bench: {id} ({:.0} s into the run)",
            started.elapsed().as_secs_f64()
        );
        let section = run(&ctx);
        for t in &section.targets {
            eprintln!(
                "bench:   target {}: {} (want {}) {}",
                t.name,
                t.measured,
                t.goal,
                if t.met { "met" } else { "MISSED" }
            );
        }
        report.sections.push(section);
    }
    report.elapsed_s = started.elapsed().as_secs_f64();
    std::fs::create_dir_all(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    match plot::draw(&report.sections, &out.join("latest.png")) {
        Ok(()) => report.plot = Some("latest.png".to_owned()),
        Err(e) => eprintln!("bench: no plot: {e}"),
    }
    report.write(&out);
    // Only a full run of every section speaks for the project in its README.
    if let Some(readme) = readme.filter(|_| !quick && only.is_none()) {
        report.update_readme(&readme);
        eprintln!("bench: updated the summary in {}", readme.display());
    }
    eprintln!(
        "bench: wrote {0}/latest.json and {0}/latest.md in {1:.0} s",
        out.display(),
        report.elapsed_s
    );
}
