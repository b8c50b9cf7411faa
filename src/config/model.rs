//! The desired-state file as Rust types. The JSON Schema (`reconcile schema`,
//! `schema/reconcile.schema.json`) is generated from these definitions, so the
//! doc comments here are the file reference.

use std::collections::BTreeMap;

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::hosts::Selector;
use super::matcher::Spec;

pub use super::units::{FailureClass, Size};

/// The desired state of one build/test farm host.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DesiredFile {
    /// Format version of this file. Only `1` is understood.
    pub version: Option<u32>,
    /// Further files merged into this one (glob patterns, relative to this file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Where reconcile keeps its own state.
    pub settings: Option<Settings>,
    /// Storage volumes that hold machines.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volume: BTreeMap<String, Volume>,
    /// Machines: root filesystems or disk images kept as revisions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub machine: BTreeMap<String, Machine>,
    /// Netboot images published into a TFTP tree.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub image: BTreeMap<String, Image>,
    /// Versioned executables and bundles.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plugin: BTreeMap<String, Plugin>,
    /// EC2-compatible clouds machine images are published to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cloud: BTreeMap<String, Cloud>,
    /// Console checks added to the built-in list.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub check: BTreeMap<String, Check>,
    /// Test suites.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub suite: BTreeMap<String, Suite>,
    /// Tests that are skipped (or only warn) until a date.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip: Vec<Skip>,
    /// The test plan `apply` runs after converging.
    pub run: Option<Run>,
    /// Settings of `reconcile watch`.
    pub watch: Option<Watch>,
}

/// Settings of reconcile itself.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Directory for the lock, the journal, the download cache and test runs.
    /// Default `.reconcile` beside the file.
    pub state_dir: Option<String>,
    /// Largest total size an archive may unpack to, e.g. `"8 GiB"` (default).
    pub extract_limit: Option<Size>,
    /// This host's labels for `hosts = ["label:key=value"]`: a file of
    /// `key=value` lines (`#` comments), e.g. `/etc/reconcile/labels`.
    pub labels_file: Option<String>,
    /// Largest size of each log a test writes (`stdout.txt`, `stderr.txt`,
    /// `console.txt`, `journal.txt`), e.g. `"256 MiB"` (default): past it
    /// the test stops and fails as `infra` (a guest flooding its console).
    pub log_limit: Option<Size>,
    /// Memory the VMs of a test run may use together, e.g. `"8 GiB"`: a
    /// VM starts only when its `vm.memory` fits beside the running ones.
    /// Default: what /proc/meminfo says is available when the run starts,
    /// less 256 MiB.
    pub vm_memory: Option<Size>,
    /// Test runs kept in the runs directory, newest first (default 20):
    /// older ones are removed after each run. The run `latest` names and
    /// runs still running are never removed.
    pub keep_runs: Option<u32>,
}

/// A storage volume holding machines in the buildos layout.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// Directory of the volume (relative to this file).
    pub path: String,
    /// Storage backend.
    #[serde(default)]
    pub backend: Backend,
    /// What prune may delete.
    #[serde(default)]
    pub prune: Prune,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// btrfs when the path is on btrfs, plain directories otherwise.
    #[default]
    Auto,
    /// btrfs subvolumes and snapshots.
    Btrfs,
    /// Plain directories with reflink copies where supported.
    Dir,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Prune {
    /// Delete only what reconcile made (has a receipt).
    #[default]
    Owned,
    /// buildos behaviour: also stray subvolumes and undeclared machines.
    All,
    /// Delete nothing.
    None,
}

/// What is done when a tree reconcile published was changed outside it
/// (a file edited, added or deleted) while its desired state stayed the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DriftMode {
    /// Put it back as published (the next apply, or watch at once).
    #[default]
    Repair,
    /// Report it (plan exits 2, watch logs it and counts it in its metrics
    /// and status) and leave it as it is, like Flux's `driftDetection: warn`.
    /// A change of the desired state is still applied.
    Warn,
}

impl DriftMode {
    pub fn is_repair(&self) -> bool {
        *self == DriftMode::Repair
    }
}

