//! Stage 4, the VM: boot the kernel in QEMU (TCG) with the initramfs and
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
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::matrix::Arch;
use crate::process::Deadline;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The kernel panicked or oopsed: the kernel's fault, not the harness's.
    #[error("the guest kernel crashed during {phase}:\n{text}")]
    Crash { phase: String, text: String },
    #[error("timed out after {} s during {phase} (console log: {log})", .limit.as_secs())]
    Timeout { phase: String, limit: Duration, log: PathBuf },
    #[error("QEMU exited during {phase} (console log: {log}); QEMU said: {stderr}")]
    Exited { phase: String, log: PathBuf, stderr: String },
    #[error("{0}")]
    Other(String),
}

impl VmError {
    fn other(what: &str, e: impl std::fmt::Display) -> VmError {
        VmError::Other(format!("{what}: {e}"))
    }
}

/// A transfer with no byte for this long has stopped.
pub const STALL: Duration = Duration::from_secs(15);

/// What the guest sends on the transfer port after a pulled file.
const PULL_END: &[u8] = b"\nKHTEST-PULL-END\n";

/// Lines that mean the guest kernel is dying.
const CRASH_MARKERS: &[&str] = &["Kernel panic - not syncing", "Oops:", "BUG: ", "general protection fault", "Unable to handle kernel"];

pub fn is_crash_line(line: &str) -> bool {
    CRASH_MARKERS.iter().any(|m| line.contains(m))
}

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
}

impl Spec {
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The QEMU command line.
    pub fn command(&self) -> Result<Command, VmError> {
        // The transfer port is a virtio-serial port, /dev/vport0p1 in the
        // guest: under TCG it moves the archive in well under a second,
        // where a second 8250 took 7 s. Not a virtconsole: QEMU drops a
        // console port's data when the host reads more slowly than the
        // guest writes (hw/char/virtio-console.c, flush_buf), which lost
        // the tail of arm64 pulls; a plain port is throttled instead.
        let (qemu, console, board, bus): (&str, &str, &[&str], &str) = match self.arch {
            Arch::X86_64 => ("qemu-system-x86_64", "ttyS0", &[], "virtio-serial-pci"),
            Arch::Arm64 => ("qemu-system-aarch64", "ttyAMA0", &["-M", "virt", "-cpu", "cortex-a57"], "virtio-serial-device"),
        };
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
            .args(xfer_dev);
        Ok(cmd)
    }
}

/// What the console has printed so far.
#[derive(Default)]
struct ConsoleText {
    text: String,
    eof: bool,
}

struct Console {
    state: Mutex<ConsoleText>,
    more: Condvar,
}

/// A running guest.
pub struct Guest {
    child: Child,
    stdin: ChildStdin,
    console: Arc<Console>,
    /// Where the next wait starts reading the console text.
    pos: usize,
    xfer: UnixStream,
    seq: u32,
    spec: Spec,
    pub kernel_release: String,
}

/// A command's exit status and what it printed on the console.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: i32,
    pub text: String,
}

