//! `khtest bench`: what kheaders costs a kernel build, how big the archive
//! is, and how fast a verdict comes. Each figure is measured in one run next
//! to its baseline and reported as a ratio too, because the machines are
//! shared and noisy; timings are medians of `reps` interleaved repetitions.
//! The report goes to `target/khtest/bench/bench.md` and `bench.json`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::cell::{self, Built, Settings};
use crate::kbuild::{self, Build, BUILD_TIMESTAMP};
use crate::matrix::{Base, BuildKind, Cell, Kernel, Kheaders, Matrix};
use crate::phase::Phase;
use crate::process::run_logged;
use crate::report::CellReport;
use crate::vm::{Guest, Spec};
use crate::{checks, image, regen, Project};

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub section: &'static str,
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    /// What `value` is compared with, measured in the same run.
    pub baseline: Option<(String, f64)>,
    /// The target, as text, and whether it was met.
    pub target: Option<(String, bool)>,
}

impl Figure {
    fn new(section: &'static str, name: impl Into<String>, value: f64, unit: &'static str) -> Figure {
        Figure { section, name: name.into(), value, unit, baseline: None, target: None }
    }

    fn against(mut self, name: impl Into<String>, value: f64) -> Figure {
        self.baseline = Some((name.into(), value));
        self
    }

    fn ratio(&self) -> Option<f64> {
        self.baseline.as_ref().map(|(_, b)| self.value / b)
    }

    /// Target on the ratio to the baseline.
    fn ratio_at_most(mut self, max: f64) -> Figure {
        let ok = self.ratio().is_some_and(|r| r <= max);
        self.target = Some((format!("ratio <= {max}"), ok));
        self
    }

    fn at_most(mut self, max: f64) -> Figure {
        let ok = self.value <= max;
        self.target = Some((format!("<= {} {}", fmt_value(max, self.unit), self.unit), ok));
        self
    }
}

pub struct Options {
    pub reps: usize,
    /// Also time the whole matrix, twice: the second run must be warm.
    pub matrix: bool,
    /// Run those two in a private, empty cache: the first is cold.
    pub cold: bool,
    /// Only the defconfig figures ([`defconfig_noop`]).
    pub defconfig: bool,
}

/// The cells the bench measures, picked from the matrix by what they are.
struct BenchCells {
    x86: Cell,
    arm: Cell,
    x86_73: Cell,
    arm_73: Cell,
    mainline: Cell,
    /// The clients cells of the same arch and kernel, with the module-build
    /// archive and headers only: bcc's time on each.
    clients: Cell,
    clients_headers_only: Cell,
}

impl BenchCells {
    fn pick(matrix: &Matrix) -> Result<BenchCells> {
        let pick = |what: &str, f: &dyn Fn(&Cell) -> bool| -> Result<Cell> {
            matrix.cells.iter().find(|c| f(c)).cloned().with_context(|| format!("the matrix has no {what} cell for the bench"))
        };
        let oot = |c: &Cell| c.build == BuildKind::OutOfTree && c.kheaders == Kheaders::BuiltIn;
        let series = |c: &Cell, k: Kernel| oot(c) && c.patched && c.modbuild && c.kernel == k;
        let any_kheaders = |c: &Cell, k: Kernel| c.build == BuildKind::OutOfTree && c.patched && c.modbuild && c.kernel == k;
        let x86 = pick("6.12 x86_64 =y O= module-build", &|c| series(c, Kernel::V6_12) && c.arch.is_host())?;
        // The matrix's one 7.3 cell is arm64: the x86_64 7.3 kernel is the
        // 6.12 cell's configuration on the 7.3 series, built for the bench.
        let x86_73 = match matrix.cells.iter().find(|c| series(c, Kernel::V7_3) && c.arch.is_host()) {
            Some(c) => c.clone(),
            None => Cell { name: format!("{}-v7_3", x86.name), kernel: Kernel::V7_3, ..x86.clone() },
        };
        Ok(BenchCells {
            x86,
            x86_73,
            // =y or =m: the build makes the same archive either way.
            arm: pick("6.12 arm64 O= module-build", &|c| any_kheaders(c, Kernel::V6_12) && !c.arch.is_host())?,
            arm_73: pick("7.3 arm64 O= module-build", &|c| any_kheaders(c, Kernel::V7_3) && !c.arch.is_host())?,
            mainline: pick("unpatched", &|c| oot(c) && !c.patched)?,
            clients: pick("x86_64 clients module-build", &|c| c.clients && c.modbuild && c.arch.is_host())?,
            clients_headers_only: pick("x86_64 clients headers-only", &|c| c.clients && !c.modbuild && c.arch.is_host())?,
        })
    }
}