/// A machine kept as revisions, with per-toolchain snapshots.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Machine {
    /// Hosts this is for: globs over the host name (`build-*`), label
    /// selectors (`label:arch=arm64`), `!` to exclude. Default: every host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<String>")]
    pub hosts: Vec<Selector>,
    /// Volume that holds the machine. Default `default`.
    #[serde(default = "default_volume")]
    pub volume: String,
    /// Current revision (a positive integer).
    pub revision: u32,
    /// What the source is.
    #[serde(default)]
    pub kind: MachineKind,
    /// Where the revision comes from.
    pub source: Source,
    /// CPU architecture, e.g. `x86_64`.
    pub arch: Option<String>,
    /// Distribution, e.g. `debian`.
    pub distro: Option<String>,
    /// Distribution version, e.g. `12.4`; test version ranges compare against it.
    pub version: Option<String>,
    /// Older revisions kept for rollback.
    #[serde(default = "default_keep")]
    pub keep: u32,
    /// Clouds each revision is also published to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clouds: Vec<String>,
    /// Bootstrapped snapshots per toolchain.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub toolchain: BTreeMap<String, Toolchain>,
    /// How a disk machine boots in QEMU.
    pub vm: Option<Vm>,
    /// How a disk machine's serial console is driven.
    pub console: Option<Console>,
    /// cloud-init user data for its VMs (a `#cloud-config` document or a
    /// script), attached as a NoCloud seed (`cidata`); a suite's wins.
    pub user_data: Option<String>,
    /// The same, read from a file (relative to the file that declares it).
    pub user_data_file: Option<String>,
    /// Test a new revision before it becomes current: it is built beside the
    /// current one as a candidate, the suites named run on it, and the link
    /// switches only when every test passed.
    pub promote: Option<Promote>,
}

/// A promotion gate: what a candidate must pass before it is switched in.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Promote {
    /// Suites run on the candidate (their tests on this machine, at the
    /// candidate revision, whatever the current link says).
    pub after: Vec<String>,
}

fn default_volume() -> String {
    "default".to_string()
}

fn default_keep() -> u32 {
    2
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MachineKind {
    /// A root filesystem tree (tar archive or directory) to run commands in.
    #[default]
    Rootfs,
    /// A raw or qcow2 disk image to boot.
    Disk,
}

impl MachineKind {
    /// A disk machine boots (in QEMU); a root filesystem is a tree to run commands in.
    pub fn boots(self) -> bool {
        self == MachineKind::Disk
    }
}

/// How a disk machine or netboot image boots in QEMU (`qemu-system-<arch>`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// Guest memory in QEMU's units: `512M`, `2G` (binary; a bare number is MiB). Default `512M`.
    pub memory: Option<MemorySize>,
    /// Virtual CPUs. Default 1.
    pub cpus: Option<u32>,
    /// Firmware: `bios` (SeaBIOS) or `uefi` (OVMF, when installed).
    #[serde(default)]
    pub firmware: Firmware,
    /// Accelerator: `auto` (KVM when usable, TCG otherwise), `kvm` (an error
    /// when KVM is unusable) or `tcg` (software emulation).
    #[serde(default)]
    pub accel: Accel,
    /// Under TCG every timeout (boot, stall, test) is multiplied by this. Default 4.
    pub tcg_timeout_factor: Option<f64>,
    /// QEMU machine type. Default `pc` for x86, `virt` for Arm and RISC-V.
    pub machine: Option<String>,
    /// Bus the disk is attached to. Default `virtio`.
    #[serde(default)]
    pub disk_bus: DiskBus,
    /// Network: `none` (default; a PXE boot still gets its isolated boot
    /// network) or `user` (QEMU user networking with outbound access).
    #[serde(default)]
    pub network: Network,
    /// How commands reach the guest: `agent` (default: a shell loop started
    /// from the console login runs each command over virtio-serial ports, with
    /// stdin from /dev/null, stdout and stderr apart and no terminal),
    /// `ssh` (the same over SSH, for images running sshd: a loopback port
    /// forwarded to the guest's port 22) or `console` (typed on the serial
    /// console, output read back from it).
    #[serde(default)]
    pub transport: Transport,
    /// Further arguments appended to the QEMU command line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qemu_args: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// A command channel over virtio-serial, served by a POSIX `sh` loop.
    #[default]
    Agent,
    /// The login shell on the serial console.
    Console,
    /// SSH to the guest's sshd through a loopback port QEMU forwards; the
    /// key is authorised and the host keys read over the serial console.
    Ssh,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    #[default]
    Bios,
    Uefi,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    #[default]
    Virtio,
    Ide,
    Scsi,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    #[default]
    None,
    User,
}

