//! The guest's side of a cell: boot (retried once when the host, not the
//! kernel, failed), pull the archive with `stat`, `insmod` and `rmmod`
//! around it, and load and unload the test module. Every guest command
//! whose exit status matters goes through [`checked`].

use std::path::Path;
use std::time::Duration;

use super::host::Host;
use super::record::{Run, Stop};
use super::Settings;
use crate::blame;
use crate::checks;
use crate::image;
use crate::matrix::{Cell, ModuleLoad};
use crate::phase::Phase;
use crate::report::Verdict;
use crate::symvers;
use crate::vm::{Guest, Output, Spec, VmError};

/// Boot; if the guest hangs or QEMU dies before the shell is up (TCG on a
/// loaded host), boot once more and record why. A crash is the kernel's
/// fault and is never retried. The first attempt's console log is kept.
pub fn boot_retrying_once(spec: &Spec, retries: &mut Vec<String>) -> Result<Guest, Stop> {
    match Guest::boot(spec) {
        Ok(g) => Ok(g),
        Err(e @ VmError::Crash { .. }) => Err(blame::of_vm(e)),
        Err(e) => {
            let kept = spec.dir.join("console.attempt1.log");
            let _ = std::fs::rename(spec.console_log(), &kept);
            retries.push(format!("boot: {e} (first console log: {})", kept.display()));
            Guest::boot(spec).map_err(blame::of_vm)
        }
    }
}

/// Run `cmd` in the guest as part of `phase`. If it exits non-zero, the
/// check `check` fails quoting `what` (the command as a person would name
/// it), its exit status and its output; else its output.
pub(super) fn checked(run: &mut Run, guest: &mut Guest, phase: Phase, check: &str, what: &str, cmd: &str, limit: Duration) -> Result<Output, Stop> {
    let out = guest.run(phase.name(), cmd, limit).map_err(blame::of_vm)?;
    if out.status != 0 {
        run.check(check, Verdict::Fail(format!("{what} exited {}:\n{}", out.status, out.text)))?;
    }
    Ok(out)
}

/// Boot the guest and pull its archive, which must be the build's bytes
/// (where kheaders is a module, only while kheaders.ko is loaded), and
/// the symbol versions it serves, which must be the build's.
pub(super) fn boot_and_pull(run: &mut Run, host: &Host<'_>, spec: &Spec) -> Result<Guest, Stop> {
    let (cell, s, built, tree) = (host.cell, host.s, host.built, &host.tree.path);
    let ko = host.artifacts.kheaders_ko.is_some();
    let mut guest = run.phase(Phase::Boot, |run| boot_retrying_once(spec, &mut run.retries))?;
    let pulled = run.dir.join("kheaders.tar.xz");
    let limit = s.timeouts.command;
    run.phase(Phase::Pull, |run| {
        let paths = archive_paths(cell);
        let built_size = std::fs::metadata(built).map(|m| m.len()).map_err(blame::host)?;
        if ko {
            let before = served(&mut guest, limit)?;
            run.check("no archive before kheaders.ko is loaded", checks::served_sizes(&before, &[], 0))?;
            let insmod = format!("insmod {}/kheaders.ko", image::MODULES_DIR);
            checked(run, &mut guest, Phase::Pull, "kheaders.ko loads", "insmod kheaders.ko", &insmod, limit)?;
        }
        let sizes = served(&mut guest, limit)?;
        run.check("archive served with its size", checks::served_sizes(&sizes, &paths, built_size))?;
        let built_bytes = std::fs::read(built).map_err(blame::host)?;
        guest.pull(Phase::Pull.name(), paths.last().expect("one path at least"), &pulled, Some(&built_bytes)).map_err(blame::of_vm)?;
        run.check("pulled archive is the build's archive", checks::same_bytes(&pulled, built))?;
        if cell.patched && cell.modbuild {
            help_recipe(run, &mut guest, tree, s)?;
        }
        if ko {
            checked(run, &mut guest, Phase::Pull, "kheaders.ko unloads", "rmmod kheaders", "rmmod kheaders", limit)?;
            let after = served(&mut guest, limit)?;
            run.check("no archive after kheaders.ko is unloaded", checks::served_sizes(&after, &[], 0))?;
        }
        if host.versions.served {
            served_symvers(run, &mut guest, &host.build.obj.join("Module.symvers"), limit)?;
        }
        Ok(())
    })?;
    Ok(guest)
}

