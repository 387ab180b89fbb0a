//! One test per cell of `configs/matrix.yaml`: `cargo nextest run -E
//! 'binary(cells)'` runs them all, `-E 'test(x86_64-y-o)'` one. Each test
//! builds, boots and checks its cell for real; the test fails with the
//! cell's verdict, failed phase and log directory.
//!
//! The `guest-*` tests boot the first x86_64 cell's kernel with an `/init`
//! that misbehaves (panics, hangs at boot, hangs in a command), or with a
//! file that goes on past its `stat` size, and check that the harness sees
//! it at once or at its deadline, and ends QEMU.

use libtest_mimic::{Arguments, Failed, Trial};

use khtest::cell::{self, Settings};
use khtest::matrix::Matrix;
use khtest::vm::Timeouts;
use khtest::Project;

fn main() {
    let args = Arguments::from_args();
    if let Err(e) = khtest::process::stop_children_on_signals() {
        eprintln!("cannot handle signals: {e:#}");
        std::process::exit(101);
    }
    let project = Project::locate();
    let matrix = match Matrix::load(&project.default_matrix()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e:#}");
            std::process::exit(101);
        }
    };
    let mut trials: Vec<Trial> = matrix
        .cells
        .iter()
        .map(|c| {
            let (project, matrix, cell) = (project.clone(), matrix.clone(), c.clone());
            Trial::test(c.name.clone(), move || run_cell(&project, &matrix, &cell))
        })
        .collect();
    for (name, misbehaviour) in [
        ("guest-panic-is-seen-at-once", Misbehaviour::PanicAtBoot),
        ("guest-hang-at-boot-times-out", Misbehaviour::HangAtBoot),
        ("guest-hang-in-a-command-times-out", Misbehaviour::HangInCommand),
        ("guest-pull-checks-length-and-bytes", Misbehaviour::FileLongerThanStat),
    ] {
        let (project, matrix) = (project.clone(), matrix.clone());
        trials.push(Trial::test(name, move || guest_test(&project, &matrix, misbehaviour)));
    }
    libtest_mimic::run(&args, trials).exit();
}

fn settings() -> Result<Settings, Failed> {
    Ok(Settings::new(&Project::locate(), "cargo nextest run -p khtest --test cells -E 'test(={cell})'"))
}

#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    PanicAtBoot,
    HangAtBoot,
    HangInCommand,
    FileLongerThanStat,
}