/// Their kernels, built (or found built) in the cache, and the 6.12 x86_64
/// one again without kheaders (`off`).
struct Builds {
    on: Built,
    off: Built,
    arm: Built,
    mainline: Built,
    x86_73: Built,
    arm_73: Built,
}

impl Builds {
    fn make(project: &Project, matrix: &Matrix, cells: &BenchCells, s: &Settings, log: &Path) -> Result<Builds> {
        let build = |c: &Cell| cell::build_only(project, matrix, c, s, None, log);
        let mut off_want = kbuild::request(matrix, &cells.x86)?;
        off_want.options.insert("CONFIG_IKHEADERS".into(), "n".into());
        off_want.options.remove("CONFIG_IKHEADERS_MODBUILD");
        Ok(Builds {
            on: build(&cells.x86)?,
            off: cell::build_only(project, matrix, &cells.x86, s, Some(off_want), log)?,
            arm: build(&cells.arm)?,
            mainline: build(&cells.mainline)?,
            x86_73: build(&cells.x86_73)?,
            arm_73: build(&cells.arm_73)?,
        })
    }
}

/// Every figure, one named step after the other; written to
/// `bench/bench.json` and `bench/bench.md` under the output directory.
pub fn run(project: &Project, matrix: &Matrix, s: &Settings, opts: &Options, progress: &dyn Fn(&str)) -> Result<Vec<Figure>> {
    let dir = s.out_dir.join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cells = BenchCells::pick(matrix)?;
    if opts.defconfig {
        let figures = defconfig_noop(project, matrix, &cells.x86, s, opts, &dir, progress)?;
        return write_figures(&dir, figures);
    }
    progress("bench: the builds (cached ones are no-op makes)");
    let Builds { on, off, arm, mainline, x86_73, arm_73 } = Builds::make(project, matrix, &cells, s, &dir.join("build.log"))?;
    let (x86, arm_cell) = (&cells.x86, &cells.arm);

    let mut figures = Vec::new();
    progress("bench: no-op rebuilds, archive on and off");
    let noop_off = noop_rebuilds(&on, &off, s, opts, &dir, &mut figures)?;
    progress("bench: rebuild after one header is added, then removed");
    header_rebuilds(&on, noop_off, s, &dir, &mut figures)?;
    progress("bench: touch .config, both kernels");
    for (kernel, b) in [("6.12", &on), ("7.3", &x86_73)] {
        touched_config(kernel, b, noop_off, s, &dir, &mut figures)?;
    }
    progress("bench: archive sizes and generation times");
    archives(
        &[("6.12", "x86_64", &on), ("6.12", "arm64", &arm), ("7.3", "x86_64", &x86_73), ("7.3", "arm64", &arm_73)],
        &mainline,
        &dir,
        &mut figures,
    )?;
    progress("bench: extraction, liblzma + tar crate vs tar -xJf");
    extraction(&on, opts, &dir, &mut figures)?;
    progress("bench: bare boots and verdicts of one cell, taking turns");
    verdicts(project, matrix, x86, &on, s, opts, &dir, &mut figures)?;
    progress("bench: the device phase, x86_64 and arm64");
    device_phases(project, matrix, &[(x86, 45.0), (arm_cell, 150.0)], s, opts, &mut figures)?;
    progress("bench: the clients on the device, module-build archive and headers only");
    clients_phases(project, matrix, &[&cells.clients, &cells.clients_headers_only], s, opts, &mut figures)?;
    if opts.matrix {
        whole_matrix(project, matrix, s, opts, progress, &mut figures)?;
    }
    write_figures(&dir, figures)
}

fn write_figures(dir: &Path, figures: Vec<Figure>) -> Result<Vec<Figure>> {
    std::fs::write(dir.join("bench.json"), serde_json::to_string_pretty(&figures)?)?;
    std::fs::write(dir.join("bench.md"), markdown(&figures))?;
    Ok(figures)
}

