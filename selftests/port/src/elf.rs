//! The one ELF reader of the workspace (the harness's checks, the bpf
//! phase and `kheaders install` use it): the machine an ELF file is for,
//! from its header.

/// `e_machine` of the ELF header that `bytes` start with (20 bytes are
/// enough), in the byte order its `EI_DATA` says; `None` if it is not one.
pub fn machine(bytes: &[u8]) -> Option<u16> {
    let head = bytes.get(..20).filter(|h| h.starts_with(b"\x7fELF"))?;
    let m = [head[18], head[19]];
    Some(if head[5] == 1 { u16::from_le_bytes(m) } else { u16::from_be_bytes(m) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_e_machine_in_either_byte_order() {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[5] = 1;
        h[18] = 247;
        assert_eq!(machine(&h), Some(247));
        h[5] = 2;
        assert_eq!(machine(&h), Some(247 << 8));
        assert_eq!(machine(b"not elf"), None);
        assert_eq!(machine(&h[..19]), None, "a short header is none");
    }
}
