//! The `qemu` executor: a disk machine booted from a qcow2 overlay of its
//! revision (or toolchain snapshot), or a netboot image booted diskless over
//! PXE from its published TFTP tree, each driven over its serial console
//! ([`driver`]). KVM when usable, TCG otherwise ([`accel`]); under TCG every
//! timeout is scaled. QEMU's own messages go to `qemu.log`, whose first line is
//! the command line. QEMU dies with reconcile (`PR_SET_PDEATHSIG`), and a
//! dropped instance kills it and deletes its overlay.

pub mod accel;
pub mod agent;
pub mod booted;
pub mod driver;
pub mod hub;
pub mod qmp;
pub mod ssh;
pub mod terminal;

use std::fs::File;
use std::io::Write;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use regex::Regex;

use self::accel::Accel;
use self::agent::{Channel, Wiring};
use self::driver::{ConsoleConfig, Deadline, Driver};
use self::ssh::{Keys, Ssh};
use super::{Facts, Instance, Provision, Step, Target};
use crate::config::model::{
    Console, DiskBus, Firmware, Fresh, MachineKind, Network, Transport, Vm, IPXE_SCRIPT,
};
use crate::error::{Error, Result};
use crate::process::{Exit, Flow, Interrupt, Outcome, Sink, Stream};
use crate::store::disk::{self, DiskFormat};
use crate::store::working::WorkingSnapshot;

pub const DEFAULT_PROMPT: &str = r"[#$] $";
pub const DEFAULT_SHUTDOWN: &str = "poweroff";
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(120);
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_TCG_FACTOR: f64 = 4.0;
pub const DEFAULT_MEMORY_MIB: u64 = 512;
const DEFAULT_TEST_TIMEOUT: Duration = Duration::from_secs(600);

/// `amd64` → `x86_64`, `arm64` → `aarch64`: QEMU's (and the kernel's) names.
pub fn normalise_arch(arch: &str) -> &str {
    match arch {
        "amd64" | "x86_64" | "x64" => "x86_64",
        "arm64" | "aarch64" => "aarch64",
        "i386" | "i486" | "i586" | "i686" | "x86" => "i386",
        "ppc64el" | "ppc64le" => "ppc64",
        other => other,
    }
}

/// The `qemu-system-*` program for a guest architecture.
pub fn program(arch: &str) -> String {
    format!("qemu-system-{}", normalise_arch(arch))
}

/// How the VM boots.
#[derive(Debug, Clone)]
pub enum Boot {
    /// From a disk image (an overlay), `cache=unsafe` when the writes are thrown away.
    Disk {
        image: PathBuf,
        format: DiskFormat,
        throwaway: bool,
    },
    /// Diskless over PXE: QEMU's user network serves `root` read-only over TFTP.
    Pxe { root: PathBuf, bootfile: String },
}

/// Everything the command line is made of.
#[derive(Debug, Clone)]
pub struct Launch {
    pub arch: String,
    pub vm: Vm,
    pub accel: Accel,
    pub boot: Boot,
    /// `-name`, also what `ps` shows.
    pub label: String,
    /// Writable UEFI variables (a copy of OVMF's template) for `firmware = "uefi"`.
    pub uefi_vars: Option<PathBuf>,
    /// The command channel's ports: the fds QEMU inherits, in [`agent::PORTS`] order.
    pub channel: Option<Vec<RawFd>>,
    /// A cloud-init NoCloud seed (`cidata`) attached read-only after the disk.
    pub seed: Option<PathBuf>,
    /// The loopback port forwarded to the guest's sshd (`transport = "ssh"`).
    pub ssh_port: Option<u16>,
    /// QEMU's monitor on this inherited fd (saving and restoring state).
    pub qmp: Option<RawFd>,
    /// Load the saved state in this file instead of booting.
    pub incoming: Option<PathBuf>,
    /// A virtio RNG fed from the host's /dev/urandom (VMs that are saved and
    /// restored: fresh entropy for each restored machine).
    pub rng: bool,
    /// A cluster NIC on a port of the cluster's hub: the socket QEMU binds
    /// and the hub's.
    pub cluster: Option<(PathBuf, PathBuf)>,
}

/// The UEFI firmware code and variable template for an architecture, when installed.
pub fn uefi_firmware(arch: &str) -> Option<(PathBuf, PathBuf)> {
    let candidates: &[(&str, &str)] = match normalise_arch(arch) {
        "x86_64" => &[
            (
                "/usr/share/OVMF/OVMF_CODE_4M.fd",
                "/usr/share/OVMF/OVMF_VARS_4M.fd",
            ),
            (
                "/usr/share/OVMF/OVMF_CODE.fd",
                "/usr/share/OVMF/OVMF_VARS.fd",
            ),
        ],
        "aarch64" => &[(
            "/usr/share/AAVMF/AAVMF_CODE.fd",
            "/usr/share/AAVMF/AAVMF_VARS.fd",
        )],
        _ => &[],
    };
    candidates
        .iter()
        .map(|(c, v)| (PathBuf::from(c), PathBuf::from(v)))
        .find(|(c, v)| c.exists() && v.exists())
}

impl Launch {
    /// The program and its arguments.
    pub fn command(&self) -> (String, Vec<String>) {
        let vm = &self.vm;
        let arch = normalise_arch(&self.arch);
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        push(&["-name", &self.label]);
        let machine = vm.machine.clone().unwrap_or_else(|| {
            match arch {
                "aarch64" | "riscv64" | "arm" => "virt",
                _ => "pc",
            }
            .to_string()
        });
        // graphics=off: SeaBIOS and iPXE print to the serial port too, so a boot
        // failing before Linux is visible in console.txt
        push(&["-machine", &format!("{machine},graphics=off")]);
        match self.accel {
            Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => push(&[
                "-accel",
                if vm.cpus.unwrap_or(1) > 1 {
                    "tcg,thread=multi"
                } else {
                    "tcg"
                },
                "-cpu",
                // pointer authentication by QEMU's own cheap algorithm
                // instead of emulated QARMA: the guest cannot tell, TCG is faster
                if arch == "aarch64" {
                    "max,pauth-impdef=on"
                } else {
                    "max"
                },
            ]),
        }
        let memory = vm.memory.map_or(DEFAULT_MEMORY_MIB, |m| m.mib);
        push(&["-m", &memory.to_string()]);
        push(&["-smp", &vm.cpus.unwrap_or(1).to_string()]);
        push(&[
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ]);
        if let (Firmware::Uefi, Some((code, _)), Some(vars)) =
            (vm.firmware, uefi_firmware(arch), &self.uefi_vars)
        {
            push(&[
                "-drive",
                &format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    code.display()
                ),
                "-drive",
                &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
            ]);
        }
        match &self.boot {
            Boot::Disk {
                image,
                format,
                throwaway,
            } => {
                let cache = if *throwaway { "unsafe" } else { "writeback" };
                let drive = format!(
                    "file={},format={},cache={cache},if=none,id=disk0",
                    qemu_path(image),
                    format.qemu_name()
                );
                push(&["-drive", &drive]);
                match vm.disk_bus {
                    DiskBus::Virtio => push(&["-device", "virtio-blk-pci,drive=disk0"]),
                    DiskBus::Ide => push(&["-device", "ide-hd,drive=disk0,bus=ide.0"]),
                    DiskBus::Scsi => push(&[
                        "-device",
                        "virtio-scsi-pci,id=scsi0",
                        "-device",
                        "scsi-hd,drive=disk0,bus=scsi0.0",
                    ]),
                }
                // an ssh transport gets its forward on a restricted network
                // unless the guest may reach out
                match (vm.network, self.ssh_port) {
                    (Network::User, None) => push(&["-nic", "user,model=virtio-net-pci"]),
                    (Network::User, Some(port)) => push(&[
                        "-nic",
                        &format!("user,model=virtio-net-pci,{}", ssh::hostfwd(port)),
                    ]),
                    (Network::None, Some(port)) => push(&[
                        "-nic",
                        &format!(
                            "user,model=virtio-net-pci,restrict=on,{}",
                            ssh::hostfwd(port)
                        ),
                    ]),
                    (Network::None, None) => {}
                }
                push(&["-boot", "c"]);
            }
            Boot::Pxe { root, bootfile } => {
                // restrict=on: the guest reaches QEMU's own DHCP and TFTP, nothing else
                let restrict = if vm.network == Network::User {
                    "off"
                } else {
                    "on"
                };
                let forward = self
                    .ssh_port
                    .map(|p| format!(",{}", ssh::hostfwd(p)))
                    .unwrap_or_default();
                push(&[
                    "-netdev",
                    &format!(
                        "user,id=net0,restrict={restrict},tftp={},bootfile={bootfile}{forward}",
                        qemu_path(root)
                    ),
                    "-device",
                    "e1000,netdev=net0",
                    "-boot",
                    "n",
                ]);
            }
        }
        if let Some(seed) = &self.seed {
            push(&[
                "-drive",
                &format!(
                    "file={},format=raw,if=none,id=cidata,readonly=on",
                    qemu_path(seed)
                ),
                "-device",
                "virtio-blk-pci,drive=cidata",
            ]);
        }
        if let Some(fds) = &self.channel {
            let c = agent::qemu_args(fds);
            push(&c.iter().map(String::as_str).collect::<Vec<_>>());
        }
        if self.rng {
            push(&[
                "-object",
                "rng-random,id=rc-rng,filename=/dev/urandom",
                "-device",
                "virtio-rng-pci,rng=rc-rng",
            ]);
            if arch == "x86_64" {
                // a new generation id at every start, a restore included: the
                // guest kernel reseeds its random generator at once when it
                // changes (entropy written to /dev/urandom is only mixed in,
                // so two restored machines would otherwise draw the same
                // numbers until the next reseed)
                push(&["-device", "vmgenid,guid=auto"]);
            }
        }
        if let Some((local, remote)) = &self.cluster {
            let c = hub::qemu_args(local, remote);
            push(&c.iter().map(String::as_str).collect::<Vec<_>>());
        }
        if let Some(fd) = self.qmp {
            let q = qmp::qemu_args(fd);
            push(&q.iter().map(String::as_str).collect::<Vec<_>>());
        }
        if let Some(state) = &self.incoming {
            let cat = format!(
                "exec:cat {}",
                shell_words::quote(&state.display().to_string())
            );
            push(&["-incoming", &cat]);
        }
        a.extend(vm.qemu_args.iter().cloned());
        (program(arch), a)
    }
}