/// Memory in QEMU's `-m` units: a number of MiB, or a number with `K`, `M`,
/// `G` or `T` (binary, optionally written `MiB`, `GiB`…).
#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[schemars(with = "String")]
pub struct MemorySize {
    pub mib: u64,
}

impl MemorySize {
    pub fn parse(s: &str) -> Result<MemorySize, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a memory size (write e.g. \"512M\" or \"2G\")"))?;
        let mib = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "M" | "MB" | "MIB" => Some(n),
            "K" | "KB" | "KIB" => Some(n / 1024),
            "G" | "GB" | "GIB" => n.checked_mul(1024),
            "T" | "TB" | "TIB" => n.checked_mul(1024 * 1024),
            _ => return Err(format!("`{s}`: unknown unit `{unit}` (use M or G)")),
        };
        match mib {
            Some(m) if m > 0 => Ok(MemorySize { mib: m }),
            _ => Err(format!("`{s}` is not a usable memory size")),
        }
    }
}

impl<'de> Deserialize<'de> for MemorySize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Number(n) => n.to_string(),
            Raw::Text(t) => t,
        };
        MemorySize::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Serialize for MemorySize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}M", self.mib))
    }
}

/// How the serial console of a VM is driven: what to wait for, how to log in
/// and how to shut down. Regexes use Rust syntax.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Console {
    /// A console line matching this means the guest is up; the prompt is awaited after it.
    pub ready: Option<String>,
    /// The shell prompt, matched against the end of the current (unterminated)
    /// console line with terminal control sequences stripped. Default `[#$] $`.
    pub prompt: Option<String>,
    /// Answer `login:` (and `Password:`) before the prompt.
    pub login: Option<Login>,
    /// Shell command that powers the guest off (toolchain bootstraps end with
    /// it). Default `poweroff`.
    pub shutdown: Option<String>,
    /// From QEMU's start to the prompt, e.g. `"120s"` (default; scaled under TCG).
    #[serde(default, with = "super::units::duration")]
    #[schemars(with = "Option<String>")]
    pub boot_timeout: Option<Duration>,
    /// A test (or boot) fails as `infra` when the console prints nothing for
    /// this long, e.g. `"60s"` (default; scaled under TCG).
    #[serde(default, with = "super::units::duration")]
    #[schemars(with = "Option<String>")]
    pub stall_timeout: Option<Duration>,
}

/// Credentials typed at the console's login prompt (for test VMs only).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub user: String,
    pub password: Option<String>,
}

/// A toolchain bootstrapped in a snapshot of the current revision.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Toolchain {
    /// Command run inside the snapshot (argv).
    pub bootstrap: Vec<String>,
    /// Time limit of the bootstrap, e.g. `30m`.
    #[serde(default, with = "super::units::duration")]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Duration>,
}

/// Where content comes from, checked when the file is read: exactly one
/// location, and nothing a `dir` cannot have.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(try_from = "SourceTable", into = "SourceTable")]
pub struct Source {
    pub location: SourceLocation,
    pub sha256: Option<String>,
    pub format: Option<ArchiveFormat>,
    pub strip_components: Option<u32>,
    /// An incremental `btrfs-send` stream: the revision it was sent against.
    pub parent: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceLocation {
    /// A local file (an archive or a single file).
    Path(String),
    /// A local directory, copied as it is.
    Dir(String),
    /// `http://`, `https://` or `file://`.
    Url(String),
}

impl Source {
    pub fn url(&self) -> Option<&str> {
        match &self.location {
            SourceLocation::Url(u) => Some(u),
            _ => None,
        }
    }
    pub fn is_dir(&self) -> bool {
        matches!(self.location, SourceLocation::Dir(_))
    }
}

/// Where content comes from: exactly one of `path`, `dir` or `url`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Source")]
pub struct SourceTable {
    /// A local file (an archive or a single file), relative to the file naming it.
    pub path: Option<String>,
    /// A local directory copied as it is.
    pub dir: Option<String>,
    /// A remote file: `http://`, `https://` or `file://`.
    pub url: Option<String>,
    /// SHA-256 of the file, 64 hex digits. Required for `url` unless pinned in `reconcile.lock`.
    pub sha256: Option<String>,
    /// Archive format; guessed from the name when absent.
    pub format: Option<ArchiveFormat>,
    /// Leading path components removed from archive entries.
    pub strip_components: Option<u32>,
    /// For an incremental `btrfs-send` stream: the machine revision it was
    /// sent against (kept on this host).
    pub parent: Option<u32>,
}

impl TryFrom<SourceTable> for Source {
    type Error = String;

