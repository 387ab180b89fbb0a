//! One cell through every stage: tree → configure → build → rebuild →
//! regen → image, then lanes at once: the guest (boot → pull → load), the
//! module lane (extract, then modbuild and bpf side by side), the kselftest
//! and from-image. Each phase is timed; the first phase that
//! fails (in the README's order, across lanes) stops the cell with FAIL
//! (the kernel's fault) or ERROR (the harness's or the host's).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cache::{key, Cache};
use crate::checks;
use crate::kbuild::{self, Build};
use crate::matrix::{BuildKind, Cell, Matrix, ModuleLoad};
use crate::report::{cell_dir, CellReport, Check, Phase, Verdict};
use crate::tree::{self, Source};
use crate::vm::{Guest, Spec, Timeouts, VmError};
use crate::{bpf, device, extract, image, progress, regen, tools, userland, Project};

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

/// A phase's way of stopping the cell.
type Stop = Verdict;

fn error(e: anyhow::Error) -> Stop {
    Verdict::Error(format!("{e:#}"))
}

/// A `make` that ran to its end and failed broke on the tree under test:
/// FAIL. Anything else (a tool that would not start, a timeout, a killed
/// make, a full disk) is the host's: ERROR.
fn build_stop(e: anyhow::Error) -> Stop {
    match e.downcast_ref::<kbuild::MakeFailed>() {
        Some(_) => Verdict::Fail(format!("{e:#}")),
        None => error(e),
    }
}

fn vm_stop(e: VmError) -> Stop {
    match e {
        VmError::Crash { .. } => Verdict::Fail(e.to_string()),
        _ => Verdict::Error(e.to_string()),
    }
}

/// Where progress lines go; lanes report from their own threads.
pub type Progress<'a> = &'a (dyn Fn(&str) + Sync);

/// A cell in progress: its directory, the phase clock and the checks so far.
struct Run<'a> {
    dir: PathBuf,
    phases: Vec<Phase>,
    checks: Vec<Check>,
    current: Option<String>,
    progress: Progress<'a>,
    name: String,
    kernel_built: bool,
    retries: Vec<String>,
    /// When the cell started; phases record their start from it.
    t0: Instant,
}