/// The no-op rebuild with the module-build archive against without it, on
/// `x86` started from `defconfig` (the guest's fragment on top, as a cell
/// with `base: defconfig` has it): the size of kernel the 2019 review timed
/// (allmodconfig there, 41.3 s against 29.4 s). Each build's time, cold
/// or not, is a figure too: what a defconfig cell costs here.
fn defconfig_noop(
    project: &Project,
    matrix: &Matrix,
    x86: &Cell,
    s: &Settings,
    opts: &Options,
    dir: &Path,
    progress: &dyn Fn(&str),
) -> Result<Vec<Figure>> {
    let cell = Cell { base: Base::Target("defconfig".into()), ..x86.clone() };
    let on_request = kbuild::request(matrix, &cell)?;
    let mut off_request = on_request.clone();
    off_request.options.insert("CONFIG_IKHEADERS".into(), "n".into());
    off_request.options.remove("CONFIG_IKHEADERS_MODBUILD");
    off_request.options.remove("CONFIG_IKHEADERS_PROC");
    let log = dir.join("defconfig-build.log");
    let mut figures = Vec::new();
    let mut built = Vec::new();
    for (what, request) in [("with the archive", on_request), ("CONFIG_IKHEADERS=n", off_request)] {
        progress(&format!("bench: x86_64 defconfig kernel, {what} (once; then cached)"));
        let mut b = None;
        let t = timed(|| {
            b = Some(cell::build_only(project, matrix, &cell, s, Some(request), &log)?);
            Ok(())
        })?;
        figures.push(Figure::new("defconfig", format!("x86_64 defconfig build, {what} (a no-op make when cached)"), t, "s"));
        built.push(b.context("the defconfig build gave nothing")?);
    }
    progress("bench: no-op rebuilds of the defconfig kernels");
    let (mut t_on, mut t_off) = (Vec::new(), Vec::new());
    for _ in 0..opts.reps {
        t_on.push(timed(|| built[0].build.rebuild(&log, s.build_limit))?);
        t_off.push(timed(|| built[1].build.rebuild(&log, s.build_limit))?);
    }
    figures.push(
        Figure::new("defconfig", "x86_64 defconfig: no-op rebuild, kheaders =y with module-build files", median(&mut t_on), "s")
            .against("no-op rebuild, CONFIG_IKHEADERS=n", median(&mut t_off))
            .ratio_at_most(1.10),
    );
    Ok(figures)
}

/// The device phase of each cell (with its bound, s), as `khtest run` runs
/// it (warm, beside the host's lanes), and its parts: the median of
/// `reps` runs.
fn device_phases(project: &Project, matrix: &Matrix, cells: &[(&Cell, f64)], s: &Settings, opts: &Options, figures: &mut Vec<Figure>) -> Result<()> {
    const PARTS: [(Phase, &str); 4] = [
        (Phase::DeviceBoot, "boot"),
        (Phase::DeviceKselftest, "the kselftest (make run_tests)"),
        (Phase::DevicePort, "the Rust port"),
        (Phase::DeviceRecipe, "the recipe (kheaders install, make through /lib/modules/<release>/build)"),
    ];
    for (c, bound) in cells {
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); 1 + PARTS.len()];
        for _ in 0..opts.reps.max(1) {
            let r = cell::run(project, matrix, c, s, &|_| {});
            if r.verdict.is_bad() {
                bail!("cell {} did not pass ({:?}), so its device time means nothing", c.name, r.verdict);
            }
            for (i, phase) in std::iter::once(Phase::Device).chain(PARTS.iter().map(|p| p.0)).enumerate() {
                times[i].push(r.phase_seconds(phase).with_context(|| format!("cell {} has no {phase} phase", c.name))?);
            }
        }
        let arch = c.arch.kernel_arch();
        figures.push(Figure::new("device", format!("device phase, {arch} ({}), TCG", c.name), median(&mut times[0]), "s").at_most(*bound));
        for (i, (_, what)) in PARTS.iter().enumerate() {
            figures.push(Figure::new("device", format!("  {arch}: {what}"), median(&mut times[i + 1]), "s"));
        }
    }
    Ok(())
}