impl Guest {
    /// Start QEMU and wait until the guest's init says it is ready.
    pub fn boot(spec: &Spec) -> Result<Guest, VmError> {
        std::fs::create_dir_all(&spec.dir).map_err(|e| VmError::other(&format!("creating {}", spec.dir.display()), e))?;
        let sock = spec.dir.join("xfer.sock");
        let _ = std::fs::remove_file(&sock);
        let log = File::create(spec.console_log()).map_err(|e| VmError::other("creating the console log", e))?;
        let stderr = File::create(spec.dir.join("qemu.stderr")).map_err(|e| VmError::other("creating qemu.stderr", e))?;
        let mut cmd = spec.command()?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(stderr);
        let mut child = crate::process::spawn_group(&mut cmd)
            .map_err(|e| VmError::other("cannot start QEMU (Debian packages qemu-system-x86, qemu-system-arm)", e))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let console = Arc::new(Console { state: Mutex::new(ConsoleText::default()), more: Condvar::new() });
        spawn_reader(stdout, log, console.clone());

        // QEMU creates the socket before it runs the guest.
        let deadline = Instant::now() + Duration::from_secs(30);
        let xfer = loop {
            match UnixStream::connect(&sock) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline && child.try_wait().ok().flatten().is_none() => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    crate::process::kill_group(&mut child);
                    let stderr = std::fs::read_to_string(spec.dir.join("qemu.stderr")).unwrap_or_default();
                    return Err(VmError::Other(format!("cannot connect to QEMU's transfer socket {}: {e}; QEMU said: {stderr}", sock.display())));
                }
            }
        };
        let mut g = Guest { child, stdin, console, pos: 0, xfer, seq: 0, spec: spec.clone(), kernel_release: String::new() };
        let ready = g.wait_line("boot", spec.timeouts.boot, |l| l.starts_with("KHTEST-READY"))?;
        g.kernel_release = ready.trim_start_matches("KHTEST-READY").trim().to_owned();
        Ok(g)
    }

    /// Run `cmd` in the guest shell and wait for it to finish.
    pub fn run(&mut self, phase: &str, cmd: &str, limit: Duration) -> Result<Output, VmError> {
        let seq = self.send(phase, cmd)?;
        self.wait_done(phase, seq, limit)
    }

    /// Run `cmd`, failing unless it exits 0.
    pub fn run_ok(&mut self, phase: &str, cmd: &str) -> Result<Output, VmError> {
        let out = self.run(phase, cmd, self.spec.timeouts.command)?;
        if out.status != 0 {
            return Err(VmError::Other(format!("guest command `{cmd}` exited {}:\n{}", out.status, out.text)));
        }
        Ok(out)
    }

    fn send(&mut self, phase: &str, cmd: &str) -> Result<u32, VmError> {
        self.seq += 1;
        let line = format!("{} {cmd}\n", self.seq);
        if let Err(e) = self.stdin.write_all(line.as_bytes()).and_then(|()| self.stdin.flush()) {
            return Err(self.exited(phase).unwrap_or_else(|| VmError::other("writing to the console", e)));
        }
        Ok(self.seq)
    }

    fn wait_done(&mut self, phase: &str, seq: u32, limit: Duration) -> Result<Output, VmError> {
        let begin = format!("KHTEST-BEGIN {seq}");
        self.wait_line(phase, limit, |l| l == begin)?;
        let done = format!("KHTEST-DONE {seq} ");
        let mut text = String::new();
        loop {
            let line = self.wait_line(phase, limit, |_| true)?;
            if let Some(rc) = line.strip_prefix(&done) {
                let status = rc.trim().parse().map_err(|e| VmError::other(&format!("bad status line {line:?}"), e))?;
                return Ok(Output { status, text });
            }
            text.push_str(&line);
            text.push('\n');
        }
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
        let size = parse_size(&info.text).ok_or_else(|| VmError::Other(format!("cannot read the size of {path} from:\n{}", info.text)))?;
        let limit = self.transfer_limit(size);
        let seq = self.send(phase, &format!("cat {path} >&3; st=$?; printf '{}' >&3; exit $st", PULL_END.escape_ascii()))?;
        let mut data = vec![0u8; size as usize + PULL_END.len()];
        let got = self.read_xfer(phase, &mut data, limit)?;
        if got < data.len() {
            self.kill();
            return Err(VmError::Other(format!(
                "the transfer of {path} stopped at {got} of {size} bytes (and the end marker): nothing came for {} s (console log: {})",
                STALL.as_secs(),
                self.spec.console_log().display()
            )));
        }
        let out = self.wait_done(phase, seq, limit)?;
        if out.status != 0 {
            return Err(VmError::Other(format!("`cat {path}` in the guest exited {}:\n{}", out.status, out.text)));
        }
        if !data.ends_with(PULL_END) {
            self.kill();
            return Err(VmError::Other(format!("{path} in the guest goes on past the {size} bytes its stat gives")));
        }
        data.truncate(size as usize);
        if expected != Some(&data[..]) {
            let out = self.run_ok(phase, &format!("sha256sum {path}"))?;
            let (got, sum) = (hex(&Sha256::digest(&data)), parse_sum(&out.text));
            if sum.as_deref() != Some(got.as_str()) {
                return Err(VmError::Other(format!("{path}: {size} bytes arrived with sha256 {got}, the guest has {sum:?}")));
            }
        }
        std::fs::write(dest, &data).map_err(|e| VmError::other(&format!("writing {}", dest.display()), e))?;
        Ok(size)
    }

    /// Copy the host file `src` to the guest file `path`.
    pub fn push(&mut self, phase: &str, src: &Path, path: &str) -> Result<(), VmError> {
        let data = std::fs::read(src).map_err(|e| VmError::other(&format!("reading {}", src.display()), e))?;
        let limit = self.transfer_limit(data.len() as u64);
        let seq = self.send(phase, &format!("head -c {} <&3 > {path}", data.len()))?;
        self.xfer.set_write_timeout(Some(limit)).map_err(|e| VmError::other("transfer socket", e))?;
        if let Err(e) = self.xfer.write_all(&data) {
            return Err(self.exited(phase).unwrap_or_else(|| VmError::other("writing to the transfer port", e)));
        }
        let out = self.wait_done(phase, seq, limit)?;
        if out.status != 0 {
            return Err(VmError::Other(format!("receiving {path} in the guest failed ({}):\n{}", out.status, out.text)));
        }
        let info = self.run_ok(phase, &format!("echo KHTEST-SIZE $(wc -c < {path}); sha256sum {path}"))?;
        let want = (data.len() as u64, hex(&Sha256::digest(&data)));
        match parse_size_and_sum(&info.text) {
            Some(got) if got == want => Ok(()),
            got => Err(VmError::Other(format!("{path} in the guest is {got:?}, sent {want:?}"))),
        }
    }

    fn transfer_limit(&self, bytes: u64) -> Duration {
        self.spec.timeouts.command + self.spec.timeouts.per_mib * (bytes / (1 << 20) + 1) as u32
    }

    /// Fill `buf` from the transfer port; returns how much arrived, less
    /// than all of it if nothing came for [`STALL`].
    fn read_xfer(&mut self, phase: &str, buf: &mut [u8], limit: Duration) -> Result<usize, VmError> {
        let deadline = Deadline::after(limit);
        let mut got = 0;
        let mut last = Instant::now();
        while got < buf.len() {
            let left = deadline.left();
            if left.is_zero() {
                return Err(self.timeout(phase, limit));
            }
            if last.elapsed() >= STALL {
                return Ok(got);
            }
            self.check_console(phase)?;
            self.xfer.set_read_timeout(Some(left.min(Duration::from_millis(500)))).map_err(|e| VmError::other("transfer socket", e))?;
            match self.xfer.read(&mut buf[got..]) {
                Ok(0) => return Err(self.exited(phase).unwrap_or_else(|| VmError::Other("the transfer port closed".into()))),
                Ok(n) => {
                    got += n;
                    last = Instant::now();
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => return Err(VmError::other("reading the transfer port", e)),
            }
        }
        Ok(got)
    }

    /// Fail at once if the console shows a crash or QEMU is gone.
    fn check_console(&mut self, phase: &str) -> Result<(), VmError> {
        let st = self.console.state.lock().unwrap();
        if let Some(text) = crash_text(&st.text[self.pos..]) {
            drop(st);
            return Err(self.crash(phase, text));
        }
        if st.eof {
            drop(st);
            return Err(self.exited(phase).unwrap_or(VmError::Other("the console closed".into())));
        }
        Ok(())
    }

    /// The next complete console line after `pos` that `want` accepts.
    fn wait_line(&mut self, phase: &str, limit: Duration, want: impl Fn(&str) -> bool) -> Result<String, VmError> {
        let deadline = Deadline::after(limit);
        let mut st = self.console.state.lock().unwrap();
        loop {
            while let Some(nl) = st.text[self.pos..].find('\n') {
                let line = st.text[self.pos..self.pos + nl].to_owned();
                self.pos += nl + 1;
                if is_crash_line(&line) {
                    self.pos -= nl + 1;
                    drop(st);
                    let text = self.crash_context();
                    return Err(self.crash(phase, text));
                }
                if want(&line) {
                    return Ok(line);
                }
            }
            if st.eof {
                drop(st);
                return Err(self.exited(phase).unwrap_or(VmError::Other("the console closed".into())));
            }
            let left = deadline.left();
            if left.is_zero() {
                drop(st);
                return Err(self.timeout(phase, limit));
            }
            st = self.console.more.wait_timeout(st, left).unwrap().0;
        }
    }

    /// The console from the crash line on, once the guest has had a moment
    /// to print its backtrace.
    fn crash_context(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut st = self.console.state.lock().unwrap();
        while !st.eof && Instant::now() < deadline {
            st = self.console.more.wait_timeout(st, Duration::from_millis(200)).unwrap().0;
        }
        let lines: Vec<&str> = st.text[self.pos..].lines().take(40).collect();
        lines.join("\n")
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
        let _ = self.send("shutdown", "reboot -f");
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

/// Copy QEMU's stdout to the log and into `console`, without `\r`.
fn spawn_reader(mut stdout: impl Read + Send + 'static, mut log: File, console: Arc<Console>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            let n = stdout.read(&mut buf).unwrap_or(0);
            let mut st = console.state.lock().unwrap();
            if n == 0 {
                st.eof = true;
                console.more.notify_all();
                return;
            }
            let _ = log.write_all(&buf[..n]);
            st.text.push_str(&String::from_utf8_lossy(&buf[..n]).replace('\r', ""));
            console.more.notify_all();
        }
    });
}

/// The crash text in `text`, if a crash line is in it.
fn crash_text(text: &str) -> Option<String> {
    let at = text.lines().position(is_crash_line)?;
    Some(text.lines().skip(at).take(40).collect::<Vec<_>>().join("\n"))
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
        let t = crash_text("ok\n[ 1] Kernel panic - not syncing: Attempted to kill init!\n[ 1] CPU: 0 PID: 1\n").unwrap();
        assert!(t.starts_with("[ 1] Kernel panic") && t.contains("PID: 1"), "{t}");
    }
}
