//! Machines moved as `btrfs send` streams (buildos's way between hosts):
//! `receive` feeds a stream file (raw, or zstd/gzip/xz-compressed, told apart
//! by its first bytes) to `btrfs receive`, hashing the file as it goes;
//! `export` writes one with `btrfs send` (full, or incremental against a
//! parent), compressed with zstd when the name ends in `.zst`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::source::archive::HashingReader;

/// Receive the stream in `file` into directory `into` (absolute) with
/// `btrfs receive`; returns the SHA-256 of the file's bytes (all of them,
/// also when the stream ended early) and the name of the subvolume made.
/// `halfway` runs once half the file has been fed (a fault point).
pub fn receive(file: &Path, into: &Path, halfway: impl Fn()) -> Result<(String, String), String> {
    let f = File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut head = [0u8; 16];
    let n = {
        use std::os::unix::fs::FileExt;
        f.read_at(&mut head, 0).unwrap_or(0)
    };
    let mut hashing = HashingReader::new(&f);
    let mut child = {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new("btrfs");
        cmd.args(["receive", "-e"])
            .arg(into)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: tie_to_parent makes two async-signal-safe syscalls.
        unsafe { cmd.pre_exec(|| crate::platform::process::tie_to_parent(None)) };
        cmd.spawn()
            .map_err(|e| format!("cannot run `btrfs receive`: {e}"))?
    };
    let mut stdin = child.stdin.take().expect("piped");
    let fed = (|| -> io::Result<()> {
        let counted = CountingReader {
            inner: &mut hashing,
            read: 0,
            size,
            halfway: &halfway,
            fired: false,
        };
        let mut d = crate::source::archive::decompressed(counted, &head[..n])?;
        io::copy(&mut d, &mut stdin)?;
        Ok(())
    })();
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| format!("btrfs receive: {e}"))?;
    let digest = hashing
        .finish()
        .map_err(|e| format!("{}: {e}", file.display()))?
        .0;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string();
        return Err(format!("btrfs receive failed ({}): {last}", out.status));
    }
    if let Err(e) = fed {
        return Err(format!("reading {}: {e}", file.display()));
    }
    // the one subvolume the stream made
    let mut made: Vec<String> = std::fs::read_dir(into)
        .map_err(|e| format!("{}: {e}", into.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if made.len() != 1 {
        return Err(format!(
            "the stream made {} entries, not one subvolume",
            made.len()
        ));
    }
    Ok((digest, made.remove(0)))
}

struct CountingReader<'a, R: Read, F: Fn()> {
    inner: R,
    read: u64,
    size: u64,
    halfway: &'a F,
    fired: bool,
}

impl<R: Read, F: Fn()> Read for CountingReader<'_, R, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if !self.fired && self.read * 2 >= self.size && self.size > 0 {
            self.fired = true;
            (self.halfway)();
        }
        Ok(n)
    }
}

/// Write `subvolume` (read-only) as a send stream to `out`, incremental
/// against `parent` when given; zstd-compressed when `out` ends in `.zst`.
/// Written to a temporary name beside `out`, renamed into place at the end.
pub fn export(subvolume: &Path, parent: Option<&Path>, out: &Path) -> Result<(), String> {
    let tmp = PathBuf::from(format!("{}.partial", out.display()));
    let mut cmd = Command::new("btrfs");
    cmd.arg("send").arg("-q");
    if let Some(p) = parent {
        cmd.arg("-p").arg(p);
    }
    cmd.arg(subvolume)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run `btrfs send`: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped");
    let file = File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let copied = if out.to_string_lossy().ends_with(".zst") {
        zstd::stream::write::Encoder::new(file, 3).and_then(|mut z| {
            io::copy(&mut stdout, &mut z)?;
            z.finish()?.sync_all()
        })
    } else {
        let mut file = file;
        io::copy(&mut stdout, &mut file).and_then(|_| {
            file.flush()?;
            file.sync_all()
        })
    };
    let status = child
        .wait_with_output()
        .map_err(|e| format!("btrfs send: {e}"))?;
    let fail = |why: String| {
        let _ = std::fs::remove_file(&tmp);
        Err(why)
    };
    if !status.status.success() {
        let err = String::from_utf8_lossy(&status.stderr);
        return fail(format!(
            "btrfs send failed ({}): {}",
            status.status,
            err.trim()
        ));
    }
    if let Err(e) = copied {
        return fail(format!("{}: {e}", tmp.display()));
    }
    std::fs::rename(&tmp, out).map_err(|e| format!("{}: {e}", out.display()))
}
