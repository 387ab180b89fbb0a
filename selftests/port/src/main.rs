//! `kheaders-selftest`: the kselftest `run_kheaders_modbuild.sh`, on a host.
//!
//! Usage: kheaders-selftest [ARCHIVE]   (default: $KHEADERS_ARCHIVE, then
//! /sys/kernel/kheaders.tar.xz, then /proc/kheaders.tar.xz)
//!
//! Prints KTAP; exits 0 (pass), 1 (fail) or 4 (skip), like kselftest.

use std::io::stdout;
use std::path::PathBuf;
use std::process::{exit, Command};

use kheaders_selftest::ktap::{Ktap, Result::*};
use kheaders_selftest::{archive, contents, modbuild, testmod_dir};

const USAGE: &str = "\
usage: kheaders-selftest [ARCHIVE]

Unpack the in-kernel headers archive, check it, and build the test module
against it, printing KTAP. ARCHIVE defaults to $KHEADERS_ARCHIVE, then
/sys/kernel/kheaders.tar.xz, then /proc/kheaders.tar.xz.

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

fn find_archive() -> Option<PathBuf> {
    let given = argument().or_else(|| std::env::var_os("KHEADERS_ARCHIVE"));
    if let Some(p) = given {
        return Some(PathBuf::from(p));
    }
    ["/sys/kernel/kheaders.tar.xz", "/proc/kheaders.tar.xz"].into_iter().map(PathBuf::from).find(|p| p.exists())
}

fn have(tool: &str) -> bool {
    let ask = modbuild::run_with_deadline(std::time::Duration::from_secs(30));
    ask(Command::new(tool).arg("--version"), std::path::Path::new("/dev/null")).is_ok()
}

fn main() {
    let Some(archive_path) = find_archive() else {
        exit(Ktap::skip_all(stdout(), "no kheaders archive: pass a path or set KHEADERS_ARCHIVE"));
    };
    for tool in ["make", "gcc"] {
        if !have(tool) {
            exit(Ktap::skip_all(stdout(), &format!("'{tool}' not found: install make and gcc")));
        }
    }
    let work = match tempfile::tempdir() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("kheaders-selftest: cannot create a temporary directory: {e}");
            exit(1)
        }
    };
    let headers = work.path().join("headers");
    let mut k = Ktap::new(stdout(), 3);
    k.diag(&format!("archive: {}", archive_path.display()));

    match archive::extract_file(&archive_path, &headers) {
        Ok(x) => {
            k.diag(&format!("{} files, {} bytes", x.files, x.bytes));
            k.result(Pass, "archive extracts", "");
        }
        Err(e) => {
            k.diag(&e.to_string());
            k.result(Fail, "archive extracts", "");
            k.result(Skip, "archive has no Module.symvers", "not extracted");
            k.result(Skip, "module builds against the archive", "not extracted");
            exit(k.exit_code());
        }
    }
    match contents::no_module_symvers(&headers) {
        Ok(()) => k.result(Pass, "archive has no Module.symvers", ""),
        Err(e) => {
            k.diag(&e);
            k.result(Fail, "archive has no Module.symvers", "")
        }
    }
    let log = work.path().join("build.log");
    let deadline = modbuild::run_with_deadline(std::time::Duration::from_secs(900));
    match modbuild::build_module(&headers, &testmod_dir(), work.path(), &[], &log, deadline) {
        Ok(b) if b.ok => {
            b.warnings.iter().for_each(|w| k.diag(w));
            k.result(Pass, "module builds against the archive", "")
        }
        Ok(_) => {
            k.diag(&std::fs::read_to_string(&log).unwrap_or_default());
            k.result(Fail, "module builds against the archive", "")
        }
        Err(e) => {
            k.diag(&format!("{e:#}"));
            k.result(Fail, "module builds against the archive", "")
        }
    }
    exit(k.exit_code());
}