/// A path inside a QEMU option list, where `,` must be doubled.
fn qemu_path(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// The compiled console settings, durations scaled by `factor`.
pub fn console_config(c: Option<&Console>, factor: f64) -> Result<ConsoleConfig, String> {
    let default = Console::default();
    let c = c.unwrap_or(&default);
    let compile = |what: &str, re: &str| {
        Regex::new(re).map_err(|e| format!("console.{what}: invalid regex: {e}"))
    };
    let prompt = c.prompt.as_deref().unwrap_or(DEFAULT_PROMPT);
    Ok(ConsoleConfig {
        ready: c
            .ready
            .as_deref()
            .map(|r| compile("ready", r))
            .transpose()?,
        prompt: compile("prompt", &format!(r"(?:{prompt})\z"))?,
        login: c
            .login
            .as_ref()
            .map(|l| (l.user.clone(), l.password.clone())),
        shutdown: c
            .shutdown
            .clone()
            .unwrap_or_else(|| DEFAULT_SHUTDOWN.into()),
        boot_timeout: c
            .boot_timeout
            .unwrap_or(DEFAULT_BOOT_TIMEOUT)
            .mul_f64(factor),
        stall: c
            .stall_timeout
            .unwrap_or(DEFAULT_STALL_TIMEOUT)
            .mul_f64(factor),
    })
}

/// The accelerator and timeout factor for `vm` on a guest of `arch`, and one
/// line saying which and why (printed once per run).
pub fn decide(vm: &Vm, arch: &str) -> Result<(Accel, f64, String), String> {
    let (accel, why_not_kvm) = accel::choose(vm.accel, arch)?;
    Ok(match accel {
        Accel::Kvm => (accel, 1.0, "qemu: KVM".to_string()),
        Accel::Tcg => {
            let factor = vm.tcg_timeout_factor.unwrap_or(DEFAULT_TCG_FACTOR);
            let why = why_not_kvm.map(|w| format!("; {w}")).unwrap_or_default();
            (
                accel,
                factor,
                format!("qemu: TCG (software emulation{why}); timeouts ×{factor}"),
            )
        }
    })
}

pub struct QemuInstance {
    rt: tokio::runtime::Runtime,
    launch: Launch,
    console: ConsoleConfig,
    factor: f64,
    cancel: Arc<AtomicBool>,
    log: PathBuf,
    driver: Option<Driver>,
    /// The command channel, once it is up (`transport = "agent"` or `"ssh"`).
    link: Option<Link>,
    /// The agent's ports' socketpairs between QEMU's start and the agent's.
    wiring: Option<Wiring>,
    /// The ssh key and port between QEMU's start and the connection.
    keys: Option<Keys>,
    /// Deleted after QEMU is dead (see Drop).
    snapshot: Option<WorkingSnapshot>,
    boot: Option<Duration>,
    /// `fresh = "restore"`: the booted snapshot to restore (taken at start).
    restore: Option<Restorable>,
    /// The monitor's socketpair between QEMU's start and the connection.
    qmp: Option<qmp::QmpWiring>,
    /// How this VM was made fresh, and a note when a saved state had to be made anew.
    fresh: Option<(&'static str, Option<String>)>,
    /// Its index in its test's cluster.
    node: Option<usize>,
    /// QEMU's monitor, once connected (a restored VM's, a cluster node's).
    monitor: Option<qmp::Qmp>,
}

fn infra(e: impl std::fmt::Display) -> Error {
    Error::Usage(e.to_string())
}

/// What a target boots: its architecture and VM settings, console, working
/// snapshot (when it gets one), boot source, a label for the process, and
/// a directory for scratch files.
struct Booting {
    /// cloud-init user data and the host name its meta data gives.
    user_data: Option<(String, String)>,
    arch: String,
    vm: Vm,
    console: Option<Console>,
    snapshot: Option<WorkingSnapshot>,
    boot: Boot,
    label: String,
    scratch: PathBuf,
    /// A disk machine's revision (or toolchain) image, its format, the
    /// machine's revision and toolchain: what a booted snapshot is of.
    base: Option<(PathBuf, DiskFormat, String, u32, Option<String>)>,
}

fn booting(p: &Provision, target: Target) -> Result<Booting> {
    if let Target::Machine { name, machine, .. } = &target {
        if machine.kind != MachineKind::Disk {
            return Err(infra(format!(
                "machine `{name}` is a root filesystem; only disk machines (kind = \"disk\") boot in QEMU"
            )));
        }
    }
    // what boots, as declared: the machine's or the image's settings
    let (arch, vm, console) = match &target {
        Target::Machine { machine: m, .. } | Target::Staging { machine: m, .. } => (
            m.arch.clone().unwrap_or_else(host_arch),
            m.vm.clone().unwrap_or_default(),
            m.console.clone(),
        ),
        Target::Image { image, .. } => (
            image.arch.clone(),
            image.vm.clone().unwrap_or_default(),
            image.console.clone(),
        ),
        Target::Host => unreachable!("the factory refuses qemu without a target"),
    };
    check_runnable(&vm, &arch)?;
    let user_data = user_data_of(p, &target)?;
    let mut base = None;
    let (snapshot, boot, label, scratch) = match target {
        Target::Machine {
            name,
            machine: m,
            volume,
            toolchain,
            revision,
        } => {
            let w = WorkingSnapshot::create(p.state, volume, name, m.kind, toolchain, revision)?;
            let image = w
                .disk
                .clone()
                .expect("a disk machine's snapshot has an overlay");
            base = disk::Qcow2Header::read(&image)
                .ok()
                .and_then(|h| h.backing_file)
                .and_then(|b| std::fs::canonicalize(w.path.join(b)).ok())
                .and_then(|b| disk::DiskFormat::detect(&b).ok().map(|f| (b, f)))
                .map(|(b, f)| {
                    (
                        b,
                        f,
                        name.to_string(),
                        revision.unwrap_or(m.revision),
                        toolchain.map(str::to_string),
                    )
                });
            let boot = Boot::Disk {
                image,
                format: DiskFormat::Qcow2,
                throwaway: true,
            };
            let (label, scratch) = (format!("reconcile-{}", w.name), w.path.clone());
            (Some(w), boot, label, scratch)
        }
        Target::Staging { name, root, .. } => {
            let (image, format) = disk::image_in(root).map_err(|e| Error::io(root, e))?;
            let boot = Boot::Disk {
                image,
                format,
                throwaway: false,
            };
            let label = format!("reconcile-{name}-bootstrap");
            (None, boot, label, root.to_path_buf())
        }
        Target::Image {
            name,
            image: img,
            tree,
        } => {
            let script = tree
                .map_or_else(|| img.target(), Path::to_path_buf)
                .join(IPXE_SCRIPT);
            if !script.is_file() {
                return Err(infra(format!(
                    "image `{name}` has no {IPXE_SCRIPT} at {}: declare `ipxe` on it and run `reconcile apply`",
                    script.display()
                )));
            }
            let bootfile = script
                .strip_prefix(&img.root)
                .expect("the target is under the root")
                .display()
                .to_string();
            let boot = Boot::Pxe {
                root: PathBuf::from(&img.root),
                bootfile,
            };
            let label = format!("reconcile-{name}-{}", std::process::id());
            (None, boot, label, p.log_dir.clone())
        }
        Target::Host => unreachable!("the factory refuses qemu without a target"),
    };
    Ok(Booting {
        user_data,
        arch,
        vm,
        console,
        snapshot,
        boot,
        label,
        scratch,
        base,
    })
}

/// The booted snapshot an instance restores from (making it first when
/// there is none).
struct Restorable {
    store: booted::Store,
    key: String,
    meta: booted::Meta,
    base_format: DiskFormat,
}

/// The user data a target's VMs get: the suite's, else the machine's
/// (inline or read from its file), with the name the guest is given.
fn user_data_of(p: &Provision, target: &Target) -> Result<Option<(String, String)>> {
    let suite = p.suite.and_then(|s| p.desired.model.suite.get(s));
    let (name, machine) = match target {
        Target::Machine { name, machine, .. } | Target::Staging { name, machine, .. } => {
            (*name, Some(*machine))
        }
        Target::Image { name, .. } => (*name, None),
        Target::Host => return Ok(None),
    };
    let declared = suite
        .map(|s| (&s.user_data, &s.user_data_file))
        .filter(|(i, f)| i.is_some() || f.is_some())
        .or_else(|| machine.map(|m| (&m.user_data, &m.user_data_file)));
    let text = match declared {
        Some((Some(inline), _)) => inline.clone(),
        Some((None, Some(file))) => {
            std::fs::read_to_string(file).map_err(|e| Error::io(Path::new(file), e))?
        }
        _ => return Ok(None),
    };
    Ok(Some((text, name.to_string())))
}

/// A NoCloud seed in `dir`: a FAT volume labelled `cidata` holding
/// `user-data` and `meta-data` (a fresh instance id, so cloud-init runs it
/// on every boot), made without root by mkfs.vfat and mtools.
pub fn nocloud_seed(user_data: &str, hostname: &str, dir: &Path) -> std::io::Result<PathBuf> {
    let files = dir.join("cidata");
    std::fs::create_dir_all(&files)?;
    std::fs::write(files.join("user-data"), user_data)?;
    let meta = format!(
        "instance-id: reconcile-{}\nlocal-hostname: {hostname}\n",
        driver::nonce()
    );
    std::fs::write(files.join("meta-data"), meta)?;
    let image = dir.join("cidata.img");
    let _ = std::fs::remove_file(&image);
    let kib = (user_data.len() as u64 / 1024) * 2 + 1024;
    let run = |program: &str, args: &[&std::ffi::OsStr], package: &str| {
        let out = std::process::Command::new(program)
            .args(args)
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("{program}: {e} (apt-get install {package})"),
                )
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "{program} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    };
    let mkfs = if Path::new("/sbin/mkfs.vfat").exists() {
        "/sbin/mkfs.vfat"
    } else {
        "mkfs.vfat"
    };
    run(
        mkfs,
        &[
            "-n".as_ref(),
            "CIDATA".as_ref(),
            "-C".as_ref(),
            image.as_os_str(),
            kib.to_string().as_ref(),
        ],
        "dosfstools",
    )?;
    run(
        "mcopy",
        &[
            "-i".as_ref(),
            image.as_os_str(),
            files.join("user-data").as_os_str(),
            files.join("meta-data").as_os_str(),
            "::/".as_ref(),
        ],
        "mtools",
    )?;
    Ok(image)
}

/// A UEFI guest's variable store: a copy of the firmware's template in
/// `scratch` (none for BIOS).
fn uefi_vars(vm: &Vm, arch: &str, scratch: &Path) -> Result<Option<PathBuf>> {
    Ok(match vm.firmware {
        Firmware::Bios => None,
        Firmware::Uefi => {
            let (_, template) = uefi_firmware(arch).ok_or_else(|| {
                infra(format!(
                    "firmware = \"uefi\" needs UEFI firmware for {arch} (apt-get install ovmf, or qemu-efi-aarch64)"
                ))
            })?;
            let vars = scratch.join("uefi-vars.fd");
            if !vars.exists() {
                std::fs::copy(&template, &vars).map_err(|e| Error::io(&vars, e))?;
            }
            Some(vars)
        }
    })
}

impl QemuInstance {
    pub fn provision(p: &Provision, target: Target) -> Result<QemuInstance> {
        let Booting {
            user_data,
            arch,
            vm,
            console,
            snapshot,
            boot,
            label,
            scratch,
            base,
        } = booting(p, target)?;
        // beside the overlay (deleted with it), else with the logs: never in a staging volume
        let seed_dir = match &snapshot {
            Some(w) => w.path.clone(),
            None => p.log_dir.clone(),
        };
        let seed = match &user_data {
            Some((text, host)) => Some(
                nocloud_seed(text, host, &seed_dir)
                    .map_err(|e| infra(format!("cannot make the cloud-init seed: {e}")))?,
            ),
            None => None,
        };
        std::fs::create_dir_all(&p.log_dir).map_err(|e| Error::io(&p.log_dir, e))?;
        let (accel, factor, _) = decide(&vm, &arch).map_err(infra)?;
        let restore = match (p.fresh, base) {
            (Fresh::Restore, Some((image, format, machine, revision, toolchain))) => {
                // what the saved state depends on, the agent it runs included
                // (a state saved under TCG does not load under KVM, nor the reverse)
                // (a cluster node is saved with its cluster NIC)
                let settings = format!(
                    "{arch}\n{}\n{vm:?}\n{console:?}\n{}\n{}",
                    accel.name(),
                    agent::starter(),
                    if p.node.is_some() {
                        hub::prepare_script()
                    } else {
                        "-".into()
                    }
                );
                let inputs = booted::Inputs {
                    base_image: &image,
                    settings,
                    user_data: user_data.as_ref().map(|(t, _)| t.as_str()),
                    program: &program(&arch),
                };
                let key = booted::key(&inputs).map_err(|e| Error::io(&image, e))?;
                Some(Restorable {
                    store: booted::Store::new(&p.state.booted_dir(), &machine),
                    key,
                    meta: booted::Meta {
                        machine,
                        revision,
                        toolchain,
                        base_image: image,
                        qemu: booted::qemu_version(&program(&arch)),
                        created: crate::state::now_rfc3339(),
                        boot_ms: 0,
                    },
                    base_format: format,
                })
            }
            _ => None,
        };
        let console = console_config(console.as_ref(), factor).map_err(infra)?;
        let uefi_vars = uefi_vars(&vm, &arch, &scratch)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| infra(format!("cannot start the console driver: {e}")))?;
        Ok(QemuInstance {
            rt,
            launch: Launch {
                arch,
                vm,
                accel,
                boot,
                label,
                uefi_vars,
                channel: None,
                seed,
                ssh_port: None,
                qmp: None,
                incoming: None,
                rng: restore.is_some(),
                cluster: p.node.as_ref().map(|n| (n.local.clone(), n.remote.clone())),
            },
            console,
            factor,
            cancel: p.cancel.clone(),
            log: p.log_dir.join("qemu.log"),
            driver: None,
            link: None,
            wiring: None,
            keys: None,
            snapshot,
            boot: None,
            restore,
            qmp: None,
            fresh: Some(("boot", None)),
            node: p.node.as_ref().map(|n| n.index),
            monitor: None,
        })
    }

    pub fn launch(&self) -> &Launch {
        &self.launch
    }

    fn spawn(&mut self) -> std::result::Result<(), Interrupt> {
        let wiring = match self.launch.vm.transport {
            Transport::Agent => Some(Wiring::new().map_err(|e| {
                Interrupt::Infra(format!("cannot make the command channel's sockets: {e}"))
            })?),
            Transport::Console | Transport::Ssh => None,
        };
        if self.launch.vm.transport == Transport::Ssh {
            let port = ssh::free_port().map_err(|e| {
                Interrupt::Infra(format!("cannot find a free loopback port for ssh: {e}"))
            })?;
            // a restored guest already trusts the key it was saved with
            match &mut self.keys {
                Some(k) => k.port = port,
                None => self.keys = Some(Keys::new(port)?),
            }
            self.launch.ssh_port = Some(port);
        }
        self.monitor = None;
        let monitor =
            if self.launch.rng || self.launch.cluster.is_some() {
                Some(qmp::QmpWiring::new().map_err(|e| {
                    Interrupt::Infra(format!("cannot make QEMU's monitor socket: {e}"))
                })?)
            } else {
                None
            };
        let mut inherit: Vec<RawFd> = wiring.as_ref().map(Wiring::guest_fds).unwrap_or_default();
        inherit.extend(monitor.as_ref().and_then(qmp::QmpWiring::guest_fd));
        self.launch.channel = wiring.as_ref().map(Wiring::guest_fds);
        self.launch.qmp = monitor.as_ref().and_then(qmp::QmpWiring::guest_fd);
        let (program, args) = self.launch.command();
        let mut log = File::create(&self.log)
            .map_err(|e| Interrupt::Infra(format!("cannot write {}: {e}", self.log.display())))?;
        let mut line = shell_words::quote(&program).into_owned();
        for a in &args {
            line.push(' ');
            line.push_str(&shell_words::quote(a));
        }
        let _ = writeln!(log, "# {line}");
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            // not in our process group: a terminal's Ctrl-C reaches reconcile,
            // which tears the VM down itself
            .process_group(0);
        let lock = self.snapshot.as_ref().and_then(|w| w.lock_fd());
        // SAFETY: the closure runs in the forked child before exec and only
        // makes syscalls (those of `tie_to_parent`, fcntl) on data prepared
        // above; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                crate::process::child::tie_to_parent(lock)?;
                // the channel's sockets stay open across exec: QEMU's ports
                for &fd in &inherit {
                    if nix::libc::fcntl(fd, nix::libc::F_SETFD, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = {
            let _rt = self.rt.enter();
            cmd.spawn().map_err(|e| {
                Interrupt::Infra(if e.kind() == std::io::ErrorKind::NotFound {
                    format!(
                        "{program} is not installed (apt-get install {})",
                        package_of(&program)
                    )
                } else {
                    format!("cannot start {program}: {e}")
                })
            })?
        };
        self.driver = Some(Driver::new(child, self.console.stall, self.cancel.clone()));
        // QEMU has its ends of the sockets now; ours of them close
        self.wiring = wiring.map(|mut w| {
            w.guest.clear();
            w
        });
        self.qmp = monitor.map(|mut m| {
            m.guest = None;
            m
        });
        Ok(())
    }

    /// Start QEMU, boot to the prompt (logged in) and bring the channel up.
    fn boot_up(&mut self, sink: &mut dyn Sink) -> std::result::Result<(), Interrupt> {
        self.spawn()?;
        let console = self.console.clone();
        let driver = self.driver.as_mut().expect("spawned");
        self.rt.block_on(driver.boot(&console, sink))?;
        self.start_link(sink)
    }

    /// A fresh machine from the booted snapshot of `r`, made first if there
    /// is none; one that does not load is made anew, once, and said so.
    /// Restores hold the snapshot's lock shared, so any number of them
    /// (a cluster's nodes, `-j N`) load it at once; only making it is
    /// exclusive.
    fn start_restored(
        &mut self,
        r: Restorable,
        sink: &mut dyn Sink,
    ) -> std::result::Result<(), Interrupt> {
        // the state that did not load, and why
        let mut failed: Option<(Option<u64>, String)> = None;
        // whether this instance made the state it restores (and saw its boot live)
        let mut made = false;
        let mut replayed = false;
        loop {
            let cancel = self.cancel.clone();
            let reading = r
                .store
                .lock(
                    &r.key,
                    true,
                    || {},
                    || cancel.load(std::sync::atomic::Ordering::SeqCst),
                )
                .map_err(|e| Interrupt::Infra(format!("cannot lock the booted snapshot: {e}")))?
                .ok_or(Interrupt::Cancelled)?;
            // not the state that failed to load (another test may have made it anew)
            let usable = r
                .store
                .find(&r.key)
                .filter(|s| made || failed.as_ref().is_none_or(|f| f.0 != s.state_id()));
            let Some(saved) = usable else {
                drop(reading);
                made = self.saved_or_made(&r, failed.as_ref().map(|f| f.0), sink)?;
                continue;
            };
            if !made && !replayed {
                replayed = true;
                // the boot this state was saved after (the test that made it saw it live)
                if let Ok(boot) = std::fs::read(saved.dir.join(BOOT_CONSOLE)) {
                    if sink.output(Stream::Console, &boot) == Flow::Stop {
                        return Err(Interrupt::Stopped);
                    }
                }
            }
            match self.restore_from(&saved, sink) {
                Ok(()) => {
                    let note = failed.map(|(_, why)| match made {
                        true => format!("{why}; booted again and saved anew"),
                        // two tests found it broken at once: one made it anew
                        false => format!("{why}; restored from the one another test made anew"),
                    });
                    self.fresh = Some(("restore", note));
                    return Ok(());
                }
                Err(Interrupt::Infra(why)) if !made && failed.is_none() => {
                    self.link = None;
                    self.stop_vm();
                    // what QEMU said about it, before the next start rewrites its log
                    let why = match self.with_log(Interrupt::Infra(why)) {
                        Interrupt::Infra(w) => w,
                        _ => unreachable!("with_log keeps the class"),
                    };
                    failed = Some((saved.state_id(), why));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Make sure `r` has a saved snapshot, made under its exclusive lock
    /// when missing (or when it is still the state `failed` that did not
    /// load); whether it was made now.
    fn saved_or_made(
        &mut self,
        r: &Restorable,
        failed: Option<Option<u64>>,
        sink: &mut dyn Sink,
    ) -> std::result::Result<bool, Interrupt> {
        let cancel = self.cancel.clone();
        let lock = r
            .store
            .lock(
                &r.key,
                false,
                || {},
                || cancel.load(std::sync::atomic::Ordering::SeqCst),
            )
            .map_err(|e| Interrupt::Infra(format!("cannot lock the booted snapshot: {e}")))?
            .ok_or(Interrupt::Cancelled)?;
        let found = r.store.find(&r.key);
        if let (Some(f), Some(id)) = (&found, failed) {
            if f.state_id() == id {
                r.store.discard(&r.key);
            }
        }
        let made = match r.store.find(&r.key) {
            Some(_) => false,
            None => {
                self.save_booted(r, sink)?;
                true
            }
        };
        drop(lock);
        Ok(made)
    }

    /// Boot on a new frozen overlay, log in, bring the channel up, pause and
    /// save the VM; the snapshot appears whole or not at all.
    fn save_booted(
        &mut self,
        r: &Restorable,
        sink: &mut dyn Sink,
    ) -> std::result::Result<booted::Saved, Interrupt> {
        let t0 = Instant::now();
        let fail = |what: &str, e: std::io::Error| {
            Interrupt::Infra(format!("cannot make the booted snapshot ({what}): {e}"))
        };
        let tmp = r
            .store
            .begin(&r.key)
            .map_err(|e| fail("its directory", e))?;
        let keep = (
            self.launch.boot.clone(),
            self.launch.seed.clone(),
            self.launch.uefi_vars.clone(),
        );
        let made = (|| {
            let frozen = tmp.join("disk.qcow2");
            disk::create_overlay_on(&frozen, &r.meta.base_image, r.base_format)
                .map_err(|e| fail("its overlay", e))?;
            self.launch.boot = Boot::Disk {
                image: frozen,
                format: DiskFormat::Qcow2,
                throwaway: false,
            };
            for (from, name) in [
                (&mut self.launch.seed, "seed.img"),
                (&mut self.launch.uefi_vars, "vars.fd"),
            ] {
                if let Some(f) = from.as_mut() {
                    let to = tmp.join(name);
                    std::fs::copy(&*f, &to).map_err(|e| fail(name, e))?;
                    *f = to;
                }
            }
            // the boot's console is kept beside the state: each restored
            // test's console.txt starts with it, as if it had booted
            let kept = tmp.join(BOOT_CONSOLE);
            let mut log = File::create(&kept).map_err(|e| fail(BOOT_CONSOLE, e))?;
            let mut tee = Tee {
                inner: &mut *sink,
                log: &mut log,
            };
            let booted = self
                .boot_up(&mut tee)
                .and_then(|()| self.prepare_cluster(&mut tee));
            if booted.is_err() {
                if let Some(d) = self.driver.as_mut() {
                    d.flush_partial(&mut tee);
                }
            }
            booted?;
            self.freeze(&tmp)
        })();
        (self.launch.boot, self.launch.seed, self.launch.uefi_vars) = keep;
        if let Err(e) = made {
            self.link = None;
            self.stop_vm();
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let mut meta = r.meta.clone();
        meta.boot_ms = t0.elapsed().as_millis() as u64;
        r.store.commit(&tmp, &r.key, &meta).map_err(|e| {
            let _ = std::fs::remove_dir_all(&tmp);
            fail("committing it", e)
        })
    }

    /// Pause the booted VM and save its state into `dir`; QEMU then exits.
    fn freeze(&mut self, dir: &Path) -> std::result::Result<(), Interrupt> {
        if let Some(Link::Ssh(s)) = &self.link {
            // the key the guest now trusts goes with its state
            s.save_keys(&dir.join("ssh"))
                .map_err(|e| Interrupt::Infra(format!("cannot keep the ssh key: {e}")))?;
        }
        let monitor = self.qmp.take().expect("a saved VM has a monitor");
        let state = dir.join("state");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120).mul_f64(self.factor);
        let saved = self.rt.block_on(async {
            tokio::time::timeout_at(deadline, async {
                let mut q = monitor.connect().await?;
                q.save(&state, deadline).await?;
                q.quit().await;
                Ok::<(), String>(())
            })
            .await
            .unwrap_or_else(|_| Err("QEMU's monitor did not answer in time".into()))
        });
        self.link = None;
        self.stop_vm();
        saved.map_err(|e| Interrupt::Infra(format!("cannot save the booted VM: {e}")))
    }

    /// A new overlay on the frozen one, QEMU loading the saved state, the
    /// channel back, the clock set to now and fresh entropy.
    fn restore_from(
        &mut self,
        saved: &booted::Saved,
        sink: &mut dyn Sink,
    ) -> std::result::Result<(), Interrupt> {
        let overlay = self
            .snapshot
            .as_ref()
            .and_then(|w| w.disk.clone())
            .expect("a restored machine has a working snapshot");
        let fail = |what: &str, e: std::io::Error| {
            Interrupt::Infra(format!("cannot restore the booted snapshot ({what}): {e}"))
        };
        disk::create_overlay_on(&overlay, &saved.disk(), DiskFormat::Qcow2)
            .map_err(|e| fail("the overlay", e))?;
        self.launch.boot = Boot::Disk {
            image: overlay.clone(),
            format: DiskFormat::Qcow2,
            throwaway: true,
        };
        self.launch.seed = saved.seed();
        if let Some(v) = saved.vars() {
            let to = overlay.with_file_name("uefi-vars.fd");
            std::fs::copy(&v, &to).map_err(|e| fail("the UEFI variables", e))?;
            self.launch.uefi_vars = Some(to);
        }
        let user = match saved.ssh() {
            Some(dir) => {
                let (keys, user) = Keys::saved(&dir).map_err(|e| fail("the ssh key", e))?;
                self.keys = Some(keys);
                Some(user)
            }
            None => None,
        };
        self.launch.incoming = Some(saved.state());
        let spawned = self.spawn();
        self.launch.incoming = None;
        spawned?;
        let monitor = self.qmp.take().expect("a restored VM has a monitor");
        let deadline = tokio::time::Instant::now() + self.console.boot_timeout;
        let q = self
            .rt
            .block_on(async {
                tokio::time::timeout_at(deadline, async {
                    let mut q = monitor.connect().await?;
                    q.wait_running(deadline).await.map(|()| q)
                })
                .await
                .unwrap_or_else(|_| Err("QEMU's monitor did not answer in time".into()))
            })
            .map_err(|e| Interrupt::Infra(format!("the saved state did not load: {e}")))?;
        self.monitor = Some(q);
        self.relink(user, sink)?;
        self.refresh(sink)
    }

    /// The channel of a restored guest: the agent answers on new sockets,
    /// ssh connects anew with the saved key; the console needs nothing.
    fn relink(
        &mut self,
        user: Option<String>,
        sink: &mut dyn Sink,
    ) -> std::result::Result<(), Interrupt> {
        let driver = self.driver.as_mut().expect("spawned");
        if let Some(keys) = self.keys.take() {
            let deadline = Deadline::after(self.console.boot_timeout, "connecting over ssh");
            let ssh = self.rt.block_on(Ssh::connect(
                keys,
                user.unwrap_or_else(|| "root".into()),
                self.factor,
                &deadline,
                driver,
                sink,
            ))?;
            self.link = Some(Link::Ssh(ssh));
        } else if let Some(wiring) = self.wiring.take() {
            let channel = {
                let _rt = self.rt.enter();
                wiring.into_channel(self.factor)
            };
            let mut channel = channel.map_err(|e| {
                Interrupt::Infra(format!("cannot open the command channel's sockets: {e}"))
            })?;
            let wait = Duration::from_secs(30).mul_f64(self.factor);
            let ran = self
                .rt
                .block_on(channel.run("true", wait, driver, &mut Quiet(sink)))
                .map_err(|e| Interrupt::Infra(format!("the restored agent did not answer: {e}")))?;
            if ran.status != 0 || ran.timed_out {
                return Err(Interrupt::Infra(
                    "the restored agent did not run `true`".into(),
                ));
            }
            self.link = Some(Link::Agent(channel));
        }
        Ok(())
    }

    /// The guest's clock is that of the moment it was saved: set it to now;
    /// and mix fresh bytes into its entropy pool (the virtio RNG gives more).
    fn refresh(&mut self, sink: &mut dyn Sink) -> std::result::Result<(), Interrupt> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let mut seed = [0u8; 64];
        let _ = driver::getrandom(&mut seed);
        let script = format!(
            "date -u -s @{}.{:09} >/dev/null 2>&1 || date -u -s @{} >/dev/null 2>&1; \
             printf %s {} | base64 -d >/dev/urandom 2>/dev/null; true",
            now.as_secs(),
            now.subsec_nanos(),
            now.as_secs(),
            agent::b64(seed)
        );
        self.run_own(&script, "setting the clock", sink)
            .map(|_| ())
            .map_err(|e| match e {
                Interrupt::Infra(why) => {
                    Interrupt::Infra(format!("cannot set the restored guest's clock: {why}"))
                }
                other => other,
            })
    }

    /// One of reconcile's own commands in the guest, over the channel or
    /// typed at the prompt: its exit status and what it printed (kept out of
    /// the test's stdout).
    fn run_own(
        &mut self,
        script: &str,
        what: &str,
        sink: &mut dyn Sink,
    ) -> std::result::Result<(i32, String), Interrupt> {
        let limit = Duration::from_secs(30).mul_f64(self.factor);
        let driver = self.driver.as_mut().expect("spawned");
        let mut said = Captured {
            inner: sink,
            stdout: Vec::new(),
        };
        let status = match self.link.as_mut() {
            Some(link) => {
                let ran = self
                    .rt
                    .block_on(link.run(script, limit, driver, &mut said))?;
                if ran.timed_out {
                    return Err(Interrupt::Infra(format!("{what} did not finish in time")));
                }
                ran.status
            }
            None => {
                let deadline = Deadline::after(limit, what);
                let prompt = self.console.prompt.clone();
                self.rt
                    .block_on(driver.run(script, &prompt, &mut said, &deadline))?
            }
        };
        Ok((status, String::from_utf8_lossy(&said.stdout).into_owned()))
    }

    /// A cluster node's NIC taken from the guest's network manager, once
    /// after its boot (nothing outside a cluster).
    fn prepare_cluster(&mut self, sink: &mut dyn Sink) -> std::result::Result<(), Interrupt> {
        if self.node.is_none() {
            return Ok(());
        }
        let script = hub::prepare_script();
        self.run_own_ok(&script, "preparing the cluster NIC", sink, |why| {
            format!("cannot prepare the cluster NIC {why}")
        })
    }

    /// A cluster node's MAC and address on its cluster NIC.
    fn join_cluster(
        &mut self,
        index: usize,
        sink: &mut dyn Sink,
    ) -> std::result::Result<(), Interrupt> {
        let script = hub::join_script(index);
        self.run_own_ok(&script, "joining the cluster network", sink, |why| {
            format!("node {index} cannot address its cluster NIC {why}")
        })
    }

    /// [`run_own`](Self::run_own), a non-zero status an `infra` error:
    /// `fail` completes `(exit status N): <the script's last line>`.
    fn run_own_ok(
        &mut self,
        script: &str,
        what: &str,
        sink: &mut dyn Sink,
        fail: impl FnOnce(String) -> String,
    ) -> std::result::Result<(), Interrupt> {
        match self.run_own(script, what, sink)? {
            (0, _) => Ok(()),
            (status, said) => Err(Interrupt::Infra(fail(format!(
                "(exit status {status}): {}",
                last_word(&said)
            )))),
        }
    }

    /// Bring the command channel up, when the VM has one.
    fn start_link(&mut self, sink: &mut dyn Sink) -> std::result::Result<(), Interrupt> {
        if let Some(keys) = self.keys.take() {
            return self.start_ssh(keys, sink);
        }
        let Some(wiring) = self.wiring.take() else {
            return Ok(());
        };
        let channel = {
            let _rt = self.rt.enter();
            wiring.into_channel(self.factor)
        };
        let mut channel = channel.map_err(|e| {
            Interrupt::Infra(format!("cannot open the command channel's sockets: {e}"))
        })?;
        let prompt = self.console.prompt.clone();
        let deadline = Deadline::after(self.console.boot_timeout, "starting the agent");
        let driver = self.driver.as_mut().expect("booted");
        let mut said = Captured {
            inner: sink,
            stdout: Vec::new(),
        };
        let status =
            self.rt
                .block_on(driver.run(agent::starter(), &prompt, &mut said, &deadline))?;
        if status != 0 {
            return Err(Interrupt::Infra(format!(
                "the command channel's agent did not start (exit status {status}): {} \
                 (set vm.transport = \"console\" to type commands on the serial console instead)",
                last_word(&String::from_utf8_lossy(&said.stdout))
            )));
        }
        self.rt.block_on(channel.hello(driver, sink))?;
        self.link = Some(Link::Agent(channel));
        Ok(())
    }

    /// Authorise a new key and learn the host keys over the console, then
    /// connect to the forwarded port.
    fn start_ssh(&mut self, keys: Keys, sink: &mut dyn Sink) -> std::result::Result<(), Interrupt> {
        let prompt = self.console.prompt.clone();
        let deadline = Deadline::after(self.console.boot_timeout, "connecting over ssh");
        let driver = self.driver.as_mut().expect("booted");
        let mut said = Captured {
            inner: sink,
            stdout: Vec::new(),
        };
        let grant = keys.grant()?;
        let status = self
            .rt
            .block_on(driver.run(&grant, &prompt, &mut said, &deadline))?;
        let said = String::from_utf8_lossy(&said.stdout).into_owned();
        if status != 0 && keys.trust(&said).is_err() {
            return Err(Interrupt::Infra(format!(
                "cannot authorise reconcile's ssh key in the guest (exit status {status}): {} \
                 (vm.transport = \"agent\" needs no sshd)",
                last_word(&said)
            )));
        }
        let user = keys.trust(&said)?;
        let ssh = self.rt.block_on(Ssh::connect(
            keys,
            user,
            self.factor,
            &deadline,
            driver,
            sink,
        ))?;
        self.link = Some(Link::Ssh(ssh));
        Ok(())
    }

    /// A step over the channel: its files in, the command, its files out
    /// (also after a failure or a timeout).
    fn run_over_channel(&mut self, step: &Step, timeout: Duration, sink: &mut dyn Sink) -> Outcome {
        let link = self.link.as_mut().expect("the channel is up");
        let driver = self.driver.as_mut().expect("started");
        let script = agent::script(&step.argv, &step.env, step.cwd.as_deref());
        let ran = self.rt.block_on(async {
            link.upload(&step.upload, driver, sink).await?;
            let ran = link.run(&script, timeout, driver, sink).await?;
            if let (Some(into), false) = (&step.collect_into, step.collect.is_empty()) {
                link.collect(&step.collect, into, driver, sink).await?;
            }
            Ok(ran)
        });
        match ran {
            Ok(r) if r.timed_out => Err(Interrupt::TimedOut {
                what: "the command".into(),
                after: timeout,
            }),
            Ok(r) => Ok(Exit::Code(r.status)),
            Err(i) => Err(self.with_log(i)),
        }
    }

    fn run_step(&mut self, step: &Step, sink: &mut dyn Sink) -> Outcome {
        if self.link.is_some() {
            let timeout = step
                .timeout
                .unwrap_or(DEFAULT_TEST_TIMEOUT)
                .mul_f64(self.factor);
            return self.run_over_channel(step, timeout, sink);
        }
        let mut script = String::new();
        for (k, v) in &step.env {
            script.push_str(&format!("{k}={} ", shell_words::quote(v)));
        }
        script.push_str(&shell_words::join(&step.argv));
        let timeout = step
            .timeout
            .unwrap_or(DEFAULT_TEST_TIMEOUT)
            .mul_f64(self.factor);
        let deadline = Deadline::after(timeout, "the command");
        let prompt = self.console.prompt.clone();
        let driver = self.driver.as_mut().expect("started");
        let r = self
            .rt
            .block_on(driver.run(&script, &prompt, sink, &deadline));
        r.map(Exit::Code).map_err(|i| self.with_log(i))
    }

    /// An infra message about QEMU itself, with what it said in qemu.log.
    fn with_log(&self, i: Interrupt) -> Interrupt {
        match i {
            Interrupt::Infra(why) => {
                let said = std::fs::read_to_string(&self.log).unwrap_or_default();
                let said: Vec<&str> = said.lines().filter(|l| !l.starts_with("# ")).collect();
                if said.is_empty() {
                    Interrupt::Infra(why)
                } else {
                    let tail = said[said.len().saturating_sub(3)..].join(" | ");
                    Interrupt::Infra(format!("{why}; qemu.log: {tail}"))
                }
            }
            other => other,
        }
    }

    fn stop_vm(&mut self) {
        if let Some(mut d) = self.driver.take() {
            let _ = d.child.start_kill();
            let _ = self.rt.block_on(d.child.wait());
        }
    }
}

/// The last line a guest command printed, which usually says why it failed.
fn last_word(said: &str) -> &str {
    said.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(it printed nothing)")
}

/// The console of the boot a booted snapshot was saved after.
const BOOT_CONSOLE: &str = "boot-console.txt";

/// A sink that also keeps the console in a file.
struct Tee<'a> {
    inner: &'a mut dyn Sink,
    log: &'a mut File,
}

impl Sink for Tee<'_> {
    fn step(&mut self, name: &str) {
        self.inner.step(name)
    }

    fn output(&mut self, stream: Stream, bytes: &[u8]) -> Flow {
        if stream == Stream::Console {
            let _ = self.log.write_all(bytes);
        }
        self.inner.output(stream, bytes)
    }
}

/// A sink for reconcile's own commands in the guest: their output is
/// dropped, the console goes on as the test's.
struct Quiet<'a>(&'a mut dyn Sink);

impl Sink for Quiet<'_> {
    fn step(&mut self, name: &str) {
        self.0.step(name)
    }

    fn output(&mut self, stream: Stream, bytes: &[u8]) -> Flow {
        match stream {
            Stream::Stdout | Stream::Stderr => Flow::Continue,
            _ => self.0.output(stream, bytes),
        }
    }
}

/// How commands reach a booted guest: the agent's virtio ports or ssh.
enum Link {
    Agent(Channel),
    Ssh(Ssh),
}

impl Link {
    async fn upload(
        &mut self,
        files: &[crate::platform::Upload],
        driver: &mut Driver,
        sink: &mut dyn Sink,
    ) -> std::result::Result<(), Interrupt> {
        if files.is_empty() {
            return Ok(());
        }
        match self {
            Link::Agent(c) => c.upload(files, driver, sink).await,
            Link::Ssh(s) => s.upload(files, driver, sink).await,
        }
    }

    async fn run(
        &mut self,
        script: &str,
        limit: Duration,
        driver: &mut Driver,
        sink: &mut dyn Sink,
    ) -> std::result::Result<agent::Ran, Interrupt> {
        match self {
            Link::Agent(c) => c.run(script, limit, driver, sink).await,
            Link::Ssh(s) => s.run(script, limit, driver, sink).await,
        }
    }

    async fn collect(
        &mut self,
        patterns: &[String],
        into: &Path,
        driver: &mut Driver,
        sink: &mut dyn Sink,
    ) -> std::result::Result<usize, Interrupt> {
        match self {
            Link::Agent(c) => c.collect(patterns, into, driver, sink).await,
            Link::Ssh(s) => s.collect(patterns, into, driver, sink).await,
        }
    }
}

/// A sink that keeps a command's stdout to itself (the agent's starter says
/// why it failed there) and passes the console on.
struct Captured<'a> {
    inner: &'a mut dyn Sink,
    stdout: Vec<u8>,
}

impl Sink for Captured<'_> {
    fn step(&mut self, name: &str) {
        self.inner.step(name)
    }

    fn output(&mut self, stream: Stream, bytes: &[u8]) -> Flow {
        match stream {
            Stream::Stdout | Stream::Stderr => {
                self.stdout.extend_from_slice(bytes);
                Flow::Continue
            }
            _ => self.inner.output(stream, bytes),
        }
    }
}