impl<'a> Run<'a> {
    /// Time `f` as phase `name`.
    fn phase<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<T, Stop>) -> Result<T, Stop> {
        (self.progress)(&format!("{}: {name}", self.name));
        self.current = Some(name.to_owned());
        let t = Instant::now();
        let r = f(self);
        let start = t.duration_since(self.t0).as_secs_f64();
        self.phases.push(Phase { name: name.to_owned(), start, seconds: t.elapsed().as_secs_f64() });
        if r.is_ok() {
            self.current = None;
        }
        r
    }

    /// Record the part `name` of the current phase, begun at `t`, beside
    /// the phases (`results.json`), and log it.
    fn part(&mut self, name: &str, t: Instant) {
        let (start, seconds) = (t.duration_since(self.t0).as_secs_f64(), t.elapsed().as_secs_f64());
        tracing::info!("{}: {name} took {seconds:.1} s", self.name);
        self.phases.push(Phase { name: name.to_owned(), start, seconds });
    }

    /// An empty run on the same clock, for phases run on another thread.
    fn lane(&self) -> Run<'a> {
        Run {
            phases: Vec::new(),
            checks: Vec::new(),
            current: None,
            kernel_built: false,
            retries: Vec::new(),
            name: self.name.clone(),
            dir: self.dir.clone(),
            ..*self
        }
    }

    /// Take in the phases, checks and retries of a lane that has ended.
    fn merge(&mut self, lane: Run) {
        self.phases.extend(lane.phases);
        self.checks.extend(lane.checks);
        self.retries.extend(lane.retries);
    }

    /// Of this run's result and those of lanes it waited for, the one that
    /// stops the cell ([`first_stop`]), with its phase made current.
    fn stop_first(&mut self, stops: Vec<(Option<String>, Result<(), Stop>)>) -> Result<(), Stop> {
        match first_stop(stops) {
            Some((phase, v)) => {
                self.current = phase;
                Err(v)
            }
            None => Ok(()),
        }
    }

    /// Record a check; a non-passing one stops the cell.
    fn check(&mut self, name: &str, v: Verdict) -> Result<(), Stop> {
        self.checks.push(Check { name: name.to_owned(), verdict: v.clone() });
        match v {
            Verdict::Pass | Verdict::Skip(_) => Ok(()),
            bad => Err(bad),
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
    let mut run = Run {
        dir: dir.clone(),
        phases: Vec::new(),
        checks: Vec::new(),
        current: None,
        progress,
        name: cell.name.clone(),
        kernel_built: false,
        retries: Vec::new(),
        t0: Instant::now(),
    };
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
        failed_phase: if verdict == Verdict::Pass { None } else { run.current.clone() },
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

fn steps(run: &mut Run, project: &Project, matrix: &Matrix, cell: &Cell, s: &Settings) -> Result<(), Stop> {
    let cache = run.phase("preflight", |run| preflight(run, cell, s))?;
    let tree = run.phase("tree", |run| {
        let (progress, name) = (run.progress, run.name.clone());
        tree::prepare(&cache, s.source.as_ref(), project, cell.kernel, cell.patched, &|m| progress(&prefixed(&name, m))).map_err(error)
    })?;
    let want = kbuild::requested(cell, &matrix.fragment_paths(cell)).map_err(error)?;
    let toolchain = tools::toolchain_key(cell.arch).map_err(error)?;
    let build_key = build_key(&tree.key, &toolchain, cell, &want);
    let _build_lock = cache.lock(&format!("build-{build_key}")).map_err(error)?;
    let build = object_tree(run, &cache, &tree, cell, &build_key)?;
    let config = run.phase("configure", |run| {
        let got = build.configure(&want, &run.dir.join("build.log")).map_err(|e| match e.downcast_ref::<kbuild::NotStuck>() {
            Some(n) => Verdict::Fail(n.to_string()),
            None => error(e),
        })?;
        copy(&build.obj.join(".config"), &run.dir.join("config"))?;
        Ok(got)
    })?;
    if cell.modbuild {
        run.phase("randstruct", |run| randstruct_check(run, &build, cell))?;
    }
    // The cell's copy of the build's archive: every later check reads it.
    let built = run.dir.join("kheaders_data.tar.xz");
    let (artifacts, build_was_noop) = run.phase("build", |run| build_kernel(run, &cache, &build, &config, cell, s, &built))?;
    run.phase("rebuild", |run| {
        let name = "no-op rebuild leaves the archive alone";
        if let Some(v) = build_was_noop {
            tracing::info!("{}: the build's make found the kernel built and left the archive alone: no second make", cell.name);
            return run.check(name, v);
        }
        let before = checks::snapshot(&artifacts.archive).map_err(|e| error(e.into()))?;
        let log = run.dir.join("rebuild.log");
        build.rebuild(&log, s.build_limit).map_err(build_stop)?;
        run.check(name, noop_verdict(&build, &before, &log, 0, cell)?)
    })?;
    if cell.patched && cell.modbuild {
        run.phase("tracking", |run| {
            let cmd = build.obj.join("kernel/.kheaders_data.tar.xz.cmd");
            let text = std::fs::read_to_string(&cmd).map_err(|e| Verdict::Error(format!("cannot read {}: {e}", cmd.display())))?;
            run.check("the archive's .cmd file tracks the top-level Makefile (K16)", checks::tracked_inputs(&text))
        })?;
    }
    if cell.regen {
        run.phase("regen", |run| {
            let scratch = tree.build_dir(&format!("{build_key}-regen"));
            let passed = regen::passed_path(&cache.root().join("results"), &build_key);
            regen_checks(run, &passed, &scratch, &build, &artifacts, s)
        })?;
    }
    let initrd = run.dir.join("initramfs.cpio");
    run.phase("image", |_| image::make(&project.images_dir(), cell.arch, artifacts.kheaders_ko.as_slice(), &[], &initrd).map_err(error))?;
    let spec = Spec {
        arch: cell.arch,
        kernel: artifacts.kernel_image.clone(),
        initrd,
        dir: run.dir.clone(),
        memory_mib: 512,
        timeouts: s.timeouts,
        shares: Vec::new(),
        cpus: 1,
    };
    let host = Host { project, cell, s, cache: &cache, tree: &tree, build: &build, artifacts: &artifacts, built: &built };
    lanes(run, host, &spec)
}

/// RANDSTRUCT and the module-build archive cannot meet (K15): Kconfig must
/// drop one when both are asked for. The probe needs gcc's plugin headers
/// for the cell's compiler, which only the host's has here.
fn randstruct_check(run: &mut Run, build: &Build, cell: &Cell) -> Result<(), Stop> {
    let name = "Kconfig drops the module-build archive when RANDSTRUCT is on";
    if !cell.arch.is_host() {
        return run.check(name, Verdict::Skip("the probe needs gcc plugin headers for the cross compiler; the host-arch cells run it".into()));
    }
    let got = build.randstruct_probe(&run.dir.join("randstruct-probe.log")).map_err(build_stop)?;
    run.check(name, checks::randstruct_verdict(&got))
}

/// The tools, the cell directory (its unpacked archive kept), free space,
/// the cache.
fn preflight(run: &mut Run, cell: &Cell, s: &Settings) -> Result<Cache, Stop> {
    tools::check(&tools::required(cell)).map_err(error)?;
    // The last run's unpacked archive stays, for the extract phase to
    // rewrite in place (scratch.rs says why).
    crate::scratch::clear_dir_except(&run.dir, HEADERS).map_err(|e| Verdict::Error(format!("cannot clear {}: {e:#}", run.dir.display())))?;
    std::fs::create_dir_all(&run.dir).map_err(|e| Verdict::Error(format!("cannot create the cell directory {}: {e}", run.dir.display())))?;
    // The unpacked trees and the kselftest's temporary one go here.
    crate::scratch::spread_new_subdirs(&run.dir);
    tools::check_space(&run.dir, "output directory (--out)", tools::OUT_DIR_NEEDS).map_err(error)?;
    let cache = Cache::open(&s.cache_dir).map_err(error)?;
    tools::check_space(cache.root(), "cache (--cache, KHTEST_CACHE)", tools::CACHE_NEEDS).map_err(error)?;
    Ok(cache)
}

/// Where the cell builds: an `O=` directory of the tree, or (in-tree) the
/// cell's own copy of the tree, `make mrproper`ed in phase `pristine`. The
/// first build of every new tree, series or config then starts pristine,
/// which is when the 2019 circular dependency would show.
fn object_tree(run: &mut Run, cache: &Cache, tree: &tree::Tree, cell: &Cell, build_key: &str) -> Result<Build, Stop> {
    let ccache = Some(cache.root().join("ccache"));
    let at = |src: PathBuf, obj: PathBuf, ccache| Build { arch: cell.arch, src, obj, kind: cell.build, ccache };
    match cell.build {
        BuildKind::OutOfTree => Ok(at(tree.path.clone(), tree.build_dir(build_key), ccache)),
        BuildKind::InTree => {
            let log = run.dir.join("build.log");
            let dir = run.phase("pristine", |_| {
                cache
                    .get_or_make("intree", build_key, |dir| {
                        tree::copy_tree(&tree.path, dir)?;
                        at(dir.to_owned(), dir.to_owned(), None).mrproper(&log)
                    })
                    .map_err(error)
            })?;
            Ok(at(dir.clone(), dir, ccache))
        }
    }
}

/// Build the kernel (showing progress against the last build from
/// scratch) and copy its archive to `built`. With it, the no-op rebuild's
/// verdict when this make found the kernel built already.
fn build_kernel(
    run: &mut Run,
    cache: &Cache,
    build: &Build,
    config: &kbuild::Config,
    cell: &Cell,
    s: &Settings,
    built: &Path,
) -> Result<(kbuild::Artifacts, Option<Verdict>), Stop> {
    let build_log = run.dir.join("build.log");
    let image = build.kernel_image();
    let before = std::fs::metadata(&image).and_then(|m| m.modified()).ok();
    let archive_before = checks::snapshot(&build.archive()).ok();
    let from = log_len(&build_log);
    let estimates = progress::Estimates::in_cache(cache.root());
    let estimate = format!("{}.build-steps", cell.name);
    let status = |m: &str| (run.progress)(&prefixed(&run.name, m));
    let a = build.build(config, &build_log, s.build_limit, &status, estimates.get(&estimate)).map_err(build_stop)?;
    // A build from scratch: its steps are the next one's estimate.
    if before.is_none() {
        estimates.set(&estimate, a.steps);
    }
    run.kernel_built = before != std::fs::metadata(&image).and_then(|m| m.modified()).ok();
    copy(&a.archive, built)?;
    // A make that found the kernel built is a no-op rebuild already.
    let was_noop = match archive_before {
        Some(b) if !run.kernel_built => Some(noop_verdict(build, &b, &build_log, from, cell)?).filter(|v| *v == Verdict::Pass),
        _ => None,
    };
    Ok((a, was_noop))
}

/// The no-op rebuild's verdict on the archive as it was `before` and the
/// make output in `log` after its first `from` bytes. Mainline 6.12 runs
/// its generator on every build to compare (`CHK`); the series lets make
/// decide, so not even that may run.
fn noop_verdict(build: &Build, before: &checks::Snapshot, log: &Path, from: u64, cell: &Cell) -> Result<Verdict, Stop> {
    let after = checks::snapshot(&build.archive()).map_err(|e| error(e.into()))?;
    Ok(checks::noop_rebuild(before, &after, &log_since(log, from), cell.patched))
}

/// The regen checks in the object tree `scratch`, or their passing outcome
/// from the cache (`passed`).
fn regen_checks(run: &mut Run, passed: &Path, scratch: &Path, build: &Build, artifacts: &kbuild::Artifacts, s: &Settings) -> Result<(), Stop> {
    if let Some(p) = regen::cached(passed).filter(|_| !s.fresh) {
        let ago = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0).saturating_sub(p.at);
        tracing::info!(
            "{}: regen passed {} min ago with the same source, series, toolchain and config: not run again (KHTEST_FRESH=1 runs it)",
            run.name,
            ago / 60
        );
        for name in p.steps {
            run.check(&format!("{name} (cached)"), Verdict::Pass)?;
        }
        return Ok(());
    }
    let steps = regen::run(build, &artifacts.archive, scratch, &run.dir, s.build_limit).map_err(build_stop)?;
    regen::remember(passed, &steps).map_err(error)?;
    for (name, v) in steps {
        run.check(name, v)?;
    }
    Ok(())
}

/// The host's checks only need the build's archive (the pull proves the
/// guest serves the same bytes), so they run while the guest boots, in
/// lanes: unpack, then build the test module (which the load waits for)
/// beside the eBPF program; the kselftest, which unpacks and builds on
/// its own and takes longest; the archive out of the kernel files.
fn lanes(run: &mut Run, host: Host<'_>, spec: &Spec) -> Result<(), Stop> {
    let (cell, s) = (host.cell, host.s);
    let (ko_tx, ko_rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        let mut lane = run.lane();
        let modbuild = scope.spawn(move || {
            let r = host.modbuild_lane(&mut lane, ko_tx);
            (lane, r)
        });
        let mut lane = run.lane();
        let selftest = scope.spawn(move || {
            let r = host.selftest_lane(&mut lane);
            (lane, r)
        });
        let mut lane = run.lane();
        let from_image = scope.spawn(move || {
            let r = host.image_lane(&mut lane);
            (lane, r)
        });
        let mut lane = run.lane();
        let device = scope.spawn(move || {
            let r = host.device_lane(&mut lane);
            (lane, r)
        });
        let guest = guest_lane(run, cell, s, spec, host.built, host.artifacts.kheaders_ko.is_some()).and_then(|mut guest| {
            // No module comes if the lane stopped or the archive has
            // headers only: the lane's own result says which.
            let r = match ko_rx.recv() {
                Ok(ko) => run.phase("load", |run| load(run, &mut guest, &ko, cell, s)),
                Err(_) => Ok(()),
            };
            guest.shutdown();
            r
        });
        let mut stops = vec![(run.current.clone(), guest)];
        for lane in [modbuild, selftest, from_image, device] {
            let (lane, r) = lane.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            stops.push((lane.current.clone(), r));
            run.merge(lane);
        }
        run.phases.sort_by(|a, b| a.start.total_cmp(&b.start));
        run.stop_first(stops)
    })
}

