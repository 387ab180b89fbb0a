//! `khtest extract`: the headers archive out of a built kernel, without
//! booting it, the way `scripts/extract-ikconfig` gets the config out.
//!
//! `kernel/kheaders.c` embeds `kheaders_data.tar.xz` as it is, so the
//! archive is an xz stream somewhere in `vmlinux`, in `kheaders.ko` and in
//! an uncompressed arm64 `Image`. A `bzImage` or an `Image.gz` holds the
//! kernel compressed (xz, gzip): that payload is unpacked first and
//! searched the same way. An xz stream is the archive when it decodes to a
//! tar that has `include/linux/kconfig.h`; its exact length is what the
//! xz decoder consumed.
//!
//! Any input may be hostile (an xz bomb), so memory and time are bounded:
//! a stream is read as a tar as it decodes, keeping nothing, and given up
//! at its first block that is not a tar header, or past [`ARCHIVE_LIMIT`];
//! only a compressed payload is kept in memory, one at a time, up to
//! [`PAYLOAD_LIMIT`];
//! and no xz stream may ask for more than [`DECODE_MEMORY_LIMIT`] to decode.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";
const GZIP_MAGIC: &[u8] = b"\x1f\x8b\x08";
/// A tar entry every kheaders archive has, headers-only or not.
const MARKER: &str = "include/linux/kconfig.h";

/// The most a kheaders tar may unpack to: ten times the largest archive
/// (51 MB with the module-build files). Decoding stops past it.
pub const ARCHIVE_LIMIT: u64 = 512 << 20;

/// The most a compressed kernel payload may unpack to: it is searched in
/// memory. A stripped x86_64 or arm64 kernel is well under it.
pub const PAYLOAD_LIMIT: u64 = 128 << 20;

/// The most memory an xz stream may need to decode, its dictionary mostly:
/// kernels are packed with at most 32 MiB, the archive with 8 MiB.
pub const DECODE_MEMORY_LIMIT: u64 = 256 << 20;

/// Where the archive was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub archive: Vec<u8>,
    /// Byte offset of the archive in the file, or in the unpacked payload.
    pub offset: usize,
    /// `None` if in the file itself, else the payload's compression and offset.
    pub inside: Option<(&'static str, usize)>,
}

/// Find the archive in `path`.
pub fn from_file(path: &Path) -> Result<Found> {
    Finder::default().from_file(path)
}

/// Finds archives in several files, decoding each distinct stream once: a
/// stream whose bytes start with those of an archive it already decoded
/// is that archive (an xz stream ends itself, so it decodes to the same
/// tar with the same length). `vmlinux` and the boot image that packs it
/// hold the same archive.
#[derive(Default)]
pub struct Finder {
    known: Vec<Vec<u8>>,
}

impl Finder {
    /// A finder that already knows `archive`'s bytes (checked elsewhere):
    /// a stream that starts with them is that archive, without decoding.
    pub fn knowing(archive: Vec<u8>) -> Finder {
        Finder { known: vec![archive] }
    }