fn guest_test(project: &Project, matrix: &Matrix, what: Misbehaviour) -> Result<(), Failed> {
    use khtest::vm::{Guest, Spec, VmError};
    use std::time::{Duration, Instant};
    let s = settings()?;
    let cell = matrix
        .cells
        .iter()
        .find(|c| c.arch.is_host() && c.build == khtest::matrix::BuildKind::OutOfTree)
        .ok_or("the matrix has no x86_64 out-of-tree cell to borrow a kernel from")?;
    let dir = s.out_dir.join(format!("guest-{what:?}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let built = cell::build_only(project, matrix, cell, &s, None, &dir.join("build.log")).map_err(|e| format!("{e:#}"))?;
    let init = match what {
        Misbehaviour::PanicAtBoot => "#!/bin/busybox sh\necho khtest: init exits, the kernel must panic\nexit 1\n",
        Misbehaviour::HangAtBoot => "#!/bin/busybox sh\nexec /bin/busybox sleep 100000\n",
        Misbehaviour::HangInCommand | Misbehaviour::FileLongerThanStat => {
            &std::fs::read_to_string(project.images_dir().join("init")).map_err(|e| e.to_string())?
        }
    };
    let images = dir.join("images");
    std::fs::create_dir_all(&images).map_err(|e| e.to_string())?;
    std::fs::write(images.join("init"), init).map_err(|e| e.to_string())?;
    let initrd = dir.join("initramfs.cpio");
    khtest::image::make(&images, cell.arch, &[], &[], &initrd).map_err(|e| format!("{e:#}"))?;
    let timeouts = Timeouts { boot: Duration::from_secs(20), command: Duration::from_secs(5), ..Timeouts::default() };
    let spec = Spec::new(cell.arch, &built.kernel_image, &initrd, &dir, timeouts).memory(256);
    let start = Instant::now();
    if let Misbehaviour::HangAtBoot = what {
        // Through the cell's retry policy: one retry, recorded, then ERROR.
        let mut retries = Vec::new();
        let outcome = cell::boot_retrying_once(&spec, &mut retries).map(drop);
        qemu_gone(&initrd)?;
        return match outcome {
            Err(khtest::report::Verdict::Error(why))
                if why.contains("during boot") && retries.len() == 1 && dir.join("console.attempt1.log").exists() =>
            {
                Ok(())
            }
            other => Err(format!("hang at boot: unexpected outcome {other:?}, retries {retries:?}").into()),
        };
    }
    if let Misbehaviour::FileLongerThanStat = what {
        let mut g = Guest::boot(&spec).map_err(|e| e.to_string())?;
        g.run("pull", "echo abc > /tmp/f", timeouts.command).map_err(|e| e.to_string())?;
        let dest = dir.join("pulled");
        // The expected bytes, then others: the guest's hash agrees with
        // what arrived, so the difference is the file's, for the caller.
        for expected in [&b"abc\n"[..], b"xyz\n"] {
            let got = g.pull("pull", "/tmp/f", &dest, Some(expected)).map_err(|e| e.to_string())?;
            if got != 4 || std::fs::read(&dest).map_err(|e| e.to_string())? != b"abc\n" {
                return Err(format!("pulling /tmp/f expecting {expected:?}: {got} bytes, {:?}", std::fs::read(&dest)).into());
            }
        }
        // /proc files have no size: the bytes go on past stat's 0.
        let outcome = g.pull("pull", "/proc/version", &dest, None);
        drop(g);
        qemu_gone(&initrd)?;
        return match outcome {
            Err(VmError::Transfer(why)) if why.contains("goes on past the 0 bytes") => Ok(()),
            other => Err(format!("pulling /proc/version: unexpected outcome {other:?}").into()),
        };
    }
    let outcome = match Guest::boot(&spec) {
        Ok(mut g) if matches!(what, Misbehaviour::HangInCommand) => g.run("stuck-command", "sleep 100000", timeouts.command).map(drop),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    };
    let took = start.elapsed();
    qemu_gone(&initrd)?;
    match (what, outcome) {
        (Misbehaviour::PanicAtBoot, Err(VmError::Crash { phase, text })) if phase == "boot" && text.contains("Kernel panic") => {
            // Seen on the console, not by running into the deadline.
            if took >= timeouts.boot {
                return Err(format!("the panic was only reported after {took:?}").into());
            }
            Ok(())
        }
        (Misbehaviour::HangInCommand, Err(VmError::Timeout { phase, .. })) if phase == "stuck-command" => Ok(()),
        (w, other) => Err(format!("{w:?}: unexpected outcome after {took:?}: {other:?}").into()),
    }
}

/// The guest is dropped by now: its QEMU (found by its initramfs path on
/// the command line) must be gone.
fn qemu_gone(initrd: &std::path::Path) -> Result<(), Failed> {
    std::thread::sleep(std::time::Duration::from_millis(500));
    let still = std::process::Command::new("pgrep").arg("-f").arg(initrd.to_string_lossy().as_ref()).output().map_err(|e| e.to_string())?;
    if !still.stdout.is_empty() {
        return Err(format!("QEMU is still running after the test: pids {}", String::from_utf8_lossy(&still.stdout)).into());
    }
    Ok(())
}

fn run_cell(project: &Project, matrix: &Matrix, c: &khtest::matrix::Cell) -> Result<(), Failed> {
    let settings = settings()?;
    let printer = khtest::progress::Printer::new(false, false);
    let r = cell::run(project, matrix, c, &settings, &|m| printer.print(m));
    eprint!("{}", khtest::report::table(std::slice::from_ref(&r)));
    if r.verdict.is_bad() {
        return Err(r.explain().into());
    }
    eprintln!("{}", r.explain());
    Ok(())
}