/// The clients phase of `cells` (a module-build cell, then a headers-only
/// one) and its parts, and bcc's time from start to program loaded (which
/// includes its unpacking of the whole archive): the medians of `reps`
/// runs, the module-build archive against headers only.
fn clients_phases(project: &Project, matrix: &Matrix, cells: &[&Cell; 2], s: &Settings, opts: &Options, figures: &mut Vec<Figure>) -> Result<()> {
    let mut bcc = Vec::new();
    for c in cells {
        let (mut phase, mut dkms, mut loaded) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..opts.reps.max(1) {
            let r = cell::run(project, matrix, c, s, &|_| {});
            if r.verdict.is_bad() {
                bail!("cell {} did not pass ({:?}), so its clients' time means nothing", c.name, r.verdict);
            }
            phase.push(r.phase_seconds(Phase::Clients).with_context(|| format!("cell {} has no clients phase", c.name))?);
            dkms.push(r.phase_seconds(Phase::ClientsDkms).with_context(|| format!("cell {} has no DKMS part", c.name))?);
            let log = r.dir.join(format!("{}.log", Phase::ClientsBcc));
            let text = std::fs::read_to_string(&log).with_context(|| format!("cannot read {}", log.display()))?;
            loaded.push(crate::clients::bcc_seconds(&text).with_context(|| format!("{} gives no bcc time", log.display()))?);
        }
        figures.push(Figure::new("clients", format!("clients phase ({}), TCG", c.name), median(&mut phase), "s"));
        figures.push(Figure::new("clients", format!("  {}: DKMS, two packages", c.name), median(&mut dkms), "s"));
        bcc.push(median(&mut loaded));
    }
    figures.push(
        Figure::new("clients", format!("bcc, start to program loaded, module-build archive ({})", cells[0].name), bcc[0], "s")
            .against(format!("headers only ({})", cells[1].name), bcc[1])
            .ratio_at_most(1.1),
    );
    Ok(())
}

/// The no-op rebuild with the archive and without; returns the latter.
fn noop_rebuilds(on: &Built, off: &Built, s: &Settings, opts: &Options, dir: &Path, figures: &mut Vec<Figure>) -> Result<f64> {
    let log = dir.join("rebuild.log");
    let (mut t_on, mut t_off) = (Vec::new(), Vec::new());
    for _ in 0..opts.reps {
        t_on.push(timed(|| on.build.rebuild(&log, s.build_limit))?);
        t_off.push(timed(|| off.build.rebuild(&log, s.build_limit))?);
    }
    let noop_off = median(&mut t_off);
    figures.push(
        Figure::new("incremental", "no-op rebuild, kheaders =y with module-build files", median(&mut t_on), "s")
            .against("no-op rebuild, CONFIG_IKHEADERS=n", noop_off)
            .ratio_at_most(1.10),
    );
    Ok(noop_off)
}

/// Rebuilds after a header is added to the object tree, then removed.
fn header_rebuilds(on: &Built, noop_off: f64, s: &Settings, dir: &Path, figures: &mut Vec<Figure>) -> Result<()> {
    let log = dir.join("rebuild.log");
    let probe = on.build.obj.join("include/generated/khtest-bench-probe.h");
    std::fs::write(&probe, "#define KHTEST_BENCH_PROBE 1\n")?;
    let added = timed(|| on.build.rebuild(&log, s.build_limit));
    let _ = std::fs::remove_file(&probe);
    let added = added?;
    let removed = timed(|| on.build.rebuild(&log, s.build_limit))?;
    figures.push(
        Figure::new("incremental", "rebuild after a header is added (archive regenerated, vmlinux relinked)", added, "s")
            .against("no-op rebuild, CONFIG_IKHEADERS=n", noop_off),
    );
    figures.push(
        Figure::new("incremental", "rebuild after that header is removed", removed, "s").against("no-op rebuild, CONFIG_IKHEADERS=n", noop_off),
    );
    Ok(())
}