    /// Find the archive in `path`.
    pub fn from_file(&mut self, path: &Path) -> Result<Found> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let found = self.find(&bytes).with_context(|| {
            format!(
                "no kheaders archive in {}: give vmlinux, the boot image (bzImage, Image, Image.gz) of a kernel \
                 built with CONFIG_IKHEADERS=y, or kernel/kheaders.ko for CONFIG_IKHEADERS=m",
                path.display()
            )
        })?;
        if !self.known.contains(&found.archive) {
            self.known.push(found.archive.clone());
        }
        Ok(found)
    }

    /// Find the archive in `bytes`, directly or inside a compressed payload:
    /// every xz stream of the file is tried as the archive first; then the
    /// compressed payloads are unpacked one at a time, searched and dropped.
    pub fn find(&self, bytes: &[u8]) -> Result<Found> {
        let mut too_large = Vec::new();
        let mut others = Vec::new();
        for off in occurrences(bytes, XZ_MAGIC) {
            match self.decode_at(&bytes[off..]) {
                Some(Stream::Archive(used)) => return Ok(Found { archive: bytes[off..off + used].to_vec(), offset: off, inside: None }),
                Some(Stream::TooLarge(what)) => too_large.push(format!("the xz stream at offset {off} {what}")),
                // Not the archive: maybe a compressed kernel that holds it.
                None => others.push(("xz", off)),
            }
        }
        for (kind, at) in others.into_iter().chain(occurrences(bytes, GZIP_MAGIC).map(|off| ("gzip", off))) {
            let payload = match kind {
                "xz" => unpack_limited(liblzma::read::XzDecoder::new_stream(&bytes[at..], xz_decoder()?)),
                _ => unpack_limited(flate2::read::GzDecoder::new(&bytes[at..])),
            };
            match payload {
                Ok(Some(p)) => {
                    if let Some(found) = self.search_payload(kind, at, &p, &mut too_large) {
                        return Ok(found);
                    }
                }
                Ok(None) => too_large.push(format!("the {kind} stream at offset {at} unpacks to more than {} MiB", PAYLOAD_LIMIT >> 20)),
                Err(e) if needs_more_memory(&e) => {
                    too_large.push(format!("the xz stream at offset {at} needs more than {} MiB to decode", DECODE_MEMORY_LIMIT >> 20))
                }
                Err(_) => {}
            }
        }
        if too_large.is_empty() {
            bail!("no xz stream in it, or in what it unpacks to, is a kheaders archive")
        }
        bail!("no xz stream in it, or in what it unpacks to, is a kheaders archive; not searched: {}", too_large.join("; "))
    }

    /// The archive in the `kind` payload unpacked from offset `at`, if it
    /// holds one (one level only: a payload's own payloads are not
    /// unpacked).
    fn search_payload(&self, kind: &'static str, at: usize, payload: &[u8], too_large: &mut Vec<String>) -> Option<Found> {
        for off in occurrences(payload, XZ_MAGIC) {
            match self.decode_at(&payload[off..]) {
                Some(Stream::Archive(used)) => {
                    return Some(Found { archive: payload[off..off + used].to_vec(), offset: off, inside: Some((kind, at)) })
                }
                Some(Stream::TooLarge(what)) => too_large.push(format!("the xz stream at offset {off} of the {kind} payload {what}")),
                None => {}
            }
        }
        None
    }

    /// Whether the xz stream at the start of `data` is the archive; `None`
    /// if it is not (or is no valid stream).
    fn decode_at(&self, data: &[u8]) -> Option<Stream> {
        if let Some(k) = self.known.iter().find(|k| data.starts_with(k)) {
            return Some(Stream::Archive(k.len()));
        }
        probe_archive(data)
    }
}

enum Stream {
    /// A kheaders archive, this many bytes long.
    Archive(usize),
    /// A tar with the marker that unpacks to more than [`ARCHIVE_LIMIT`].
    TooLarge(String),
}

/// Find the archive in `bytes`, directly or inside a compressed payload.
pub fn find(bytes: &[u8]) -> Result<Found> {
    Finder::default().find(bytes)
}

/// Where `needle` (not empty) starts in `hay`, in order.
pub(crate) fn occurrences<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    hay.windows(needle.len()).enumerate().filter(move |(_, w)| *w == needle).map(|(i, _)| i)
}

/// Read the xz stream at the start of `data` as a tar while it decodes,
/// keeping nothing: the archive's length if it is a kheaders tar. It is
/// given up at the first block that is not a tar header (a kernel, or a
/// bomb of zeros: at once), or once it unpacks past [`ARCHIVE_LIMIT`].
fn probe_archive(data: &[u8]) -> Option<Stream> {
    let stream = xz_decoder().ok()?;
    let mut dec = liblzma::bufread::XzDecoder::new_stream(data, stream);
    let mut limited = (&mut dec).take(ARCHIVE_LIMIT + 1);
    let too_large = || Stream::TooLarge(format!("is a tar with {MARKER} that unpacks to more than {} MiB", ARCHIVE_LIMIT >> 20));
    let mut has_marker = false;
    {
        let mut tar = tar::Archive::new(&mut limited);
        for entry in tar.entries().ok()? {
            match entry {
                Ok(e) => has_marker |= e.path().is_ok_and(|p| p.to_string_lossy().trim_start_matches("./") == MARKER),
                // Cut off by the limit, or not a tar (any more).
                Err(_) => break,
            }
        }
    }
    if !has_marker {
        return None;
    }
    // After the tar's end: the stream's own end, to know its length.
    std::io::copy(&mut limited, &mut std::io::sink()).ok()?;
    if limited.limit() == 0 {
        return Some(too_large());
    }
    Some(Stream::Archive(dec.total_in() as usize))
}

/// An xz decoder that refuses streams needing more than
/// [`DECODE_MEMORY_LIMIT`].
fn xz_decoder() -> Result<liblzma::stream::Stream> {
    liblzma::stream::Stream::new_stream_decoder(DECODE_MEMORY_LIMIT, 0).context("cannot make an xz decoder")
}

