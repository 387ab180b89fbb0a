//! Result 4: load the module into the running kernel and unload it, or,
//! on a kernel with `CONFIG_MODVERSIONS`, see it refused for having no
//! symbol versions (the archive has no `Module.symvers`, by design).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::ktap::Result;
use crate::modbuild::run_with_deadline;

/// What the test module prints (`selftests/kheaders/testmod/test.c`).
pub const HELLO: &str = "Hello, world";
pub const GOODBYE: &str = "Goodbye, world";
/// What the kernel logs when it refuses a module without symbol versions.
pub const NO_VERSIONS: &str = "no symbol version for";

/// Result 4's name: what the kernel of the unpacked `headers` must do.
pub fn name(headers: &Path) -> &'static str {
    if modversions(headers) {
        "module is refused: it has no symbol versions (CONFIG_MODVERSIONS)"
    } else {
        "module loads"
    }
}

/// Whether the archive's kernel has `CONFIG_MODVERSIONS`.
pub fn modversions(headers: &Path) -> bool {
    std::fs::read_to_string(headers.join("include/config/auto.conf")).is_ok_and(|c| c.lines().any(|l| l == "CONFIG_MODVERSIONS=y"))
}

/// Run `program args` with a deadline; its exit status and output.
fn run(program: &str, args: &[&str], work: &Path) -> (bool, String) {
    let log = work.join(format!("{program}.log"));
    let status = run_with_deadline(Duration::from_secs(120))(Command::new(program).args(args), &log);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    match status {
        Ok(s) => (s.success(), text),
        Err(e) => (false, format!("{text}{e:#}")),
    }
}

/// How many kernel log lines contain `what`.
fn count(what: &str, work: &Path) -> usize {
    run("dmesg", &[], work).1.lines().filter(|l| l.contains(what)).count()
}

/// Load `ko` and unload it as result 4 says ([`name`]); the diagnostics.
pub fn load(ko: &Path, headers: &Path, work: &Path) -> (Result, String) {
    let ko = ko.to_string_lossy();
    if modversions(headers) {
        let before = count(NO_VERSIONS, work);
        let (loaded, out) = run("insmod", &[&ko], work);
        if loaded {
            run("rmmod", &["test"], work);
            return (Result::Fail, format!("insmod accepted a module without symbol versions\n{out}"));
        }
        if count(NO_VERSIONS, work) > before {
            return (Result::Pass, format!("{}kernel: test: {NO_VERSIONS} ...", out));
        }
        return (Result::Fail, format!("insmod failed, but the kernel log does not say '{NO_VERSIONS}':\n{out}"));
    }
    let (hello, goodbye) = (count(HELLO, work), count(GOODBYE, work));
    let (loaded, out) = run("insmod", &[&ko], work);
    if !loaded {
        return (Result::Fail, format!("insmod failed:\n{out}"));
    }
    if count(HELLO, work) <= hello {
        run("rmmod", &["test"], work);
        return (Result::Fail, format!("the module loaded, but the kernel log has no new '{HELLO}'"));
    }
    let (unloaded, out) = run("rmmod", &["test"], work);
    if !unloaded || count(GOODBYE, work) <= goodbye {
        return (Result::Fail, format!("rmmod test: no new '{GOODBYE}' in the kernel log\n{out}"));
    }
    (Result::Pass, String::new())
}