/// `touch .config` with nothing changed, then a rebuild: whether it
/// regenerated the archive (must not), and how long it took.
fn touched_config(kernel: &str, b: &Built, noop_off: f64, s: &Settings, dir: &Path, figures: &mut Vec<Figure>) -> Result<()> {
    let log = dir.join(format!("touch-config-{kernel}.log"));
    let before = checks::snapshot(&b.archive)?;
    b.build.touch_config()?;
    let secs = timed(|| b.build.rebuild(&log, s.build_limit))?;
    let rebuilt = checks::snapshot(&b.archive)? != before;
    figures.push(
        Figure::new("incremental", format!("{kernel}: archive rebuilt after touch .config (1 yes, 0 no)"), f64::from(u8::from(rebuilt)), "")
            .at_most(0.0),
    );
    figures.push(
        Figure::new("incremental", format!("{kernel}: rebuild after touch .config"), secs, "s")
            .against("no-op rebuild, CONFIG_IKHEADERS=n (6.12)", noop_off),
    );
    Ok(())
}

/// The memory `xz --robot -lvv` says decoding `archive` needs, in MiB.
fn decode_mib(archive: &Path) -> Result<f64> {
    let list = checks::xz_list(archive).map_err(anyhow::Error::msg)?;
    let bytes = checks::parse_xz_memory(&list).context("xz --robot -lvv gave no summary line")?;
    Ok(bytes as f64 / f64::from(1 << 20))
}

/// Archive sizes and decode memory of the builds' archives on both kernels,
/// against headers only from the same lists and mainline's; and the
/// generation time, with and without the module-build files.
fn archives(builds: &[(&str, &str, &Built)], mainline: &Built, dir: &Path, figures: &mut Vec<Figure>) -> Result<()> {
    let mainline_size = std::fs::metadata(&mainline.archive)?.len() as f64 / 1e6;
    let mainline_mib = decode_mib(&mainline.archive)?;
    figures.push(Figure::new("archive", "x86_64 mainline 6.12 (headers only, as Debian ships it)", mainline_size, "MB"));
    for &(kernel, arch, b) in builds {
        let size = std::fs::metadata(&b.archive)?.len() as f64 / 1e6;
        let (h_size, h_time) = generate(&b.build, false, dir)?;
        figures.push(
            Figure::new("archive", format!("{kernel} {arch} series, headers only"), h_size, "MB").against("mainline 6.12 x86_64", mainline_size),
        );
        figures.push(
            Figure::new("archive", format!("{kernel} {arch} series, with module-build files (the build's archive)"), size, "MB")
                .against("headers only, same build", h_size)
                .at_most(5.0),
        );
        figures.push(
            Figure::new("archive", format!("{kernel} {arch} memory to decode the build's archive (xz --robot -lvv)"), decode_mib(&b.archive)?, "MiB")
                .against("mainline 6.12 x86_64", mainline_mib)
                .at_most(9.0),
        );
        // By hand, the generator runs the host's compiler: only where the
        // build did too is its time the build's.
        if b.build.arch.is_host() {
            let (_, m_time) = generate(&b.build, true, dir)?;
            figures.push(
                Figure::new("archive", format!("{kernel} {arch} generation time, with module-build files"), m_time, "s")
                    .against("headers only", h_time),
            );
        }
    }
    Ok(())
}

