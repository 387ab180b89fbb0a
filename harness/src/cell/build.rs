//! The build glue of a cell: preflight, the object tree and its cache key,
//! the build with its progress, the no-op rebuild, the randstruct probe,
//! and the regen phase's cached outcome. [`build_only`] builds a cell's
//! kernel exactly as a run does, for the bench and the guest tests.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::record::{Run, Stop};
use super::{Settings, HEADERS};
use crate::blame;
use crate::cache::{key, Cache, CacheLock};
use crate::checks;
use crate::kbuild::{self, Build};
use crate::matrix::{BuildKind, Cell, Matrix, Toolchain};
use crate::phase::Phase;
use crate::report::Verdict;
use crate::tree::{self, Tree};
use crate::{progress, regen, tools, Project};

/// The tools, the cell directory (its unpacked archive kept), free space,
/// the cache.
pub(super) fn preflight(run: &mut Run, cell: &Cell, s: &Settings) -> Result<Cache, Stop> {
    tools::check(&tools::required(cell)).map_err(blame::host)?;
    // The last run's unpacked archive stays, for the extract phase to
    // rewrite in place (scratch.rs says why).
    crate::scratch::clear_dir_except(&run.dir, HEADERS).with_context(|| format!("cannot clear {}", run.dir.display())).map_err(blame::host)?;
    std::fs::create_dir_all(&run.dir).with_context(|| format!("cannot create the cell directory {}", run.dir.display())).map_err(blame::host)?;
    // The unpacked trees and the kselftest's temporary one go here.
    crate::scratch::spread_new_subdirs(&run.dir);
    tools::check_space(&run.dir, "output directory (--out)", tools::OUT_DIR_NEEDS).map_err(blame::host)?;
    let cache = Cache::open(&s.cache_dir).map_err(blame::host)?;
    tools::check_space(cache.root(), "cache (--cache, KHTEST_CACHE)", tools::CACHE_NEEDS).map_err(blame::host)?;
    Ok(cache)
}

/// The cache key of a cell's build: the tree, the toolchain, the arch, the
/// kind of build and every requested option.
pub fn build_key(tree_key: &str, toolchain_key: &str, cell: &Cell, request: &kbuild::Request) -> String {
    key(&[
        tree_key.as_bytes(),
        toolchain_key.as_bytes(),
        cell.arch.kernel_arch().as_bytes(),
        format!("{:?}", cell.build).as_bytes(),
        request.text().as_bytes(),
    ])
}

/// The build's key, and the lock that keeps every other run out of its
/// object tree until it is dropped. [`super::run`] and [`build_only`]
/// both take it here.
pub(super) fn lock_build(cache: &Cache, tree: &Tree, cell: &Cell, request: &kbuild::Request) -> anyhow::Result<(String, CacheLock)> {
    tools::check(&tools::for_options(&request.options))?;
    let key = build_key(&tree.key, &tools::toolchain_key(cell.arch, cell.toolchain, &request.options)?, cell, request);
    let lock = cache.lock(&format!("build-{key}"))?;
    Ok((key, lock))
}

/// The machine's one kernel build at a time: cells may run side by side
/// (`khtest run --jobs`, nextest), but a kernel build wants every core,
/// so builds take turns. Held from configure to the end of regen.
pub(super) fn kernel_build_turn(cache: &Cache, say: &dyn Fn(&str)) -> anyhow::Result<CacheLock> {
    cache.lock_saying(KERNEL_BUILDS, &|_| say("waiting for another cell's kernel build to finish"))
}

/// The name of the lock behind [`kernel_build_turn`].
const KERNEL_BUILDS: &str = "kernel-builds";

/// The out-of-tree build keyed `key`: an `O=` directory of the tree.
fn out_of_tree(cache: &Cache, tree: &Tree, cell: &Cell, key: &str) -> Build {
    Build {
        arch: cell.arch,
        toolchain: cell.toolchain,
        src: tree.path.clone(),
        obj: tree.build_dir(key),
        kind: cell.build,
        ccache: Some(cache.root().join("ccache")),
    }
}

