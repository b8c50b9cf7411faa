//! A raw disk into a snapshot: every non-zero 512 KiB block written with its
//! SHA-256 by several workers at once, holes found with `SEEK_DATA` and
//! never read, blocks of zeros skipped (the snapshot reads them as zeros).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};

use super::ebs::{linear_aggregate, BLOCK};
use super::{error, Api};
use crate::error::{Error, Result};

/// What an upload did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Blocks the disk spans.
    pub blocks_total: u64,
    /// Non-zero blocks written.
    pub blocks_sent: u64,
    /// Blocks of zeros (read, or holes never read) not sent.
    pub blocks_skipped: u64,
    pub bytes_sent: u64,
    pub seconds: f64,
    /// The LINEAR aggregate of the written blocks' SHA-256s.
    #[serde(skip)]
    pub aggregate: [u8; 32],
}

/// The size in GiB a snapshot of `bytes` needs (at least 1).
impl Report {
    /// `uploaded 12 of 2,048 blocks (2,036 zero blocks skipped, 99.4%), 6.0 MiB in 0.41 s, 29 blocks/s`
    pub fn summary(&self) -> String {
        let secs = self.seconds.max(1e-3);
        format!(
            "uploaded {} of {} blocks ({} zero blocks skipped, {:.1}%), {:.1} MiB in {:.2} s, {:.0} blocks/s ({:.1} MiB/s)",
            self.blocks_sent,
            self.blocks_total,
            self.blocks_skipped,
            100.0 * self.blocks_skipped as f64 / self.blocks_total.max(1) as f64,
            self.bytes_sent as f64 / (1 << 20) as f64,
            self.seconds,
            self.blocks_sent as f64 / secs,
            self.bytes_sent as f64 / (1 << 20) as f64 / secs,
        )
    }
}

pub fn volume_gib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 30).max(1)
}

/// Byte ranges of `f` that hold data (holes left out), in block units.
fn data_blocks(f: &File, size: u64) -> Vec<(u64, u64)> {
    use nix::unistd::{lseek, Whence};
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut at: i64 = 0;
    while (at as u64) < size {
        let start = match lseek(f, at, Whence::SeekData) {
            Ok(s) => s,
            // ENXIO: no data past `at`; EINVAL: no SEEK_DATA here, read it all
            Err(nix::errno::Errno::ENXIO) => break,
            Err(_) => return vec![(0, size.div_ceil(BLOCK as u64))],
        };
        let end = lseek(f, start, Whence::SeekHole).map_or(size as i64, |e| e.min(size as i64));
        let first = start as u64 / BLOCK as u64;
        let last = (end as u64).div_ceil(BLOCK as u64);
        match out.last_mut() {
            Some((_, e)) if *e >= first => *e = (*e).max(last),
            _ => out.push((first, last)),
        }
        at = end;
    }
    out
}