    fn try_from(t: SourceTable) -> Result<Source, String> {
        let location =
            match (t.path, t.dir, t.url) {
                (Some(p), None, None) => SourceLocation::Path(p),
                (None, Some(d), None) => SourceLocation::Dir(d),
                (None, None, Some(u)) => SourceLocation::Url(u),
                (None, None, None) => {
                    return Err(
                        "a source needs exactly one of `path`, `dir` or `url` (it has none)".into(),
                    )
                }
                _ => return Err(
                    "a source needs exactly one of `path`, `dir` or `url` (it has more than one)"
                        .into(),
                ),
            };
        if matches!(location, SourceLocation::Dir(_))
            && (t.sha256.is_some() || t.format.is_some() || t.strip_components.is_some())
        {
            return Err("a `dir` source takes no `sha256`, `format` or `strip_components`".into());
        }
        if t.parent.is_some() && t.format != Some(ArchiveFormat::BtrfsSend) {
            return Err(
                "`parent` is for incremental streams: it needs format = \"btrfs-send\"".into(),
            );
        }
        Ok(Source {
            location,
            sha256: t.sha256,
            format: t.format,
            strip_components: t.strip_components,
            parent: t.parent,
        })
    }
}

impl From<Source> for SourceTable {
    fn from(s: Source) -> SourceTable {
        let (mut path, mut dir, mut url) = (None, None, None);
        match s.location {
            SourceLocation::Path(p) => path = Some(p),
            SourceLocation::Dir(d) => dir = Some(d),
            SourceLocation::Url(u) => url = Some(u),
        }
        SourceTable {
            path,
            dir,
            url,
            sha256: s.sha256,
            format: s.format,
            strip_components: s.strip_components,
            parent: s.parent,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ArchiveFormat {
    /// Not an archive: the file itself.
    File,
    /// Uncompressed tar.
    Tar,
    /// gzip-compressed tar (`.tar.gz`, `.tgz`).
    TarGz,
    /// xz-compressed tar (`.tar.xz`, `.txz`).
    TarXz,
    /// zstd-compressed tar (`.tar.zst`, `.tzst`).
    TarZst,
    /// zip archive.
    Zip,
    /// A `btrfs send` stream (raw, or compressed with zstd, gzip or xz), for
    /// a machine on a btrfs volume: received with `btrfs receive`.
    BtrfsSend,
}

/// A netboot image published into `<root>/<arch>/<subarch>/<release>/<purpose>/`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Hosts this is for: globs over the host name (`build-*`), label
    /// selectors (`label:arch=arm64`), `!` to exclude. Default: every host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<String>")]
    pub hosts: Vec<Selector>,
    /// Root of the TFTP tree (relative to this file).
    pub root: String,
    pub arch: String,
    #[serde(default = "default_subarch")]
    pub subarch: String,
    pub release: String,
    pub purpose: String,
    /// Files one by one: name → source.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, Source>,
    /// Or one archive holding all files.
    pub source: Option<Source>,
    /// An iPXE boot script rendered from the kernel, initrd and command line.
    pub ipxe: Option<Ipxe>,
    /// How the image boots in QEMU (a suite's `images`).
    pub vm: Option<Vm>,
    /// How its serial console is driven.
    pub console: Option<Console>,
    /// Drift of the published tree: `repair` (default) or `warn`.
    #[serde(default, skip_serializing_if = "DriftMode::is_repair")]
    pub drift: DriftMode,
    /// Test new content before PXE clients get it: it is published beside
    /// the tree as a candidate (a name no TFTP client asks for), the suites
    /// named boot it from there, and it is exchanged in only when every
    /// test passed.
    pub promote: Option<Promote>,
}

/// The iPXE script an image with `ipxe` carries; a PXE client boots it.
pub const IPXE_SCRIPT: &str = "boot.ipxe";

impl Image {
    /// `<root>/<arch>/<subarch>/<release>/<purpose>`, where the image is published.
    pub fn target(&self) -> std::path::PathBuf {
        std::path::Path::new(&self.root)
            .join(&self.arch)
            .join(&self.subarch)
            .join(&self.release)
            .join(&self.purpose)
    }
}

fn default_subarch() -> String {
    "generic".to_string()
}

/// iPXE boot script settings.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Ipxe {
    /// File name of the kernel among the image files.
    pub kernel: String,
    /// File name of the initrd among the image files.
    pub initrd: Option<String>,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: String,
}

/// A plugin installed in `<dir>/<name>/`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Plugin {
    /// Hosts this is for: globs over the host name (`build-*`), label
    /// selectors (`label:arch=arm64`), `!` to exclude. Default: every host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<String>")]
    pub hosts: Vec<Selector>,
    /// Version; checked against the archive's `plugin.json` when it has one.
    pub version: String,
    /// Directory that holds plugins (relative to this file). Default `plugins`
    /// beside the main file.
    pub dir: Option<String>,
    /// The archive or executable.
    pub source: Source,
    /// Name of the executable. Default: the plugin's name.
    pub bin: Option<String>,
    /// Drift of the installed tree: `repair` (default) or `warn`.
    #[serde(default, skip_serializing_if = "DriftMode::is_repair")]
    pub drift: DriftMode,
}

impl Plugin {
    /// The plugin directory; absolute once the file is loaded.
    pub fn dir(&self) -> &str {
        self.dir.as_deref().unwrap_or("plugins")
    }
}

/// An EC2-compatible cloud.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cloud {
    pub provider: CloudProvider,
    pub region: String,
    /// Endpoint URL of any EC2-compatible service (EC2 and EBS direct both
    /// answer there). Default: AWS's regional endpoints.
    pub endpoint: Option<String>,
    /// Profile of the shared AWS config and credentials files. Credentials
    /// never come from this file: the environment, that profile, a web
    /// identity token or the instance's role supply them.
    pub profile: Option<String>,
    /// Where a web identity token (a CI's OIDC role) is exchanged for
    /// credentials (`AssumeRoleWithWebIdentity`). Default: the region's STS,
    /// `https://sts.REGION.amazonaws.com`; `AWS_ENDPOINT_URL_STS` wins over
    /// it. Never `endpoint`: the token goes to STS only, and over plain http
    /// only to a loopback address.
    pub sts_endpoint: Option<String>,
    /// Instance type of the cloud executor's instances when a suite does not
    /// name one. Default `t3.micro`.
    pub instance_type: Option<String>,
    /// Blocks uploaded at once when publishing a revision. Default 8.
    pub uploads_in_flight: Option<u32>,
    /// Test a machine's new revision in this cloud before it is launched:
    /// its image is registered tagged `reconcile:state = candidate`, the
    /// suites named (executor `cloud`, this cloud) launch it, and only when
    /// every test passed is it tagged `current` (the one before it
    /// `previous`). The cloud executor launches the `current` image.
    pub promote: Option<Promote>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CloudProvider {
    /// Amazon EC2 or any EC2-compatible endpoint.
    Ec2,
}

/// A console check: a regex scanned over console, journal or output.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// Regular expression (Rust regex syntax).
    pub regex: String,
    #[serde(default)]
    pub severity: Severity,
    #[serde(default)]
    pub scope: Scope,
    /// Report only once this many lines have matched (e.g. kola's "ten bonding
    /// link messages"). Default 1.
    pub count: Option<u32>,
    /// Match the regex against this many consecutive lines joined by `\n`,
    /// for a pattern that spans lines (use `(?s)` to let `.` cross them). Default 1.
    pub lines: Option<u32>,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Reported, never fails the test.
    Info,
    /// The test passes with a warning.
    Warn,
    /// The test fails.
    #[default]
    Fail,
    /// Stops the test at once.
    Fatal,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The serial console (or the combined output where there is no console).
    #[default]
    Console,
    /// The systemd journal.
    Journal,
    /// The test's stdout and stderr.
    Output,
    /// All of them.
    Any,
}

