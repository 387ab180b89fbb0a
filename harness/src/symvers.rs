//! Symbol versions (K25): what a cell's kernel does with them, from
//! its `.config`; the check that the versions it serves
//! (`/sys/kernel/symvers/vmlinux`) are its build's own; and the device
//! test (`images/khtest-symvers`) that proves they are the ones it checks.

use std::path::Path;

use crate::device::{self, Expect};
use crate::kbuild::Config;
use crate::matrix::{Cell, ModuleLoad};
use crate::report::Verdict;

/// Where the series' kernel serves its symbol versions: the port's
/// constant, which `kheaders install` and the port's test read.
pub use kheaders_selftest::load::SERVED_SYMVERS as SERVED;

/// What a cell's kernel does with symbol versions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SymbolVersions {
    /// `CONFIG_MODVERSIONS`: a module without versions is refused.
    pub checked: bool,
    /// The kernel serves them: the series' module-build archive with
    /// `CONFIG_MODVERSIONS`. (Whether an unsigned module taints it `E`,
    /// `khtest-symvers` reads from the archive's own configuration.)
    pub served: bool,
}

impl SymbolVersions {
    pub fn of(config: &Config, cell: &Cell) -> SymbolVersions {
        let on = |k: &str| config.get(k).map(String::as_str) == Some("y");
        let checked = on("CONFIG_MODVERSIONS");
        SymbolVersions { checked, served: checked && cell.patched && on("CONFIG_IKHEADERS_MODBUILD") }
    }

    /// What the device's tests must see of the test module.
    pub fn expect(self, cell: &Cell) -> Expect {
        match (cell.modbuild, cell.module_load) {
            (false, _) => Expect::HeadersOnly,
            (true, ModuleLoad::RefusedNoVersions) => Expect::Refused,
            (true, ModuleLoad::Loads) if self.served => Expect::LoadsWithVersions,
            (true, ModuleLoad::Loads) => Expect::Loads,
        }
    }
}

/// The lines of a `Module.symvers`-format text that describe vmlinux's
/// exports, sorted: the kernel serves them in its tables' order (by
/// export kind, then name), modpost writes them in its own.
fn vmlinux_lines(text: &str) -> Vec<&str> {
    let mut v: Vec<&str> = text.lines().filter(|l| l.split('\t').nth(2) == Some("vmlinux")).collect();
    v.sort_unstable();
    v
}

/// The served file must hold exactly the vmlinux lines of the build's
/// `Module.symvers`, and nothing else.
pub fn served_verdict(served: &str, build: &str) -> Verdict {
    let (got, want) = (vmlinux_lines(served), vmlinux_lines(build));
    let others = served.lines().count() - got.len();
    if got == want && others == 0 {
        return Verdict::Pass;
    }
    let only =
        |a: &[&str], b: &[&str]| -> Vec<String> { a.iter().filter(|l| b.binary_search(l).is_err()).take(5).map(|l| format!("    {l}")).collect() };
    let mut why = if got.len() == want.len() {
        format!("{SERVED} differs from the vmlinux lines of the build's Module.symvers (both {})", got.len())
    } else {
        format!("{SERVED} has {} vmlinux lines, the build's Module.symvers {}", got.len(), want.len())
    };
    if others > 0 {
        why += &format!("; and {others} lines that are not vmlinux's");
    }
    for (what, lines) in [("served, not built", only(&got, &want)), ("built, not served", only(&want, &got))] {
        if !lines.is_empty() {
            why += &format!("\n  {what} (first {}):\n{}", lines.len(), lines.join("\n"));
        }
    }
    Verdict::Fail(why)
}

/// The guest command that runs `images/khtest-symvers` in the device's
/// root, with the test module's sources in `tree`.
pub fn device_command(tree: &Path, built: Option<&str>, env: &[(&str, String)]) -> String {
    let testmod = format!("{}/tools/testing/selftests/kheaders/testmod", tree.to_string_lossy());
    let b = built.map(|dir| format!(" -b {dir}")).unwrap_or_default();
    device::run_command(env, &format!("/tmp/khtest-symvers{b} {testmod}"))
}

