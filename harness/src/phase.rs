//! The phases of a cell, in flow order: their names in `results.json`, the
//! report's columns, and the order that decides which stop is the verdict.

use std::fmt;

use serde::Serialize;

/// One phase of a cell, or a timed part of one (the device phase's boot,
/// kselftest and port). The declaration order is the flow order of the
/// docs/phases.md: a cell whose lanes stop in several phases at once takes the
/// verdict of the first in this order ([`Phase::rank`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Preflight,
    Tree,
    Pristine,
    Configure,
    Randstruct,
    Build,
    Rebuild,
    Tracking,
    Regen,
    Image,
    FromImage,
    Boot,
    Pull,
    Extract,
    Bpf,
    Kselftest,
    Modbuild,
    Load,
    Device,
    /// Parts of [`Phase::Device`], timed on their own: its boot, the
    /// kselftest, its port, the README's recipe (`kheaders install`), and
    /// where the kernel serves its symbol versions, their device test.
    DeviceBoot,
    DeviceKselftest,
    DevicePort,
    DeviceRecipe,
    DeviceSymvers,
    /// The archive's real users on the device (DKMS, bcc), in the device's
    /// guest after the device phase, in cells with `clients: true`.
    Clients,
    /// Parts of [`Phase::Clients`]: DKMS with two packages; bcc.
    ClientsDkms,
    ClientsBcc,
}

impl Phase {
    /// Every phase and part, in flow order.
    pub const ALL: [Phase; 27] = [
        Phase::Preflight,
        Phase::Tree,
        Phase::Pristine,
        Phase::Configure,
        Phase::Randstruct,
        Phase::Build,
        Phase::Rebuild,
        Phase::Tracking,
        Phase::Regen,
        Phase::Image,
        Phase::FromImage,
        Phase::Boot,
        Phase::Pull,
        Phase::Extract,
        Phase::Bpf,
        Phase::Kselftest,
        Phase::Modbuild,
        Phase::Load,
        Phase::Device,
        Phase::DeviceBoot,
        Phase::DeviceKselftest,
        Phase::DevicePort,
        Phase::DeviceRecipe,
        Phase::DeviceSymvers,
        Phase::Clients,
        Phase::ClientsDkms,
        Phase::ClientsBcc,
    ];

    /// The columns of the run's summary table.
    pub const TABLE: [Phase; 8] =
        [Phase::Build, Phase::Boot, Phase::Pull, Phase::Extract, Phase::Modbuild, Phase::Load, Phase::Device, Phase::Clients];

    /// What a verdict needs after the build (the bench's "boot to verdict").
    pub const AFTER_BUILD: [Phase; 9] =
        [Phase::Image, Phase::Boot, Phase::Pull, Phase::FromImage, Phase::Extract, Phase::Modbuild, Phase::Bpf, Phase::Kselftest, Phase::Load];

    /// The parts of the device phase.
    pub const DEVICE_PARTS: [Phase; 5] = [Phase::DeviceBoot, Phase::DeviceKselftest, Phase::DevicePort, Phase::DeviceRecipe, Phase::DeviceSymvers];

    /// The name in logs, `results.json` and the docs.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Preflight => "preflight",
            Phase::Tree => "tree",
            Phase::Pristine => "pristine",
            Phase::Configure => "configure",
            Phase::Randstruct => "randstruct",
            Phase::Build => "build",
            Phase::Rebuild => "rebuild",
            Phase::Tracking => "tracking",
            Phase::Regen => "regen",
            Phase::Image => "image",
            Phase::FromImage => "from-image",
            Phase::Boot => "boot",
            Phase::Pull => "pull",
            Phase::Extract => "extract",
            Phase::Bpf => "bpf",
            Phase::Kselftest => "kselftest",
            Phase::Modbuild => "modbuild",
            Phase::Load => "load",
            Phase::Device => "device",
            Phase::DeviceBoot => "device-boot",
            Phase::DeviceKselftest => "device-kselftest",
            Phase::DevicePort => "device-port",
            Phase::DeviceRecipe => "device-recipe",
            Phase::DeviceSymvers => "device-symvers",
            Phase::Clients => "clients",
            Phase::ClientsDkms => "clients-dkms",
            Phase::ClientsBcc => "clients-bcc",
        }
    }

    /// The position in flow order; no phase (a stop outside any) comes last.
    pub fn rank(phase: Option<Phase>) -> usize {
        phase.map_or(usize::MAX, |p| p as usize)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_declaration_order_and_names_are_what_serde_writes() {
        for (i, p) in Phase::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i, "{p} is out of order in Phase::ALL");
            assert_eq!(serde_json::to_value(p).unwrap(), p.name(), "serde and name() disagree on {p:?}");
        }
    }

    #[test]
    fn the_lanes_rank_in_the_readmes_order() {
        let lanes =
            [Phase::FromImage, Phase::Boot, Phase::Pull, Phase::Extract, Phase::Bpf, Phase::Kselftest, Phase::Modbuild, Phase::Load, Phase::Device];
        assert!(lanes.windows(2).all(|w| Phase::rank(Some(w[0])) < Phase::rank(Some(w[1]))));
        assert!(Phase::rank(Some(Phase::Device)) < Phase::rank(Some(Phase::Clients)));
        assert!(Phase::rank(Some(Phase::Clients)) < Phase::rank(None));
    }
}
