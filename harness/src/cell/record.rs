//! The record of a cell in progress: its phases on one clock, its checks,
//! and which phase it stopped in.

use std::path::PathBuf;
use std::time::Instant;

use crate::phase::Phase;
use crate::report::{Check, Timing, Verdict};

/// A phase's way of stopping the cell.
pub type Stop = Verdict;

/// Where progress lines go; lanes report from their own threads.
pub type Progress<'a> = &'a (dyn Fn(&str) + Sync);

/// A cell in progress: its directory, the phase clock and the checks so far.
pub struct Run<'a> {
    pub dir: PathBuf,
    pub phases: Vec<Timing>,
    pub checks: Vec<Check>,
    /// The phase running now; after a stop, the phase it stopped in.
    pub current: Option<Phase>,
    pub progress: Progress<'a>,
    pub name: String,
    pub kernel_built: bool,
    pub retries: Vec<String>,
    /// When the cell started; phases record their start from it.
    t0: Instant,
}

impl<'a> Run<'a> {
    pub fn new(name: &str, dir: PathBuf, progress: Progress<'a>) -> Run<'a> {
        Run {
            dir,
            phases: Vec::new(),
            checks: Vec::new(),
            current: None,
            progress,
            name: name.to_owned(),
            kernel_built: false,
            retries: Vec::new(),
            t0: Instant::now(),
        }
    }

    /// Time `f` as `phase`.
    pub fn phase<T>(&mut self, phase: Phase, f: impl FnOnce(&mut Self) -> Result<T, Stop>) -> Result<T, Stop> {
        (self.progress)(&format!("{}: {phase}", self.name));
        self.current = Some(phase);
        let t = Instant::now();
        let r = f(self);
        let start = t.duration_since(self.t0).as_secs_f64();
        self.phases.push(Timing { phase, start, seconds: t.elapsed().as_secs_f64() });
        if r.is_ok() {
            self.current = None;
        }
        r
    }

    /// Record `part` of the current phase, begun at `t`, beside the phases
    /// (`results.json`), and log it.
    pub fn part(&mut self, part: Phase, t: Instant) {
        let (start, seconds) = (t.duration_since(self.t0).as_secs_f64(), t.elapsed().as_secs_f64());
        tracing::info!("{}: {part} took {seconds:.1} s", self.name);
        self.phases.push(Timing { phase: part, start, seconds });
    }

    /// An empty run on the same clock, for phases run on another thread.
    pub fn lane(&self) -> Run<'a> {
        Run { t0: self.t0, ..Run::new(&self.name, self.dir.clone(), self.progress) }
    }

    /// Take in the phases, checks and retries of a lane that has ended.
    pub fn merge(&mut self, lane: Run) {
        self.phases.extend(lane.phases);
        self.checks.extend(lane.checks);
        self.retries.extend(lane.retries);
    }

    /// Of this run's result and those of lanes it waited for, the one that
    /// stops the cell ([`first_stop`]), with its phase made current.
    pub fn stop_first(&mut self, stops: Vec<(Option<Phase>, Result<(), Stop>)>) -> Result<(), Stop> {
        match first_stop(stops) {
            Some((phase, v)) => {
                self.current = phase;
                Err(v)
            }
            None => Ok(()),
        }
    }

    /// Record a check; a non-passing one stops the cell.
    pub fn check(&mut self, name: &str, v: Verdict) -> Result<(), Stop> {
        self.record(Check::new(name, v))
    }

    /// Record a check made before, with the same inputs (regen's cache).
    pub fn cached_check(&mut self, name: &str, v: Verdict) -> Result<(), Stop> {
        self.record(Check { cached: true, ..Check::new(format!("{name} (cached)"), v) })
    }

    /// A check that was not run, and why: counted as a skip.
    pub fn skip(&mut self, name: &str, why: String) {
        self.checks.push(Check::new(name, Verdict::Skip(why)));
    }

    fn record(&mut self, check: Check) -> Result<(), Stop> {
        let v = check.verdict.clone();
        self.checks.push(check);
        match v {
            Verdict::Pass | Verdict::Skip(_) => Ok(()),
            bad => Err(bad),
        }
    }

    /// `msg` about this cell, for the progress line.
    pub fn say(&self, msg: &str) {
        (self.progress)(&prefixed(&self.name, msg));
    }
}

/// Of the lanes' results (each with the phase it stopped in), the stop
/// that comes first in flow order ([`Phase::rank`]): the verdict the cell
/// would have had with the lanes run one after the other.
fn first_stop(stops: Vec<(Option<Phase>, Result<(), Stop>)>) -> Option<(Option<Phase>, Stop)> {
    stops.into_iter().filter_map(|(phase, r)| r.err().map(|v| (phase, v))).min_by_key(|(phase, _)| Phase::rank(*phase))
}

/// `msg` about the cell `name`; a status stays one.
pub fn prefixed(name: &str, msg: &str) -> String {
    match msg.strip_prefix(crate::progress::STATUS) {
        Some(status) => format!("{}{name}: {status}", crate::progress::STATUS),
        None => format!("{name}: {msg}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn of_several_lanes_stopping_the_first_phase_in_flow_order_is_the_verdict() {
        let stop = |phase, why: &str| (Some(phase), Err(Verdict::Fail(why.into())));
        let ok = || (None, Ok(()));
        assert!(first_stop(vec![ok(), ok(), ok()]).is_none());
        let got = first_stop(vec![ok(), stop(Phase::Modbuild, "no .ko"), stop(Phase::Kselftest, "not ok 3")]).unwrap();
        assert_eq!(got, (Some(Phase::Kselftest), Verdict::Fail("not ok 3".into())));
        let got = first_stop(vec![stop(Phase::Pull, "not the build's archive"), stop(Phase::Extract, "SPDX lost"), ok()]).unwrap();
        assert_eq!(got.0, Some(Phase::Pull));
        let got = first_stop(vec![stop(Phase::Load, "no Hello"), ok(), stop(Phase::FromImage, "no archive in vmlinux")]).unwrap();
        assert_eq!(got.0, Some(Phase::FromImage));
    }

    #[test]
    fn a_cached_check_says_so_in_its_flag_and_its_name() {
        let mut run = Run::new("c", PathBuf::from("/nowhere"), &|_| {});
        run.cached_check("a new header regenerates the archive (K6)", Verdict::Pass).unwrap();
        run.check("fresh", Verdict::Pass).unwrap();
        assert!(run.checks[0].cached && run.checks[0].name.ends_with("(cached)"));
        assert!(!run.checks[1].cached);
        assert!(run.check("bad", Verdict::Fail("x".into())).is_err());
    }
}