/// The verdict on `khtest-symvers`'s TAP: four results, all passed.
pub fn judge_device(text: &str) -> Verdict {
    device::all_ok("symbol versions on the device (khtest-symvers)", text, 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUILT: &str = "0x92997ed8\t_printk\tvmlinux\tEXPORT_SYMBOL\t\n\
                         0x1a2b3c4d\tkfree\tvmlinux\tEXPORT_SYMBOL\t\n\
                         0x0badcafe\tnet_gpl\tvmlinux\tEXPORT_SYMBOL_GPL\tNS\n\
                         0x11111111\tko_sym\tkheaders\tEXPORT_SYMBOL\t\n";

    #[test]
    fn the_served_lines_must_be_the_builds_vmlinux_lines_in_any_order() {
        let served = "0x1a2b3c4d\tkfree\tvmlinux\tEXPORT_SYMBOL\t\n0x92997ed8\t_printk\tvmlinux\tEXPORT_SYMBOL\t\n\
                      0x0badcafe\tnet_gpl\tvmlinux\tEXPORT_SYMBOL_GPL\tNS\n";
        assert_eq!(served_verdict(served, BUILT), Verdict::Pass);
    }

    #[test]
    fn a_wrong_crc_no_gpl_exports_or_nothing_served_fails_naming_the_lines() {
        let wrong = "0x1a2b3c4d\tkfree\tvmlinux\tEXPORT_SYMBOL\t\n0x92997ed9\t_printk\tvmlinux\tEXPORT_SYMBOL\t\n\
                     0x0badcafe\tnet_gpl\tvmlinux\tEXPORT_SYMBOL_GPL\tNS\n";
        let v = served_verdict(wrong, BUILT);
        assert!(
            matches!(&v, Verdict::Fail(m) if m.starts_with("/sys/kernel/symvers/vmlinux differs from the vmlinux lines of the build's Module.symvers (both 3)")
                && m.contains("served, not built (first 1):\n    0x92997ed9\t_printk") && m.contains("built, not served (first 1):\n    0x92997ed8")),
            "{v:?}"
        );
        let no_gpl = "0x1a2b3c4d\tkfree\tvmlinux\tEXPORT_SYMBOL\t\n0x92997ed8\t_printk\tvmlinux\tEXPORT_SYMBOL\t\n";
        assert!(
            matches!(served_verdict(no_gpl, BUILT), Verdict::Fail(m) if m.contains("has 2 vmlinux lines, the build's Module.symvers 3") && m.contains("net_gpl"))
        );
        assert!(matches!(served_verdict("", BUILT), Verdict::Fail(m) if m.contains("has 0 vmlinux lines")));
        let extra = format!("{}garbage\n", BUILT.lines().take(3).collect::<Vec<_>>().join("\n") + "\n");
        assert!(matches!(served_verdict(&extra, BUILT), Verdict::Fail(m) if m.contains("1 lines that are not vmlinux's")));
    }

    #[test]
    fn the_device_test_passes_only_with_four_oks() {
        let good = "TAP version 13\n1..4\nok 1 a\nok 2 b\nok 3 c\nok 4 d\n";
        assert_eq!(judge_device(good), Verdict::Pass);
        let refused = good.replace("ok 3 c", "not ok 3 c\n# insmod accepted it");
        assert!(matches!(judge_device(&refused), Verdict::Fail(m) if m.contains("not ok 3 c")));
        let skipped = good.replace("ok 2 b", "ok 2 b # SKIP no root");
        assert!(matches!(judge_device(&skipped), Verdict::Fail(m) if m.contains("result 2 (b) was skipped: no root")));
        assert!(matches!(judge_device("1..0 # SKIP mktemp -d failed\n"), Verdict::Error(_)));
        let unversioned = good.replace("ok 4 d", "not ok 4 d\n# insmod accepted a module without symbol versions");
        assert!(matches!(judge_device(&unversioned), Verdict::Fail(m) if m.contains("not ok 4 d")));
        assert!(matches!(judge_device("Kernel panic"), Verdict::Fail(m) if m.contains("no plan of 4")));
    }

    #[test]
    fn a_kernel_serves_versions_only_with_the_series_module_build_archive_and_modversions() {
        let d = tempfile::tempdir().unwrap();
        let cell = |patched: bool| {
            let text = format!("cells:\n  - {{name: a, arch: x86_64, kheaders: m, patched: {patched}, modbuild: {patched}}}\n");
            crate::matrix::Matrix::parse(&text, d.path()).unwrap().cells.remove(0)
        };
        let cfg = |t: &str| crate::kbuild::parse_config(t);
        let all = cfg("CONFIG_MODVERSIONS=y\nCONFIG_IKHEADERS_MODBUILD=y\nCONFIG_MODULE_SIG=y\n");
        let v = SymbolVersions::of(&all, &cell(true));
        assert_eq!(v, SymbolVersions { checked: true, served: true });
        assert_eq!(v.expect(&cell(true)), Expect::LoadsWithVersions);
        assert!(!SymbolVersions::of(&all, &cell(false)).served, "Debian's kernel serves nothing");
        let no_modbuild = cfg("CONFIG_MODVERSIONS=y\n");
        assert_eq!(SymbolVersions::of(&no_modbuild, &cell(true)), SymbolVersions { checked: true, served: false });
        assert_eq!(SymbolVersions::default().expect(&cell(true)), Expect::Loads);
    }
}