/// Host extraction: the crate against `tar -xJf`, and over an earlier tree.
fn extraction(on: &Built, opts: &Options, dir: &Path, figures: &mut Vec<Figure>) -> Result<()> {
    let (mut t_lib, mut t_tar) = (Vec::new(), Vec::new());
    let trees: Vec<_> = (0..opts.reps).flat_map(|i| [dir.join(format!("extract-lib-{i}")), dir.join(format!("extract-tar-{i}"))]).collect();
    // Nothing is deleted between the timed extractions: on ext4 without a
    // journal (this machine's disk), every file created within a minute
    // or so of many deletions pays for a scan past the deleted inodes.
    for d in &trees {
        let _ = std::fs::remove_dir_all(d);
    }
    let lib = |dest: &Path| kheaders_selftest::archive::extract_file(&on.archive, dest).map(drop).map_err(Into::into);
    let tar = |dest: &Path| -> Result<()> {
        std::fs::create_dir_all(dest)?;
        let o = crate::process::output_limited(Command::new("tar").arg("-xJf").arg(&on.archive).arg("-C").arg(dest), Duration::from_secs(300))?;
        if !o.status.success() {
            bail!("tar -xJf failed: {}: {}", o.status, String::from_utf8_lossy(&o.stderr));
        }
        Ok(())
    };
    for i in 0..opts.reps {
        // Each extraction creates 7000 files: start each from a disk with
        // no writeback pending, or the second pays for the first; and
        // take turns going first.
        for lib_now in if i % 2 == 0 { [true, false] } else { [false, true] } {
            sync();
            if lib_now {
                t_lib.push(timed(|| lib(&trees[2 * i]))?);
            } else {
                t_tar.push(timed(|| tar(&trees[2 * i + 1]))?);
            }
        }
    }
    // What a cell's extract phase does from its second run on.
    let mut t_over = Vec::new();
    for _ in 0..opts.reps {
        sync();
        t_over.push(timed(|| kheaders_selftest::archive::extract_file_over(&on.archive, &trees[0]).map(drop).map_err(Into::into))?);
    }
    for d in &trees {
        let _ = std::fs::remove_dir_all(d);
    }
    let fresh = median(&mut t_lib);
    figures
        .push(Figure::new("extract", "host extraction, liblzma + tar crate (checked entries)", fresh, "s").against("tar -xJf", median(&mut t_tar)));
    figures.push(
        Figure::new("extract", "the same over an earlier extraction of the archive (files kept in place)", median(&mut t_over), "s")
            .against("into a new directory", fresh),
    );
    Ok(())
}

/// Bare boots and whole verdicts of `x86`, taking turns.
#[allow(clippy::too_many_arguments)]
fn verdicts(
    project: &Project,
    matrix: &Matrix,
    x86: &Cell,
    on: &Built,
    s: &Settings,
    opts: &Options,
    dir: &Path,
    figures: &mut Vec<Figure>,
) -> Result<()> {
    let initrd = dir.join("initramfs.cpio");
    image::make(&project.images_dir(), x86.arch, &[], &[], &initrd)?;
    let spec = Spec::new(x86.arch, &on.kernel_image, &initrd, &dir.join("guest"), s.timeouts);
    let (mut bare, mut runs) = (Vec::new(), Vec::new());
    // Bare boots and whole verdicts take turns, so that both see the same
    // machine.
    for _ in 0..opts.reps {
        bare.push(timed(|| Guest::boot(&spec).map(Guest::shutdown).map_err(Into::into))?);
        runs.push(verdict_run(project, matrix, x86, s)?);
    }
    figures.extend(verdict_figures(&x86.name, median(&mut bare), runs));
    Ok(())
}

/// Everything after the build that a verdict needs: from the start of the
/// first of these phases to the end of the last (they overlap).
const VERDICT: [Phase; 9] = Phase::AFTER_BUILD;

/// One verdict of `x86`, timed, and its report. The regen phase drives
/// kbuild, not the guest: not part of a verdict's time, and minutes of xz.
fn verdict_run(project: &Project, matrix: &Matrix, x86: &Cell, s: &Settings) -> Result<(f64, CellReport)> {
    let report = cell::run(project, matrix, &Cell { regen: false, ..x86.clone() }, s, &|_| {});
    if report.verdict.is_bad() {
        bail!("cell {} did not pass, so its verdict time means nothing: {}", x86.name, report.verdict.reason());
    }
    Ok((report.span_seconds(&VERDICT), report))
}

/// The figures of the verdict runs of cell `name` against a `bare` boot:
/// the median, the spread, and the median run's phases.
fn verdict_figures(name: &str, bare: f64, mut runs: Vec<(f64, CellReport)>) -> Vec<Figure> {
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (slowest, fastest) = (runs[runs.len() - 1].0, runs[0].0);
    // The median run (the lower middle one of an even count), whole.
    let (verdict, report) = &runs[(runs.len() - 1) / 2];
    let sum: f64 = report.phases.iter().filter(|p| VERDICT.contains(&p.phase)).map(|p| p.seconds).sum();
    let of = format!("median of {}", runs.len());
    let mut figures = vec![
        Figure::new("verdict", format!("{name}: boot to verdict, wall, {of} ({})", VERDICT.map(Phase::name).join(", ")), *verdict, "s")
            .against("bare boot to /init and reboot", bare)
            .ratio_at_most(2.0),
        Figure::new("verdict", format!("{name}: boot to verdict, fastest and slowest of {}", runs.len()), slowest, "s").against("fastest", fastest),
        Figure::new("verdict", format!("{name}: the median run's phases one after the other (sum)"), sum, "s")
            .against("boot to verdict, wall", *verdict),
    ];
    for p in &report.phases {
        figures.push(Figure::new("verdict", format!("{name}: phase {} (from {:.2} s)", p.phase, p.start), p.seconds, "s"));
    }
    figures
}

