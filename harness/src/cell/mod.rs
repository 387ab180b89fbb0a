//! One cell through every stage: preflight → tree → configure → build →
//! rebuild → regen → image, then lanes at once: the guest (boot → pull →
//! load), the host's (extract, then modbuild beside bpf; the kselftest;
//! from-image) and the device's. This file is the flow and nothing else:
//! [`record`] times the phases and keeps the checks, [`build`] is the
//! build glue, [`guest`] the guest's protocol, [`host`] the host's lanes
//! and [`device`] the device lane. The first phase that stops (in flow
//! order, across lanes) gives the cell its verdict: FAIL (the kernel's
//! fault) or ERROR (the harness's or the host's), as [`crate::blame`] says.

mod build;
mod device;
mod guest;
mod host;
mod record;

use std::path::PathBuf;
use std::thread::{Scope, ScopedJoinHandle};
use std::time::Duration;

pub use build::{build_key, build_only, Built};
pub use guest::boot_retrying_once;
pub use record::Progress;

use crate::blame;
use crate::matrix::{Cell, Matrix};
use crate::phase::Phase;
use crate::report::{cell_dir, CellReport, Verdict};
use crate::symvers::SymbolVersions;
use crate::tree::{self, Source};
use crate::vm::{Spec, Timeouts};
use crate::{image, kbuild, Project};
use host::Host;
use record::{Run, Stop};

/// What every cell of a run shares.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cache_dir: PathBuf,
    pub out_dir: PathBuf,
    /// `--tree`: one source for every cell (default: each cell's kernel
    /// from Debian).
    pub source: Option<Source>,
    pub timeouts: Timeouts,
    /// The longest a kernel build may take.
    pub build_limit: Duration,
    /// Keep the bulky artifacts (the initramfs) of passing cells too;
    /// failing cells always keep everything, and every cell its unpacked
    /// archive (`headers/`, rewritten in place by the next run).
    pub keep: bool,
    /// The command that reruns one cell, with `{cell}` for its name.
    pub rerun: String,
    /// Run the checks whose passing outcome is cached (regen) again.
    pub fresh: bool,
}

impl Settings {
    /// The defaults: the shared cache, this repository's output directory,
    /// each cell's kernel from Debian, the usual timeouts, a one-hour build
    /// limit, `KHTEST_FRESH` from the environment. `rerun` reruns a cell.
    pub fn new(project: &Project, rerun: impl Into<String>) -> Settings {
        Settings {
            cache_dir: crate::default_cache_dir(),
            out_dir: project.default_out_dir(),
            source: None,
            timeouts: Timeouts::default(),
            build_limit: Duration::from_secs(3600),
            keep: false,
            rerun: rerun.into(),
            fresh: crate::fresh_from_env(),
        }
    }
}

/// The device guest's initramfs, in the cell directory.
const DEVICE_INITRAMFS: &str = "device-initramfs.cpio";

/// The cell directory's unpacked archive, kept from one run to the next.
const HEADERS: &str = "headers";

/// Run `cell` and report; never panics on a cell's failure.
pub fn run(project: &Project, matrix: &Matrix, cell: &Cell, settings: &Settings, progress: Progress) -> CellReport {
    let dir = cell_dir(&settings.out_dir, &cell.name);
    let mut run = Run::new(&cell.name, dir.clone(), progress);
    let mut verdict = match steps(&mut run, project, matrix, cell, settings) {
        Ok(()) => Verdict::Pass,
        Err(v) => v,
    };
    if let Some(sig) = crate::process::interrupted() {
        verdict = Verdict::Error(format!("interrupted by signal {sig}; a rerun starts this cell again"));
    }
    if verdict == Verdict::Pass && !settings.keep {
        let _ = std::fs::remove_file(dir.join("initramfs.cpio"));
        let _ = std::fs::remove_file(dir.join(DEVICE_INITRAMFS));
    }
    let report = CellReport {
        cell: cell.name.clone(),
        failed_phase: if verdict == Verdict::Pass { None } else { run.current },
        verdict,
        phases: run.phases,
        checks: run.checks,
        kernel_built: run.kernel_built,
        retries: run.retries,
        dir,
        reproducer: settings.rerun.replace("{cell}", &cell.name),
    };
    if let Err(e) = report.write_json() {
        tracing::warn!("{e:#}");
    }
    report
}

