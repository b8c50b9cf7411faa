//! Netboot images: atomic publication into a TFTP tree, served by a real
//! tftpd-hpa while applies alternate; no-op, drift, prune, crash recovery.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const PURPOSE: &str = "tftp/amd64/generic/focal/install";

/// Two versions of a kernel and an initrd, different sizes and content.
fn sources(farm: &Farm) {
    farm.write("v1/linux", pattern(b'A', 2 << 20));
    farm.write("v1/initrd.gz", pattern(b'a', 300 << 10));
    farm.write("v2/linux", pattern(b'B', 3 << 20));
    farm.write("v2/initrd.gz", pattern(b'b', 200 << 10));
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i % 251) as u8))
        .collect()
}

fn declare(farm: &Farm, v: &str) {
    let sha = |f: &str| sha_file(&farm.path(&format!("{v}/{f}")));
    farm.desired(&format!(
        "version = 1\n[image.focal-amd64-install]\nroot = \"tftp\"\narch = \"amd64\"\nrelease = \"focal\"\npurpose = \"install\"\n\
         files.linux = {{ path = \"{v}/linux\", sha256 = \"{}\" }}\n\
         files.\"initrd.gz\" = {{ path = \"{v}/initrd.gz\", sha256 = \"{}\" }}\n\
         ipxe = {{ kernel = \"linux\", initrd = \"initrd.gz\", cmdline = \"console=ttyS0\" }}\n",
        sha("linux"),
        sha("initrd.gz")
    ));
}

fn published(farm: &Farm) -> Option<Vec<(String, String)>> {
    let dir = farm.path(PURPOSE);
    if !dir.exists() {
        return None;
    }
    let mut v: Vec<(String, String)> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != ".reconcile-receipt.json")
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                sha_file(&e.path()),
            )
        })
        .collect();
    v.sort();
    Some(v)
}

fn expected(farm: &Farm, v: &str) -> Option<Vec<(String, String)>> {
    let script = b"#!ipxe\nkernel linux console=ttyS0\ninitrd initrd.gz\nboot\n";
    Some(vec![
        ("boot.ipxe".into(), sha(script)),
        (
            "initrd.gz".into(),
            sha_file(&farm.path(&format!("{v}/initrd.gz"))),
        ),
        ("linux".into(), sha_file(&farm.path(&format!("{v}/linux")))),
    ])
}

#[test]
fn publish_no_op_and_plan_addresses() {
    let farm = Farm::new();
    sources(&farm);
    declare(&farm, "v1");
    let plan = farm.run(&["plan"]);
    plan.expect(2);
    assert!(
        plan.stdout
            .contains(&format!("+ image.focal-amd64-install → {PURPOSE}")),
        "{}",
        plan.stdout
    );
    farm.run(&["apply"]).expect(0);
    assert_eq!(published(&farm), expected(&farm, "v1"));
    let linux = farm.path(&format!("{PURPOSE}/linux"));
    let (ino, mtime) = (
        fs::metadata(&linux).unwrap().ino(),
        fs::metadata(&linux).unwrap().mtime_nsec(),
    );
    let before = farm.snapshot(&[".reconcile"]);
    let again = farm.run(&["apply"]);
    again.expect(0);
    assert!(again.stdout.contains("No changes"), "{}", again.stdout);
    assert_eq!(
        before,
        farm.snapshot(&[".reconcile"]),
        "identical content is a no-op"
    );
    assert_eq!(
        (ino, mtime),
        (
            fs::metadata(&linux).unwrap().ino(),
            fs::metadata(&linux).unwrap().mtime_nsec()
        )
    );
    farm.run(&["plan"]).expect(0);
    let status = farm.run(&["status"]);
    assert!(
        status.stdout.contains(&format!(
            "image.focal-amd64-install → {PURPOSE}: published (3 files)"
        )),
        "{}",
        status.stdout
    );

    declare(&farm, "v2");
    let plan = farm.run(&["plan"]);
    plan.expect(2);
    assert!(
        plan.stdout.contains("~ image.focal-amd64-install")
            && plan.stdout.contains("file initrd.gz: sha256"),
        "{}",
        plan.stdout
    );
    farm.run(&["apply"]).expect(0);
    assert_eq!(published(&farm), expected(&farm, "v2"));
    assert!(farm.leftovers("tftp/amd64/generic/focal").is_empty());
}