/// Whether decoding stopped at the decoder's memory limit.
fn needs_more_memory(e: &std::io::Error) -> bool {
    e.get_ref().and_then(|i| i.downcast_ref::<liblzma::stream::Error>()) == Some(&liblzma::stream::Error::MemLimit)
}

/// What `reader` decodes to, up to [`PAYLOAD_LIMIT`]: `None` past it,
/// an error if it is not a valid stream.
fn unpack_limited(reader: impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    reader.take(PAYLOAD_LIMIT + 1).read_to_end(&mut out)?;
    Ok((out.len() as u64 <= PAYLOAD_LIMIT).then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn tar_with(name: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, &b"x;\n"[..]).unwrap();
        b.into_inner().unwrap()
    }

    /// Junk, then an unrelated xz stream, then the archive, then junk.
    fn image(archive: &[u8]) -> Vec<u8> {
        let mut img = vec![0x55u8; 4096];
        img.extend_from_slice(XZ_MAGIC); // a false start
        img.extend(xz(&tar_with("./other/file")));
        img.extend_from_slice(archive);
        img.extend(vec![0xaau8; 1000]);
        img
    }

    #[test]
    fn finds_the_exact_bytes_in_a_plain_image() {
        let archive = xz(&tar_with("./include/linux/kconfig.h"));
        let f = find(&image(&archive)).unwrap();
        assert_eq!(f.archive, archive);
        assert_eq!(f.inside, None);
    }

    #[test]
    fn finds_it_inside_a_compressed_kernel() {
        let archive = xz(&tar_with("./include/linux/kconfig.h"));
        let kernel = image(&archive);
        for (kind, packed) in [
            ("xz", xz(&kernel)),
            ("gzip", {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&kernel).unwrap();
                e.finish().unwrap()
            }),
        ] {
            let mut boot = vec![0u8; 512];
            boot.extend(packed);
            let f = find(&boot).unwrap();
            assert_eq!(f.archive, archive, "{kind}");
            assert_eq!(f.inside.map(|(k, _)| k), Some(kind));
        }
    }

    #[test]
    fn a_finder_decodes_an_archive_once_across_files() {
        let d = tempfile::tempdir().unwrap();
        let archive = xz(&tar_with("./include/linux/kconfig.h"));
        let (vmlinux, boot) = (d.path().join("vmlinux"), d.path().join("bzImage"));
        std::fs::write(&vmlinux, image(&archive)).unwrap();
        let mut packed = vec![0u8; 512];
        packed.extend(xz(&image(&archive)));
        std::fs::write(&boot, packed).unwrap();
        let mut finder = Finder::default();
        assert_eq!(finder.from_file(&vmlinux).unwrap().archive, archive);
        assert_eq!(finder.known, std::slice::from_ref(&archive));
        let inside = finder.from_file(&boot).unwrap();
        assert_eq!((inside.archive, inside.inside.map(|(k, _)| k)), (archive.clone(), Some("xz")));
        assert_eq!(finder.known.len(), 1);
        // A known archive is matched by its bytes, not decoded again.
        let fake = [XZ_MAGIC, b"not a stream"].concat();
        let finder = Finder::knowing(fake.clone());
        let f = finder.find(&[&[0u8; 64][..], &fake, b"junk"].concat()).unwrap();
        assert_eq!((f.archive, f.offset), (fake, 64));
    }

    #[test]
    fn a_stream_that_needs_too_much_memory_is_named_not_decoded() {
        let mut hostile = xz(&tar_with("./include/linux/kconfig.h"));
        // One filter, no sizes: LZMA2's dictionary byte, set to 4 GiB, and
        // the block header's CRC32 made right again.
        let len = (hostile[12] as usize + 1) * 4;
        assert_eq!((hostile[13], hostile[14], hostile[15]), (0, 0x21, 1));
        hostile[16] = 40;
        let mut crc = flate2::Crc::new();
        crc.update(&hostile[12..12 + len - 4]);
        hostile[12 + len - 4..12 + len].copy_from_slice(&crc.sum().to_le_bytes());
        let e = format!("{:#}", find(&[&[0u8; 64][..], &hostile].concat()).unwrap_err());
        assert!(e.contains("the xz stream at offset 64 needs more than 256 MiB to decode"), "{e}");
    }

    #[test]
    fn no_archive_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("vmlinux");
        std::fs::write(&p, image(&[])).unwrap();
        let e = format!("{:#}", from_file(&p).unwrap_err());
        assert!(e.contains("no kheaders archive in") && e.contains("CONFIG_IKHEADERS=y"), "{e}");
    }
}
