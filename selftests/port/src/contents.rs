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
}
