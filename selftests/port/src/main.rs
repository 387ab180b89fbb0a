//! `kheaders-selftest`: the kselftest `run_kheaders_modbuild.sh` in Rust, for a device or a host.
//!
//! Usage: kheaders-selftest [ARCHIVE]   (default: $KHEADERS_ARCHIVE, then
//! /sys/kernel/kheaders.tar.xz, then /proc/kheaders.tar.xz)
//!
//! Prints KTAP; exits 0 (pass), 1 (fail) or 4 (skip), like kselftest.

use std::io::stdout;
use std::path::PathBuf;
use std::process::exit;

use kheaders_selftest::ktap::{Ktap, Result::*};
use kheaders_selftest::{archive, contents, load, modbuild, running, write_testmod};

const USAGE: &str = "\
usage: kheaders-selftest [ARCHIVE]

Unpack the in-kernel headers archive, check it, build the test module
against it and, when the archive is the running kernel's (found by default,
or given as /sys/kernel/kheaders.tar.xz or /proc/kheaders.tar.xz), load it,
printing KTAP. ARCHIVE defaults to $KHEADERS_ARCHIVE, then
/sys/kernel/kheaders.tar.xz, then /proc/kheaders.tar.xz, loading kheaders.ko
(modprobe) when the kernel serves neither.

An empty KHEADERS_ARCHIVE counts as unset; an ARCHIVE that is not a
readable file skips the test, as the shell kselftest does. `--` ends the
options. SIGINT or SIGTERM ends the module build with its children,
prints `Bail out!` and exits 130 or 143, leaving nothing behind.

Exit status: 0 pass, 1 fail, 4 skip (no archive, no make or gcc, no
temporary directory), 2 usage, 130/143 interrupted.
";

/// The one argument, if any: `--help` prints the usage, `--` ends the
/// options, and any other option, or a second argument, is a usage error.
fn argument() -> Option<std::ffi::OsString> {
    let mut args = std::env::args_os().skip(1).peekable();
    if args.peek().is_some_and(|a| a == "--") {
        args.next();
        let first = args.next();
        if args.next().is_some() {
            eprint!("kheaders-selftest: one archive at most\n{USAGE}");
            exit(2)
        }
        return first;
    }
    let first = args.next();
    match first.as_ref().and_then(|a| a.to_str()) {
        Some("-h" | "--help") => {
            print!("{USAGE}");
            exit(0)
        }
        Some(opt) if opt.starts_with('-') => {
            eprint!("kheaders-selftest: unknown option {opt}\n{USAGE}");
            exit(2)
        }
        _ if args.next().is_some() => {
            eprint!("kheaders-selftest: one archive at most\n{USAGE}");
            exit(2)
        }
        _ => first,
    }
}

/// The archive under test.
struct Archive {
    path: PathBuf,
    /// It is the running kernel's, so the module it builds may be loaded.
    running: bool,
    /// This run loaded kheaders.ko to get it, and unloads it at the end.
    loaded_kheaders: bool,
}

/// The archive given, else the running kernel's, loading kheaders.ko
/// (`modprobe kheaders`) when the kernel does not serve one yet; or why
/// there is none to test.
fn find_archive() -> Result<Archive, String> {
    let env = std::env::var_os("KHEADERS_ARCHIVE").filter(|v| !v.is_empty());
    let (given, how) = match argument() {
        Some(a) => (Some(PathBuf::from(a)), String::new()),
        None => (env.map(PathBuf::from), "KHEADERS_ARCHIVE=".into()),
    };
    let running = given.as_ref().is_none_or(|p| running::PATHS.iter().any(|r| p.as_os_str() == *r));
    if let Some(p) = given.as_ref().filter(|_| !running) {
        // As the shell kselftest: a named archive that cannot be read is
        // nothing to test.
        if !p.is_file() || std::fs::File::open(p).is_err() {
            return Err(format!("{how}{} is not a readable file", p.display()));
        }
    }
    find_running_or(given, running).ok_or_else(|| "no kheaders archive: pass a path, set KHEADERS_ARCHIVE or enable CONFIG_IKHEADERS".into())
}

/// The archive at `given` (a running kernel's path may need kheaders.ko
/// first), else the running kernel's, loading kheaders.ko if need be.
fn find_running_or(given: Option<PathBuf>, running: bool) -> Option<Archive> {
    let find = || match &given {
        Some(p) => (!running || p.exists()).then(|| p.clone()),
        None => running::served(),
    };
    if let Some(path) = find() {
        return Some(Archive { path, running, loaded_kheaders: false });
    }
    if running && running::tool("modprobe", &["kheaders"]) {
        return Some(Archive { path: find()?, running, loaded_kheaders: true });
    }
    None
}