#[test]
fn drift_is_shown_and_repaired() {
    let farm = Farm::new();
    sources(&farm);
    declare(&farm, "v1");
    farm.run(&["apply"]).expect(0);
    fs::remove_file(farm.path(&format!("{PURPOSE}/linux"))).unwrap();
    let plan = farm.run(&["plan"]);
    plan.expect(2);
    assert!(
        plan.stdout.contains("file linux missing"),
        "{}",
        plan.stdout
    );
    farm.run(&["apply"]).expect(0);
    assert_eq!(published(&farm), expected(&farm, "v1"));

    fs::write(farm.path(&format!("{PURPOSE}/initrd.gz")), "short").unwrap();
    let plan = farm.run(&["plan"]);
    plan.expect(2);
    assert!(
        plan.stdout.contains("file initrd.gz modified"),
        "{}",
        plan.stdout
    );
    farm.run(&["apply"]).expect(0);
    assert_eq!(published(&farm), expected(&farm, "v1"));
}

#[test]
fn verify_catches_tampering_with_the_same_size_and_mtime() {
    let farm = Farm::new();
    sources(&farm);
    declare(&farm, "v1");
    farm.run(&["apply"]).expect(0);
    let linux = farm.path(&format!("{PURPOSE}/linux"));
    let meta = fs::metadata(&linux).unwrap();
    let mut data = fs::read(&linux).unwrap();
    data[1000] ^= 0xff;
    fs::write(&linux, &data).unwrap();
    filetime::set_file_mtime(
        &linux,
        filetime::FileTime::from_last_modification_time(&meta),
    )
    .unwrap();
    assert_eq!(fs::metadata(&linux).unwrap().len(), meta.len());
    let plan = farm.run(&["plan", "--verify"]);
    plan.expect(2);
    assert!(
        plan.stdout.contains("file linux modified (sha256"),
        "{}",
        plan.stdout
    );
    // the fast path catches it too: ctime is part of the stat key and cannot be reset
    farm.run(&["plan"]).expect(2);
    farm.run(&["apply"]).expect(0);
    assert_eq!(published(&farm), expected(&farm, "v1"));
}

#[test]
fn prune_removes_owned_images_and_keeps_foreign_files() {
    let farm = Farm::new();
    sources(&farm);
    declare(&farm, "v1");
    farm.run(&["apply"]).expect(0);
    farm.write("tftp/amd64/generic/focal/README", "foreign");
    farm.write("tftp/amd64/generic/jammy/install/linux", "foreign image");
    farm.write("tftp/pxelinux.0", "foreign");
    farm.desired("version = 1\n");
    let plan = farm.run(&["plan"]);
    plan.expect(2);
    assert!(
        plan.stdout.contains("- image.focal-amd64-install")
            && plan.stdout.contains("not declared any more (owned)"),
        "{}",
        plan.stdout
    );
    assert!(!plan.stdout.contains("jammy"), "{}", plan.stdout);
    farm.run(&["apply"]).expect(0);
    assert!(!farm.path(PURPOSE).exists());
    assert_eq!(
        fs::read_to_string(farm.path("tftp/amd64/generic/focal/README")).unwrap(),
        "foreign"
    );
    assert_eq!(
        fs::read_to_string(farm.path("tftp/amd64/generic/jammy/install/linux")).unwrap(),
        "foreign image"
    );
    assert!(farm.path("tftp/pxelinux.0").exists());
    farm.run(&["plan"]).expect(0);

    // with nothing foreign around, the parents reconcile created go as well
    let farm = Farm::new();
    sources(&farm);
    fs::create_dir_all(farm.path("tftp")).unwrap();
    declare(&farm, "v1");
    farm.run(&["apply"]).expect(0);
    farm.desired("version = 1\n");
    farm.run(&["apply"]).expect(0);
    assert!(farm.path("tftp").exists(), "the root existed before");
    assert_eq!(
        fs::read_dir(farm.path("tftp")).unwrap().count(),
        0,
        "created parents removed"
    );
}

#[test]
fn a_foreign_purpose_directory_is_never_replaced() {
    let farm = Farm::new();
    sources(&farm);
    farm.write(&format!("{PURPOSE}/linux"), "hand-made");
    declare(&farm, "v1");
    let r = farm.run(&["apply"]);
    r.expect(1);
    assert!(
        r.stderr.contains("was not made by reconcile"),
        "{}",
        r.stderr
    );
    assert_eq!(
        fs::read_to_string(farm.path(&format!("{PURPOSE}/linux"))).unwrap(),
        "hand-made"
    );
}

#[test]
fn checksum_mismatch_keeps_the_old_image() {
    let farm = Farm::new();
    sources(&farm);
    declare(&farm, "v1");
    farm.run(&["apply"]).expect(0);
    let text = fs::read_to_string(farm.path("reconcile.toml"))
        .unwrap()
        .replace(
            &sha_file(&farm.path("v1/linux")),
            &sha_file(&farm.path("v2/linux")),
        );
    farm.desired(&text); // v2's digest for a file that holds v1's kernel
    let before = farm.snapshot(&[".reconcile", "reconcile.toml"]);
    let r = farm.run(&["apply"]);
    r.expect(1);
    assert!(
        r.stderr.contains("checksum mismatch") && r.stderr.contains("v1/linux"),
        "{}",
        r.stderr
    );
    assert_eq!(before, farm.snapshot(&[".reconcile", "reconcile.toml"]));
    assert!(farm.leftovers("tftp/amd64/generic/focal").is_empty());
}

