//! Result 4: load the module into the running kernel and unload it. On a
//! kernel with `CONFIG_MODVERSIONS`, the archive has no `Module.symvers`
//! (by design): the module is built with the symbol versions the kernel
//! serves, and must carry them; on a kernel that serves none, it must be
//! refused for having none.

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

/// Where the running kernel serves its symbol versions, in
/// `Module.symvers` format (`CONFIG_MODVERSIONS` and
/// `CONFIG_IKHEADERS_MODBUILD`).
pub const SERVED_SYMVERS: &str = "/sys/kernel/symvers/vmlinux";

/// The symbol versions a module built from the archive gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// The kernel has no `CONFIG_MODVERSIONS`: none are needed.
    NotUsed,
    /// The running kernel serves them: the module is built with them.
    Served,
    /// None: the kernel serves none, or the archive is not the running
    /// kernel's.
    Missing,
}

/// The versions for the unpacked `headers`; `running` if the archive is
/// the running kernel's, whose served versions then apply to it.
pub fn versions(headers: &Path, running: bool) -> Versions {
    if !modversions(headers) {
        Versions::NotUsed
    } else if running && Path::new(SERVED_SYMVERS).is_file() {
        Versions::Served
    } else {
        Versions::Missing
    }
}

/// Result 4's name: what the kernel must do with the module.
pub fn name(v: Versions) -> &'static str {
    match v {
        Versions::NotUsed => "module loads",
        Versions::Served => "module loads, with the symbol versions the kernel serves",
        Versions::Missing => "module is refused: it has no symbol versions (CONFIG_MODVERSIONS)",
    }
}

/// Whether the module whose sources are in `dir` was given symbol
/// versions: modpost writes its `__versions` section into `<name>.mod.c`,
/// one `{ 0x<crc>, "<symbol>" },` line a symbol, and none without
/// `Module.symvers`.
pub fn has_versions(mod_c: &str) -> bool {
    mod_c.lines().any(|l| l.trim_start().starts_with("{ 0x") && l.contains(", \""))
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
pub fn load(ko: &Path, v: Versions, work: &Path) -> (Result, String) {
    if v == Versions::Served && !std::fs::read_to_string(ko.with_extension("mod.c")).is_ok_and(|c| has_versions(&c)) {
        return (
            Result::Fail,
            format!("{}'s __versions is empty: the module was built without symbol versions", ko.with_extension("mod.c").display()),
        );
    }
    let ko = ko.to_string_lossy();
    if v == Versions::Missing {
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
        // The kernel says why it refused a module.
        let log = run("dmesg", &[], work).1;
        let why: Vec<&str> = log.lines().rev().take(3).collect::<Vec<_>>().into_iter().rev().collect();
        return (Result::Fail, format!("insmod failed:\n{out}\nthe kernel log ends:\n{}", why.join("\n")));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_seen_in_the_mod_c_only_when_modpost_wrote_some() {
        let with = "static const struct modversion_info ____versions[]\n__used __section(\"__versions\") = {\n\t{ 0x92997ed8, \"_printk\" },\n};\n";
        assert!(has_versions(with));
        let without = "static const struct modversion_info ____versions[]\n__used __section(\"__versions\") = {\n};\n";
        assert!(!has_versions(without), "an empty __versions is no versions");
    }

    #[test]
    fn without_modversions_nothing_is_served_or_missing() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("include/config")).unwrap();
        std::fs::write(d.path().join("include/config/auto.conf"), "CONFIG_MODULES=y\n").unwrap();
        assert_eq!(versions(d.path(), true), Versions::NotUsed);
        std::fs::write(d.path().join("include/config/auto.conf"), "CONFIG_MODVERSIONS=y\n").unwrap();
        assert_eq!(versions(d.path(), false), Versions::Missing, "another kernel's archive gets no served versions");
        assert_eq!(name(Versions::Missing), "module is refused: it has no symbol versions (CONFIG_MODVERSIONS)");
    }
}