/// Of the lanes' results (each with the phase it stopped in), the stop
/// that comes first in the README's order of the phases: the verdict the
/// cell would have had with the lanes run one after the other.
fn first_stop(stops: Vec<(Option<String>, Result<(), Stop>)>) -> Option<(Option<String>, Stop)> {
    const FLOW: &[&str] = &["from-image", "boot", "pull", "extract", "bpf", "kselftest", "modbuild", "load", "device"];
    let rank = |phase: &Option<String>| phase.as_deref().and_then(|p| FLOW.iter().position(|f| *f == p)).unwrap_or(FLOW.len());
    stops.into_iter().filter_map(|(phase, r)| r.err().map(|v| (phase, v))).min_by_key(|(phase, _)| rank(phase))
}

/// Boot the guest and pull its archive, which must be `built`'s bytes
/// (with `ko`, only while kheaders.ko is loaded).
fn guest_lane(run: &mut Run, cell: &Cell, s: &Settings, spec: &Spec, built: &Path, ko: bool) -> Result<Guest, Stop> {
    let mut guest = run.phase("boot", |run| boot_retrying_once(spec, &mut run.retries))?;
    let pulled = run.dir.join("kheaders.tar.xz");
    run.phase("pull", |run| {
        let paths = archive_paths(cell);
        let built_size = std::fs::metadata(built).map(|m| m.len()).map_err(|e| error(e.into()))?;
        if ko {
            let before = served(&mut guest, &paths, s.timeouts.command)?;
            run.check("no archive before kheaders.ko is loaded", checks::served_sizes(&before, &[], 0))?;
            let insmod = format!("insmod {}/kheaders.ko", image::MODULES_DIR);
            let out = guest.run("pull", &insmod, s.timeouts.command).map_err(vm_stop)?;
            if out.status != 0 {
                return run.check("kheaders.ko loads", Verdict::Fail(format!("insmod kheaders.ko exited {}:\n{}", out.status, out.text)));
            }
        }
        let sizes = served(&mut guest, &paths, s.timeouts.command)?;
        run.check("archive served with its size", checks::served_sizes(&sizes, &paths, built_size))?;
        let built_bytes = std::fs::read(built).map_err(|e| error(e.into()))?;
        guest.pull("pull", paths.last().expect("one path at least"), &pulled, Some(&built_bytes)).map_err(vm_stop)?;
        run.check("pulled archive is the build's archive", checks::same_bytes(&pulled, built))?;
        if ko {
            let out = guest.run("pull", "rmmod kheaders", s.timeouts.command).map_err(vm_stop)?;
            if out.status != 0 {
                return run.check("kheaders.ko unloads", Verdict::Fail(format!("rmmod kheaders exited {}:\n{}", out.status, out.text)));
            }
            let after = served(&mut guest, &paths, s.timeouts.command)?;
            run.check("no archive after kheaders.ko is unloaded", checks::served_sizes(&after, &[], 0))?;
        }
        Ok(())
    })?;
    Ok(guest)
}