fn main() {
    kheaders_selftest::signals::install();
    let archive = match find_archive() {
        Ok(a) => a,
        Err(why) => exit(Ktap::skip_all(stdout(), &why)),
    };
    // The port unpacks the archive itself: no xz needed.
    let code = match ["make", "gcc"].into_iter().find(|t| !running::tool(t, &["--version"])) {
        Some(t) => Ktap::skip_all(stdout(), &format!("'{t}' not found: building a module needs make and a C compiler")),
        None => match tempfile::tempdir() {
            Ok(work) => run(&archive, work.path()),
            Err(e) => Ktap::skip_all(stdout(), &format!("cannot make a temporary directory in {}: {e}", std::env::temp_dir().display())),
        },
    };
    if archive.loaded_kheaders {
        running::unload_kheaders();
    }
    exit(code);
}

/// The four results, in `work`; the exit status. A caught SIGINT or
/// SIGTERM ends them early (`Bail out!`, 128 + the signal).
fn run(archive: &Archive, work: &std::path::Path) -> i32 {
    let mut k = Ktap::new(stdout(), 4);
    let code = results(&mut k, archive, work);
    match kheaders_selftest::signals::caught() {
        Some(sig) => {
            k.bail_out(&format!("interrupted by signal {sig}"));
            128 + sig
        }
        None => code,
    }
}

fn results(k: &mut Ktap<std::io::Stdout>, archive: &Archive, work: &std::path::Path) -> i32 {
    let headers = work.join("headers");
    k.diag(&format!("archive: {}", archive.path.display()));
    match archive::extract_file(&archive.path, &headers) {
        Ok(x) => {
            k.diag(&format!("{} files, {} bytes", x.files, x.bytes));
            k.result(Pass, "archive extracts", "");
        }
        Err(e) => {
            k.diag(&e.to_string());
            k.result(Fail, "archive extracts", "");
            for name in ["archive has no Module.symvers", "module builds against the archive", "module loads"] {
                k.result(Skip, name, "not extracted");
            }
            return k.exit_code();
        }
    }
    match contents::no_module_symvers(&headers) {
        Ok(()) => k.result(Pass, "archive has no Module.symvers", ""),
        Err(e) => {
            k.diag(&e);
            k.result(Fail, "archive has no Module.symvers", "")
        }
    }
    if !headers.join("Makefile").is_file() {
        // Mainline's archive: headers for tools like eBPF, no kbuild.
        let why = "headers-only archive (no Makefile): needs CONFIG_IKHEADERS_MODBUILD";
        k.result(Skip, "module builds against the archive", why);
        k.result(Skip, "module loads", why);
        return k.exit_code();
    }
    // The archive has no Module.symvers: the running kernel serves its
    // vmlinux part.
    let versions = load::versions(&headers, archive.running);
    if versions == load::Versions::Served {
        if let Err(e) = std::fs::copy(load::SERVED_SYMVERS, headers.join("Module.symvers")) {
            k.diag(&format!("cannot copy {}: {e}", load::SERVED_SYMVERS));
        }
    }
    let ko = build(k, &headers, work);
    if kheaders_selftest::signals::caught().is_some() {
        return 1;
    }
    let name = load::name(versions);
    if !archive.running {
        k.result(Skip, name, "the archive is not the running kernel's");
    } else if effective_uid() != 0 {
        k.result(Skip, name, "loading a module needs root");
    } else if let Some(ko) = ko {
        let (result, diag) = load::load(&ko, versions, work);
        k.diag(&diag);
        k.result(result, name, "");
    } else {
        k.result(Fail, name, "");
    }
    k.exit_code()
}

/// Result 3: build the test module; the `.ko` if it was built.
fn build(k: &mut Ktap<std::io::Stdout>, headers: &std::path::Path, work: &std::path::Path) -> Option<PathBuf> {
    let src = work.join("testmod-src").join("testmod");
    if let Err(e) = write_testmod(&src) {
        k.diag(&format!("cannot write the test module's sources: {e}"));
        k.result(Fail, "module builds against the archive", "");
        return None;
    }
    let log = work.join("build.log");
    let deadline = modbuild::run_with_deadline(std::time::Duration::from_secs(900));
    match modbuild::build_module(headers, &src, work, &[], &log, deadline) {
        Ok(b) if b.ok => {
            b.warnings.iter().for_each(|w| k.diag(w));
            k.result(Pass, "module builds against the archive", "");
            b.ko
        }
        Ok(_) => {
            k.diag(&std::fs::read_to_string(&log).unwrap_or_default());
            k.result(Fail, "module builds against the archive", "");
            None
        }
        Err(e) => {
            k.diag(&format!("{e:#}"));
            k.result(Fail, "module builds against the archive", "");
            None
        }
    }
}

/// The effective user id.
fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}
