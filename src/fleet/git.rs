//! Pull-based GitOps: a checkout of one ref of a remote repository, kept by
//! driving the `git` command-line tool (present on every host; no libgit2),
//! each call with a timeout, never through a shell, the URL always after
//! `--`. Only fast-forward moves are taken unless rewinds are allowed, and
//! with an allowed-signers file a commit is taken only when its signature
//! verifies against it.
//!
//! Layout of the checkout directory `DIR` (`--checkout`):
//!
//! ```text
//! DIR/repo/      the work tree at the applied (or candidate) commit
//! DIR/git.json   url, ref, applied and fetched commits, the last error
//! ```
//!
//! A relative `state_dir` in the file resolves against `DIR`, beside the
//! work tree and never inside it: a fetch can never touch the journal.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::platform::{Flow, Interrupt, Sink, Stream};
use crate::state::now_rfc3339;

/// Where a fetched commit is kept in the checkout.
const FETCHED_REF: &str = "refs/reconcile/fetched";

/// What `--git …` says.
#[derive(Debug, Clone)]
pub struct Remote {
    pub url: String,
    /// A branch, tag or full ref on the remote.
    pub reference: String,
    /// The desired-state file inside the repository.
    pub path: PathBuf,
    /// `DIR` (see the module doc).
    pub dir: PathBuf,
    pub allow_rewind: bool,
    /// An ssh allowed-signers file: only commits signed by its keys are applied.
    pub allowed_signers: Option<PathBuf>,
    /// Each git call is killed after this long.
    pub timeout: Duration,
}

/// `DIR/git.json`: what `status` shows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub url: String,
    pub reference: String,
    /// The commit whose file is in force (applied, or at least loaded and converging).
    pub applied: Option<String>,
    pub applied_at: Option<String>,
    /// The newest commit fetched.
    pub fetched: Option<String>,
    pub fetched_at: Option<String>,
    /// The last thing that went wrong (a fetch, a refused commit); None once a fetch succeeds cleanly.
    pub last_error: Option<String>,
}

/// The outcome of one fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The fetched commit is the applied one.
    Unchanged(String),
    /// A new commit that may be applied; the work tree is at it now.
    New {
        commit: String,
        from: Option<String>,
    },
    /// A new commit that must not be applied (why); the work tree stays at the applied commit.
    Refused { commit: String, why: String },
}

/// The default `DIR`: /var/lib/reconcile for root, else the user's state directory.
pub fn default_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/reconcile");
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("reconcile");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/state/reconcile")
}

impl Remote {
    pub fn repo(&self) -> PathBuf {
        self.dir.join("repo")
    }

    /// The desired-state file in the work tree.
    pub fn file(&self) -> PathBuf {
        self.repo().join(&self.path)
    }

    fn record_path(&self) -> PathBuf {
        self.dir.join("git.json")
    }