/// Load and unload the test module in the guest.
fn load(run: &mut Run, guest: &mut Guest, ko: &Path, cell: &Cell, s: &Settings) -> Result<(), Stop> {
    guest.push("load", ko, "/tmp/test.ko").map_err(vm_stop)?;
    if cell.module_load == ModuleLoad::RefusedNoVersions {
        let out = guest.run("load", "dmesg -c >/dev/null; insmod /tmp/test.ko 2>&1; st=$?; dmesg; exit $st", s.timeouts.command).map_err(vm_stop)?;
        return run.check("test.ko refused: it has no symbol versions", checks::refused_without_versions(out.status, &out.text));
    }
    let out = guest.run("load", "dmesg -c >/dev/null; insmod /tmp/test.ko && dmesg", s.timeouts.command).map_err(vm_stop)?;
    if out.status != 0 {
        return run.check("test.ko loads", Verdict::Fail(format!("insmod test.ko exited {}:\n{}", out.status, out.text)));
    }
    run.check("test.ko loads", checks::kernel_log_has("insmod", &out.text, checks::HELLO))?;
    let out = guest.run("load", "dmesg -c >/dev/null; rmmod test && dmesg", s.timeouts.command).map_err(vm_stop)?;
    if out.status != 0 {
        return run.check("test.ko unloads", Verdict::Fail(format!("rmmod test exited {}:\n{}", out.status, out.text)));
    }
    run.check("test.ko unloads", checks::kernel_log_has("rmmod", &out.text, checks::GOODBYE))
}