/// Where the cell builds: an `O=` directory of the tree, or (in-tree) the
/// cell's own copy of the tree, `make mrproper`ed in phase `pristine`. The
/// first build of every new tree, series or config then starts pristine,
/// which is when the 2019 circular dependency would show.
pub(super) fn object_tree(run: &mut Run, cache: &Cache, tree: &Tree, cell: &Cell, build_key: &str) -> Result<Build, Stop> {
    match cell.build {
        BuildKind::OutOfTree => Ok(out_of_tree(cache, tree, cell, build_key)),
        BuildKind::InTree => {
            let log = run.dir.join("build.log");
            let at = |dir: &Path, ccache| Build {
                arch: cell.arch,
                toolchain: cell.toolchain,
                src: dir.to_owned(),
                obj: dir.to_owned(),
                kind: cell.build,
                ccache,
            };
            let dir = run.phase(Phase::Pristine, |_| {
                cache
                    .get_or_make("intree", build_key, |dir| {
                        tree::copy_tree(&tree.path, dir)?;
                        at(dir, None).mrproper(&log)
                    })
                    .map_err(blame::host)
            })?;
            Ok(at(&dir, Some(cache.root().join("ccache"))))
        }
    }
}

/// Configure `build` as `request` asks, keeping the final `.config` in
/// the cell directory. An option that did not stick is a FAIL naming it.
pub(super) fn configure(run: &mut Run, build: &Build, request: &kbuild::Request) -> Result<kbuild::Config, Stop> {
    let got = build.configure(request, &run.dir.join("build.log")).map_err(|e| match e.downcast_ref::<kbuild::NotStuck>() {
        Some(n) => Verdict::Fail(n.to_string()),
        None => blame::host(e),
    })?;
    copy(&build.obj.join(".config"), &run.dir.join("config"))?;
    Ok(got)
}

/// RANDSTRUCT and the module-build archive cannot meet (K15): Kconfig must
/// drop one when both are asked for. With gcc, RANDSTRUCT is a GCC plugin,
/// so the probe needs the plugin headers of the cell's gcc (the cross
/// compiler's too); clang has it built in.
pub(super) fn randstruct_check(run: &mut Run, build: &Build, cell: &Cell) -> Result<(), Stop> {
    let name = "Kconfig drops the module-build archive when RANDSTRUCT is on";
    let needs = match cell.toolchain {
        Toolchain::Gcc => format!("its gcc's plugin headers (apt-get install {}; scripts/setup-host.sh does)", cell.arch.facts().gcc_plugin_package),
        Toolchain::Llvm => "a clang with randstruct (CONFIG_CC_HAS_RANDSTRUCT: clang 16 or later)".to_owned(),
    };
    let got = build.randstruct_probe(&run.dir.join("randstruct-probe.log")).map_err(blame::of)?;
    run.check(name, checks::randstruct_verdict(&got, &needs))
}

/// Build the kernel (showing progress against the last build from
/// scratch) and copy its archive to `built`. With it, the no-op rebuild's
/// verdict when this make found the kernel built already.
pub(super) fn build_kernel(
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
    let a = build.build(config, &build_log, s.build_limit, &|m| run.say(m), estimates.get(&estimate)).map_err(blame::of)?;
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

/// The rebuild phase: `make` again must leave the archive alone. When the
/// build's own make found the kernel built, its verdict (`build_was_noop`)
/// is this one, and no second make runs.
pub(super) fn rebuild(run: &mut Run, build: &Build, archive: &Path, build_was_noop: Option<Verdict>, cell: &Cell, s: &Settings) -> Result<(), Stop> {
    let name = "no-op rebuild leaves the archive alone";
    if let Some(v) = build_was_noop {
        tracing::info!("{}: the build's make found the kernel built and left the archive alone: no second make", cell.name);
        return run.check(name, v);
    }
    let before = checks::snapshot(archive).map_err(blame::host)?;
    let log = run.dir.join("rebuild.log");
    build.rebuild(&log, s.build_limit).map_err(blame::of)?;
    run.check(name, noop_verdict(build, &before, &log, 0, cell)?)
}

/// The no-op rebuild's verdict on the archive as it was `before` and the
/// make output in `log` after its first `from` bytes. Mainline 6.12 runs
/// its generator on every build to compare (`CHK`); the series lets make
/// decide, so not even that may run.
fn noop_verdict(build: &Build, before: &checks::Snapshot, log: &Path, from: u64, cell: &Cell) -> Result<Verdict, Stop> {
    let after = checks::snapshot(&build.archive()).map_err(blame::host)?;
    Ok(checks::noop_rebuild(before, &after, &log_since(log, from), cell.patched))
}

/// The tracking phase: the archive's `.cmd` file lists its inputs (K16).
pub(super) fn tracking(run: &mut Run, build: &Build) -> Result<(), Stop> {
    let cmd = build.obj.join("kernel/.kheaders_data.tar.xz.cmd");
    let text = std::fs::read_to_string(&cmd).with_context(|| format!("cannot read {}", cmd.display())).map_err(blame::host)?;
    run.check("the archive's .cmd file tracks the top-level Makefile (K16)", checks::tracked_inputs(&text))
}

/// The regen checks in a scratch object tree beside the build, or their
/// passing outcome from the cache, kept under what it depends on
/// ([`regen::passed_path`]).
pub(super) fn regen_checks(
    run: &mut Run,
    cache: &Cache,
    tree: &Tree,
    build_key: &str,
    build: &Build,
    archive: &Path,
    s: &Settings,
) -> Result<(), Stop> {
    let passed = regen::passed_path(&cache.root().join("results"), build_key);
    if let Some(p) = regen_passed(cache, build_key, s) {
        let ago = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0).saturating_sub(p.at);
        tracing::info!(
            "{}: regen passed {} min ago with the same source, series, toolchain, config and steps: not run again (KHTEST_FRESH=1 runs it)",
            run.name,
            ago / 60
        );
        for name in p.steps {
            run.cached_check(&name, Verdict::Pass)?;
        }
        return Ok(());
    }
    let src = regen_source(run, cache, tree, build_key, s)?.expect("regen has not passed before");
    let scratch = cache.root().join("regen-obj").join(build_key);
    let steps = regen::run(build, archive, &src, &scratch, &run.dir, s.build_limit).map_err(blame::of)?;
    regen::remember(&passed, &steps).map_err(blame::host)?;
    for (step, v) in steps {
        run.check(step.name(), v)?;
    }
    Ok(())
}

