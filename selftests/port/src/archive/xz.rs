//! The xz container, checked whole before anything is decoded: every
//! stream's header and footer, every index, the padding between streams,
//! and every block header, so that each block's dictionary is known (and
//! refused if too large) before a decoder allocates it. The blocks' own
//! checks are verified by the decoder, which [`super`] drains to the end.
//! Offsets in errors are bytes into the compressed file.

use super::{ArchiveError, Limits};

const MAGIC: &[u8; 6] = b"\xfd7zXZ\0";
const FOOTER_MAGIC: &[u8; 2] = b"YZ";
const LZMA2: u64 = 0x21;

/// One block: where it starts in the file, and how much it decodes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub offset: usize,
    pub uncompressed: u64,
}

/// What the container says of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Each stream's bytes (decoded one by one: lzma-rust2 0.13 refuses a
    /// second stream in one reader).
    pub streams: Vec<std::ops::Range<usize>>,
    pub blocks: Vec<Block>,
    /// The sum of every block's uncompressed size, from the indexes.
    pub uncompressed: u64,
}

impl Layout {
    /// The number (from 1) of the block that holds compressed byte `at`.
    pub fn block_at(&self, at: u64) -> Option<usize> {
        self.blocks.iter().rposition(|b| b.offset as u64 <= at).map(|i| i + 1)
    }
}

fn damaged(at: usize, what: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Damaged(format!("at byte {at}: {what}"))
}

/// Check the whole container of `file` within `limits`, from its end (as
/// `xz --list` reads it): streams one after the other, each with only
/// zero padding (a multiple of 4 bytes) between and after them.
pub fn check(file: &[u8], limits: &Limits) -> Result<Layout, ArchiveError> {
    if !file.starts_with(MAGIC) {
        return Err(ArchiveError::Damaged("not an xz file (no xz magic at its start)".into()));
    }
    let mut streams = Vec::new();
    let mut end = file.len();
    while end > 0 {
        // Stream padding: zeros, in whole 4-byte words.
        let mut padding = 0;
        while end >= 4 && file[end - 4..end] == [0; 4] {
            end -= 4;
            padding += 4;
        }
        if end == 0 {
            break;
        }
        if end < 24 || !file[end - 2..end].eq(FOOTER_MAGIC) {
            let what = if padding == 0 && end == file.len() {
                "the file does not end with an xz stream footer (cut off, or junk after it)"
            } else {
                "junk before the stream padding"
            };
            return Err(damaged(end, what));
        }
        let (start, blocks) = stream(file, end, limits)?;
        streams.push((start..end, blocks));
        end = start;
    }
    streams.reverse();
    let ranges = streams.iter().map(|(r, _)| r.clone()).collect();
    let blocks: Vec<Block> = streams.into_iter().flat_map(|(_, b)| b).collect();
    let uncompressed = blocks.iter().try_fold(0u64, |sum, b| sum.checked_add(b.uncompressed)).unwrap_or(u64::MAX);
    if uncompressed > limits.unpacked_bytes {
        return Err(ArchiveError::TooLarge(format!(
            "it unpacks to more than {} MiB (its index says {} MiB; a kheaders archive unpacks to about 35 MB)",
            limits.unpacked_bytes >> 20,
            uncompressed >> 20
        )));
    }
    Ok(Layout { streams: ranges, blocks, uncompressed })
}