/// What the host lanes read: all of it finished before they start.
#[derive(Clone, Copy)]
struct Host<'a> {
    project: &'a Project,
    cell: &'a Cell,
    s: &'a Settings,
    cache: &'a Cache,
    tree: &'a tree::Tree,
    build: &'a Build,
    artifacts: &'a kbuild::Artifacts,
    /// The cell's copy of the build's archive.
    built: &'a Path,
}

impl Host<'_> {
    /// Unpack the archive and check it, then build the test module (sent
    /// to the guest lane as soon as it is built) and compile the eBPF
    /// program, at once.
    fn modbuild_lane(&self, run: &mut Run, ko_tx: std::sync::mpsc::Sender<PathBuf>) -> Result<(), Stop> {
        let (cell, headers) = (self.cell, run.dir.join(HEADERS));
        run.phase("extract", |run| {
            let x = checks::extract(self.built, &headers)?;
            tracing::info!("{}: {} files, {} bytes unpacked", cell.name, x.files, x.bytes);
            run.check("archive contents", checks::contents(&headers, cell.modbuild))?;
            run.check("archive decodes in at most 9 MiB (K17)", checks::decode_memory(self.built))?;
            run.check("every ELF program in the archive is for the cell's architecture", checks::elf_arch(&headers, cell.arch))?;
            run.check("SPDX lines kept", checks::spdx_kept(&headers, &[&self.build.obj, &self.tree.path]))
        })?;
        // The eBPF compile needs only the headers: it runs beside the
        // module build, which the guest waits for.
        std::thread::scope(|scope| {
            let mut lane = run.lane();
            let headers = &headers;
            let bpf = scope.spawn(move || {
                let r = lane.phase("bpf", |run| {
                    let work = run.dir.join("bpf");
                    std::fs::create_dir_all(&work).map_err(|e| error(e.into()))?;
                    let v = bpf::compile(&bpf::program(&self.project.root), headers, cell.arch, &work, &run.dir.join("bpf.log"));
                    run.check("an eBPF kprobe program compiles against the headers", v)
                });
                (lane, r)
            });
            let built = if let Some(why) = host_cannot_build(cell) {
                drop(ko_tx);
                run.checks.push(Check { name: "module build on the host".into(), verdict: Verdict::Skip(why) });
                Ok(())
            } else {
                run.phase("modbuild", |run| {
                    checks::build_testmod(
                        headers,
                        &self.project.testmod_dir(),
                        cell.arch,
                        &run.dir,
                        &run.dir.join("modbuild.log"),
                        self.s.timeouts.command * 5,
                    )
                })
                // The guest lane may have stopped already: then nobody waits.
                .map(|ko| drop(ko_tx.send(ko)))
            };
            let (lane, r) = bpf.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            let stops = vec![(run.current.clone(), built), (lane.current.clone(), r)];
            run.merge(lane);
            run.stop_first(stops)
        })
    }

    /// The archive out of the kernel files, without booting.
    fn image_lane(&self, run: &mut Run) -> Result<(), Stop> {
        run.phase("from-image", |run| {
            // Out of kheaders.ko for =m, else out of vmlinux and out of the
            // (compressed) boot image.
            let sources = match &self.artifacts.kheaders_ko {
                Some(ko) => vec![ko.clone()],
                None => vec![self.build.obj.join("vmlinux"), self.artifacts.kernel_image.clone()],
            };
            let built = std::fs::read(self.built).map_err(|e| error(e.into()))?;
            // The extract phase decodes and checks the build's archive: here
            // its bytes are looked for, and only other streams (the boot
            // image's compressed kernel) are decoded.
            let mut finder = extract::Finder::knowing(built.clone());
            for src in sources {
                let name = src.file_name().unwrap_or_default().to_string_lossy().into_owned();
                let v = match finder.from_file(&src) {
                    Ok(f) if f.archive == built => Verdict::Pass,
                    Ok(f) => Verdict::Fail(format!("{name}: found {} bytes at offset {}, not the build's archive", f.archive.len(), f.offset)),
                    Err(e) => Verdict::Fail(format!("{e:#}")),
                };
                run.check(&format!("khtest extract {name} gives the build's archive"), v)?;
            }
            Ok(())
        })
    }

    /// The device phase: a second guest, with the device's userland, runs
    /// the kselftest and its port against its own archive (device.rs).
    fn device_lane(&self, run: &mut Run) -> Result<(), Stop> {
        let (cell, s) = (self.cell, self.s);
        run.phase("device", |run| {
            let mut guest = self.device_guest(run)?;
            let out = guest.run("device", "khtest-device readonly", s.timeouts.command).map_err(vm_stop)?;
            run.check("the device guest cannot write to the host (read-only 9p export)", device::readonly_verdict(out.status, &out.text))?;
            guest.run_ok("device", &device::mount_command(&self.tree.path)).map_err(vm_stop)?;
            let (expect, limit) = (device::Expect::of(cell), s.timeouts.command * 11);
            let tests = [
                ("kselftest kheaders (make run_tests)", device::kselftest_command(&self.tree.path), "device-kselftest", "# "),
                ("kselftest port (kheaders-selftest)", device::port_command(archive_paths(cell).last().expect("one path")), "device-port", ""),
            ];
            for (what, cmd, part, prefix) in tests {
                let t = Instant::now();
                let mut out = guest.run("device", &cmd, limit).map_err(vm_stop)?;
                let log = run.dir.join(format!("{part}.log"));
                if device::spurious_timeout(&out.text, t.elapsed().as_secs_f64()) {
                    let first = run.dir.join(format!("{part}-clock-jump.log"));
                    device::save(&first, &out.text).map_err(error)?;
                    tracing::warn!(
                        "{}: {what}: the runner's timeout fired after {:.0} s of host time, so the guest's clock jumped: run again (first run: {})",
                        cell.name,
                        t.elapsed().as_secs_f64(),
                        first.display()
                    );
                    out = guest.run("device", &cmd, limit).map_err(vm_stop)?;
                }
                run.part(part, t);
                device::save(&log, &out.text).map_err(error)?;
                let v = match device::judge(what, &out.text, prefix, expect) {
                    Verdict::Fail(r) => Verdict::Fail(format!("{r}\n  log: {}", log.display())),
                    Verdict::Error(r) => Verdict::Error(format!("{r}\n  log: {}, console: {}", log.display(), guest.console_log().display())),
                    v => v,
                };
                run.check(&format!("device: {what}"), v)?;
                if self.artifacts.kheaders_ko.is_some() {
                    let after = served(&mut guest, &archive_paths(cell), s.timeouts.command)?;
                    run.check(&format!("device: no archive after the {what} unloads kheaders.ko"), checks::served_sizes(&after, &[], 0))?;
                }
            }
            guest.shutdown();
            Ok(())
        })
    }

    /// The device's userland, the port built for it, its initramfs, and
    /// the guest booted with them.
    fn device_guest(&self, run: &mut Run) -> Result<Guest, Stop> {
        let cell = self.cell;
        let (progress, name) = (run.progress, run.name.clone());
        let userland = userland::prepare(self.cache, cell.arch, &|m| progress(&prefixed(&name, m))).map_err(error)?;
        // In the cache: copies of the repository (put-faults-back.sh) share it.
        let port_target = self.cache.root().join("device-port");
        let port = device::port_binary(self.project, cell.arch, &port_target, &run.dir.join("device-port-build.log")).map_err(error)?;
        let initrd = run.dir.join(DEVICE_INITRAMFS);
        let programs = [self.project.images_dir().join("khtest-device"), port];
        image::make(&self.project.images_dir(), cell.arch, self.artifacts.kheaders_ko.as_slice(), &programs, &initrd).map_err(error)?;
        let spec = Spec {
            arch: cell.arch,
            kernel: self.artifacts.kernel_image.clone(),
            initrd,
            dir: run.dir.join("device"),
            memory_mib: device::MEMORY_MIB,
            timeouts: self.s.timeouts,
            shares: device::shares(&userland, &self.tree.path),
            // Measured: -smp 2 saves nothing, kbuild's probes run one by one.
            cpus: 1,
        };
        let t = Instant::now();
        let guest = boot_retrying_once(&spec, &mut run.retries)?;
        run.part("device-boot", t);
        Ok(guest)
    }

    /// The kselftest as `make run_tests` runs it.
    fn selftest_lane(&self, run: &mut Run) -> Result<(), Stop> {
        let (cell, s) = (self.cell, self.s);
        // A headers-only archive's kselftest skips its module results
        // itself; one for another architecture cannot run here at all.
        if let Some(why) = host_cannot_build(cell).filter(|_| cell.modbuild) {
            run.checks.push(Check { name: "kselftest kheaders on the host (make run_tests)".into(), verdict: Verdict::Skip(why) });
            return Ok(());
        }
        run.phase("kselftest", |run| {
            let log = run.dir.join("kselftest.log");
            let obj = run.dir.join("kselftest");
            let mut make = std::process::Command::new("make");
            make.arg("-C")
                .arg(self.tree.path.join("tools/testing/selftests"))
                .arg(format!("O={}", obj.display()))
                .args(["TARGETS=kheaders", "run_tests"])
                .env("KHEADERS_ARCHIVE", self.built)
                // Its `mktemp -d` tree goes where unpacking is fast (scratch.rs).
                .env("TMPDIR", &run.dir);
            if !cell.arch.is_host() {
                make.env("ARCH", cell.arch.kernel_arch()).env("CROSS_COMPILE", cell.arch.cross_compile());
            }
            crate::process::run_logged(&mut make, &log, s.timeouts.command * 5).map_err(error)?;
            let text = std::fs::read_to_string(&log).map_err(|e| error(e.into()))?;
            let v = checks::kselftest_tap(&text, "kheaders: run_kheaders_modbuild.sh");
            let v = match v {
                Verdict::Fail(r) => Verdict::Fail(format!("{r}\n  log: {}", log.display())),
                v => v,
            };
            run.check("kselftest kheaders (make run_tests)", v)
        })
    }
}

