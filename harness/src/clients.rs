//! The archive's real users, on the device: what the `clients` phase runs
//! there and how it is judged. DKMS, Debian's own, builds two packages from
//! the running kernel's archive after `kheaders install`: the suite's test
//! module (its `dkms.conf`) and a third-party Debian DKMS package,
//! [`DEBIAN_DKMS`], whose driver a user program then exercises. bcc,
//! Debian's python3-bpfcc, unpacks the archive itself and traces an event
//! the test causes.

use std::path::Path;

use anyhow::Result;

use crate::cache::Cache;
use crate::debsrc;
use crate::device::{self, shell_quote, Expect};
use crate::report::Verdict;
use crate::vm::Share;

/// A DKMS source package from a Debian suite.
pub struct DebianDkms {
    pub package: &'static str,
    pub suite: &'static str,
}

/// The third-party DKMS package: vpoll (VirtualSquare's synthetic poll
/// events driver), from trixie, the Debian release whose kernel is 6.12:
/// its DKMS packages are kept building on it. Bookworm's are 6.1's and
/// fail on 6.12 (vpoll 0.1 on `class_create`). vpoll needs no kernel
/// option beyond a character device, on both architectures, and its
/// function is visible to a short user program (`images/vpoll-check.c`).
pub const DEBIAN_DKMS: DebianDkms = DebianDkms { package: "vpoll-dkms", suite: "trixie" };

/// The 9p tag of the Debian packages' files, which `images/khtest-device`
/// copies into the device's `/usr/src` as dpkg would unpack them.
pub const PACKAGES_TAG: &str = "khpkgs";

/// The programs and sources the clients need in the device's initramfs.
pub const IMAGE_FILES: [&str; 4] = ["khtest-dkms", "kheaders-testmod.dkms.conf", "vpoll-check.c", "khtest-bcc"];

/// The Debian DKMS package unpacked in `cache` (fetched if it must be), as
/// the share the device copies it from.
pub fn share(cache: &Cache, progress: &dyn Fn(&str)) -> Result<Share> {
    let root = debsrc::unpacked(cache, DEBIAN_DKMS.suite, DEBIAN_DKMS.package, progress)?;
    Ok(Share { tag: PACKAGES_TAG, path: root })
}

/// The guest command that runs DKMS on the device (`images/khtest-dkms`)
/// with the test module's sources in `tree`.
pub fn dkms_command(tree: &Path) -> String {
    let testmod = format!("{}/tools/testing/selftests/kheaders/testmod", tree.to_string_lossy());
    format!(
        "khtest-device run {}",
        shell_quote(&format!("/tmp/khtest-dkms {} /tmp/kheaders-testmod.dkms.conf /tmp/vpoll-check.c", shell_quote(&testmod)))
    )
}

/// The results `images/khtest-dkms` prints.
const DKMS_RESULTS: usize = 14;

/// The verdict on DKMS's TAP. With a module-build archive every result
/// passes, none skipped. With headers only, `kheaders install` refuses
/// saying so, each `dkms build` fails with dkms's own reason, `dkms add`
/// and `dkms remove` still pass, and what needs a build is skipped.
pub fn judge_dkms(text: &str, expect: Expect) -> Verdict {
    let what = "DKMS on the device";
    let tap = match device::planned(what, text, DKMS_RESULTS) {
        Ok(tap) => tap,
        Err(v) => return v,
    };
    let mut problems = Vec::new();
    for n in 1..=DKMS_RESULTS {
        let Some(r) = tap.result(n) else {
            problems.push(format!("no result {n}"));
            continue;
        };
        let headers_only = expect == Expect::HeadersOnly;
        let problem = if r.name == "kheaders install" && headers_only {
            (r.ok || !r.diag.iter().any(|d| d.contains("headers only")))
                .then(|| format!("kheaders install must refuse a headers-only archive, saying so: {}{}", r.line, r.why()))
        } else if r.name.starts_with("dkms build ") && headers_only {
            (r.ok || !r.diag.iter().any(|d| d.contains("kernel headers")))
                .then(|| format!("dkms build must fail on a headers-only archive, saying the kernel headers are missing: {}{}", r.line, r.why()))
        } else if r.name.starts_with("dkms add ") || r.name.starts_with("dkms remove ") || !headers_only {
            if !r.ok {
                Some(format!("{}{}", r.line, r.why()))
            } else {
                r.skip().map(|s| format!("result {n} ({}) was skipped: {s}", r.name))
            }
        } else {
            r.skip().is_none().then(|| format!("result {n} ({}) must be skipped: the archive has headers only", r.name))
        };
        problems.extend(problem);
    }
    if problems.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(format!("{what}: {}", problems.join("\n  ")))
    }
}

/// The guest command that runs bcc on the device (`images/khtest-bcc`).
pub fn bcc_command() -> String {
    format!("khtest-device run {}", shell_quote("/tmp/khtest-bcc"))
}

/// bcc's time from start to program loaded, as `images/khtest-bcc`
/// prints it (`# bcc: compiled and loaded in 9.1 s`).
pub fn bcc_seconds(text: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix("# bcc: compiled and loaded in ")?.strip_suffix(" s")?.parse().ok())
}

/// The results `images/khtest-bcc` prints.
const BCC_RESULTS: usize = 4;

