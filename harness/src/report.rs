//! The report: each cell's verdict, phase times and checks, as a
//! table for people and `results.json` for tools.
//!
//! PASS: every check passed. FAIL: a check found the kernel (or the series)
//! at fault, including a kernel build that broke once its tree and config
//! were accepted. ERROR: the harness or the host failed (a missing tool, a
//! full disk, a timeout, a killed make, a hung guest), so nothing is known
//! about the kernel. SKIP: not run, with why. [`crate::exit_codes`] tells
//! them apart to scripts.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

pub use crate::phase::Phase;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "UPPERCASE")]
pub enum Verdict {
    Pass,
    Fail(String),
    Error(String),
    Skip(String),
}

impl Verdict {
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail(_) => "FAIL",
            Verdict::Error(_) => "ERROR",
            Verdict::Skip(_) => "SKIP",
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Verdict::Pass => "",
            Verdict::Fail(r) | Verdict::Error(r) | Verdict::Skip(r) => r,
        }
    }

    pub fn is_bad(&self) -> bool {
        matches!(self, Verdict::Fail(_) | Verdict::Error(_))
    }
}

/// When one phase ran. Phases after the build overlap (the host checks run
/// while the guest boots), so a cell's time is a span, not a sum.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    #[serde(rename = "name")]
    pub phase: Phase,
    /// Seconds from the start of the cell.
    pub start: f64,
    pub seconds: f64,
}

/// One named check inside a cell.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The outcome is an earlier run's, remembered with the same inputs
    /// (regen); the name says so too, for people.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
}

