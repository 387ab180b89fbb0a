//! The device lane of a cell: a second guest with the device's userland
//! runs the kselftest, its port and the README's recipe (`kheaders
//! install`) against its own archive, then (`clients: true`) the
//! archive's real users. What the device runs and how it is judged is
//! `crate::device` and `crate::clients`; this is the lane that boots it
//! and records the outcome.

use std::time::Instant;

use super::guest::{archive_paths, boot_retrying_once, served};
use super::host::Host;
use super::record::{Run, Stop};
use super::DEVICE_INITRAMFS;
use crate::blame;
use crate::device::{self, Expect};
use crate::matrix::Toolchain;
use crate::phase::Phase;
use crate::report::Verdict;
use crate::vm::{Guest, Spec};
use crate::{checks, clients, image, symvers, userland};

/// One test the device runs: what it is called, its guest command, its
/// part of the phase (and log name), and how its TAP is judged.
struct DeviceTest {
    what: &'static str,
    cmd: String,
    part: Phase,
    judge: fn(&str, &str, Expect) -> Verdict,
}

/// Where, in the device, the recipe keeps the module it built.
const RECIPE_MODULE: &str = "/tmp/khtest-recipe-module";

impl Host<'_> {
    /// The device phase: a second guest, with the device's userland, runs
    /// the kselftest, its port and the README's recipe against its own
    /// archive; then, in the same guest, the clients phase. The clients
    /// run after a device phase that failed too (but not after an ERROR):
    /// what DKMS and bcc make of a broken archive is worth seeing.
    pub fn device_lane(&self, run: &mut Run) -> Result<(), Stop> {
        let mut guest = None;
        let device = run.phase(Phase::Device, |run| self.device_phase(run, &mut guest));
        let device_phase = run.current;
        let clients = match (&mut guest, &device) {
            (Some(guest), Ok(()) | Err(Verdict::Fail(_))) if self.cell.clients => run.phase(Phase::Clients, |run| self.clients_phase(run, guest)),
            _ => Ok(()),
        };
        if let Some(guest) = guest {
            guest.shutdown();
        }
        if device.is_err() {
            // The cell's verdict is the device phase's stop.
            run.current = device_phase;
        }
        device.and(clients)
    }

    /// Boot the device, check and mount it (then `guest` holds it), and run
    /// the device phase's tests.
    fn device_phase(&self, run: &mut Run, guest: &mut Option<Guest>) -> Result<(), Stop> {
        let cell = self.cell;
        let mut booted = self.device_guest(run)?;
        let out = booted.run(Phase::Device.name(), "khtest-device readonly", self.s.timeouts.command).map_err(blame::of_vm)?;
        run.check("the device guest cannot write to the host (read-only 9p export)", device::readonly_verdict(out.status, &out.text))?;
        booted.run_ok(Phase::Device.name(), &device::mount_command(&self.tree.path)).map_err(blame::of_vm)?;
        let guest = guest.insert(booted);
        // Where the kernel serves its symbol versions, the recipe's module
        // is built with them: khtest-symvers loads it, rather than spend
        // another module build (minutes under TCG) on the same one.
        let recipe_module = self.versions.served.then_some(RECIPE_MODULE);
        let mut tests = vec![
            DeviceTest {
                what: "kselftest kheaders (make run_tests)",
                cmd: device::kselftest_command(&self.tree.path, &cell.toolchain.device_vars()),
                part: Phase::DeviceKselftest,
                // Its TAP is nested in the kselftest runner's.
                judge: |what, text, expect| device::judge(what, text, "# ", expect),
            },
            DeviceTest {
                what: "kselftest port (kheaders-selftest)",
                cmd: device::port_command(archive_paths(cell).last().expect("one path"), &cell.toolchain.device_vars()),
                part: Phase::DevicePort,
                judge: |what, text, expect| device::judge(what, text, "", expect),
            },
            DeviceTest {
                what: "the README's recipe (kheaders install, make -C /lib/modules/$(uname -r)/build)",
                cmd: device::recipe_command(&self.tree.path, cell.w1, recipe_module, &cell.toolchain.device_vars()),
                part: Phase::DeviceRecipe,
                judge: |_, text, expect| device::judge_recipe(text, expect),
            },
        ];
        if self.versions.served {
            tests.push(DeviceTest {
                what: "symbol versions (khtest-symvers: built with the served ones, loads; with one CRC changed, or none, refused)",
                cmd: symvers::device_command(&self.tree.path, recipe_module, &cell.toolchain.device_vars()),
                part: Phase::DeviceSymvers,
                judge: |_, text, _| symvers::judge_device(text),
            });
        }
        self.device_tests(run, guest, &tests)
    }

    /// The archive's real users, in the mounted device: DKMS, then bcc,
    /// which needs nothing DKMS did.
    fn clients_phase(&self, run: &mut Run, guest: &mut Guest) -> Result<(), Stop> {
        let tests = [
            DeviceTest {
                what: "DKMS (dkms add, build, install, modprobe, remove; the test module and Debian's vpoll-dkms)",
                cmd: clients::dkms_command(&self.tree.path),
                part: Phase::ClientsDkms,
                judge: |_, text, expect| clients::judge_dkms(text, expect),
            },
            DeviceTest {
                what: "bcc (python3-bpfcc: unpacks the archive itself, a kprobe reading task_struct)",
                cmd: clients::bcc_command(),
                part: Phase::ClientsBcc,
                judge: |_, text, _| clients::judge_bcc(text),
            },
        ];
        self.device_tests(run, guest, &tests)
    }

    /// Run `tests` in turn. A test that FAILs does not stop the others:
    /// each is evidence of its own (khtest-symvers, say, loads the module
    /// the recipe built: a wrong served CRC fails the kselftest first, and
    /// khtest-symvers is seen red on its own only if it still runs). An
    /// ERROR stops them: the guest is in doubt. The first stop is the
    /// result.
    fn device_tests(&self, run: &mut Run, guest: &mut Guest, tests: &[DeviceTest]) -> Result<(), Stop> {
        let mut first = Ok(());
        for test in tests {
            let r = self.device_test_unloads(run, guest, test);
            let go_on = matches!(r, Ok(()) | Err(Verdict::Fail(_)));
            first = first.and(r);
            if !go_on {
                break;
            }
        }
        first
    }

    /// Run one test on the device; where kheaders is a module, the test
    /// must leave it unloaded.
    fn device_test_unloads(&self, run: &mut Run, guest: &mut Guest, test: &DeviceTest) -> Result<(), Stop> {
        self.device_test(run, guest, test)?;
        if self.artifacts.kheaders_ko.is_some() {
            let after = served(guest, self.s.timeouts.command)?;
            run.check(&format!("device: no archive once {} has unloaded kheaders.ko", test.what), checks::served_sizes(&after, &[], 0))?;
        }
        Ok(())
    }

    /// Run one test on the device, again if the guest's clock jumped, and
    /// judge its TAP.
    fn device_test(&self, run: &mut Run, guest: &mut Guest, test: &DeviceTest) -> Result<(), Stop> {
        let limit = self.s.timeouts.command * 11;
        let t = Instant::now();
        let mut out = guest.run(Phase::Device.name(), &test.cmd, limit).map_err(blame::of_vm)?;
        let log = run.dir.join(format!("{}.log", test.part));
        if device::spurious_timeout(&out.text, t.elapsed().as_secs_f64()) {
            let first = run.dir.join(format!("{}-clock-jump.log", test.part));
            device::save(&first, &out.text).map_err(blame::host)?;
            tracing::warn!(
                "{}: {}: the runner's timeout fired after {:.0} s of host time, so the guest's clock jumped: run again (first run: {})",
                self.cell.name,
                test.what,
                t.elapsed().as_secs_f64(),
                first.display()
            );
            out = guest.run(Phase::Device.name(), &test.cmd, limit).map_err(blame::of_vm)?;
        }
        run.part(test.part, t);
        device::save(&log, &out.text).map_err(blame::host)?;
        let judged = match (test.judge)(test.what, &out.text, self.versions.expect(self.cell)) {
            // A clang kernel's modules must be built by clang.
            Verdict::Pass if self.cell.toolchain == Toolchain::Llvm => device::kernels_compiler(test.what, &out.text),
            v => v,
        };
        let v = match judged {
            Verdict::Fail(r) => Verdict::Fail(format!("{r}\n  log: {}", log.display())),
            Verdict::Error(r) => Verdict::Error(format!("{r}\n  log: {}, console: {}", log.display(), guest.console_log().display())),
            v => v,
        };
        run.check(&format!("device: {}", test.what), v)
    }

    /// The device's userland, the port built for it, its initramfs, and
    /// the guest booted with them.
    fn device_guest(&self, run: &mut Run) -> Result<Guest, Stop> {
        let cell = self.cell;
        let userland = userland::prepare(self.cache, cell.arch, &|m| run.say(m)).map_err(blame::host)?;
        // In the cache: copies of the repository (put-faults-back.sh) with
        // the same port sources share it.
        let port_target = device::port_target_dir(&self.cache.root().join("device-port"), self.project).map_err(blame::host)?;
        let port = device::port_binaries(self.project, cell.arch, &port_target, &run.dir.join("device-port-build.log")).map_err(blame::host)?;
        let initrd = run.dir.join(DEVICE_INITRAMFS);
        let images = self.project.images_dir();
        let mut programs: Vec<_> = ["khtest-device", "khtest-recipe", "khtest-symvers"].map(|p| images.join(p)).into_iter().chain(port).collect();
        let mut shares = device::shares(&userland, &self.tree.path);
        if cell.clients {
            programs.extend(clients::IMAGE_FILES.iter().map(|f| images.join(f)));
            shares.push(clients::share(self.cache, &|m| run.say(m)).map_err(blame::host)?);
        }
        image::make(&self.project.images_dir(), cell.arch, self.artifacts.kheaders_ko.as_slice(), &programs, &initrd).map_err(blame::host)?;
        // Measured: -smp 2 saves nothing, kbuild's probes run one by one.
        let spec = Spec::new(cell.arch, &self.artifacts.kernel_image, &initrd, &run.dir.join("device"), self.s.timeouts)
            .memory(device::MEMORY_MIB)
            .shares(shares);
        let t = Instant::now();
        let guest = boot_retrying_once(&spec, &mut run.retries)?;
        run.part(Phase::DeviceBoot, t);
        Ok(guest)
    }
}
