//! The host's lanes of a cell, run while the guest boots: unpack and check
//! the build's archive, then build the test module (for the guest to load)
//! beside the eBPF compile; the kselftest as `make run_tests` runs it; and
//! the archive found again in the kernel files.

use std::path::{Path, PathBuf};

use super::record::{Run, Stop};
use super::{Settings, HEADERS};
use crate::blame;
use crate::cache::Cache;
use crate::kbuild::{self, Build};
use crate::matrix::Cell;
use crate::phase::Phase;
use crate::report::Verdict;
use crate::symvers::SymbolVersions;
use crate::tree::Tree;
use crate::{bpf, checks, extract, Project};

/// What the host lanes (and the device lane) read: all of it finished
/// before they start.
#[derive(Clone, Copy)]
pub(super) struct Host<'a> {
    pub project: &'a Project,
    pub cell: &'a Cell,
    pub s: &'a Settings,
    pub cache: &'a Cache,
    pub tree: &'a Tree,
    pub build: &'a Build,
    pub artifacts: &'a kbuild::Artifacts,
    /// The cell's copy of the build's archive.
    pub built: &'a Path,
    /// What the kernel does with symbol versions.
    pub versions: SymbolVersions,
}

impl Host<'_> {
    /// Unpack the archive and check it, then build the test module (sent
    /// to the guest lane as soon as it is built) and compile the eBPF
    /// program, at once.
    pub fn modbuild_lane(&self, run: &mut Run, ko_tx: std::sync::mpsc::Sender<PathBuf>) -> Result<(), Stop> {
        let (cell, headers) = (self.cell, run.dir.join(HEADERS));
        run.phase(Phase::Extract, |run| {
            let x = checks::extract(self.built, &headers).map_err(blame::of)?;
            tracing::info!("{}: {} files, {} bytes unpacked", cell.name, x.files, x.bytes);
            run.check("archive contents", checks::contents(&headers, cell.modbuild))?;
            run.check("archive decodes in at most 9 MiB (K17)", checks::decode_memory(self.built))?;
            run.check("every ELF program in the archive is for the cell's architecture", checks::elf_arch(&headers, cell.arch))?;
            run.check("SPDX lines kept", checks::spdx_kept(&headers, &[&self.build.obj, &self.tree.path]))?;
            run.check(
                "no .cmd, .o or path of the build machine in the archive (K20)",
                checks::no_build_machine_traces(&headers, &[&self.build.obj, &self.tree.path]),
            )
        })?;
        // The eBPF compile needs only the headers: it runs beside the
        // module build, which the guest waits for.
        std::thread::scope(|scope| {
            let mut lane = run.lane();
            let headers = &headers;
            let bpf = scope.spawn(move || {
                let r = lane.phase(Phase::Bpf, |run| {
                    let work = run.dir.join("bpf");
                    std::fs::create_dir_all(&work).map_err(blame::host)?;
                    let v = bpf::compile(&bpf::program(&self.project.root), headers, cell.arch, &work, &run.dir.join("bpf.log"));
                    run.check("an eBPF kprobe program compiles against the headers", v)
                });
                (lane, r)
            });
            let built = if let Some(why) = host_cannot_build(cell) {
                drop(ko_tx);
                run.skip("module build on the host", why);
                Ok(())
            } else {
                run.phase(Phase::Modbuild, |run| {
                    let log = run.dir.join("modbuild.log");
                    checks::build_testmod(
                        headers,
                        &self.project.testmod_dir(),
                        (cell.arch, cell.toolchain),
                        &run.dir,
                        &log,
                        self.s.timeouts.command * 5,
                    )
                })
                // The guest lane may have stopped already: then nobody waits.
                .map(|ko| drop(ko_tx.send(ko)))
            };
            let (lane, r) = bpf.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            let stops = vec![(run.current, built), (lane.current, r)];
            run.merge(lane);
            run.stop_first(stops)
        })
    }

    /// The archive out of the kernel files, without booting.
    pub fn image_lane(&self, run: &mut Run) -> Result<(), Stop> {
        run.phase(Phase::FromImage, |run| {
            // Out of kheaders.ko for =m, else out of vmlinux and out of the
            // (compressed) boot image.
            let sources = match &self.artifacts.kheaders_ko {
                Some(ko) => vec![ko.clone()],
                None => vec![self.build.obj.join("vmlinux"), self.artifacts.kernel_image.clone()],
            };
            let built = std::fs::read(self.built).map_err(blame::host)?;
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

    /// The kselftest as `make run_tests` runs it.
    pub fn selftest_lane(&self, run: &mut Run) -> Result<(), Stop> {
        let (cell, s) = (self.cell, self.s);
        // A headers-only archive's kselftest skips its module results
        // itself; one for another architecture cannot run here at all.
        if let Some(why) = host_cannot_build(cell).filter(|_| cell.modbuild) {
            run.skip("kselftest kheaders on the host (make run_tests)", why);
            return Ok(());
        }
        run.phase(Phase::Kselftest, |run| {
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
                make.env("ARCH", cell.arch.kernel_arch());
            }
            make.envs(cell.toolchain.make_vars(cell.arch));
            crate::process::run_logged(&mut make, &log, s.timeouts.command * 5).map_err(blame::host)?;
            let text = std::fs::read_to_string(&log).map_err(blame::host)?;
            let v = match checks::kselftest_tap(&text, "kheaders: run_kheaders_modbuild.sh") {
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