/// The verdict on bcc's TAP: every result passes, none skipped, whatever
/// the archive (bcc needs headers only, so the headers-only baseline
/// passes too: a control that our series cannot make pass).
pub fn judge_bcc(text: &str) -> Verdict {
    device::all_ok("bcc on the device", text, BCC_RESULTS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSING: &str = "TAP version 13\n1..14\n\
        # installed /usr/src/kheaders-6.12.48\nok 1 kheaders install\n\
        ok 2 dkms add kheaders-testmod/1.0\nok 3 dkms build kheaders-testmod/1.0\nok 4 dkms install kheaders-testmod/1.0\n\
        ok 5 modprobe test\nok 6 test works: /sys/module/test exists\nok 7 dkms remove kheaders-testmod/1.0 (and test unloaded)\n\
        ok 8 dkms add vpoll/0.1.1\nok 9 dkms build vpoll/0.1.1\nok 10 dkms install vpoll/0.1.1\nok 11 modprobe vpoll\n\
        # vpoll-check: poll saw 0x0 before, 0x3 raised (want 0x3), 0x0 cleared\nok 12 vpoll works\n\
        ok 13 dkms remove vpoll/0.1.1 (and vpoll unloaded)\nok 14 kheaders remove\n";

    #[test]
    fn every_step_passing_passes_and_a_failed_exercise_fails_quoting_it() {
        assert_eq!(judge_dkms(PASSING, Expect::Loads), Verdict::Pass);
        let broken = PASSING.replace("0x3 raised", "0x0 raised").replace("ok 12 vpoll works", "not ok 12 vpoll works");
        let Verdict::Fail(why) = judge_dkms(&broken, Expect::Loads) else { panic!() };
        assert!(why.contains("not ok 12 vpoll works") && why.contains("0x0 raised"), "{why}");
    }

    #[test]
    fn a_skip_is_a_fail_with_a_module_build_archive() {
        let skipped = PASSING.replace("ok 11 modprobe vpoll", "ok 11 modprobe vpoll # SKIP not installed");
        let Verdict::Fail(why) = judge_dkms(&skipped, Expect::Loads) else { panic!() };
        assert!(why.contains("result 11 (modprobe vpoll) was skipped"), "{why}");
    }

    #[test]
    fn headers_only_must_be_refused_by_kheaders_install_and_by_dkms_saying_why() {
        let mut lines =
            vec!["1..14".to_owned(), "# kheaders: /sys/kernel/kheaders.tar.xz has headers only".to_owned(), "not ok 1 kheaders install".to_owned()];
        for (first, pkg) in [(2, "kheaders-testmod/1.0"), (8, "vpoll/0.1.1")] {
            lines.push(format!("ok {first} dkms add {pkg}"));
            lines.push("# Error! Your kernel headers for kernel 6.12.48 cannot be found at /lib/modules/6.12.48/build".to_owned());
            lines.push(format!("not ok {} dkms build {pkg}", first + 1));
            for k in 2..5 {
                lines.push(format!("ok {} step # SKIP not built", first + k));
            }
            lines.push(format!("ok {} dkms remove {pkg} (and its module unloaded)", first + 5));
        }
        lines.push("ok 14 kheaders remove # SKIP not installed".to_owned());
        let refused = lines.join("\n");
        assert_eq!(judge_dkms(&refused, Expect::HeadersOnly), Verdict::Pass);
        // A dkms that built anyway, or failed without saying why, is a FAIL.
        let built = refused.replacen("not ok 3 dkms build", "ok 3 dkms build", 1);
        assert!(matches!(judge_dkms(&built, Expect::HeadersOnly), Verdict::Fail(w) if w.contains("dkms build must fail")));
        let silent = refused.replace("# Error! Your kernel headers", "# Error!");
        assert!(matches!(judge_dkms(&silent, Expect::HeadersOnly), Verdict::Fail(_)));
        // With a module-build archive, the same output is a FAIL.
        assert!(matches!(judge_dkms(&refused, Expect::Loads), Verdict::Fail(_)));
    }

    #[test]
    fn bcc_passes_only_when_it_saw_the_event_and_a_failed_compile_quotes_bcc() {
        let ok =
            "TAP version 13\n1..4\n# bcc: compiled and loaded in 9.1 s\nok 1 compiles\nok 2 attaches to a kprobe on getppid (__x64_sys_getppid)\n\
                  # saw tgid=80 pid=80 comm=b'khtest-bcc'; caused tgid=80 tid=80 comm=b'khtest-bcc'\nok 3 sees\nok 4 unpacked\n";
        assert_eq!(judge_bcc(ok), Verdict::Pass);
        assert_eq!(bcc_seconds(ok), Some(9.1));
        let field = "1..4\n# /virtual/main.c:22:14: error: no member named 'no_such_field' in 'struct task_struct'\n\
                     # Failed to compile BPF module <text>\nnot ok 1 compiles\nok 2 a # SKIP not compiled\nok 3 b # SKIP not compiled\nok 4 c # SKIP not compiled\n";
        let Verdict::Fail(why) = judge_bcc(field) else { panic!() };
        assert!(why.contains("no member named 'no_such_field'") && why.contains("result 2 (a) was skipped"), "{why}");
        let skipped = "1..0 # SKIP bcc is not in the device's userland (Debian package python3-bpfcc)\n";
        assert!(matches!(judge_bcc(skipped), Verdict::Error(w) if w.contains("python3-bpfcc")));
    }

    #[test]
    fn a_userland_without_dkms_is_an_error_naming_the_package() {
        let out = "1..0 # SKIP dkms is not in the device's userland (Debian package dkms)\n";
        assert!(matches!(judge_dkms(out, Expect::Loads), Verdict::Error(w) if w.contains("Debian package dkms")));
    }
}