#[test]
fn archive_sources_unpack_and_hostile_ones_are_refused() {
    let farm = Farm::new();
    let kernel = pattern(b'K', 100_000);
    farm.write(
        "netboot.tar.gz",
        gz(&tar_bytes(&[
            Entry::Dir("focal/"),
            Entry::File("focal/linux", &kernel, 0o644),
            Entry::File("focal/initrd.gz", b"initrd", 0o644),
        ])),
    );
    let toml = |src: &str| {
        format!(
            "version = 1\n[image.n]\nroot = \"tftp\"\narch = \"amd64\"\nrelease = \"focal\"\npurpose = \"install\"\n\
             source = {{ path = \"{src}\", strip_components = 1 }}\nipxe = {{ kernel = \"linux\", initrd = \"initrd.gz\" }}\n"
        )
    };
    farm.desired(&toml("netboot.tar.gz"));
    farm.run(&["apply"]).expect(0);
    assert_eq!(
        fs::read(farm.path(&format!("{PURPOSE}/linux"))).unwrap(),
        kernel
    );
    assert_eq!(
        fs::read_to_string(farm.path(&format!("{PURPOSE}/boot.ipxe"))).unwrap(),
        "#!ipxe\nkernel linux\ninitrd initrd.gz\nboot\n"
    );
    farm.run(&["plan"]).expect(0);

    farm.write(
        "evil.tar",
        tar_bytes(&[
            Entry::File("focal/linux", b"x", 0o644),
            Entry::Symlink("focal/initrd.gz", "/etc/shadow"),
        ]),
    );
    farm.desired(&toml("evil.tar"));
    let before = farm.snapshot(&[".reconcile", "reconcile.toml"]);
    let r = farm.run(&["apply"]);
    r.expect(1);
    assert!(
        r.stderr.contains("refusing archive") && r.stderr.contains("/etc/shadow"),
        "{}",
        r.stderr
    );
    assert_eq!(before, farm.snapshot(&[".reconcile", "reconcile.toml"]));

    // an iPXE script naming a file the archive lacks is refused before anything is published
    farm.write(
        "nokernel.tar",
        tar_bytes(&[
            Entry::File("focal/vmlinuz", b"x", 0o644),
            Entry::File("focal/initrd.gz", b"i", 0o644),
        ]),
    );
    farm.desired(&toml("nokernel.tar"));
    let r = farm.run(&["apply"]);
    r.expect(1);
    assert!(
        r.stderr
            .contains("boots `linux`, which the image does not contain"),
        "{}",
        r.stderr
    );
    assert_eq!(
        fs::read(farm.path(&format!("{PURPOSE}/linux"))).unwrap(),
        kernel
    );
}

#[test]
fn kill_at_every_step_recovers_to_old_or_new() {
    for step in [
        "begin",
        "stage",
        "stage-partial",
        "exchange",
        "cleanup",
        "done",
    ] {
        let farm = Farm::new();
        sources(&farm);
        declare(&farm, "v1");
        farm.run(&["apply"]).expect(0);
        declare(&farm, "v2");
        let killed = farm.run_env(&["apply"], &[("RECONCILE_FAULT", step)]);
        assert_eq!(killed.signal, Some(9), "{step}: {}", killed.all());
        let now = published(&farm);
        assert!(
            now == expected(&farm, "v1") || now == expected(&farm, "v2"),
            "{step}: mixed or missing: {now:?}"
        );
        farm.run(&["apply"]).expect(0);
        assert_eq!(published(&farm), expected(&farm, "v2"), "{step}");
        assert!(
            farm.leftovers("tftp/amd64/generic/focal").is_empty(),
            "{step}"
        );
        farm.run(&["plan"]).expect(0);
    }
    for step in ["begin", "retire", "cleanup", "done"] {
        let farm = Farm::new();
        sources(&farm);
        declare(&farm, "v1");
        farm.run(&["apply"]).expect(0);
        farm.desired("version = 1\n");
        let killed = farm.run_env(&["apply"], &[("RECONCILE_FAULT", step)]);
        assert_eq!(killed.signal, Some(9), "{step}");
        let now = published(&farm);
        assert!(
            now.is_none() || now == expected(&farm, "v1"),
            "prune {step}: {now:?}"
        );
        farm.run(&["apply"]).expect(0);
        assert!(published(&farm).is_none(), "prune {step}");
        farm.run(&["plan"]).expect(0);
    }
}