/// Why the host cannot build a module against `cell`'s archive, if it
/// cannot: the archive has headers only, or its host programs (fixdep,
/// modpost) are for another architecture. The device phase builds there.
fn host_cannot_build(cell: &Cell) -> Option<String> {
    if !cell.modbuild {
        return Some("the archive has headers only".into());
    }
    (!cell.arch.is_host()).then(|| {
        format!(
            "the archive's host programs are for {}, where the device runs them: the module is built on the device (phase device)",
            cell.arch.kernel_arch()
        )
    })
}

/// A cell's kernel, up to date in the cache, and the files read from it.
pub struct Built {
    pub build: Build,
    pub archive: PathBuf,
    pub kernel_image: PathBuf,
}

/// Configure and build an out-of-tree `cell` (with `want` instead of its
/// own options, if given) in the cache exactly as [`run`] does, without
/// booting it: a no-op `make` when it is up to date. For the bench and the
/// guest tests.
pub fn build_only(project: &Project, matrix: &Matrix, cell: &Cell, s: &Settings, want: Option<kbuild::Config>, log: &Path) -> anyhow::Result<Built> {
    anyhow::ensure!(cell.build == BuildKind::OutOfTree, "cell {}: only out-of-tree builds can be built on their own", cell.name);
    let cache = Cache::open(&s.cache_dir)?;
    let tree = tree::prepare(&cache, s.source.as_ref(), project, cell.kernel, cell.patched, &|_| {})?;
    let want = match want {
        Some(w) => w,
        None => kbuild::requested(cell, &matrix.fragment_paths(cell))?,
    };
    let key = build_key(&tree.key, &tools::toolchain_key(cell.arch)?, cell, &want);
    let _lock = cache.lock(&format!("build-{key}"))?;
    let build =
        Build { arch: cell.arch, src: tree.path.clone(), obj: tree.build_dir(&key), kind: cell.build, ccache: Some(cache.root().join("ccache")) };
    build.configure(&want, log)?;
    build.rebuild(log, s.build_limit)?;
    Ok(Built { archive: build.archive(), kernel_image: build.kernel_image(), build })
}