/// An earlier run's passing regen outcome for this build, unless the run
/// asks for a fresh one.
fn regen_passed(cache: &Cache, build_key: &str, s: &Settings) -> Option<regen::Passed> {
    regen::cached(&regen::passed_path(&cache.root().join("results"), build_key)).filter(|_| !s.fresh)
}

/// The regen phase's copy of the source tree (made once per tree), or
/// `None` when the phase will not run (it passed before).
pub(super) fn regen_source(run: &Run, cache: &Cache, tree: &Tree, build_key: &str, s: &Settings) -> Result<Option<PathBuf>, Stop> {
    if regen_passed(cache, build_key, s).is_some() {
        return Ok(None);
    }
    // The source at a second path, and O= outside it: kbuild's srctree is
    // then absolute, as in the builds of most users, where the cell's
    // (O= inside the tree, for ccache) is `..`.
    let made = |dir: &Path| {
        tracing::info!("{}: regen: a copy of the source tree at a second path (once per tree)", run.name);
        tree::copy_tree(&tree.path, dir)
    };
    // Outside the build turn, cells of one tree could make it at once.
    let _lock = cache.lock(&format!("regen-src-{}", tree.key)).map_err(blame::host)?;
    cache.get_or_make("regen-src", &tree.key, made).map(Some).map_err(blame::host)
}

/// A cell's kernel, up to date in the cache, and the files read from it.
pub struct Built {
    pub build: Build,
    pub archive: PathBuf,
    pub kernel_image: PathBuf,
}

/// Configure and build an out-of-tree `cell` (with `request` instead of
/// its own, if given) in the cache exactly as [`super::run`] does,
/// without booting it: a no-op `make` when it is up to date. For the bench
/// and the guest tests.
pub fn build_only(
    project: &Project,
    matrix: &Matrix,
    cell: &Cell,
    s: &Settings,
    request: Option<kbuild::Request>,
    log: &Path,
) -> anyhow::Result<Built> {
    anyhow::ensure!(cell.build == BuildKind::OutOfTree, "cell {}: only out-of-tree builds can be built on their own", cell.name);
    let cache = Cache::open(&s.cache_dir)?;
    let tree = tree::prepare(&cache, s.source.as_ref(), project, cell.kernel, cell.patched, &|_| {})?;
    let request = match request {
        Some(r) => r,
        None => kbuild::request(matrix, cell)?,
    };
    let (key, _lock) = lock_build(&cache, &tree, cell, &request)?;
    let _turn = kernel_build_turn(&cache, &|m| tracing::info!("{}: {m}", cell.name))?;
    let build = out_of_tree(&cache, &tree, cell, &key);
    build.configure(&request, log)?;
    build.rebuild(log, s.build_limit)?;
    Ok(Built { archive: build.archive(), kernel_image: build.kernel_image(), build })
}

fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)
}

/// What `log` got after its first `from` bytes.
fn log_since(log: &Path, from: u64) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    String::from_utf8_lossy(bytes.get(from as usize..).unwrap_or_default()).into_owned()
}

pub(super) fn copy(from: &Path, to: &Path) -> Result<(), Stop> {
    std::fs::copy(from, to).with_context(|| format!("cannot copy {} to {}", from.display(), to.display())).map(drop).map_err(blame::host)
}