/// A boot shown on this terminal and kept in the console log (`spawn` with a login).
struct Shown<'a> {
    log: &'a mut File,
}

impl Sink for Shown<'_> {
    fn step(&mut self, _name: &str) {}

    fn output(&mut self, _stream: Stream, bytes: &[u8]) -> Flow {
        let _ = self.log.write_all(bytes);
        let mut out = std::io::stdout();
        let _ = out.write_all(bytes).and_then(|()| out.flush());
        Flow::Continue
    }
}

fn host_arch() -> String {
    std::env::consts::ARCH.to_string()
}

fn package_of(program: &str) -> &'static str {
    match program {
        "qemu-system-x86_64" | "qemu-system-i386" => "qemu-system-x86",
        "qemu-system-aarch64" | "qemu-system-arm" => "qemu-system-arm",
        _ => "qemu-system",
    }
}

/// Refuse early what can never run: an accelerator that cannot be had.
fn check_runnable(vm: &Vm, arch: &str) -> Result<()> {
    decide(vm, arch).map(|_| ()).map_err(infra)
}

impl Instance for QemuInstance {
    fn start(&mut self, sink: &mut dyn Sink) -> std::result::Result<(), Interrupt> {
        sink.step("boot");
        let t0 = Instant::now();
        let mut r = match self.restore.take() {
            Some(r) => self.start_restored(r, sink),
            None => self.boot_up(sink).and_then(|()| self.prepare_cluster(sink)),
        };
        if let (Ok(()), Some(index)) = (&r, self.node) {
            r = self.join_cluster(index, sink);
        }
        if r.is_err() {
            if let Some(d) = self.driver.as_mut() {
                d.flush_partial(sink);
            }
        }
        if r.is_ok() {
            self.boot = Some(t0.elapsed());
        }
        r.map_err(|i| self.with_log(i))
    }

