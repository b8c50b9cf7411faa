//! Disk images of `kind = "disk"` machines: raw or qcow2, told apart by
//! content (never by name, and never by letting QEMU probe), and qcow2
//! overlays that make a working or toolchain snapshot O(1) at any size.
//!
//! A revision `<m>-<rev>/` holds `disk.img` (raw) or `disk.qcow2`; a toolchain
//! `<m>-<tc>/` and a working snapshot `<m>-<tc>-<id>/` hold `disk.qcow2`, an
//! overlay whose backing file is the entry it was made from, named relative to
//! the overlay (`../<m>-3/disk.img`) so the layout can move as a whole.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
/// Incompatible-feature bit of a qcow2 whose data lives in another file.
const QCOW2_EXTERNAL_DATA: u64 = 1 << 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

impl DiskFormat {
    /// The format of the image at `path`, from its first bytes.
    pub fn detect(path: &Path) -> io::Result<DiskFormat> {
        let mut magic = [0u8; 4];
        let mut f = File::open(path)?;
        let n = read_up_to(&mut f, &mut magic)?;
        Ok(if n == 4 && &magic == QCOW2_MAGIC {
            DiskFormat::Qcow2
        } else {
            DiskFormat::Raw
        })
    }

    /// The name QEMU knows the format by.
    pub fn qemu_name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }

    /// The file name a revision stores an image of this format under.
    pub fn file_name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "disk.img",
            DiskFormat::Qcow2 => OVERLAY,
        }
    }
}

/// The file name of an overlay (and of a qcow2 revision).
pub const OVERLAY: &str = "disk.qcow2";

fn read_up_to(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// What the header of a qcow2 image says about where its data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Header {
    pub virtual_size: u64,
    pub backing_file: Option<String>,
    pub external_data: bool,
}

impl Qcow2Header {
    pub fn read(path: &Path) -> io::Result<Qcow2Header> {
        let mut f = File::open(path)?;
        let mut h = [0u8; 104];
        let n = read_up_to(&mut f, &mut h)?;
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, why.to_string());
        if n < 72 || &h[..4] != QCOW2_MAGIC {
            return Err(bad("not a qcow2 image"));
        }
        let be64 = |o: usize| u64::from_be_bytes(h[o..o + 8].try_into().expect("8 bytes"));
        let be32 = |o: usize| u32::from_be_bytes(h[o..o + 4].try_into().expect("4 bytes"));
        let version = be32(4);
        let (offset, size) = (be64(8), be32(16) as usize);
        let backing_file = if offset == 0 || size == 0 {
            None
        } else {
            if size > 1023 {
                return Err(bad("qcow2 backing file name longer than 1023 bytes"));
            }
            let mut name = vec![0u8; size];
            use std::io::{Seek, SeekFrom};
            f.seek(SeekFrom::Start(offset))?;
            f.read_exact(&mut name)?;
            Some(String::from_utf8_lossy(&name).into_owned())
        };
        let external_data = version >= 3 && n >= 80 && be64(72) & QCOW2_EXTERNAL_DATA != 0;
        Ok(Qcow2Header {
            virtual_size: be64(24),
            backing_file,
            external_data,
        })
    }
}

/// Check a disk image given as a machine's source: a raw image, or a
/// self-contained qcow2. A qcow2 naming a backing file or an external data
/// file would let the guest read whatever host file it names.
pub fn check_source(path: &Path) -> Result<DiskFormat, String> {
    let format = DiskFormat::detect(path).map_err(|e| format!("cannot read the image: {e}"))?;
    if format == DiskFormat::Qcow2 {
        let h = Qcow2Header::read(path).map_err(|e| format!("bad qcow2 header: {e}"))?;
        if let Some(b) = h.backing_file {
            return Err(format!(
                "the qcow2 image names a backing file ({b:?}); give a self-contained image (`qemu-img convert -O qcow2 IN OUT`)"
            ));
        }
        if h.external_data {
            return Err(
                "the qcow2 image keeps its data in an external file; give a self-contained image"
                    .into(),
            );
        }
    }
    Ok(format)
}

/// The image file in an entry directory and its format.
pub fn image_in(entry: &Path) -> io::Result<(PathBuf, DiskFormat)> {
    for name in [OVERLAY, DiskFormat::Raw.file_name()] {
        let p = entry.join(name);
        if p.is_file() {
            let format = DiskFormat::detect(&p)?;
            return Ok((p, format));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no disk image in {}", entry.display()),
    ))
}

/// The size of the disk an image describes.
pub fn virtual_size(path: &Path, format: DiskFormat) -> io::Result<u64> {
    match format {
        DiskFormat::Raw => Ok(std::fs::metadata(path)?.len()),
        DiskFormat::Qcow2 => Ok(Qcow2Header::read(path)?.virtual_size),
    }
}

/// Create `<dir>/disk.qcow2` backed by `base` (an image in a sibling entry),
/// naming the backing file relative to `dir`. O(1): nothing of the base is copied.
pub fn create_overlay(dir: &Path, base: &Path, format: DiskFormat) -> io::Result<PathBuf> {
    let overlay = dir.join(OVERLAY);
    let relative = match (base.parent().and_then(Path::file_name), base.file_name()) {
        (Some(entry), Some(file)) => Path::new("..").join(entry).join(file),
        _ => base.to_path_buf(),
    };
    overlay_file(&overlay, base, &relative, format)?;
    Ok(overlay)
}

