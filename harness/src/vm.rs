//! The VM: boot the kernel in QEMU (TCG) with the initramfs and
//! drive it over the serial console.
//!
//! Two serial ports: the console (QEMU's stdio: commands in, kernel log and
//! command output out) and a raw transfer port (a UNIX socket on the host,
//! fd 3 in the guest) that carries files both ways byte for byte; a pushed
//! file is checked against the guest's `sha256sum`, a pulled one against
//! what the caller expects or else the guest's `sha256sum` ([`Guest::pull`]).
//! Every wait has a deadline,
//! a panic or oops on the console ends the wait at once, and QEMU is killed
//! when the [`Guest`] is dropped, whatever happened.

use std::fs::File;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub use crate::console::{is_crash_line, Output};
use crate::console::{Console, ConsoleError};
use crate::matrix::Arch;
use crate::process::Deadline;

/// What went wrong with the guest. A crash is the kernel's fault; every
/// other error is the harness's or the host's.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The kernel panicked or oopsed: the kernel's fault, not the harness's.
    #[error("the guest kernel crashed during {phase}:\n{text}")]
    Crash { phase: String, text: String },
    #[error("timed out after {} s during {phase} (console log: {log})", .limit.as_secs())]
    Timeout { phase: String, limit: Duration, log: PathBuf },
    #[error("QEMU exited during {phase} (console log: {log}); QEMU said: {stderr}")]
    Exited { phase: String, log: PathBuf, stderr: String },
    /// Starting QEMU, or a host file, failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The console or the transfer port failed while QEMU still ran.
    #[error("during {phase}: {source}")]
    Console {
        phase: String,
        #[source]
        source: ConsoleError,
    },
    /// A guest command that had to succeed did not.
    #[error("guest command `{cmd}` exited {status}:\n{text}")]
    Command { cmd: String, status: i32, text: String },
    /// A file moved between host and guest is not what was sent.
    #[error("{0}")]
    Transfer(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let what = what.into();
    move |source| VmError::Io { what, source }
}

/// A transfer with no byte for this long has stopped.
pub const STALL: Duration = Duration::from_secs(15);

/// What the guest sends on the transfer port after a pulled file.
const PULL_END: &[u8] = b"\nKHTEST-PULL-END\n";

/// How long each kind of wait may take under TCG.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub boot: Duration,
    pub command: Duration,
    /// Per MiB moved over the transfer port (plus one `command`).
    pub per_mib: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { boot: Duration::from_secs(120), command: Duration::from_secs(60), per_mib: Duration::from_secs(20) }
    }
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct Spec {
    pub arch: Arch,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Sockets, console log and QEMU's stderr go here.
    pub dir: PathBuf,
    pub memory_mib: u32,
    pub timeouts: Timeouts,
    /// Host directories the guest mounts over virtio-9p, always read-only.
    pub shares: Vec<Share>,
    /// Virtual CPUs.
    pub cpus: u32,
}

/// A host directory exported to the guest read-only (QEMU's `readonly=on`:
/// the guest cannot write to the host whatever it mounts), found there by
/// its 9p mount tag.
#[derive(Debug, Clone)]
pub struct Share {
    pub tag: &'static str,
    pub path: PathBuf,
}

impl Spec {
    /// A guest of `arch` booting `kernel` with `initrd`, its files in
    /// `dir`: 512 MiB, one CPU, no shares.
    pub fn new(arch: Arch, kernel: &Path, initrd: &Path, dir: &Path, timeouts: Timeouts) -> Spec {
        Spec {
            arch,
            kernel: kernel.to_owned(),
            initrd: initrd.to_owned(),
            dir: dir.to_owned(),
            memory_mib: 512,
            timeouts,
            shares: Vec::new(),
            cpus: 1,
        }
    }

    pub fn memory(self, mib: u32) -> Spec {
        Spec { memory_mib: mib, ..self }
    }