/// Write the disk `disk` into the started snapshot `snapshot`, `in_flight`
/// blocks at a time. `cancel` stops it between blocks; `fault` names the
/// address whose `upload-partial` fault point fires once the first block is
/// on the server.
pub fn put_blocks(
    api: &Api,
    snapshot: &str,
    disk: &Path,
    in_flight: usize,
    progress: bool,
    fault: Option<&str>,
    cancel: Option<&AtomicBool>,
) -> Result<Report> {
    let started = Instant::now();
    let f = File::open(disk).map_err(|e| Error::io(disk, e))?;
    let size = f.metadata().map_err(|e| Error::io(disk, e))?.len();
    let blocks_total = size.div_ceil(BLOCK as u64);
    let ranges = data_blocks(&f, size);
    let bar = bar(progress, size, disk);
    let sent = AtomicU64::new(0);
    let shas: Mutex<Vec<(u64, [u8; 32])>> = Mutex::new(Vec::new());
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    let stopped =
        || stop.load(Ordering::Relaxed) || cancel.is_some_and(|c| c.load(Ordering::Relaxed));
    let (tx, rx) = mpsc::sync_channel::<(u64, Vec<u8>)>(in_flight.max(1));
    let rx = Mutex::new(rx);
    std::thread::scope(|s| {
        for _ in 0..in_flight.max(1) {
            s.spawn(|| loop {
                let next = rx.lock().unwrap().recv();
                let Ok((index, data)) = next else { break };
                if stopped() {
                    continue;
                }
                let sha: [u8; 32] = Sha256::digest(&data).into();
                match api.put_block(snapshot, index, &data, &sha) {
                    Ok(()) => {
                        shas.lock().unwrap().push((index, sha));
                        let n = sent.fetch_add(1, Ordering::Relaxed) + 1;
                        if let (Some(address), 1) = (fault, n) {
                            // one block is on the server, the rest are not
                            crate::fault::point(address, "upload-partial");
                        }
                        let secs = started.elapsed().as_secs_f64().max(1e-3);
                        bar.set_message(format!(
                            "{n} blocks sent, {:.0} blocks/s",
                            n as f64 / secs
                        ));
                    }
                    Err(e) => {
                        stop.store(true, Ordering::Relaxed);
                        failed.lock().unwrap().get_or_insert(error(
                            api,
                            "ebs",
                            &format!("PutSnapshotBlock {index} of {snapshot}"),
                            e,
                        ));
                    }
                }
            });
        }
        // the reader: this thread
        'ranges: for (first, last) in &ranges {
            for index in *first..*last {
                if stopped() {
                    break 'ranges;
                }
                let mut buf = vec![0u8; BLOCK];
                let offset = index * BLOCK as u64;
                let want = (size - offset).min(BLOCK as u64) as usize;
                if let Err(e) = f.read_exact_at(&mut buf[..want], offset) {
                    failed.lock().unwrap().get_or_insert(Error::io(disk, e));
                    stop.store(true, Ordering::Relaxed);
                    break 'ranges;
                }
                bar.set_position(offset + want as u64);
                if is_zero(&buf) {
                    continue;
                }
                if tx.send((index, buf)).is_err() {
                    break 'ranges;
                }
            }
        }
        drop(tx);
    });
    bar.finish_and_clear();
    if let Some(e) = failed.into_inner().unwrap() {
        return Err(e);
    }
    if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
        return Err(Error::Cloud {
            cloud: api.cloud.clone(),
            endpoint: api.endpoint("ebs"),
            reason: format!("upload of {snapshot} interrupted"),
        });
    }
    let mut shas = shas.into_inner().unwrap();
    shas.sort_by_key(|(i, _)| *i);
    let digests: Vec<[u8; 32]> = shas.iter().map(|(_, s)| *s).collect();
    let blocks_sent = digests.len() as u64;
    Ok(Report {
        blocks_total,
        blocks_sent,
        blocks_skipped: blocks_total - blocks_sent,
        bytes_sent: blocks_sent * BLOCK as u64,
        seconds: started.elapsed().as_secs_f64(),
        aggregate: linear_aggregate(&digests),
    })
}

fn is_zero(buf: &[u8]) -> bool {
    let words = buf.chunks_exact(8);
    let tail = words.remainder();
    words
        .map(|c| u64::from_ne_bytes(c.try_into().expect("8 bytes")))
        .all(|w| w == 0)
        && tail.iter().all(|&b| b == 0)
}

fn bar(progress: bool, len: u64, disk: &Path) -> indicatif::ProgressBar {
    if !progress || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "uploading {prefix} {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(
        disk.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_are_not_read_and_ranges_cover_the_data() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk");
        let f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_at(b"x", 3 * BLOCK as u64 + 10).unwrap();
        f.write_at(b"y", 40 * BLOCK as u64).unwrap();
        let f = File::open(&p).unwrap();
        let ranges = data_blocks(&f, 64 << 20);
        let covered: Vec<u64> = ranges.iter().flat_map(|(a, b)| *a..*b).collect();
        assert!(covered.contains(&3) && covered.contains(&40), "{ranges:?}");
        // a filesystem without holes reports it all as data; ext4, xfs, btrfs and tmpfs do not
        assert!(covered.len() < 128, "{ranges:?}");
    }

    #[test]
    fn zero_detection() {
        let mut b = vec![0u8; BLOCK];
        assert!(is_zero(&b));
        b[BLOCK - 1] = 1;
        assert!(!is_zero(&b));
        assert!(!is_zero(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 1]));
    }
}