/// Pull the symbol versions the kernel serves: they must be the vmlinux
/// lines of the build's `Module.symvers` (K25).
fn served_symvers(run: &mut Run, guest: &mut Guest, module_symvers: &Path, limit: Duration) -> Result<(), Stop> {
    let check = "the served symbol versions (/sys/kernel/symvers/vmlinux) are the vmlinux lines of the build's Module.symvers (K25)";
    let pulled = run.dir.join("served.symvers");
    let there = guest.run(Phase::Pull.name(), &format!("test -r {}", symvers::SERVED), limit).map_err(blame::of_vm)?;
    if there.status != 0 {
        return run.check(check, Verdict::Fail(format!("{} does not exist: the kernel serves no symbol versions", symvers::SERVED)));
    }
    guest.pull(Phase::Pull.name(), symvers::SERVED, &pulled, None).map_err(blame::of_vm)?;
    let served = std::fs::read_to_string(&pulled).map_err(blame::host)?;
    let built = std::fs::read_to_string(module_symvers).map_err(blame::host)?;
    run.check(check, symvers::served_verdict(&served, &built))
}

/// Run the commands of the series' help text (`tree`'s init/Kconfig) in
/// the busybox guest while it serves the archive: busybox alone must put
/// this kernel's tree where DKMS looks.
fn help_recipe(run: &mut Run, guest: &mut Guest, tree: &Path, s: &Settings) -> Result<(), Stop> {
    let check = "the Kconfig help's recipe, with busybox alone, unpacks the archive at /lib/modules/$(uname -r)/build";
    let kconfig = std::fs::read_to_string(tree.join("init/Kconfig")).map_err(blame::host)?;
    let recipe = match checks::help_recipe(&kconfig) {
        Ok(r) => r,
        Err(e) => return run.check(check, Verdict::Fail(e)),
    };
    // Unpacking under TCG takes about ten commands' worth of a small one.
    let out = guest.run(Phase::Pull.name(), &checks::help_recipe_command(&recipe), s.timeouts.command * 5).map_err(blame::of_vm)?;
    run.check(check, checks::help_recipe_verdict(out.status, &out.text))
}

/// Load and unload the test module in the guest. Built on the host, it
/// has no symbol versions: a kernel that checks them must refuse it, for
/// that reason (where the kernel serves them, the device builds a module
/// with them, `device_lane`).
pub(super) fn load(run: &mut Run, guest: &mut Guest, ko: &Path, host: &Host<'_>) -> Result<(), Stop> {
    let limit = host.s.timeouts.command;
    guest.push(Phase::Load.name(), ko, "/tmp/test.ko").map_err(blame::of_vm)?;
    if host.cell.module_load == ModuleLoad::RefusedNoVersions || host.versions.checked {
        let cmd = "dmesg -c >/dev/null; insmod /tmp/test.ko 2>&1; st=$?; dmesg; exit $st";
        let out = guest.run(Phase::Load.name(), cmd, limit).map_err(blame::of_vm)?;
        return run.check("test.ko refused: it has no symbol versions", checks::refused_without_versions(out.status, &out.text));
    }
    for (check, what, cmd, line) in [
        ("test.ko loads", "insmod test.ko", "dmesg -c >/dev/null; insmod /tmp/test.ko && dmesg", checks::HELLO),
        ("test.ko unloads", "rmmod test", "dmesg -c >/dev/null; rmmod test && dmesg", checks::GOODBYE),
    ] {
        let out = checked(run, guest, Phase::Load, check, what, cmd, limit)?;
        let step = what.split(' ').next().unwrap_or(what);
        run.check(check, checks::kernel_log_has(step, &out.text, line))?;
    }
    Ok(())
}

/// Every place a kernel may serve the archive.
const ALL_ARCHIVE_PATHS: [&str; 2] = ["/sys/kernel/kheaders.tar.xz", "/proc/kheaders.tar.xz"];

/// Where the guest serves the archive: sysfs always, procfs with the
/// series' opt-in (`proc`, default on).
pub(super) fn archive_paths(cell: &Cell) -> Vec<&'static str> {
    let mut v = vec![ALL_ARCHIVE_PATHS[0]];
    if cell.patched && cell.proc {
        v.push(ALL_ARCHIVE_PATHS[1]);
    }
    v
}

/// The sizes the guest's `stat` reports for those of the archive's
/// possible places that exist: a file where the cell expects none counts.
pub(super) fn served(guest: &mut Guest, limit: Duration) -> Result<Vec<(String, u64)>, Stop> {
    let out = guest.run(Phase::Pull.name(), &format!("stat -c 'KHTEST-STAT %s %n' {} 2>/dev/null; true", ALL_ARCHIVE_PATHS.join(" ")), limit);
    Ok(checks::parse_stat(&out.map_err(blame::of_vm)?.text))
}