    pub fn shares(self, shares: Vec<Share>) -> Spec {
        Spec { shares, ..self }
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The QEMU command line.
    pub fn command(&self) -> Command {
        // The transfer port is a virtio-serial port, /dev/vport0p1 in the
        // guest: under TCG it moves the archive in well under a second,
        // where a second 8250 took 7 s. Not a virtconsole: QEMU drops a
        // console port's data when the host reads more slowly than the
        // guest writes (hw/char/virtio-console.c, flush_buf), which lost
        // the tail of arm64 pulls; a plain port is throttled instead.
        let f = self.arch.facts();
        let (qemu, console, board, bus) = (f.qemu, f.console, f.qemu_board, f.virtio_serial);
        let xfer = "/dev/vport0p1";
        let xfer_dev = ["-device", bus, "-device", "virtserialport,chardev=xfer,nr=1"];
        let sock = self.dir.join("xfer.sock");
        let mut cmd = Command::new(qemu);
        cmd.args(["-nodefaults", "-no-user-config", "-no-reboot", "-display", "none", "-accel", "tcg"])
            .args(board)
            .args(["-m", &self.memory_mib.to_string()])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .args(["-append", &format!("console={console} loglevel=4 panic=-1 oops=panic khtest.xfer={xfer}")])
            .args(["-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con"])
            .args(["-chardev", &format!("socket,id=xfer,path={},server=on,wait=off", sock.display())])
            .args(xfer_dev)
            .args(["-smp", &self.cpus.to_string()]);
        for (i, share) in self.shares.iter().enumerate() {
            let mut fsdev = std::ffi::OsString::from(format!("local,id=fs{i},security_model=none,readonly=on,multidevs=remap,path="));
            fsdev.push(&share.path);
            cmd.arg("-fsdev").arg(fsdev).args(["-device", &format!("{},fsdev=fs{i},mount_tag={}", f.virtio_9p, share.tag)]);
        }
        cmd
    }
}

/// A running guest.
pub struct Guest {
    child: Child,
    console: Console<ChildStdin>,
    xfer: UnixStream,
    spec: Spec,
    pub kernel_release: String,
}

impl Guest {
    /// Start QEMU and wait until the guest's init says it is ready.
    pub fn boot(spec: &Spec) -> Result<Guest, VmError> {
        std::fs::create_dir_all(&spec.dir).map_err(io(format!("creating {}", spec.dir.display())))?;
        let sock = spec.dir.join("xfer.sock");
        let _ = std::fs::remove_file(&sock);
        let log = File::create(spec.console_log()).map_err(io("creating the console log"))?;
        let stderr = File::create(spec.dir.join("qemu.stderr")).map_err(io("creating qemu.stderr"))?;
        let mut cmd = spec.command();
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(stderr);
        let mut child = crate::process::spawn_group(&mut cmd).map_err(io("cannot start QEMU (Debian packages qemu-system-x86, qemu-system-arm)"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let console = Console::new(stdout, log, stdin);

        // QEMU creates the socket before it runs the guest.
        let deadline = Instant::now() + Duration::from_secs(30);
        let xfer = loop {
            match UnixStream::connect(&sock) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline && child.try_wait().ok().flatten().is_none() => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    crate::process::kill_group(&mut child);
                    let stderr = std::fs::read_to_string(spec.dir.join("qemu.stderr")).unwrap_or_default();
                    return Err(io(format!("cannot connect to QEMU's transfer socket {} (QEMU said: {})", sock.display(), stderr.trim()))(e));
                }
            }
        };
        let mut g = Guest { child, console, xfer, spec: spec.clone(), kernel_release: String::new() };
        let ready = g.console.wait_line(spec.timeouts.boot, |l| l.starts_with("KHTEST-READY")).map_err(|e| g.fail("boot", e))?;
        g.kernel_release = ready.trim_start_matches("KHTEST-READY").trim().to_owned();
        Ok(g)
    }

    /// Where the guest's console is logged.
    pub fn console_log(&self) -> PathBuf {
        self.spec.console_log()
    }

    /// Run `cmd` in the guest shell and wait for it to finish.
    pub fn run(&mut self, phase: &str, cmd: &str, limit: Duration) -> Result<Output, VmError> {
        self.console.run(cmd, limit).map_err(|e| self.fail(phase, e))
    }

    /// Run `cmd`, failing unless it exits 0.
    pub fn run_ok(&mut self, phase: &str, cmd: &str) -> Result<Output, VmError> {
        let out = self.run(phase, cmd, self.spec.timeouts.command)?;
        if out.status != 0 {
            return Err(VmError::Command { cmd: cmd.to_owned(), status: out.status, text: out.text });
        }
        Ok(out)
    }