    fn run(&mut self, step: &Step, sink: &mut dyn Sink) -> Outcome {
        if self.driver.is_none() {
            self.start(sink)?;
        }
        sink.step(&step.name);
        let r = self.run_step(step, sink);
        if let Some(d) = self.driver.as_mut() {
            d.flush_partial(sink);
        }
        r
    }

    fn shutdown(&mut self, sink: &mut dyn Sink) -> std::result::Result<(), Interrupt> {
        let Some(driver) = self.driver.as_mut() else {
            return Ok(());
        };
        sink.step("shutdown");
        let deadline = Deadline::after(self.console.boot_timeout, "shutdown");
        let command = self.console.shutdown.clone();
        let status = self
            .rt
            .block_on(driver.shutdown(&command, sink, &deadline))
            .map_err(|i| self.with_log(i))?;
        self.driver = None;
        if status.success() {
            Ok(())
        } else {
            Err(self.with_log(Interrupt::Infra(format!(
                "QEMU exited with {status} after the shutdown command"
            ))))
        }
    }

    fn attach(&mut self, log: &Path) -> std::result::Result<(), Interrupt> {
        let mut file = File::create(log)
            .map_err(|e| Interrupt::Infra(format!("cannot write {}: {e}", log.display())))?;
        if self.driver.is_none() {
            self.spawn()?;
            if self.console.login.is_some() {
                // log in first, as a test does; the terminal shows the boot meanwhile
                let console = self.console.clone();
                let driver = self.driver.as_mut().expect("spawned");
                let mut shown = Shown { log: &mut file };
                let booted = self.rt.block_on(driver.boot(&console, &mut shown));
                booted.map_err(|i| self.with_log(i))?;
            }
        }
        let driver = self.driver.as_mut().expect("spawned");
        self.rt.block_on(terminal::attach(driver, &mut file))?;
        Ok(())
    }