    pub fn record(&self) -> Record {
        std::fs::read(self.record_path())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| Record {
                url: self.url.clone(),
                reference: self.reference.clone(),
                ..Record::default()
            })
    }

    pub fn save(&self, r: &Record) -> Result<()> {
        let path = self.record_path();
        let bytes = serde_json::to_vec_pretty(r).expect("a record serialises");
        crate::fsops::write_atomic(&path, &bytes).map_err(|e| Error::io(&path, e))
    }

    /// Record an error (a failed fetch, a refused commit) without losing the rest.
    pub fn note_error(&self, why: &str) {
        let mut r = self.record();
        r.last_error = Some(format!("{}: {why}", now_rfc3339()));
        let _ = self.save(&r);
    }

    /// Record that `commit` is in force.
    pub fn note_applied(&self, commit: &str) -> Result<()> {
        let mut r = self.record();
        r.applied = Some(commit.to_string());
        r.applied_at = Some(now_rfc3339());
        r.last_error = None;
        self.save(&r)
    }

    /// Run git in `cwd` with the remote's timeout (supervised like any
    /// step: killed with what it started when time is up); its stdout.
    fn git(&self, cwd: &Path, args: &[&str]) -> std::result::Result<String, String> {
        self.git_env(cwd, args, &[])
    }

    fn git_env(
        &self,
        cwd: &Path,
        args: &[&str],
        env: &[(&str, &Path)],
    ) -> std::result::Result<String, String> {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new("git");
        cmd.envs(env.iter().copied())
            .current_dir(cwd)
            // never a prompt, never a pager, no surprising transports, messages in English
            .args([
                "-c",
                "protocol.ext.allow=never",
                "-c",
                "core.pager=cat",
                "-c",
                "advice.detachedHead=false",
            ])
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .env("SSH_ASKPASS", "true")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let verb = verb(args);
        let child = cmd.spawn().map_err(|e| format!("cannot run git: {e}"))?;
        let mut out = Collect::default();
        let never = std::sync::atomic::AtomicBool::new(false);
        let kill = |c: &mut std::process::Child| {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        };
        match crate::platform::process::supervise(
            child,
            Some(self.timeout),
            &never,
            &kill,
            &mut out,
        ) {
            Err(e) => Err(format!("git {verb}: {e}")),
            Ok(Err(Interrupt::TimedOut { after, .. })) => Err(format!(
                "git {verb} did not finish within {}",
                humantime::format_duration(after)
            )),
            Ok(Err(i)) => Err(format!("git {verb}: {i}")),
            Ok(Ok(exit)) if exit.success() => {
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
            }
            Ok(Ok(exit)) => {
                let err = String::from_utf8_lossy(&out.stderr);
                let first = err
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim();
                Err(format!("git {verb} failed ({exit}): {first}"))
            }
        }
    }

    /// Fetch the ref, decide whether its commit may be applied, and if so put
    /// the work tree at it. Errors are fetch failures (the remote unreachable,
    /// the ref missing): the last good state stays in force.
    pub fn fetch(&self) -> Result<Fetched> {
        let fail = |why: String| {
            self.note_error(&why);
            Error::Usage(format!("git remote {}: {why}", self.url))
        };
        if self.url.starts_with('-') || self.reference.starts_with('-') {
            return Err(fail("a URL or ref may not start with `-`".into()));
        }
        let repo = self.repo();
        if !repo.join(".git").is_dir() {
            std::fs::create_dir_all(&repo).map_err(|e| Error::io(&repo, e))?;
            self.git(&repo, &["init", "--quiet"]).map_err(fail)?;
        }
        let refspec = format!("+{}:{FETCHED_REF}", self.reference);
        self.git(
            &repo,
            &[
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-recurse-submodules",
                "--",
                &self.url,
                &refspec,
            ],
        )
        .map_err(fail)?;
        let fetched = self
            .git(
                &repo,
                &[
                    "rev-parse",
                    "--verify",
                    &format!("{FETCHED_REF}^{{commit}}"),
                ],
            )
            .map_err(fail)?;
        let mut record = self.record();
        record.url = self.url.clone();
        record.reference = self.reference.clone();
        record.fetched = Some(fetched.clone());
        record.fetched_at = Some(now_rfc3339());
        let applied = record.applied.clone();
        if applied.as_deref() == Some(fetched.as_str()) {
            // reachable and nothing new: whatever went wrong before is over
            record.last_error = None;
        }
        self.save(&record)?;
        if applied.as_deref() == Some(fetched.as_str()) {
            // the work tree may have been changed by hand: put it back
            self.checkout(&fetched).map_err(fail)?;
            return Ok(Fetched::Unchanged(fetched));
        }
        if let Some(why) = self.refusal(applied.as_deref(), &fetched) {
            self.note_error(&format!("commit {} not applied: {why}", short(&fetched)));
            return Ok(Fetched::Refused {
                commit: fetched,
                why,
            });
        }
        self.checkout(&fetched).map_err(fail)?;
        Ok(Fetched::New {
            commit: fetched,
            from: applied,
        })
    }

    /// Why `fetched` must not replace `applied`, if it must not.
    fn refusal(&self, applied: Option<&str>, fetched: &str) -> Option<String> {
        let repo = self.repo();
        if let (Some(old), false) = (applied, self.allow_rewind) {
            let known = self
                .git(&repo, &["cat-file", "-e", &format!("{old}^{{commit}}")])
                .is_ok();
            if known
                && self
                    .git(&repo, &["merge-base", "--is-ancestor", old, fetched])
                    .is_err()
            {
                return Some(format!(
                    "{} does not descend from the applied commit {} (force-pushed or rewound; --allow-rewind takes it)",
                    self.reference,
                    short(old)
                ));
            }
        }
        if let Some(signers) = &self.allowed_signers {
            if let Err(e) = self.verify(&repo, signers, fetched) {
                return Some(format!(
                    "its signature does not verify against {} ({e})",
                    signers.display()
                ));
            }
        }
        None
    }

    /// `git verify-commit` against `trusted`: an ssh allowed-signers file, or
    /// a gpg keyring (armored or binary), imported into a keyring of its own
    /// so that only its keys count.
    fn verify(&self, repo: &Path, trusted: &Path, commit: &str) -> std::result::Result<(), String> {
        let head = std::fs::read(trusted)
            .map(|b| b.into_iter().take(64).collect::<Vec<u8>>())
            .map_err(|e| format!("{}: {e}", trusted.display()))?;
        let armored = head.starts_with(b"-----BEGIN PGP PUBLIC KEY BLOCK-----");
        // an OpenPGP public key packet (old or new format), or a keybox
        let binary = matches!(head.first(), Some(0x98 | 0x99 | 0xc6))
            || head.get(8..12) == Some(b"KBXf".as_slice());
        if !(armored || binary) {
            let file = format!("gpg.ssh.allowedSignersFile={}", trusted.display());
            return self
                .git(repo, &["-c", &file, "verify-commit", commit])
                .map(|_| ());
        }
        let home = Scratch::new(&self.dir.join(format!(".gnupg-{}", std::process::id())))
            .map_err(|e| format!("cannot make a keyring: {e}"))?;
        let import = Command::new("gpg")
            .env("GNUPGHOME", home.path())
            .args(["--batch", "--quiet", "--import"])
            .arg(trusted)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run gpg: {e}"))?;
        if !import.status.success() {
            return Err(format!(
                "gpg cannot import {}: {}",
                trusted.display(),
                String::from_utf8_lossy(&import.stderr).trim()
            ));
        }
        self.git_env(
            repo,
            &["verify-commit", commit],
            &[("GNUPGHOME", home.path())],
        )
        .map(|_| ())
    }

    /// Put the work tree's tracked files at `commit` (edits by hand undone).
    /// Untracked files are left alone: a root the file names inside the
    /// checkout (a relative `dir`) is never wiped by a fetch.
    fn checkout(&self, commit: &str) -> std::result::Result<(), String> {
        let repo = self.repo();
        self.git(
            &repo,
            &["checkout", "--quiet", "--force", "--detach", commit],
        )?;
        Ok(())
    }

    /// The work tree back at the applied commit (after a refused or invalid one).
    pub fn restore(&self) -> Result<()> {
        if let Some(applied) = self.record().applied {
            self.checkout(&applied)
                .map_err(|why| Error::Usage(format!("git remote {}: {why}", self.url)))?;
        }
        Ok(())
    }
}

/// The git command of `args` (`fetch`, `verify-commit`), past any `-c key=value`.
fn verb<'a>(args: &[&'a str]) -> &'a str {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "-c" => {
                it.next();
            }
            a if a.starts_with('-') => {}
            a => return a,
        }
    }
    "?"
}

/// What a git command printed.
#[derive(Default)]
struct Collect {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Sink for Collect {
    fn step(&mut self, _name: &str) {}

    fn output(&mut self, stream: Stream, bytes: &[u8]) -> Flow {
        match stream {
            Stream::Stdout => self.stdout.extend_from_slice(bytes),
            Stream::Stderr => self.stderr.extend_from_slice(bytes),
            _ => {}
        }
        Flow::Continue
    }
}

pub fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// A private directory removed when dropped (gpg's home for one verification).
struct Scratch(PathBuf);

impl Scratch {
    fn new(path: &Path) -> std::io::Result<Scratch> {
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::remove_dir_all(path);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(path)?;
        Ok(Scratch(path.to_path_buf()))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