/// Create (or replace) the overlay `overlay` backed by `base` named by its
/// absolute path: for overlays outside the machine's directory (booted
/// snapshots) and the overlays on top of them.
pub fn create_overlay_on(overlay: &Path, base: &Path, format: DiskFormat) -> io::Result<()> {
    let _ = std::fs::remove_file(overlay);
    let base = std::path::absolute(base)?;
    overlay_file(overlay, &base, &base, format)
}

fn overlay_file(overlay: &Path, base: &Path, named: &Path, format: DiskFormat) -> io::Result<()> {
    let relative = named;
    let size = virtual_size(base, format)?;
    // -u with an explicit size: the base is not opened (and not probed) here
    let out = Command::new("qemu-img")
        .args([
            "create",
            "-q",
            "-f",
            "qcow2",
            "-u",
            "-F",
            format.qemu_name(),
            "-b",
        ])
        .arg(relative)
        .arg(overlay)
        .arg(size.to_string())
        .output()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run qemu-img: {e} (apt-get install qemu-utils)"),
            )
        })?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "qemu-img create failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Make an overlay self-contained (its base's data copied in), so it no
/// longer depends on an entry that a rebuild may replace in place. Costs the
/// data the disk holds, not its size: unallocated clusters stay unallocated.
pub fn flatten(overlay: &Path) -> io::Result<()> {
    let flat = overlay.with_extension("flat.qcow2");
    let out = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "qcow2", "-O", "qcow2"])
        .arg(overlay)
        .arg(&flat)
        .output()?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&flat);
        return Err(io::Error::other(format!(
            "qemu-img convert failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::fs::rename(&flat, overlay)
}

/// The entry an overlay in `entry_dir` is backed by (`../<m>-3/disk.img` → `<m>-3`).
pub fn backing_entry(entry_dir: &Path) -> Option<String> {
    let h = Qcow2Header::read(&entry_dir.join(OVERLAY)).ok()?;
    let b = PathBuf::from(h.backing_file?);
    let mut parts = b.components();
    match (parts.next()?, parts.next()?) {
        (std::path::Component::ParentDir, std::path::Component::Normal(entry)) => {
            Some(entry.to_string_lossy().into_owned())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qcow2(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
        let p = dir.join(name);
        let ok = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .args(args)
            .arg(&p)
            .arg("1M")
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "qemu-img create");
        p
    }

    fn have_qemu_img() -> bool {
        crate::testing::have(
            Command::new("qemu-img").arg("--version").output().is_ok(),
            "qemu-img (apt-get install qemu-utils)",
        )
    }

    #[test]
    fn format_by_content_not_name() {
        let d = tempfile::tempdir().unwrap();
        let raw = d.path().join("looks.qcow2");
        std::fs::write(&raw, vec![0u8; 4096]).unwrap();
        assert_eq!(DiskFormat::detect(&raw).unwrap(), DiskFormat::Raw);
        let mut fake = QCOW2_MAGIC.to_vec();
        fake.resize(4096, 0);
        let named_raw = d.path().join("disk.img");
        std::fs::write(&named_raw, &fake).unwrap();
        assert_eq!(DiskFormat::detect(&named_raw).unwrap(), DiskFormat::Qcow2);
        let tiny = d.path().join("tiny");
        std::fs::write(&tiny, b"QF").unwrap();
        assert_eq!(DiskFormat::detect(&tiny).unwrap(), DiskFormat::Raw);
    }

    #[test]
    #[ignore = "needs qemu-utils"]
    fn qcow2_sources_must_be_self_contained() {
        if !have_qemu_img() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let plain = qcow2(d.path(), "plain.qcow2", &[]);
        assert_eq!(check_source(&plain), Ok(DiskFormat::Qcow2));
        let hostile = qcow2(
            d.path(),
            "hostile.qcow2",
            &["-u", "-F", "raw", "-b", "/etc/shadow"],
        );
        let e = check_source(&hostile).unwrap_err();
        assert!(e.contains("/etc/shadow"), "{e}");
    }

    #[test]
    #[ignore = "needs qemu-utils"]
    fn overlays_name_their_base_relative_to_the_layout() {
        if !have_qemu_img() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let (rev, work) = (d.path().join("kit-3"), d.path().join("kit-3-abc"));
        std::fs::create_dir_all(&rev).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        let base = rev.join("disk.img");
        std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
        let overlay = create_overlay(&work, &base, DiskFormat::Raw).unwrap();
        let h = Qcow2Header::read(&overlay).unwrap();
        assert_eq!(h.backing_file.as_deref(), Some("../kit-3/disk.img"));
        assert_eq!(h.virtual_size, 1 << 20);
        assert_eq!(backing_entry(&work).as_deref(), Some("kit-3"));
        assert_eq!(image_in(&work).unwrap().1, DiskFormat::Qcow2);
        assert_eq!(image_in(&rev).unwrap().1, DiskFormat::Raw);
    }
}