    fn set_link(&mut self, up: bool) -> std::result::Result<(), Interrupt> {
        if self.launch.cluster.is_none() || self.driver.is_none() {
            return Err(Interrupt::Infra(
                "only a running VM of a cluster has a link to pull".into(),
            ));
        }
        let wiring = self.qmp.take();
        let mut monitor = self.monitor.take();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30).mul_f64(self.factor);
        let r = self.rt.block_on(async {
            tokio::time::timeout_at(deadline, async {
                let mut q = match (monitor.take(), wiring) {
                    (Some(q), _) => q,
                    (None, Some(w)) => w.connect().await?,
                    (None, None) => return Err("QEMU has no monitor".to_string()),
                };
                let r = q
                    .execute(
                        "set_link",
                        serde_json::json!({ "name": hub::NIC, "up": up }),
                    )
                    .await;
                r.map(|_| q)
            })
            .await
            .unwrap_or_else(|_| Err("QEMU's monitor did not answer in time".into()))
        });
        match r {
            Ok(q) => {
                self.monitor = Some(q);
                Ok(())
            }
            Err(e) => Err(self.with_log(Interrupt::Infra(format!(
                "cannot set the cluster link {}: {e}",
                if up { "up" } else { "down" }
            )))),
        }
    }

    fn facts(&self) -> Facts {
        Facts {
            accel: Some(self.launch.accel.name()),
            timeout_factor: (self.launch.accel == Accel::Tcg).then_some(self.factor),
            boot: self.boot,
            snapshot: self.snapshot.as_ref().map(|w| w.path.clone()),
            fresh: self.fresh.as_ref().map(|(how, _)| *how),
            fresh_note: self.fresh.as_ref().and_then(|(_, note)| note.clone()),
        }
    }

    fn keep(mut self: Box<Self>) -> Result<Option<PathBuf>> {
        self.stop_vm();
        let Some(w) = self.snapshot.take() else {
            return Ok(None);
        };
        // a kept overlay must not read through a toolchain snapshot a later
        // apply rebuilds in place: it keeps its own copy of what it read
        if let Some(overlay) = &w.disk {
            disk::flatten(overlay).map_err(|e| Error::io(overlay, e))?;
        }
        w.keep().map(Some)
    }
}