/// A test suite.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Suite {
    /// Hosts this is for: globs over the host name (`build-*`), label
    /// selectors (`label:arch=arm64`), `!` to exclude. Default: every host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<String>")]
    pub hosts: Vec<Selector>,
    /// Machines each test runs on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub machines: Vec<String>,
    /// Netboot images each test boots diskless over PXE (executor `qemu`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// Toolchain snapshot the working snapshots are made from.
    pub toolchain: Option<String>,
    #[serde(default)]
    pub executor: Executor,
    /// The cloud the `cloud` executor launches instances in.
    pub cloud: Option<String>,
    /// Instance type for the `cloud` executor. Default: the cloud's, else `t3.micro`.
    pub instance_type: Option<String>,
    /// Tests run at once in this suite.
    pub parallel: Option<u32>,
    /// Directory of executables, each one a test (relative to this file).
    pub dir: Option<String>,
    /// A tag every test of the suite needs to be selected with `--tag`.
    pub required_tag: Option<String>,
    /// cloud-init user data for the suite's VMs, instead of the machine's.
    pub user_data: Option<String>,
    /// The same, read from a file (relative to the file that declares it).
    pub user_data_file: Option<String>,
    /// Environment of every test of the suite (a test's `env` adds to it and wins).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory of every test (a test's `cwd` wins): absolute, or
    /// relative to where the executor starts (the snapshot for `host`, `/`
    /// elsewhere).
    pub cwd: Option<String>,
    /// Files copied into the guest before each test (executor `qemu`):
    /// guest path → `{ path, mode }`. Each is written to a temporary name
    /// and renamed, so nothing ever sees half a file.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upload: BTreeMap<String, Upload>,
    /// Guest files (absolute glob patterns) copied into the test's run folder
    /// after each test, also when it failed or timed out (executor `qemu`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collect: Vec<String>,
    /// How each test gets a fresh disk machine (executor `qemu`): `restore`
    /// (default: the machine is booted once, paused and saved; every test
    /// gets a new overlay and QEMU restored from that state, "just booted")
    /// or `boot` (a full boot per test).
    pub fresh: Option<Fresh>,
    /// Give each test this many fresh machines of the suite's machine
    /// (executor `qemu`, disk machines), on one private network only they
    /// share: node `i` has a second NIC with address `10.0.77.(i+1)/24`.
    /// `run` runs on node 0; a test's `on` runs steps on the others first.
    pub cluster: Option<u32>,
    /// Tests of the suite.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub test: BTreeMap<String, Test>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Fresh {
    /// Restore a saved, booted state onto a new overlay.
    #[default]
    Restore,
    /// Boot from the disk.
    Boot,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    /// A process on the host.
    #[default]
    Host,
    /// Inside the snapshot's root filesystem, in new namespaces (root).
    Namespace,
    /// A QEMU virtual machine with a serial console.
    Qemu,
    /// An instance launched from the published image.
    Cloud,
}

