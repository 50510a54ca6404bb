//! The bench's report: one JSON document and one markdown page, written together.

use std::{path::Path, process::Command};

use serde_json::{Value, json};

/// A table for the markdown page.
#[derive(Debug, Default)]
pub struct Table {
    pub caption: String,
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(caption: &str, headers: &[&str]) -> Self {
        Self {
            caption: caption.to_owned(),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(
            cells.len(),
            self.headers.len(),
            "{}: row width",
            self.caption
        );
        self.rows.push(cells);
    }

    fn markdown(&self) -> String {
        let mut s = String::new();
        if !self.caption.is_empty() {
            s.push_str(&format!("{}\n\n", self.caption));
        }
        s.push_str(&format!("| {} |\n", self.headers.join(" | ")));
        s.push_str(&format!(
            "|{}\n",
            self.headers.iter().map(|_| " --- |").collect::<String>()
        ));
        for r in &self.rows {
            // A '|' inside a cell would end it.
            let cells: Vec<String> = r.iter().map(|c| c.replace('|', "\\|")).collect();
            s.push_str(&format!("| {} |\n", cells.join(" | ")));
        }
        s
    }
}

/// A goal the bench checks against its own measurement.
#[derive(Debug)]
pub struct Target {
    pub name: String,
    pub goal: String,
    pub measured: String,
    pub met: bool,
}

/// One part of the bench (micro, live, ...).
#[derive(Debug)]
pub struct Section {
    pub id: &'static str,
    pub title: &'static str,
    /// What was measured, machine-readable; each section's shape is in bench/README.md.
    pub data: Value,
    pub tables: Vec<Table>,
    pub targets: Vec<Target>,
    /// How it was measured, and what to keep in mind reading it.
    pub notes: Vec<String>,
}

impl Section {
    pub fn new(id: &'static str, title: &'static str) -> Self {
        Self {
            id,
            title,
            data: json!({}),
            tables: Vec::new(),
            targets: Vec::new(),
            notes: Vec::new(),
        }
    }

    pub fn target(&mut self, name: &str, goal: &str, measured: String, met: bool) {
        self.targets.push(Target {
            name: name.to_owned(),
            goal: goal.to_owned(),
            measured,
            met,
        });
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// A section that could not run here, saying why (never a made-up figure).
    pub fn skipped(id: &'static str, title: &'static str, why: String) -> Self {
        let mut s = Self::new(id, title);
        s.data = json!({ "skipped": why });
        s.note(format!("Not measured: {why}"));
        s
    }
}

pub struct Report {
    pub quick: bool,
    /// The picture beside latest.md, if one was drawn.
    pub plot: Option<String>,
    pub elapsed_s: f64,
    pub sections: Vec<Section>,
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default()
}

impl Report {
    pub fn new(quick: bool) -> Self {
        Self {
            quick,
            plot: None,
            elapsed_s: 0.0,
            sections: Vec::new(),
        }
    }

    fn machine() -> Value {
        json!({
            "kernel": command_line("uname", &["-r"]),
            "cpu": cpu_model(),
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "os": std::fs::read_to_string("/etc/debian_version").unwrap_or_default().trim(),
            "date": command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
            "commit": command_line("git", &["rev-parse", "--short", "HEAD"]),
        })
    }

    pub fn write(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let machine = Self::machine();
        let targets: Vec<Value> = self
            .sections
            .iter()
            .flat_map(|s| {
                s.targets.iter().map(|t| {
                    json!({"section": s.id, "name": t.name, "goal": t.goal, "measured": t.measured, "met": t.met})
                })
            })
            .collect();
        let mut sections = serde_json::Map::new();
        for s in &self.sections {
            sections.insert(
                s.id.to_owned(),
                json!({ "title": s.title, "data": s.data, "notes": s.notes }),
            );
        }
        let doc = json!({
            "schema": 1,
            "quick": self.quick,
            "elapsed_s": self.elapsed_s,
            "machine": machine,
            "targets": targets,
            "sections": sections,
        });
        let json_path = dir.join("latest.json");
        std::fs::write(
            &json_path,
            serde_json::to_string_pretty(&doc).unwrap() + "\n",
        )
        .unwrap_or_else(|e| panic!("{}: {e}", json_path.display()));
        let md_path = dir.join("latest.md");
        std::fs::write(&md_path, self.markdown(&machine))
            .unwrap_or_else(|e| panic!("{}: {e}", md_path.display()));
    }

    /// Replaces the part of `readme` between the bench markers with this run's summary: the
    /// machine line and the targets table.
    pub fn update_readme(&self, readme: &Path) {
        const START: &str = "<!-- bench:start -->";
        const END: &str = "<!-- bench:end -->";
        let text =
            std::fs::read_to_string(readme).unwrap_or_else(|e| panic!("{}: {e}", readme.display()));
        let (Some(a), Some(b)) = (text.find(START), text.find(END)) else {
            panic!("{} has no {START} ... {END} markers", readme.display());
        };
        let machine = Self::machine();
        let md = self.markdown(&machine);
        // The page's first paragraph (machine line) and its targets table.
        let headline = md.lines().nth(2).unwrap_or_default();
        let targets = md
            .split("## Targets\n\n")
            .nth(1)
            .and_then(|t| t.split("\n\n").next())
            .unwrap_or_default();
        let summary = format!("{START}\n{headline}\n\n{targets}\n{END}");
        let updated = format!("{}{summary}{}", &text[..a], &text[b + END.len()..]);
        std::fs::write(readme, updated).unwrap_or_else(|e| panic!("{}: {e}", readme.display()));
    }

    fn markdown(&self, machine: &Value) -> String {
        let mut s = String::from("# chaos bench\n\n");
        s.push_str(&format!(
            "Kernel {}, {} × {}, Debian {}, commit {}, {}; the run took {:.0} s.{}\n\n",
            machine["kernel"].as_str().unwrap_or("?"),
            machine["cpus"],
            machine["cpu"].as_str().unwrap_or("?"),
            machine["os"].as_str().unwrap_or("?"),
            machine["commit"].as_str().unwrap_or("?"),
            machine["date"].as_str().unwrap_or("?"),
            self.elapsed_s,
            if self.quick {
                " **Quick run: fewer rounds, not for publishing.**"
            } else {
                ""
            }
        ));
        let mut targets = Table::new("", &["target", "goal", "measured", "met"]);
        for sec in &self.sections {
            for t in &sec.targets {
                targets.row(vec![
                    format!("{} ({})", t.name, sec.id),
                    t.goal.clone(),
                    t.measured.clone(),
                    if t.met { "yes" } else { "**no**" }.to_owned(),
                ]);
            }
        }
        s.push_str("## Targets\n\n");
        s.push_str(&targets.markdown());
        if let Some(plot) = &self.plot {
            s.push_str(&format!("\n![per-packet cost against scale]({plot})\n"));
        }
        for sec in &self.sections {
            s.push_str(&format!("\n## {}\n\n", sec.title));
            for t in &sec.tables {
                s.push_str(&t.markdown());
                s.push('\n');
            }
            for n in &sec.notes {
                s.push_str(&format!("- {n}\n"));
            }
        }
        s
    }
}