/// Applies alternating between v1 and v2 while `reader` runs; returns (reads, failures).
fn alternate_while(
    farm: &Farm,
    rounds: usize,
    reader: impl Fn(&AtomicBool, &AtomicUsize, &AtomicUsize) + Send + Sync + 'static,
) -> (usize, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(AtomicUsize::new(0));
    let reader = Arc::new(reader);
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (s, r, f, rd) = (
                stop.clone(),
                reads.clone(),
                failures.clone(),
                reader.clone(),
            );
            std::thread::spawn(move || rd(&s, &r, &f))
        })
        .collect();
    for i in 0..rounds {
        declare(farm, if i % 2 == 0 { "v2" } else { "v1" });
        farm.run(&["apply", "-q"]).expect(0);
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join().unwrap();
    }
    (
        reads.load(Ordering::SeqCst),
        failures.load(Ordering::SeqCst),
    )
}

#[test]
fn a_reader_never_sees_a_missing_or_torn_kernel() {
    let farm = Farm::new();
    sources(&farm);
    declare(&farm, "v1");
    farm.run(&["apply"]).expect(0);
    let good = [
        sha_file(&farm.path("v1/linux")),
        sha_file(&farm.path("v2/linux")),
    ];
    let linux = farm.path(&format!("{PURPOSE}/linux"));
    let (reads, failures) = alternate_while(&farm, 20, move |stop, reads, failures| {
        while !stop.load(Ordering::SeqCst) {
            match fs::read(&linux) {
                Ok(data) if good.contains(&sha(&data)) => {}
                Ok(data) => {
                    eprintln!("torn read: {} bytes", data.len());
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => {
                    eprintln!("read failed: {e}");
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            }
            reads.fetch_add(1, Ordering::SeqCst);
        }
    });
    eprintln!("{reads} reads during 20 applies");
    assert!(reads > 20, "the readers barely ran ({reads} reads)");
    assert_eq!(
        failures, 0,
        "{failures} of {reads} reads saw a missing or torn kernel"
    );
}

struct Tftpd(Child);

impl Drop for Tftpd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_tftpd(root: &Path) -> Option<(Tftpd, u16)> {
    let Some(tftpd) = ["/usr/sbin/in.tftpd", "/sbin/in.tftpd"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
    else {
        skip("tftpd-hpa (in.tftpd) is not installed; scripts/test installs it as root");
        return None;
    };
    if !nix::unistd::geteuid().is_root() {
        skip("in.tftpd --secure needs root to chroot");
        return None;
    }
    let Ok(curl) = Command::new("curl").arg("--version").output() else {
        skip("curl is not installed; scripts/test installs it");
        return None;
    };
    if !String::from_utf8_lossy(&curl.stdout).contains("tftp") {
        skip("curl without tftp support");
        return None;
    }
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(tftpd)
        .args([
            "--foreground",
            "--address",
            &format!("127.0.0.1:{port}"),
            "--secure",
            "--user",
            "root",
        ])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Some((Tftpd(child), port))
}

#[test]
#[ignore = "needs root, tftpd-hpa and curl"]
fn tftp_clients_never_see_a_missing_or_torn_kernel() {
    let farm = Farm::new();
    sources(&farm);
    declare(&farm, "v1");
    farm.run(&["apply"]).expect(0);
    let Some((_tftpd, port)) = start_tftpd(&farm.path("tftp")) else {
        return;
    };
    let url = format!("tftp://127.0.0.1:{port}/amd64/generic/focal/install/linux");
    let good = [
        sha_file(&farm.path("v1/linux")),
        sha_file(&farm.path("v2/linux")),
    ];
    // the server answers before the race starts
    let mut ready = false;
    for _ in 0..100 {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", &url])
            .output()
            .unwrap();
        if out.status.success() && good.contains(&sha(&out.stdout)) {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ready, "tftpd did not serve the kernel");
    let (fetches, failures) = alternate_while(&farm, 16, move |stop, reads, failures| {
        while !stop.load(Ordering::SeqCst) {
            let out = Command::new("curl")
                .args(["-sS", "--tftp-blksize", "65464", "--max-time", "20", &url])
                .output()
                .unwrap();
            if !out.status.success() || !good.contains(&sha(&out.stdout)) {
                eprintln!(
                    "bad fetch: status {:?}, {} bytes, {}",
                    out.status,
                    out.stdout.len(),
                    String::from_utf8_lossy(&out.stderr)
                );
                failures.fetch_add(1, Ordering::SeqCst);
            }
            reads.fetch_add(1, Ordering::SeqCst);
        }
    });
    eprintln!("{fetches} TFTP fetches during 16 applies");
    assert!(fetches >= 4, "too few TFTP fetches ran ({fetches})");
    assert_eq!(
        failures, 0,
        "{failures} of {fetches} TFTP fetches failed or were torn"
    );
}