impl Executor {
    /// As the file writes it.
    pub fn name(self) -> &'static str {
        match self {
            Executor::Host => "host",
            Executor::Namespace => "namespace",
            Executor::Qemu => "qemu",
            Executor::Cloud => "cloud",
        }
    }
}

/// One test.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Test {
    /// Command (argv).
    pub run: Vec<String>,
    #[serde(default)]
    pub expect: Expect,
    /// Time limit, e.g. `60s`.
    #[serde(default, with = "super::units::duration")]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Architectures the test runs on; `!x` excludes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    /// Distributions the test runs on; `!x` excludes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub distros: Vec<String>,
    /// Platforms (executors) the test runs on; `!x` excludes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    /// Lowest machine version (inclusive).
    pub min_version: Option<String>,
    /// First machine version no longer tested (exclusive).
    pub end_version: Option<String>,
    /// Console checks suppressed for this test: check name → reason.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skip_checks: BTreeMap<String, String>,
    /// Retries per failure class (`test`, `check`, `timeout`, `infra`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retries: BTreeMap<FailureClass, u32>,
    /// Environment of the command, over the suite's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory of the command, instead of the suite's.
    pub cwd: Option<String>,
    /// Files copied into the guest before the test, besides the suite's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub upload: BTreeMap<String, Upload>,
    /// Guest files copied into the run folder after the test, besides the suite's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collect: Vec<String>,
    /// Steps on the nodes of the suite's `cluster` before `run` (which runs
    /// on node 0): node index → a command (argv), a link fault (`{ link =
    /// "down", node = 1 }`) or a list of them; in index order.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub on: BTreeMap<String, OnSteps>,
}