/// Cells at once by default: on two cores, one cell's kernel build beside
/// another's guests (one TCG vCPU each) keeps both cores busy.
pub const DEFAULT_JOBS: usize = 2;

/// Run `cells`, up to `jobs` at once (their kernel builds still take
/// turns: [`build::kernel_build_turn`]), calling `done` with each report as
/// its cell ends; the reports come back in `cells`' order. No new cell
/// starts once the run is interrupted.
pub fn run_many(
    project: &Project,
    matrix: &Matrix,
    cells: &[&Cell],
    settings: &Settings,
    jobs: usize,
    progress: Progress,
    done: &(dyn Fn(&CellReport) + Sync),
) -> Vec<CellReport> {
    side_by_side(
        cells,
        jobs,
        || crate::process::interrupted().is_some(),
        |cell| {
            let r = run(project, matrix, cell, settings, progress);
            done(&r);
            r
        },
    )
}

/// `f` of each item, on up to `jobs` threads, taking the items in order;
/// the results in the items' order. Once `stop` says so, no item starts.
fn side_by_side<T: Sync, R: Send>(items: &[T], jobs: usize, stop: impl Fn() -> bool + Sync, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let next = AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(i) else { break };
                if stop() {
                    break;
                }
                let r = f(item);
                results.lock().unwrap().push((i, r));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// The phases up to the image, one after the other; then the lanes.
fn steps(run: &mut Run, project: &Project, matrix: &Matrix, cell: &Cell, s: &Settings) -> Result<(), Stop> {
    let cache = run.phase(Phase::Preflight, |run| build::preflight(run, cell, s))?;
    let tree = run.phase(Phase::Tree, |run| {
        tree::prepare(&cache, s.source.as_ref(), project, cell.kernel, cell.patched, &|m| run.say(m)).map_err(blame::host)
    })?;
    let request = kbuild::request(matrix, cell).map_err(blame::host)?;
    let (build_key, _build_lock) = build::lock_build(&cache, &tree, cell, &request).map_err(blame::host)?;
    // Copies of the source tree are disk work that another cell's kernel
    // build can overlap: made before this cell's turn.
    let build = build::object_tree(run, &cache, &tree, cell, &build_key)?;
    if cell.regen {
        build::regen_source(run, &cache, &tree, &build_key, s)?;
    }
    let build_turn = build::kernel_build_turn(&cache, &|m| run.say(m)).map_err(blame::host)?;
    let config = run.phase(Phase::Configure, |run| build::configure(run, &build, &request))?;
    if cell.modbuild {
        run.phase(Phase::Randstruct, |run| build::randstruct_check(run, &build, cell))?;
    }
    // The cell's copy of the build's archive: every later check reads it.
    let built = run.dir.join("kheaders_data.tar.xz");
    let (artifacts, build_was_noop) = run.phase(Phase::Build, |run| build::build_kernel(run, &cache, &build, &config, cell, s, &built))?;
    run.phase(Phase::Rebuild, |run| build::rebuild(run, &build, &artifacts.archive, build_was_noop, cell, s))?;
    if cell.patched && cell.modbuild {
        run.phase(Phase::Tracking, |run| build::tracking(run, &build))?;
    }
    if cell.regen {
        run.phase(Phase::Regen, |run| build::regen_checks(run, &cache, &tree, &build_key, &build, &artifacts.archive, s))?;
    }
    drop(build_turn);
    let initrd = run.dir.join("initramfs.cpio");
    run.phase(Phase::Image, |_| image::make(&project.images_dir(), cell.arch, artifacts.kheaders_ko.as_slice(), &[], &initrd).map_err(blame::host))?;
    let spec = Spec::new(cell.arch, &artifacts.kernel_image, &initrd, &run.dir, s.timeouts);
    let versions = SymbolVersions::of(&config, cell);
    let host = Host { project, cell, s, cache: &cache, tree: &tree, build: &build, artifacts: &artifacts, built: &built, versions };
    lanes(run, host, &spec)
}

/// The host's checks only need the build's archive (the pull proves the
/// guest serves the same bytes), so they run while the guest boots, in
/// lanes: unpack, then build the test module (which the load waits for)
/// beside the eBPF program; the kselftest, which unpacks and builds on
/// its own and takes longest; the archive out of the kernel files; and
/// the device.
fn lanes(run: &mut Run, host: Host<'_>, spec: &Spec) -> Result<(), Stop> {
    let (ko_tx, ko_rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        let lanes = [
            spawn_lane(scope, run.lane(), move |rec| host.modbuild_lane(rec, ko_tx)),
            spawn_lane(scope, run.lane(), move |rec| host.selftest_lane(rec)),
            spawn_lane(scope, run.lane(), move |rec| host.image_lane(rec)),
            spawn_lane(scope, run.lane(), move |rec| host.device_lane(rec)),
        ];
        let guest = guest::boot_and_pull(run, &host, spec).and_then(|mut guest| {
            // No module comes if the lane stopped or the archive has
            // headers only: the lane's own result says which.
            let r = match ko_rx.recv() {
                Ok(ko) => run.phase(Phase::Load, |run| guest::load(run, &mut guest, &ko, &host)),
                Err(_) => Ok(()),
            };
            guest.shutdown();
            r
        });
        let mut stops = vec![(run.current, guest)];
        for lane in lanes {
            let (rec, r) = lane.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            stops.push((rec.current, r));
            run.merge(rec);
        }
        run.phases.sort_by(|a, b| a.start.total_cmp(&b.start));
        run.stop_first(stops)
    })
}