impl Drop for QemuInstance {
    fn drop(&mut self) {
        // the VM first: its overlay goes only once nothing has it open
        self.stop_vm();
        self.snapshot.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::MemorySize;

    fn launch(vm: Vm, boot: Boot) -> Vec<String> {
        Launch {
            arch: "amd64".into(),
            vm,
            accel: Accel::Tcg,
            boot,
            label: "reconcile-kit-3-x".into(),
            uefi_vars: None,
            channel: None,
            seed: None,
            ssh_port: None,
            qmp: None,
            incoming: None,
            rng: false,
            cluster: None,
        }
        .command()
        .1
    }

    #[test]
    fn disk_command_line() {
        let vm = Vm {
            memory: Some(MemorySize::parse("1G").unwrap()),
            cpus: Some(2),
            ..Vm::default()
        };
        let a = launch(
            vm,
            Boot::Disk {
                image: "/v/kit/kit-3-x/disk.qcow2".into(),
                format: DiskFormat::Qcow2,
                throwaway: true,
            },
        )
        .join(" ");
        assert!(a.contains("-machine pc,graphics=off"), "{a}");
        assert!(
            a.contains("-accel tcg,thread=multi -cpu max -m 1024 -smp 2"),
            "{a}"
        );
        assert!(
            a.contains("-drive file=/v/kit/kit-3-x/disk.qcow2,format=qcow2,cache=unsafe,if=none,id=disk0 -device virtio-blk-pci,drive=disk0"),
            "{a}"
        );
        assert!(
            a.contains("-serial stdio") && a.contains("-display none"),
            "{a}"
        );
        assert!(!a.contains("-nic"), "no network unless asked: {a}");
    }

    #[test]
    fn pxe_command_line_is_isolated_and_commas_are_escaped() {
        let a = launch(
            Vm::default(),
            Boot::Pxe {
                root: "/srv/tftp,x".into(),
                bootfile: "amd64/generic/kit/test/boot.ipxe".into(),
            },
        )
        .join(" ");
        assert!(
            a.contains("-netdev user,id=net0,restrict=on,tftp=/srv/tftp,,x,bootfile=amd64/generic/kit/test/boot.ipxe -device e1000,netdev=net0 -boot n"),
            "{a}"
        );
    }

    #[test]
    fn consoles_scale_under_tcg() {
        let c = Console {
            prompt: Some("kit# ".into()),
            boot_timeout: Some(Duration::from_secs(10)),
            ..Console::default()
        };
        let cfg = console_config(Some(&c), 4.0).unwrap();
        assert_eq!(cfg.boot_timeout, Duration::from_secs(40));
        assert_eq!(cfg.stall, DEFAULT_STALL_TIMEOUT * 4);
        assert!(cfg.prompt.is_match("BusyBox\nkit# "));
        assert!(!cfg.prompt.is_match("kit# echo hi"));
        assert_eq!(cfg.shutdown, DEFAULT_SHUTDOWN);
        let bad = Console {
            ready: Some("(".into()),
            ..Console::default()
        };
        assert!(console_config(Some(&bad), 1.0)
            .unwrap_err()
            .contains("ready"));
    }

    #[test]
    fn an_arm64_guest_gets_the_virt_machine_and_uefi_code() {
        let mut l = Launch {
            arch: "arm64".into(),
            vm: Vm {
                firmware: Firmware::Uefi,
                ..Vm::default()
            },
            accel: Accel::Tcg,
            boot: Boot::Disk {
                image: "/v/a.img".into(),
                format: DiskFormat::Raw,
                throwaway: true,
            },
            label: "reconcile-arm".into(),
            uefi_vars: Some("/s/vars.fd".into()),
            channel: None,
            seed: None,
            ssh_port: Some(40022),
            qmp: None,
            incoming: None,
            rng: false,
            cluster: None,
        };
        let (program, a) = l.command();
        let a = a.join(" ");
        assert_eq!(program, "qemu-system-aarch64");
        assert!(a.contains("-machine virt,graphics=off"), "{a}");
        assert!(a.contains("-cpu max,pauth-impdef=on"), "{a}");
        assert!(
            a.contains(
                "-nic user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22"
            ),
            "{a}"
        );
        if uefi_firmware("aarch64").is_some() {
            assert!(
                a.contains("AAVMF_CODE.fd") && a.contains("file=/s/vars.fd"),
                "{a}"
            );
        }
        l.vm.network = Network::User;
        let a = l.command().1.join(" ");
        assert!(
            a.contains("-nic user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:40022-:22"),
            "{a}"
        );
    }

    #[test]
    fn architectures_map_to_programs() {
        assert_eq!(program("amd64"), "qemu-system-x86_64");
        assert_eq!(program("x86_64"), "qemu-system-x86_64");
        assert_eq!(program("arm64"), "qemu-system-aarch64");
    }
}
