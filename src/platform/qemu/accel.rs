//! KVM or TCG. KVM is used only when `/dev/kvm` opens for writing and the CPU
//! exposes hardware virtualisation (vmx/svm): a `/dev/kvm` without them (a VM
//! without nested virtualisation) accepts guests that then hang, so the probe
//! never starts one to find out.

use std::sync::OnceLock;

use crate::config::model::Accel as Declared;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Why KVM cannot run a guest of `arch` here (None: it can). Probed once per process.
pub fn kvm_unusable(arch: &str) -> Option<String> {
    static HOST: OnceLock<Option<String>> = OnceLock::new();
    let host = std::env::consts::ARCH;
    if super::normalise_arch(arch) != host {
        return Some(format!("the guest is {arch}, the host {host}"));
    }
    HOST.get_or_init(|| {
        if let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
        {
            return Some(format!("cannot open /dev/kvm: {e}"));
        }
        if matches!(host, "x86_64" | "x86") {
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            if !cpu_virtualises(&cpuinfo) {
                return Some(
                    "the CPU exposes no vmx/svm (no nested virtualisation): KVM guests would hang"
                        .into(),
                );
            }
        }
        None
    })
    .clone()
}

fn cpu_virtualises(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// The accelerator for a declared choice, or why the declared one cannot be had.
pub fn choose(declared: Declared, arch: &str) -> Result<(Accel, Option<String>), String> {
    match declared {
        Declared::Tcg => Ok((Accel::Tcg, None)),
        Declared::Auto => Ok(match kvm_unusable(arch) {
            None => (Accel::Kvm, None),
            Some(why) => (Accel::Tcg, Some(why)),
        }),
        Declared::Kvm => match kvm_unusable(arch) {
            None => Ok((Accel::Kvm, None)),
            Some(why) => Err(format!(
                "vm.accel = \"kvm\" but KVM is unusable here: {why} (use accel = \"auto\" to fall back to TCG)"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmx_or_svm_in_the_flags_line() {
        assert!(cpu_virtualises("processor: 0\nflags : fpu vme vmx sse\n"));
        assert!(cpu_virtualises("flags\t\t: fpu svm\n"));
        assert!(!cpu_virtualises("flags : fpu vme sse4_2 hypervisor\n"));
        // a word containing vmx is not the flag
        assert!(!cpu_virtualises("flags : fpu vmx_ept\nmodel name: vmx\n"));
    }

    #[test]
    fn a_foreign_guest_never_gets_kvm() {
        let other = if std::env::consts::ARCH == "aarch64" {
            "x86_64"
        } else {
            "aarch64"
        };
        assert!(kvm_unusable(other).is_some());
        assert_eq!(choose(Declared::Tcg, other), Ok((Accel::Tcg, None)));
        assert!(choose(Declared::Kvm, other).is_err());
        assert_eq!(choose(Declared::Auto, other).unwrap().0, Accel::Tcg);
    }
}