/// The stream that ends at `end`: its start, and its blocks.
fn stream(file: &[u8], end: usize, limits: &Limits) -> Result<(usize, Vec<Block>), ArchiveError> {
    let footer = end - 12;
    let f = &file[footer..end];
    if crc32(&f[4..10]) != u32::from_le_bytes([f[0], f[1], f[2], f[3]]) {
        return Err(damaged(footer, "the stream footer's CRC32 is wrong"));
    }
    let flags = [f[8], f[9]];
    let index_len = (u64::from(u32::from_le_bytes([f[4], f[5], f[6], f[7]])) + 1) * 4;
    let index_at = (footer as u64)
        .checked_sub(index_len)
        .filter(|&i| i >= 12)
        .ok_or_else(|| damaged(footer, "the footer's index size runs past the file's start"))? as usize;
    let records = index(&file[index_at..footer], index_at)?;
    let blocks_len: u64 = records.iter().map(|(unpadded, _)| unpadded.div_ceil(4) * 4).sum();
    let start = (index_at as u64)
        .checked_sub(blocks_len + 12)
        .ok_or_else(|| damaged(index_at, "the index names more blocks than the stream holds"))? as usize;
    let h = &file[start..start + 12];
    if !h.starts_with(MAGIC) {
        return Err(damaged(start, "no stream header where the index says the stream starts (a block or the index was cut or padded)"));
    }
    if crc32(&h[6..8]) != u32::from_le_bytes([h[8], h[9], h[10], h[11]]) {
        return Err(damaged(start + 6, "the stream header's CRC32 is wrong"));
    }
    if [h[6], h[7]] != flags {
        return Err(damaged(footer + 8, "the stream header's and footer's flags differ"));
    }
    let mut at = start + 12;
    let mut blocks = Vec::new();
    for (unpadded, uncompressed) in records {
        block_header(file, at, limits)?;
        blocks.push(Block { offset: at, uncompressed });
        at += (unpadded.div_ceil(4) * 4) as usize;
    }
    Ok((start, blocks))
}

/// The records (unpadded size, uncompressed size) of the index in `bytes`,
/// which starts at byte `at` of the file.
fn index(bytes: &[u8], at: usize) -> Result<Vec<(u64, u64)>, ArchiveError> {
    if bytes.first() != Some(&0) || bytes.len() < 8 {
        return Err(damaged(at, "no index where the stream footer says it is"));
    }
    let body = bytes.len() - 4;
    if crc32(&bytes[..body]) != u32::from_le_bytes(bytes[body..].try_into().expect("4 bytes")) {
        return Err(damaged(at, "the index's CRC32 is wrong"));
    }
    let mut pos = 1;
    let count = varint(&bytes[..body], &mut pos).ok_or_else(|| damaged(at, "the index's record count cannot be read"))?;
    // Every record takes two bytes at least: the count is bounded by the
    // index's own size before anything is allocated for it.
    if count > (body / 2) as u64 {
        return Err(damaged(at, format!("the index claims {count} records in {body} bytes")));
    }
    let mut records = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let unpadded = varint(&bytes[..body], &mut pos).filter(|&u| u >= 5);
        let uncompressed = varint(&bytes[..body], &mut pos);
        match (unpadded, uncompressed) {
            (Some(u), Some(c)) => records.push((u, c)),
            _ => return Err(damaged(at + pos, "an index record cannot be read")),
        }
    }
    if bytes[pos..body].iter().any(|&b| b != 0) || (body - pos) > 3 {
        return Err(damaged(at + pos, "the index's padding is not zero"));
    }
    Ok(records)
}

/// The block header at `at`: well-formed, LZMA2 as its last filter, and a
/// dictionary within the limit.
fn block_header(file: &[u8], at: usize, limits: &Limits) -> Result<(), ArchiveError> {
    let size = usize::from(*file.get(at).ok_or_else(|| damaged(at, "a block starts past the file's end"))?);
    if size == 0 {
        return Err(damaged(at, "an index where a block header should be"));
    }
    let len = (size + 1) * 4;
    let h = file.get(at..at + len).ok_or_else(|| damaged(at, "a block header runs past the file's end"))?;
    if crc32(&h[..len - 4]) != u32::from_le_bytes(h[len - 4..].try_into().expect("4 bytes")) {
        return Err(damaged(at, "a block header's CRC32 is wrong"));
    }
    let flags = h[1];
    let body = &h[..len - 4];
    let mut pos = 2;
    for present in [flags & 0x40 != 0, flags & 0x80 != 0] {
        if present && varint(body, &mut pos).is_none() {
            return Err(damaged(at, "a block header's size field cannot be read"));
        }
    }
    let mut last = None;
    for _ in 0..=(flags & 3) {
        let (Some(id), Some(props)) = (varint(body, &mut pos), varint(body, &mut pos)) else {
            return Err(damaged(at, "a block header's filter cannot be read"));
        };
        let p = body.get(pos..pos + props as usize).ok_or_else(|| damaged(at, "a block header's filter properties run past it"))?;
        pos += props as usize;
        last = Some((id, p.to_vec()));
    }
    match last {
        Some((LZMA2, p)) if p.len() == 1 => {
            let dict = dict_size(p[0]).ok_or_else(|| damaged(at, format!("an invalid LZMA2 dictionary property {}", p[0])))?;
            if dict > limits.dict_bytes {
                return Err(ArchiveError::TooLarge(format!(
                    "a block at byte {at} asks for an xz dictionary of {} MiB, and at most {} MiB is accepted (xz -9 uses 64 MiB, the kheaders archive 8 MiB)",
                    dict >> 20,
                    limits.dict_bytes >> 20
                )));
            }
            Ok(())
        }
        _ => Err(damaged(at, "a block whose last filter is not LZMA2")),
    }
}

