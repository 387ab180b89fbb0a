//! Checks on what an unpacked archive contains.

use std::path::Path;

/// `Module.symvers` must not be archived: it is written after the archive is
/// built, and depending on it is the pristine-tree cycle of the 2019 review.
pub fn no_module_symvers(root: &Path) -> Result<(), String> {
    let p = root.join("Module.symvers");
    if p.exists() {
        Err(format!("{} is in the archive; it must not be", p.display()))
    } else {
        Ok(())
    }
}

/// The files `make M=<dir> modules` cannot do without.
pub const MODBUILD_ESSENTIALS: &[&str] = &[
    "Makefile",
    "include/config/auto.conf",
    "include/generated/autoconf.h",
    "scripts/Makefile.build",
    "scripts/basic/fixdep",
    "scripts/mod/modpost",
];

/// Names of [`MODBUILD_ESSENTIALS`] missing from `root`.
pub fn missing_modbuild_files(root: &Path) -> Vec<&'static str> {
    MODBUILD_ESSENTIALS.iter().copied().filter(|f| !root.join(f).exists()).collect()
}

/// The device-tree bindings that archived headers include but the archive
/// lacks. The archive keeps only the bindings its other headers include
/// (and what these include in turn), so one missing is a header that does
/// not compile. Returns how many such includes were seen and the missing
/// ones, as `includer -> binding`.
pub fn dangling_dt_bindings(root: &Path) -> (usize, Vec<String>) {
    let mut seen = 0;
    let mut missing = Vec::new();
    let headers = walkdir::WalkDir::new(root)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "h") && e.path().is_file());
    for entry in headers {
        let Ok(rel) = entry.path().strip_prefix(root) else { continue };
        let Ok(text) = std::fs::read(entry.path()) else { continue };
        for (target, quoted) in String::from_utf8_lossy(&text).lines().filter_map(include_target) {
            let binding = if target.starts_with("dt-bindings/") {
                root.join("include").join(target)
            } else if quoted && !target.contains('/') && rel.starts_with("include/dt-bindings") {
                entry.path().with_file_name(target)
            } else {
                continue;
            };
            seen += 1;
            if !binding.exists() {
                missing.push(format!("{} -> {}", rel.display(), binding.strip_prefix(root).unwrap_or(&binding).display()));
            }
        }
    }
    (seen, missing)
}

/// The file an `#include` line names, and whether it is quoted.
fn include_target(line: &str) -> Option<(&str, bool)> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start().strip_prefix("include")?.trim_start();
    let (close, quoted) = match rest.chars().next()? {
        '<' => ('>', false),
        '"' => ('"', true),
        _ => return None,
    };
    let name = &rest[1..];
    Some((&name[..name.find(close)?], quoted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symvers_and_essentials() {
        let t = tempfile::tempdir().unwrap();
        assert!(no_module_symvers(t.path()).is_ok());
        assert_eq!(missing_modbuild_files(t.path()).len(), MODBUILD_ESSENTIALS.len());
        std::fs::write(t.path().join("Module.symvers"), "").unwrap();
        std::fs::write(t.path().join("Makefile"), "").unwrap();
        assert!(no_module_symvers(t.path()).is_err());
        assert!(!missing_modbuild_files(t.path()).contains(&"Makefile"));
    }

    #[test]
    fn include_lines() {
        assert_eq!(include_target("#include <dt-bindings/a.h>"), Some(("dt-bindings/a.h", false)));
        assert_eq!(include_target("  #  include \"two.h\" // x"), Some(("two.h", true)));
        assert_eq!(include_target("#define include <x.h>"), None);
        assert_eq!(include_target("#include <unclosed.h"), None);
    }

    #[test]
    fn dt_bindings_resolve_or_are_named() {
        let t = tempfile::tempdir().unwrap();
        let dt = t.path().join("include/dt-bindings/a");
        std::fs::create_dir_all(&dt).unwrap();
        std::fs::create_dir_all(t.path().join("include/linux")).unwrap();
        std::fs::write(t.path().join("include/linux/x.h"), "#include <dt-bindings/a/one.h>\n#include <linux/y.h>\n").unwrap();
        std::fs::write(dt.join("one.h"), "#include \"two.h\"\n").unwrap();
        assert_eq!(dangling_dt_bindings(t.path()), (2, vec!["include/dt-bindings/a/one.h -> include/dt-bindings/a/two.h".to_string()]));
        std::fs::write(dt.join("two.h"), "").unwrap();
        assert_eq!(dangling_dt_bindings(t.path()), (2, vec![]));
        std::fs::remove_file(dt.join("one.h")).unwrap();
        assert_eq!(dangling_dt_bindings(t.path()).1, vec!["include/linux/x.h -> include/dt-bindings/a/one.h".to_string()]);
    }
}
