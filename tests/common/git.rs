//! Git helpers for the pull-mode tests: a farm repository committed to by
//! hand, ssh and gpg signing keys made on the fly, a watch in git mode.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::*;

pub const LIMIT: Duration = Duration::from_secs(30);

pub fn git(dir: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new("git");
    cmd.args([
        "-c",
        "user.email=ops@example.org",
        "-c",
        "user.name=ops",
        "-c",
        "init.defaultBranch=main",
    ])
    .args(args)
    .current_dir(dir);
    stdout_of(&mut cmd).trim().to_string()
}

/// The farm's repository (a plain one: file:// fetches from it) and a host
/// directory where plugins land (outside any checkout, as on a farm).
pub struct Fleet {
    pub farm: Farm,
    pub origin: PathBuf,
    pub checkout: PathBuf,
    pub plugins: PathBuf,
}

impl Fleet {
    pub fn new() -> Fleet {
        let farm = Farm::new();
        let origin = farm.path("origin");
        fs::create_dir_all(&origin).unwrap();
        git(&origin, &["init", "-q"]);
        Fleet {
            checkout: farm.path("host/reconcile"),
            plugins: farm.path("host/plugins"),
            origin,
            farm,
        }
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.origin.display())
    }

    /// Commit a farm file declaring these plugins (each a script printing its name).
    pub fn commit(&self, plugins: &[&str], extra: &str) -> String {
        self.stage(plugins, extra);
        self.commit_staged(&format!("farm: {plugins:?}"), &[], &[])
    }

    /// Commit what is in the origin's work tree, with more git arguments
    /// before `commit` (`-c gpg.format=ssh`…) and environment (GNUPGHOME).
    pub fn commit_staged(&self, message: &str, before: &[&str], env: &[(&str, &Path)]) -> String {
        git(&self.origin, &["add", "-A"]);
        let mut cmd = Command::new("git");
        cmd.args(["-c", "user.email=ops@example.org", "-c", "user.name=ops"])
            .args(before)
            .args(["commit", "-qm", message])
            .args(if before.is_empty() && env.is_empty() {
                &[][..]
            } else {
                &["-S"][..]
            })
            .current_dir(&self.origin);
        for (k, v) in env {
            cmd.env(k, v);
        }
        stdout_of(&mut cmd);
        git(&self.origin, &["rev-parse", "HEAD"])
    }

    /// Commit, signed with the ssh key `key`.
    pub fn commit_ssh_signed(&self, message: &str, key: &Path) -> String {
        self.commit_staged(
            message,
            &[
                "-c",
                "gpg.format=ssh",
                "-c",
                &format!("user.signingkey={}", key.display()),
            ],
            &[],
        )
    }

    /// Commit, signed with the gpg key `fpr` of the keyring `home`.
    pub fn commit_gpg_signed(&self, message: &str, home: &Path, fpr: &str) -> String {
        self.commit_staged(
            message,
            &["-c", &format!("user.signingkey={fpr}")],
            &[("GNUPGHOME", home)],
        )
    }

    /// Write a farm file declaring these plugins into the origin (not committed).
    pub fn stage(&self, plugins: &[&str], extra: &str) {
        let mut toml = String::from("version = 1\n");
        for p in plugins {
            fs::create_dir_all(self.origin.join("src")).unwrap();
            fs::write(
                self.origin.join(format!("src/{p}")),
                format!("#!/bin/sh\necho {p}\n"),
            )
            .unwrap();
            toml.push_str(&format!(
                "[plugin.{p}]\nversion = \"1\"\ndir = \"{}\"\nsource = {{ path = \"src/{p}\" }}\n",
                self.plugins.display()
            ));
        }
        toml.push_str(extra);
        fs::write(self.origin.join("farm.toml"), toml).unwrap();
    }

    pub fn args<'a>(&'a self, url: &'a str) -> Vec<&'a str> {
        vec![
            "--git",
            url,
            "--path",
            "farm.toml",
            "--checkout",
            self.checkout.to_str().unwrap(),
        ]
    }

    pub fn status(&self, url: &str) -> serde_json::Value {
        let mut a = vec!["status", "--json"];
        a.extend(self.args(url));
        let r = self.farm.run(&a);
        r.expect(0);
        serde_json::from_str(&r.stdout).unwrap()
    }

    pub fn installed(&self, p: &str) -> bool {
        self.plugins.join(p).join(p).exists()
    }

    pub fn watch(&self, url: &str, extra: &[&str]) -> Child {
        let mut a = vec!["watch", "--interval", "300ms", "--json"];
        a.extend(self.args(url));
        a.extend_from_slice(extra);
        self.farm
            .cmd(&a)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

pub fn stop(child: Child) -> String {
    interrupt(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An ssh key pair and an allowed-signers file trusting it.
pub fn keys(dir: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join("signing-key");
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "ops@example.org",
            "-f",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = fs::read_to_string(key.with_extension("pub")).unwrap();
    let signers = dir.join("allowed_signers");
    fs::write(&signers, format!("ops@example.org {public}")).unwrap();
    (key, signers)
}

/// A gpg signing key in a keyring of its own; its public key exported (armored) to `public`.
pub fn gpg_key(home: &Path, public: &Path, email: &str) -> String {
    fs::create_dir_all(home).unwrap();
    fs::set_permissions(home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let gpg = |args: &[&str]| {
        stdout_of(
            Command::new("gpg")
                .env("GNUPGHOME", home)
                .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
                .args(args),
        )
    };
    gpg(&[
        "--quick-gen-key",
        &format!("ops <{email}>"),
        "ed25519",
        "sign",
        "never",
    ]);
    let listing = gpg(&["--with-colons", "--list-secret-keys"]);
    let fpr = listing
        .lines()
        .find(|l| l.starts_with("fpr:"))
        .and_then(|l| l.split(':').nth(9))
        .unwrap()
        .to_string();
    fs::write(public, gpg(&["--armor", "--export", &fpr])).unwrap();
    fpr
}