impl Check {
    pub fn new(name: impl Into<String>, verdict: Verdict) -> Check {
        Check { name: name.into(), verdict, cached: false }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CellReport {
    pub cell: String,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The phase that was running when the cell stopped, if it did not pass.
    pub failed_phase: Option<Phase>,
    pub phases: Vec<Timing>,
    pub checks: Vec<Check>,
    /// Whether this run (re)linked the kernel image, i.e. did not find
    /// the build up to date in the cache.
    pub kernel_built: bool,
    /// What was tried again and why (a boot that hung or whose QEMU died;
    /// never a crash). Shown with the verdict: a retried PASS says so.
    pub retries: Vec<String>,
    /// The cell's directory: logs, `.config`, archive, results.
    pub dir: PathBuf,
    /// Command that reruns just this cell.
    pub reproducer: String,
}

impl CellReport {
    pub fn phase_seconds(&self, phase: Phase) -> Option<f64> {
        self.phases.iter().find(|p| p.phase == phase).map(|p| p.seconds)
    }

    /// Wall time from the start of the first of `phases` to the end of the
    /// last of them (all phases if `phases` is empty); 0 if none ran.
    pub fn span_seconds(&self, phases: &[Phase]) -> f64 {
        let ran = || self.phases.iter().filter(|p| phases.is_empty() || phases.contains(&p.phase));
        let start = ran().map(|p| p.start).fold(f64::INFINITY, f64::min);
        let end = ran().map(|p| p.start + p.seconds).fold(f64::NEG_INFINITY, f64::max);
        if end >= start {
            end - start
        } else {
            0.0
        }
    }

    pub fn write_json(&self) -> Result<PathBuf> {
        let path = self.dir.join("results.json");
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&path, text + "\n").with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// A few lines for a person: verdict, why, where the logs are.
    pub fn explain(&self) -> String {
        let mut s = format!("{} {}", self.verdict.label(), self.cell);
        if let Some(p) = &self.failed_phase {
            let _ = write!(s, " (in phase {p})");
        }
        if !self.verdict.reason().is_empty() {
            let _ = write!(s, ": {}", self.verdict.reason());
        }
        // The check that stopped the cell is the verdict already.
        for c in self.checks.iter().filter(|c| c.verdict != Verdict::Pass && c.verdict != self.verdict) {
            // A reason of several lines is indented under its check.
            let _ = write!(s, "\n  check {}: {} {}", c.name, c.verdict.label(), c.verdict.reason().replace('\n', "\n  "));
        }
        for r in &self.retries {
            let _ = write!(s, "\n  retried: {r}");
        }
        let _ = write!(s, "\n  logs: {}", self.dir.display());
        if self.verdict.is_bad() {
            let _ = write!(s, "\n  rerun: {}", self.reproducer);
        }
        s
    }
}

/// The summary table of a run.
pub fn table(reports: &[CellReport]) -> String {
    let width = reports.iter().map(|r| r.cell.len()).max().unwrap_or(4).max(4);
    let mut s = format!("{:width$}  {:7}", "cell", "verdict");
    for p in Phase::TABLE {
        let _ = write!(s, " {:>9}", p.name());
    }
    s.push_str("     total\n");
    for r in reports {
        // A retried cell is marked: PASS* is a pass after a retry.
        let label = format!("{}{}", r.verdict.label(), if r.retries.is_empty() { "" } else { "*" });
        let _ = write!(s, "{:width$}  {label:7}", r.cell);
        for p in Phase::TABLE {
            match r.phase_seconds(p) {
                Some(t) => {
                    let _ = write!(s, " {t:>8.1}s");
                }
                None => s.push_str("         -"),
            }
        }
        let _ = writeln!(s, " {:>8.1}s", r.span_seconds(&[]));
    }
    s
}

/// Where a cell's results go.
pub fn cell_dir(out: &Path, cell: &str) -> PathBuf {
    out.join(cell)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(verdict: Verdict) -> CellReport {
        CellReport {
            cell: "x86_64-y-o".into(),
            verdict,
            failed_phase: Some(Phase::Load),
            phases: vec![Timing { phase: Phase::Build, start: 0.0, seconds: 100.0 }, Timing { phase: Phase::Load, start: 100.0, seconds: 2.5 }],
            checks: vec![
                Check::new("module loads", Verdict::Fail("no Hello, world".into())),
                Check::new("module unloads", Verdict::Fail("module did not load".into())),
            ],
            kernel_built: false,
            retries: Vec::new(),
            dir: "/out/x86_64-y-o".into(),
            reproducer: "khtest run x86_64-y-o".into(),
        }
    }

    #[test]
    fn json_has_status_reason_and_phases() {
        let v: serde_json::Value = serde_json::to_value(report(Verdict::Fail("boom".into()))).unwrap();
        assert_eq!(v["status"], "FAIL");
        assert_eq!(v["reason"], "boom");
        assert_eq!(v["phases"][0]["name"], "build");
        assert_eq!(v["failed_phase"], "load");
        assert!(v["checks"][0].get("cached").is_none(), "only a cached check says so");
        assert_eq!(v["checks"][0]["status"], "FAIL");
        let v = serde_json::to_value(report(Verdict::Pass)).unwrap();
        assert_eq!(v["status"], "PASS");
    }

    #[test]
    fn table_and_explanation() {
        let r = report(Verdict::Fail("module did not load".into()));
        let t = table(std::slice::from_ref(&r));
        assert!(t.contains("x86_64-y-o  FAIL") && t.contains("100.0s") && t.contains("2.5s") && t.contains("102.5s"), "{t}");
        let e = r.explain();
        assert!(e.contains("(in phase load)") && e.contains("rerun: khtest run x86_64-y-o") && e.contains("check module loads: FAIL"), "{e}");
        assert!(!e.contains("check module unloads"), "the verdict's own check is repeated: {e}");
        let mut r = report(Verdict::Fail("extract: files missing".into()));
        r.checks[0].verdict = Verdict::Fail("not ok 1\n  not ok 3 module builds".into());
        assert!(r.explain().contains("check module loads: FAIL not ok 1\n    not ok 3 module builds"), "{}", r.explain());
        assert!(!report(Verdict::Pass).explain().contains("rerun"));
    }

    #[test]
    fn a_retried_cell_says_so() {
        let mut r = report(Verdict::Pass);
        r.failed_phase = None;
        r.checks.clear();
        r.retries.push("boot: timed out after 120 s during boot".into());
        assert!(table(std::slice::from_ref(&r)).contains("PASS*"));
        assert!(r.explain().contains("retried: boot: timed out"), "{}", r.explain());
    }

    #[test]
    fn exit_codes_tell_the_kernels_fault_from_the_hosts() {
        use crate::exit_codes::*;
        let with = |vs: &[Verdict]| of_run(&vs.iter().cloned().map(report).collect::<Vec<_>>());
        assert_eq!(with(&[]), OK);
        assert_eq!(with(&[Verdict::Pass, Verdict::Skip("arm64 only".into())]), OK);
        assert_eq!(with(&[Verdict::Pass, Verdict::Fail("no Hello".into())]), CELL_FAILED);
        assert_eq!(with(&[Verdict::Error("no qemu".into()), Verdict::Pass]), HOST_ERROR);
        assert_eq!(with(&[Verdict::Fail("x".into()), Verdict::Error("y".into())]), HOST_ERROR);
    }

    #[test]
    fn overlapping_phases_count_once() {
        let mut r = report(Verdict::Pass);
        let p = |phase, start: f64, seconds: f64| Timing { phase, start, seconds };
        r.phases = vec![
            p(Phase::Build, 0.0, 100.0),
            p(Phase::Boot, 100.0, 2.0),
            p(Phase::Extract, 100.0, 5.0),
            p(Phase::Kselftest, 101.0, 3.0),
            p(Phase::Load, 105.0, 0.5),
        ];
        assert!((r.span_seconds(&[]) - 105.5).abs() < 1e-9);
        assert!((r.span_seconds(&[Phase::Boot, Phase::Extract, Phase::Kselftest, Phase::Load]) - 5.5).abs() < 1e-9);
        assert!((r.span_seconds(&[Phase::Boot, Phase::Kselftest]) - 4.0).abs() < 1e-9);
        assert_eq!(r.span_seconds(&[Phase::Regen]), 0.0);
        assert!(table(std::slice::from_ref(&r)).contains("105.5s"));
    }
}
