//! Property tests for everything that reads untrusted text or bytes: the
//! guest's console, kbuild's and the kselftest's output, objdump's listing,
//! kernel images, and the archive itself. None may panic on any input, and
//! what the archive checks accept must follow their rule. What the
//! parsers find in real output is tested on recordings (tests/recorded.rs).

use proptest::prelude::*;

use kheaders_selftest::{archive, modbuild};
use khtest::{bpf, buildlog, checks, extract, regen, vm};

/// Lines built from fragments the parsers look for, glued with noise.
fn console_text() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        Just("KHTEST-STAT ".to_owned()),
        Just("KHTEST-SIZE ".to_owned()),
        Just("Kernel panic - not syncing".to_owned()),
        Just("ok 1 selftests: kheaders: run_kheaders_modbuild.sh".to_owned()),
        Just("not ok 1 selftests: kheaders: run_kheaders_modbuild.sh # SKIP".to_owned()),
        Just("  GEN     kernel/kheaders_data.tar.xz".to_owned()),
        Just("WARNING: modpost: ".to_owned()),
        Just("ERROR: modpost: ".to_owned()),
        Just("cpio: ".to_owned()),
        Just("# 1..".to_owned()),
        Just("1..4 # SKIP".to_owned()),
        Just("# not ok 3 ".to_owned()),
        Just(" # TIMEOUT ".to_owned()),
        Just("# timeout set to ".to_owned()),
        "[0-9a-f]{0,70}".prop_map(String::from),
        "\\PC{0,40}".prop_map(String::from),
        Just("\n".to_owned()),
        Just(" ".to_owned()),
    ];
    prop::collection::vec(fragment, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whatever the guest or a tool prints, no parser panics. (What each
    /// finds in real output is in tests/recorded.rs.)
    #[test]
    fn console_and_build_output_parsers_never_panic(text in console_text()) {
        let _ = vm::parse_size_and_sum(&text);
        let _ = checks::kselftest_tap(&text, "kheaders: run_kheaders_modbuild.sh");
        let _: Vec<String> = khtest::tap::parse(&text, "# ").results.iter().map(|r| r.why()).collect();
        let _ = khtest::device::judge("port", &text, "", khtest::device::Expect::Loads);
        let _ = khtest::device::spurious_timeout(&text, 1.0);
        let _ = checks::kernel_log_has("insmod", &text, checks::HELLO);
        let _ = checks::refused_without_versions(1, &text);
        let _ = checks::parse_stat(&text);
        let _ = regen::generated(&text);
        let _ = regen::generator_noise(&text);
        let _ = bpf::judge(Some(247), &text);
        let _ = modbuild::classify(&text);
        let _ = buildlog::first_failure(&text);
        let _ = text.lines().any(vm::is_crash_line);
    }

    #[test]
    fn entry_names_accepted_never_leave_the_target(
        parts in prop::collection::vec(prop_oneof![Just("..".to_owned()), Just(".".to_owned()), Just(String::new()), Just("/".to_owned()), "[a-z]{1,3}"], 1..6),
        link in prop::collection::vec(prop_oneof![Just("..".to_owned()), Just(".".to_owned()), Just("/".to_owned()), "[a-z]{1,3}"], 0..5),
        kind in prop_oneof![Just(tar::EntryType::Regular), Just(tar::EntryType::Symlink), Just(tar::EntryType::Link), Just(tar::EntryType::Directory)],
    ) {
        let name = parts.join("/");
        let target = link.join("/");
        if archive::check_entry(&name, kind, Some(&target)).is_ok() {
            prop_assert!(!name.starts_with('/'));
            prop_assert!(!name.split('/').any(|c| c == ".."));
            if kind == tar::EntryType::Symlink {
                prop_assert!(!target.starts_with('/'));
                // Resolved from the link's directory, it never climbs out.
                let mut depth: i64 = name.split('/').filter(|c| !c.is_empty() && *c != ".").count() as i64 - 1;
                for c in target.split('/') {
                    match c {
                        ".." => depth -= 1,
                        "" | "." => {}
                        _ => depth += 1,
                    }
                    prop_assert!(depth >= 0, "{name} -> {target} climbs out");
                }
            }
        }
    }
}

/// A small real archive, xz-compressed, to mutate.
fn sample_archive() -> Vec<u8> {
    use std::io::Write;
    let mut b = tar::Builder::new(Vec::new());
    for (name, body) in [("include/linux/kconfig.h", &b"#define X 1\n"[..]), ("Makefile", &b"all:\n"[..])] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, body).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
    e.write_all(&tar).unwrap();
    e.finish().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Corrupted archives: an error or a clean extraction, never a panic,
    /// never a partial tree, never a file outside the target.
    #[test]
    fn corrupt_archives_are_refused_whole(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let mut bytes = sample_archive();
        for (at, v) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= v | 1;
        }
        let len = bytes.len();
        bytes.truncate(len - cut.index(len / 4 + 1));
        let d = tempfile::tempdir().unwrap();
        let dest = d.path().join("x");
        match archive::extract(&bytes[..], &dest) {
            Ok(_) => prop_assert!(dest.join("include/linux/kconfig.h").exists() || dest.join("Makefile").exists()),
            Err(_) => prop_assert!(!dest.exists(), "a failed extraction left {}", dest.display()),
        }
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        prop_assert!(left.len() <= 1, "files next to the target: {left:?}");
        // And the image scanner on the same bytes.
        let _ = extract::find(&bytes);
    }
}