/// Run `lane` on its own thread with its own record `rec`.
fn spawn_lane<'scope, 'a: 'scope>(
    scope: &'scope Scope<'scope, '_>,
    mut rec: Run<'a>,
    lane: impl FnOnce(&mut Run<'a>) -> Result<(), Stop> + Send + 'scope,
) -> ScopedJoinHandle<'scope, (Run<'a>, Result<(), Stop>)> {
    scope.spawn(move || {
        let r = lane(&mut rec);
        (rec, r)
    })
}

#[cfg(test)]
mod tests {
    use super::side_by_side;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn side_by_side_keeps_the_order_and_at_most_jobs_run_at_once() {
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let items: Vec<u64> = (0..7).collect();
        let out = side_by_side(
            &items,
            2,
            || false,
            |&i| {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(n, Ordering::SeqCst);
                // Later items end sooner: the results must still be in order.
                std::thread::sleep(Duration::from_millis(40 - 5 * i));
                now.fetch_sub(1, Ordering::SeqCst);
                i * 10
            },
        );
        assert_eq!(out, vec![0, 10, 20, 30, 40, 50, 60]);
        assert_eq!(most.load(Ordering::SeqCst), 2, "two jobs, seven items: two at once, never three");
    }

    #[test]
    fn side_by_side_starts_nothing_once_stopped() {
        let started = AtomicUsize::new(0);
        let items = [(); 5];
        let out = side_by_side(&items, 1, || started.load(Ordering::SeqCst) >= 2, |_| started.fetch_add(1, Ordering::SeqCst));
        assert_eq!(out, vec![0, 1], "the stop after two items starts no third");
    }

    #[test]
    fn side_by_side_of_nothing_is_nothing() {
        let out: Vec<()> = side_by_side(&[] as &[u8], 0, || false, |_| ());
        assert!(out.is_empty());
    }
}