/// The whole matrix twice in one cache (the second round must build
/// nothing); with `cold`, the first round in a private, empty cache.
fn whole_matrix(project: &Project, matrix: &Matrix, s: &Settings, opts: &Options, progress: &dyn Fn(&str), figures: &mut Vec<Figure>) -> Result<()> {
    let quiet = |_: &str| {};
    // Two rounds in one cache; the second must build nothing. With
    // `cold`, the cache is a private one, emptied first, so that the
    // first round is really cold (unpack, patch, every kernel built),
    // and removed after; else the first round only builds what the
    // user's cache lacks.
    let (ms, first) = if opts.cold {
        (Settings { cache_dir: s.cache_dir.join("bench-cold"), ..s.clone() }, ("cold (empty cache)", Some(45.0)))
    } else {
        (s.clone(), ("first (this cache)", None))
    };
    let clear = || std::fs::remove_dir_all(&ms.cache_dir).or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) });
    if opts.cold {
        clear().with_context(|| format!("cannot empty {}", ms.cache_dir.display()))?;
    }
    for (round, limit) in [first, ("warm (same cache)", Some(10.0))] {
        progress(&format!("bench: the whole matrix, {round}, cache {}", ms.cache_dir.display()));
        let t = Instant::now();
        let cells: Vec<_> = matrix.cells.iter().collect();
        let reports = cell::run_many(project, matrix, &cells, &ms, cell::DEFAULT_JOBS, &quiet, &|_| {});
        let secs = t.elapsed().as_secs_f64();
        let built = reports.iter().filter(|r| r.kernel_built).count();
        // Regen steps that passed before with the same inputs are not run again.
        let cached = reports.iter().filter(|r| r.checks.iter().any(|c| c.cached)).count();
        let bad: Vec<_> = reports.iter().filter(|r| r.verdict.is_bad()).map(|r| r.cell.as_str()).collect();
        if !bad.is_empty() {
            bail!("the matrix did not pass ({}), so its time means nothing", bad.join(", "));
        }
        let f = Figure::new(
            "matrix",
            format!("whole matrix, {round}: {} cells, {built} kernel(s) built, regen cached in {cached}", reports.len()),
            secs / 60.0,
            "min",
        );
        figures.push(match limit {
            Some(l) => f.at_most(l),
            None => f,
        });
        // Where a round's time goes: the phases summed over its cells.
        let mut by_phase: Vec<(Phase, f64)> = Vec::new();
        for p in reports.iter().flat_map(|r| &r.phases) {
            match by_phase.iter_mut().find(|(n, _)| *n == p.phase) {
                Some((_, t)) => *t += p.seconds,
                None => by_phase.push((p.phase, p.seconds)),
            }
        }
        for (name, t) in by_phase.into_iter().filter(|(_, t)| *t >= 1.0) {
            figures.push(Figure::new("matrix", format!("  {round}: phase {name}, all cells"), t / 60.0, "min"));
        }
    }
    if opts.cold {
        clear().with_context(|| format!("cannot remove {}", ms.cache_dir.display()))?;
    }
    Ok(())
}

/// Run the series' generator by hand in `build`'s object tree on the lists
/// kbuild made, or (`!modbuild`) on their headers under `include/`: the
/// archive's size (MB) and the generation time (s).
fn generate(build: &Build, modbuild: bool, dir: &Path) -> Result<(f64, f64)> {
    let work = tempfile::tempdir_in(&build.obj)?;
    let mut lists = regen::generator_lists(build);
    if !modbuild {
        for list in &mut lists {
            let text = std::fs::read_to_string(&*list).with_context(|| format!("cannot read {}", list.display()))?;
            let filtered = work.path().join(list.file_name().unwrap_or_default());
            std::fs::write(&filtered, headers_only(&text, &regen::srctree(build), build.arch.srcarch()))?;
            *list = filtered;
        }
    }
    let out = work.path().join("kheaders.tar.xz");
    let kind = if modbuild { "modbuild" } else { "headers" };
    let log = dir.join(format!("generate-{kind}.log"));
    let secs = timed(|| {
        let st = run_logged(&mut regen::generator_command(build, &lists, &out, BUILD_TIMESTAMP.0), &log, Duration::from_secs(600))?;
        if !st.success() {
            bail!("gen_kheaders.sh failed ({st}); see {}", log.display());
        }
        Ok(())
    })?;
    Ok((std::fs::metadata(&out)?.len() as f64 / 1e6, secs))
}