    /// Copy the guest file `path` to the host file `dest`; returns its size.
    /// The size is what the guest's `stat` says, and a marker follows the
    /// bytes on the transfer port, so a file that does not end there is an
    /// error. Unless the bytes are `expected`, they must match the guest's
    /// `sha256sum` of the file: a transfer fault cannot turn the guest's
    /// bytes into exactly the expected ones, so only then is the hash (a
    /// tenth of a second of TCG for the archive) worth computing, and a
    /// difference is then the file's, for the caller to judge. A transfer
    /// that stops (no byte for [`STALL`]) ends at once with an error saying
    /// how far it got, not at the phase's deadline.
    pub fn pull(&mut self, phase: &str, path: &str, dest: &Path, expected: Option<&[u8]>) -> Result<u64, VmError> {
        let info = self.run_ok(phase, &format!("echo KHTEST-SIZE $(stat -c %s {path})"))?;
        let size = parse_size(&info.text).ok_or_else(|| VmError::Transfer(format!("cannot read the size of {path} from:\n{}", info.text)))?;
        let limit = self.transfer_limit(size);
        let cmd = format!("cat {path} >&3; st=$?; printf '{}' >&3; exit $st", PULL_END.escape_ascii());
        let seq = self.console.send(&cmd).map_err(|e| self.fail(phase, e))?;
        let mut data = vec![0u8; size as usize + PULL_END.len()];
        let got = self.console.read_port(&mut self.xfer, &mut data, limit, STALL).map_err(|e| self.fail(phase, e))?;
        if got < data.len() {
            self.kill();
            return Err(VmError::Transfer(format!(
                "the transfer of {path} stopped at {got} of {size} bytes (and the end marker): nothing came for {} s (console log: {})",
                STALL.as_secs(),
                self.spec.console_log().display()
            )));
        }
        let out = self.console.wait_done(seq, limit).map_err(|e| self.fail(phase, e))?;
        if out.status != 0 {
            return Err(VmError::Command { cmd, status: out.status, text: out.text });
        }
        if !data.ends_with(PULL_END) {
            self.kill();
            return Err(VmError::Transfer(format!("{path} in the guest goes on past the {size} bytes its stat gives")));
        }
        data.truncate(size as usize);
        if expected != Some(&data[..]) {
            let out = self.run_ok(phase, &format!("sha256sum {path}"))?;
            let (got, sum) = (hex(&Sha256::digest(&data)), parse_sum(&out.text));
            if sum.as_deref() != Some(got.as_str()) {
                return Err(VmError::Transfer(format!("{path}: {size} bytes arrived with sha256 {got}, the guest has {sum:?}")));
            }
        }
        std::fs::write(dest, &data).map_err(io(format!("writing {}", dest.display())))?;
        Ok(size)
    }

    /// Copy the host file `src` to the guest file `path`.
    pub fn push(&mut self, phase: &str, src: &Path, path: &str) -> Result<(), VmError> {
        let data = std::fs::read(src).map_err(io(format!("reading {}", src.display())))?;
        let limit = self.transfer_limit(data.len() as u64);
        let cmd = format!("head -c {} <&3 > {path}", data.len());
        let seq = self.console.send(&cmd).map_err(|e| self.fail(phase, e))?;
        self.xfer.set_write_timeout(Some(limit)).map_err(io("the transfer socket"))?;
        if let Err(source) = self.xfer.write_all(&data) {
            return Err(self.fail(phase, ConsoleError::Io { what: "writing to the transfer port", source }));
        }
        let out = self.console.wait_done(seq, limit).map_err(|e| self.fail(phase, e))?;
        if out.status != 0 {
            return Err(VmError::Command { cmd, status: out.status, text: out.text });
        }
        let info = self.run_ok(phase, &format!("echo KHTEST-SIZE $(wc -c < {path}); sha256sum {path}"))?;
        let want = (data.len() as u64, hex(&Sha256::digest(&data)));
        match parse_size_and_sum(&info.text) {
            Some(got) if got == want => Ok(()),
            got => Err(VmError::Transfer(format!("{path} in the guest is {got:?}, sent {want:?}"))),
        }
    }

