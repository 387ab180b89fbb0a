//! `kheaders-selftest`: the kselftest `run_kheaders_modbuild.sh` in Rust, for a device or a host.
//!
//! Usage: kheaders-selftest [ARCHIVE]   (default: $KHEADERS_ARCHIVE, then
//! /sys/kernel/kheaders.tar.xz, then /proc/kheaders.tar.xz)
//!
//! Prints KTAP; exits 0 (pass), 1 (fail) or 4 (skip), like kselftest.

use std::io::stdout;
use std::path::PathBuf;
use std::process::{exit, Command};

use kheaders_selftest::ktap::{Ktap, Result::*};
use kheaders_selftest::{archive, contents, load, modbuild, write_testmod};

const USAGE: &str = "\
usage: kheaders-selftest [ARCHIVE]

Unpack the in-kernel headers archive, check it, build the test module
against it and, when the archive is the running kernel's (found by default,
or given as /sys/kernel/kheaders.tar.xz or /proc/kheaders.tar.xz), load it,
printing KTAP. ARCHIVE defaults to $KHEADERS_ARCHIVE, then
/sys/kernel/kheaders.tar.xz, then /proc/kheaders.tar.xz, loading kheaders.ko
(modprobe) when the kernel serves neither.

Exit status: 0 pass, 1 fail, 4 skip (no archive, no make or gcc), 2 usage.
";

/// The one argument, if any: `--help` prints the usage, and any other
/// option, or a second argument, is a usage error.
fn argument() -> Option<std::ffi::OsString> {
    let mut args = std::env::args_os().skip(1);
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

/// Where the running kernel serves its archive, in the order looked for.
const RUNNING: [&str; 2] = ["/sys/kernel/kheaders.tar.xz", "/proc/kheaders.tar.xz"];

/// The archive under test.
struct Archive {
    path: PathBuf,
    /// It is the running kernel's, so the module it builds may be loaded.
    running: bool,
    /// This run loaded kheaders.ko to get it, and unloads it at the end.
    loaded_kheaders: bool,
}

/// The archive given, else the running kernel's, loading kheaders.ko
/// (`modprobe kheaders`) when the kernel does not serve one yet.
fn find_archive() -> Option<Archive> {
    let given = argument().or_else(|| std::env::var_os("KHEADERS_ARCHIVE")).map(PathBuf::from);
    let running = given.as_ref().is_none_or(|p| RUNNING.iter().any(|r| p.as_os_str() == *r));
    let find = || match &given {
        Some(p) => (!running || p.exists()).then(|| p.clone()),
        None => RUNNING.into_iter().map(PathBuf::from).find(|p| p.exists()),
    };
    if let Some(path) = find() {
        return Some(Archive { path, running, loaded_kheaders: false });
    }
    if running && tool("modprobe", &["kheaders"]) {
        return Some(Archive { path: find()?, running, loaded_kheaders: true });
    }
    None
}

/// Whether `program args` runs and exits 0 within 30 s.
fn tool(program: &str, args: &[&str]) -> bool {
    let ask = modbuild::run_with_deadline(std::time::Duration::from_secs(30));
    ask(Command::new(program).args(args), std::path::Path::new("/dev/null")).is_ok_and(|s| s.success())
}

fn main() {
    let Some(archive) = find_archive() else {
        exit(Ktap::skip_all(stdout(), "no kheaders archive: pass a path, set KHEADERS_ARCHIVE or enable CONFIG_IKHEADERS"));
    };
    let code = match ["make", "gcc", "xz"].into_iter().find(|t| !tool(t, &["--version"])) {
        Some(t) => Ktap::skip_all(stdout(), &format!("'{t}' not found: building a module needs make, gcc and xz")),
        None => match tempfile::tempdir() {
            Ok(work) => run(&archive, work.path()),
            Err(e) => {
                eprintln!("kheaders-selftest: cannot create a temporary directory: {e}");
                1
            }
        },
    };
    if archive.loaded_kheaders {
        tool("modprobe", &["-r", "kheaders"]);
    }
    exit(code);
}

/// The four results, in `work`; the exit status.
fn run(archive: &Archive, work: &std::path::Path) -> i32 {
    let headers = work.join("headers");
    let mut k = Ktap::new(stdout(), 4);
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
    let ko = build(&mut k, &headers, work);
    let name = load::name(&headers);
    if !archive.running {
        k.result(Skip, name, "the archive is not the running kernel's");
    } else if effective_uid() != 0 {
        k.result(Skip, name, "loading a module needs root");
    } else if let Some(ko) = ko {
        let (result, diag) = load::load(&ko, &headers, work);
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