/// The lines of a generator list that name a header under `include/` or
/// `arch/<srcarch>/include/`, once `srctree/` is taken off: what mainline
/// archives.
fn headers_only(list: &str, srctree: &Path, srcarch: &str) -> String {
    let prefix = format!("{}/", srctree.display());
    let arch = format!("arch/{srcarch}/include/");
    list.lines()
        .filter(|l| {
            let path = l.strip_prefix(&prefix).unwrap_or(l);
            path.ends_with(".h") && (path.starts_with("include/") || path.starts_with(&arch))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

fn sync() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn timed(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64())
}

/// The median (the mean of the middle two for an even count).
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "MB" => format!("{v:.3}"),
        _ => format!("{v:.2}"),
    }
}

/// The figures as Markdown tables, one per section.
pub fn markdown(figures: &[Figure]) -> String {
    let mut out = String::new();
    let mut section = "";
    for f in figures {
        if f.section != section {
            section = f.section;
            out += &format!("\n### {section}\n\n| figure | value | baseline (same run) | ratio | target |\n|---|---|---|---|---|\n");
        }
        let base = f.baseline.as_ref().map(|(n, b)| format!("{n}: {} {}", fmt_value(*b, f.unit), f.unit)).unwrap_or_default();
        let ratio = f.ratio().map(|r| format!("{r:.2}x")).unwrap_or_default();
        let target = f.target.as_ref().map(|(t, ok)| format!("{t}: {}", if *ok { "met" } else { "MISSED" })).unwrap_or_default();
        out += &format!("| {} | {} {} | {base} | {ratio} | {target} |\n", f.name, fmt_value(f.value, f.unit), f.unit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_finds_its_cells_in_the_repository_matrix() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/matrix.yaml");
        let matrix = Matrix::load(&path).unwrap();
        let cells = BenchCells::pick(&matrix).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!((cells.arm_73.kernel, cells.arm_73.arch.is_host()), (Kernel::V7_3, false));
        assert_eq!((cells.x86_73.kernel, cells.x86_73.arch.is_host()), (Kernel::V7_3, true));
    }

    #[test]
    fn headers_only_keeps_what_mainline_archives() {
        let src = "/s/include/linux/a.h\n/s/arch/x86/include/asm/b.h\n/s/arch/arm64/include/asm/c.h\n\
                   /s/scripts/mod/d.h\n/s/tools/include/e.h\n/s/include/linux/f.c\n/s/Makefile\n";
        assert_eq!(headers_only(src, Path::new("/s"), "x86"), "/s/include/linux/a.h\n/s/arch/x86/include/asm/b.h\n");
        let obj = "include/generated/autoconf.h\ninclude/config/auto.conf\nscripts/mod/elfconfig.h\n";
        assert_eq!(headers_only(obj, Path::new("/s"), "x86"), "include/generated/autoconf.h\n");
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn ratios_and_targets_are_judged_from_the_numbers() {
        let f = Figure::new("s", "a", 11.0, "s").against("b", 10.0).ratio_at_most(1.10);
        assert!((f.ratio().unwrap() - 1.1).abs() < 1e-9);
        assert!(f.target.as_ref().unwrap().1);
        let f = Figure::new("s", "a", 12.0, "s").against("b", 10.0).ratio_at_most(1.10);
        assert!(!f.target.as_ref().unwrap().1);
        let f = Figure::new("archive", "x", 5.1, "MB").at_most(5.0);
        let md = markdown(&[f]);
        assert!(md.contains("### archive") && md.contains("| x | 5.100 MB |") && md.contains("MISSED"), "{md}");
    }
}