/// The dictionary size an LZMA2 property byte stands for.
pub fn dict_size(p: u8) -> Option<u64> {
    match p {
        0..=39 => Some((2 | u64::from(p & 1)) << (p / 2 + 11)),
        40 => Some(u64::from(u32::MAX)),
        _ => None,
    }
}

/// xz's variable-length integer at `bytes[*at..]`; `at` moves past it.
fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..9 {
        let b = *bytes.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// CRC-32 (IEEE), as xz's headers, indexes and footers use it.
pub(super) fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xedb8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn xz(data: &[u8], preset: u32) -> Vec<u8> {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), preset);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn a_real_file_and_concatenated_streams_with_padding() {
        let one = xz(b"hello", 6);
        let layout = check(&one, &Limits::DEFAULT).unwrap();
        assert_eq!((layout.blocks.len(), layout.uncompressed), (1, 5));
        let empty = xz(b"", 6);
        assert_eq!(check(&empty, &Limits::DEFAULT).unwrap().blocks.len(), 0, "an empty stream has no block");
        let two = [one.clone(), vec![0; 8], empty, xz(b"world!", 0), vec![0; 4]].concat();
        let layout = check(&two, &Limits::DEFAULT).unwrap();
        assert_eq!((layout.blocks.len(), layout.uncompressed), (2, 11));
        assert_eq!(layout.block_at(layout.blocks[1].offset as u64 + 3), Some(2));
    }

    #[test]
    fn cut_padded_or_junked_files_are_damage_with_an_offset() {
        let file = xz(&[7u8; 10_000], 6);
        for (what, bad) in [
            ("footer cut", file[..file.len() - 1].to_vec()),
            ("index and footer cut", file[..file.len() - 20].to_vec()),
            ("junk after", [file.clone(), b"junk".to_vec()].concat()),
            ("padding not a multiple of 4", [file.clone(), vec![0; 3]].concat()),
        ] {
            let err = check(&bad, &Limits::DEFAULT).unwrap_err();
            assert!(matches!(&err, ArchiveError::Damaged(m) if m.starts_with("at byte ")), "{what}: {err}");
        }
        let mut flipped = file.clone();
        let n = flipped.len();
        flipped[n - 10] ^= 1;
        assert!(matches!(check(&flipped, &Limits::DEFAULT), Err(ArchiveError::Damaged(m)) if m.contains("footer")));
    }

    #[test]
    fn every_blocks_dictionary_is_checked_before_decoding() {
        let small = xz(b"x", 0);
        let big = xz(b"y", 9);
        let both = [small.clone(), big].concat();
        let limits = Limits { dict_bytes: 8 << 20, ..Limits::DEFAULT };
        let err = check(&both, &limits).unwrap_err();
        assert!(matches!(&err, ArchiveError::TooLarge(m) if m.contains("64 MiB")), "the second stream's block: {err}");
        assert_eq!(dict_size(41), None);
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }
}