    fn transfer_limit(&self, bytes: u64) -> Duration {
        self.spec.timeouts.command + self.spec.timeouts.per_mib * (bytes / (1 << 20) + 1) as u32
    }

    /// The guest's error during `phase`: QEMU is killed on a crash or a
    /// timeout; a console or port that closed is QEMU's exit if it exited.
    fn fail(&mut self, phase: &str, e: ConsoleError) -> VmError {
        match e {
            ConsoleError::Crash(text) => self.crash(phase, text),
            ConsoleError::Timeout(limit) => self.timeout(phase, limit),
            e @ (ConsoleError::Closed(_) | ConsoleError::Io { .. }) => {
                self.exited(phase).unwrap_or_else(|| VmError::Console { phase: phase.to_owned(), source: e })
            }
            e @ ConsoleError::Protocol(_) => VmError::Console { phase: phase.to_owned(), source: e },
        }
    }

    fn crash(&mut self, phase: &str, text: String) -> VmError {
        self.kill();
        VmError::Crash { phase: phase.to_owned(), text }
    }

    fn timeout(&mut self, phase: &str, limit: Duration) -> VmError {
        self.kill();
        VmError::Timeout { phase: phase.to_owned(), limit, log: self.spec.console_log() }
    }

    /// `Some(Exited)` if QEMU has ended.
    fn exited(&mut self, phase: &str) -> Option<VmError> {
        std::thread::sleep(Duration::from_millis(100));
        self.child.try_wait().ok().flatten()?;
        let stderr = std::fs::read_to_string(self.spec.dir.join("qemu.stderr")).unwrap_or_default();
        Some(VmError::Exited { phase: phase.to_owned(), log: self.spec.console_log(), stderr: stderr.trim().to_owned() })
    }

    /// Reboot the guest (QEMU exits, as it runs with `-no-reboot`), killing
    /// QEMU if it has not gone within the command timeout.
    pub fn shutdown(mut self) {
        let _ = self.console.send("reboot -f");
        let deadline = Deadline::after(self.spec.timeouts.command);
        while !deadline.passed() {
            if let Ok(Some(_)) = self.child.try_wait() {
                crate::process::forget(&self.child);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!("the guest did not power off within {:?}; killing QEMU", self.spec.timeouts.command);
    }

    fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            crate::process::kill_group(&mut self.child);
        }
        let _ = self.child.wait();
        crate::process::forget(&self.child);
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `KHTEST-SIZE n` and a `sha256sum` line, from a command's output.
pub fn parse_size_and_sum(text: &str) -> Option<(u64, String)> {
    Some((parse_size(text)?, parse_sum(text)?))
}

/// The `n` of a `KHTEST-SIZE n` line.
fn parse_size(text: &str) -> Option<u64> {
    text.lines().filter_map(|l| l.strip_prefix("KHTEST-SIZE ")).next_back()?.trim().parse().ok()
}

/// The hash of a `sha256sum` line.
fn parse_sum(text: &str) -> Option<String> {
    let mut hashes = text.lines().filter_map(|l| l.split_whitespace().next());
    hashes.rfind(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())).map(|h| h.to_ascii_lowercase())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_and_sum_are_read_among_kernel_noise() {
        let sum = "a".repeat(64);
        let text = format!("[   1.0] random: crng init done\nKHTEST-SIZE 4711\n{sum}  /proc/kheaders.tar.xz\n");
        assert_eq!(parse_size_and_sum(&text), Some((4711, sum)));
        assert_eq!(parse_size_and_sum("KHTEST-SIZE 12\nsha256sum: can't open\n"), None);
        assert_eq!(parse_size_and_sum("KHTEST-SIZE\n"), None);
    }

    #[test]
    fn crash_lines_are_recognised() {
        assert!(is_crash_line("[    2.1] Kernel panic - not syncing: VFS: Unable to mount root fs"));
        assert!(is_crash_line("[    3.0] Oops: general protection fault, probably for non-canonical address"));
        assert!(is_crash_line("[    3.0] BUG: kernel NULL pointer dereference, address: 0000000000000000"));
        assert!(!is_crash_line("[    1.0] Run /init as init process"));
        assert!(!is_crash_line("KHTEST-DONE 3 0"));
    }
}