/// What a test does on one node of its cluster before `run`: a command
/// (`["cmd", "arg"]`), a link fault (`{ link = "down" }`, `{ link = "up",
/// node = 1 }`), or a list of them (`[["cmd"], { link = "down" }]`), in order.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(
    untagged,
    expecting = "an `on` step is a command ([\"cmd\", \"arg\"]), a link fault ({ link = \"down\" or \"up\", node = 1 }), or a list of them"
)]
pub enum OnSteps {
    /// One step.
    One(OnStep),
    /// Several, in order.
    Steps(Vec<OnStep>),
}

/// One step of an `on` list: a command or a link fault.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(
    untagged,
    expecting = "an `on` step is a command ([\"cmd\", \"arg\"]) or a link fault ({ link = \"down\" or \"up\", node = 1 })"
)]
pub enum OnStep {
    Command(Vec<String>),
    Link(LinkStep),
}

impl OnSteps {
    /// The steps, in order.
    pub fn steps(&self) -> Vec<OnStep> {
        match self {
            OnSteps::One(step) => vec![step.clone()],
            OnSteps::Steps(s) => s.clone(),
        }
    }
}

/// Pull a node's cable, or plug it back in (QMP `set_link` on its cluster NIC).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkStep {
    /// `down` pulls the cable (the guest sees its carrier go), `up` plugs it back in.
    pub link: LinkState,
    /// The node whose link changes. Default: the node the step is listed under.
    pub node: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    Up,
    Down,
}

/// A file copied into a guest before a test.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Upload {
    /// The file on this host (relative to the file that declares it).
    pub path: String,
    /// Permission bits in octal, e.g. `"0755"`. Default `"0644"`.
    pub mode: Option<String>,
}

impl Upload {
    /// The mode bits, when `mode` is octal and at most `07777`.
    pub fn mode_bits(&self) -> Result<u32, String> {
        let m = self.mode.as_deref().unwrap_or("0644");
        match u32::from_str_radix(m, 8) {
            Ok(b) if b <= 0o7777 && !m.is_empty() => Ok(b),
            _ => Err(format!(
                "mode `{m}` is not octal permission bits (write e.g. \"0755\")"
            )),
        }
    }
}

/// What a test's output must look like.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Exit status. Default 0.
    pub exit: Option<i32>,
    /// Matchers: `"text"`, `"!text"`, `"/regex/"`, `"!/regex/"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<String>")]
    pub stdout: Vec<Spec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<String>")]
    pub stderr: Vec<Spec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(with = "Vec<String>")]
    pub console: Vec<Spec>,
}

/// A skip-list entry.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Skip {
    /// Glob over `suite.test` names.
    pub pattern: String,
    pub reason: String,
    pub tracker: Option<String>,
    /// Date after which the entry is an error (`YYYY-MM-DD`).
    #[schemars(with = "Option<String>")]
    pub until: Option<toml::value::Datetime>,
    /// Run the test, but a failure only warns.
    #[serde(default)]
    pub warn: bool,
}

/// The test plan `apply` runs after converging.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Run {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suites: Vec<String>,
    /// Glob patterns over `suite.test` names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tests: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// Settings of `reconcile watch`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Watch {
    /// Run the `[run]` tests after each converge in watch mode. Default false.
    #[serde(default)]
    pub test: bool,
}