/// The cache key of a cell's build: the tree, the toolchain, the arch, the
/// kind of build and every requested option.
pub fn build_key(tree_key: &str, toolchain_key: &str, cell: &Cell, want: &kbuild::Config) -> String {
    key(&[
        tree_key.as_bytes(),
        toolchain_key.as_bytes(),
        cell.arch.kernel_arch().as_bytes(),
        format!("{:?}", cell.build).as_bytes(),
        kbuild::merge("", want).as_bytes(),
    ])
}

/// Boot; if the guest hangs or QEMU dies before the shell is up (TCG on a
/// loaded host), boot once more and record why. A crash is the kernel's
/// fault and is never retried. The first attempt's console log is kept.
pub fn boot_retrying_once(spec: &Spec, retries: &mut Vec<String>) -> Result<Guest, Stop> {
    match Guest::boot(spec) {
        Ok(g) => Ok(g),
        Err(e @ VmError::Crash { .. }) => Err(vm_stop(e)),
        Err(e) => {
            let kept = spec.dir.join("console.attempt1.log");
            let _ = std::fs::rename(spec.console_log(), &kept);
            retries.push(format!("boot: {e} (first console log: {})", kept.display()));
            Guest::boot(spec).map_err(vm_stop)
        }
    }
}

/// Where the guest serves the archive: sysfs always, procfs with the series.
fn archive_paths(cell: &Cell) -> Vec<&'static str> {
    let mut v = vec!["/sys/kernel/kheaders.tar.xz"];
    if cell.patched {
        v.push("/proc/kheaders.tar.xz");
    }
    v
}

/// The sizes the guest's `stat` reports for those of `paths` that exist.
fn served(guest: &mut Guest, paths: &[&str], limit: Duration) -> Result<Vec<(String, u64)>, Stop> {
    let out = guest.run("pull", &format!("stat -c 'KHTEST-STAT %s %n' {} 2>/dev/null; true", paths.join(" ")), limit);
    Ok(checks::parse_stat(&out.map_err(vm_stop)?.text))
}

/// `msg` about the cell `name`; a status stays one.
fn prefixed(name: &str, msg: &str) -> String {
    match msg.strip_prefix(progress::STATUS) {
        Some(status) => format!("{}{name}: {status}", progress::STATUS),
        None => format!("{name}: {msg}"),
    }
}

fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)
}

/// What `log` got after its first `from` bytes.
fn log_since(log: &Path, from: u64) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    String::from_utf8_lossy(bytes.get(from as usize..).unwrap_or_default()).into_owned()
}

fn copy(from: &Path, to: &Path) -> Result<(), Stop> {
    std::fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display())).map(drop).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crashing_guest_is_a_fail_a_hung_one_an_error() {
        let crash = VmError::Crash { phase: "boot".into(), text: "Kernel panic - not syncing: Attempted to kill init!".into() };
        assert!(matches!(vm_stop(crash), Verdict::Fail(m) if m.contains("Kernel panic")));
        let hang = VmError::Timeout { phase: "pull".into(), limit: Duration::from_secs(5), log: "console.log".into() };
        assert!(matches!(vm_stop(hang), Verdict::Error(m) if m.contains("during pull")));
    }

    #[test]
    fn of_several_lanes_stopping_the_first_phase_in_flow_order_is_the_verdict() {
        let stop = |phase: &str, why: &str| (Some(phase.to_owned()), Err(Verdict::Fail(why.into())));
        let ok = || (None, Ok(()));
        assert!(first_stop(vec![ok(), ok(), ok()]).is_none());
        let got = first_stop(vec![ok(), stop("modbuild", "no .ko"), stop("kselftest", "not ok 3")]).unwrap();
        assert_eq!(got, (Some("kselftest".into()), Verdict::Fail("not ok 3".into())));
        let got = first_stop(vec![stop("pull", "not the build's archive"), stop("extract", "SPDX lost"), ok()]).unwrap();
        assert_eq!(got.0.as_deref(), Some("pull"));
        let got = first_stop(vec![stop("load", "no Hello"), ok(), stop("from-image", "no archive in vmlinux")]).unwrap();
        assert_eq!(got.0.as_deref(), Some("from-image"));
    }
}
