//! Pull-based GitOps: a checkout of one ref of a remote repository, kept by
//! driving the `git` command-line tool (present on every host; no libgit2),
//! each call with a timeout, never through a shell, the URL always after
//! `--`. Only fast-forward moves are taken unless rewinds are allowed, and
//! with a trust file (`--verify-signatures FILE`) a commit is taken only when
//! its signature verifies against that file and nothing else.
//!
//! Layout of the checkout directory `DIR` (`--checkout`), which must belong
//! to root or to the user running reconcile and be writable by no one else:
//!
//! ```text
//! DIR/repo/      the work tree: always at the applied commit (and only ever
//!                moved to a commit that passed every check)
//! DIR/git.json   url, ref, applied and fetched commits, the last error
//! ```
//!
//! Every git (and gpg) call runs with a configuration and a home of
//! reconcile's own: no system or global git config, no `GIT_*` variable of
//! the caller's (but the ssh transport's), a throwaway GnuPG home. A commit
//! that is only being looked at (`plan --git`, `status --git`) is read from
//! an export of its own ([`Remote::export`]), so the work tree never moves
//! for a preview.
//!
//! A relative `state_dir` in the file resolves against `DIR`, beside the
//! work tree and never inside it: a fetch can never touch the journal.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::error::{Error, Result};
use crate::fsops::{Beneath, Exposed};
use crate::process::{Flow, Interrupt, Sink, Stream};
use crate::state::now_rfc3339;

/// Why a fetched commit's signature is not taken, in words.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("it has no signature, and only commits signed by a key in {file} are applied")]
    Unsigned { file: String },
    #[error("it is signed with {what}, and {file} trusts ssh or gpg keys only")]
    OtherFormat { what: String, file: String },
    #[error("it is signed with a gpg key, and {file} is an ssh allowed-signers file: only its ssh keys are trusted")]
    GpgForSsh { file: String },
    #[error(
        "it is signed with an ssh key, and {file} is a gpg keyring: only its gpg keys are trusted"
    )]
    SshForGpg { file: String },
    #[error("signed by a key not in {file} ({key})")]
    UnknownKey { file: String, key: String },
    #[error("bad signature ({detail})")]
    Bad { detail: String },
    /// The trust file itself refuses everything (missing, empty, unreadable).
    #[error("{0}")]
    Trust(String),
    /// gpg's own verdict (a bad or unknown signature, in its words).
    #[error("{0}")]
    Gpg(String),
    #[error("cannot read the commit: {0}")]
    Unreadable(GitError),
    /// The verification itself did not run to its end.
    #[error(transparent)]
    Git(#[from] GitError),
}

/// A git command that did not give its answer.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git: {0}")]
    Spawn(std::io::Error),
    #[error("git {verb} did not finish within {}", humantime::format_duration(*.after))]
    TimedOut {
        verb: String,
        after: std::time::Duration,
    },
    #[error("git {verb}: {why}")]
    Interrupted { verb: String, why: String },
    /// Only `verify-commit` ends this way: it ran, and the signature did not verify.
    #[error("git {verb} did not verify: {stderr}")]
    Unverified { verb: String, stderr: String },
    #[error("git {verb} failed ({exit}): {first_line}")]
    Failed {
        verb: String,
        exit: String,
        first_line: String,
    },
}

/// Where a commit fetched to be applied is kept in the checkout.
const FETCHED_REF: &str = "refs/reconcile/fetched";
/// Where a commit fetched only to be looked at (`plan --git`) is kept.
const PREVIEW_REF: &str = "refs/reconcile/preview";
const RECORD: &str = "git.json";
/// Largest trust file read.
const MAX_TRUST_FILE: u64 = 16 << 20;

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
    /// An ssh allowed-signers file or a gpg keyring: only commits signed by its keys are applied.
    pub allowed_signers: Option<PathBuf>,
    /// Each git call is killed after this long.
    pub timeout: Duration,
    /// The host the file is taken as (`--hostname`; default: this host).
    pub hostname: Option<String>,
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
    /// The last thing that went wrong: a fetch that failed (cleared by the next
    /// fetch that works) or a commit not taken (kept until a later commit is applied).
    pub last_error: Option<String>,
    /// The commit `last_error` refused, if it refused one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// Who fetches: an apply (the work tree may follow) or a preview (nothing moves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Apply,
    Preview,
}

/// The outcome of one fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The fetched commit is the applied one.
    Unchanged(String),
    /// A new commit that passed every check (fast-forward, signature); nothing moved yet.
    New {
        commit: String,
        from: Option<String>,
    },
    /// A new commit that must not be applied (why).
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

static SCRATCH: AtomicU32 = AtomicU32::new(0);

impl Remote {
    pub fn repo(&self) -> PathBuf {
        self.dir.join("repo")
    }

    /// The desired-state file in the work tree.
    pub fn file(&self) -> PathBuf {
        self.repo().join(&self.path)
    }

    fn refuse(&self, why: String) -> Error {
        Error::State {
            path: self.dir.clone(),
            reason: why,
        }
    }

    /// `DIR`, opened and checked like the state dir: a real directory of root
    /// or of this user, writable by no one else, below no directory others
    /// could swap it in; `DIR/repo` (when there) a real directory of the same
    /// owners. Created (0700) when missing and `create`; None when missing.
    fn checked(&self, create: bool) -> Result<Option<Beneath>> {
        let io = |e| Error::io(&self.dir, e);
        if create && std::fs::symlink_metadata(&self.dir).is_err() {
            if let Some(parent) = self.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            use std::os::unix::fs::DirBuilderExt;
            match std::fs::DirBuilder::new().mode(0o700).create(&self.dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io(e)),
                _ => {}
            }
        }
        let Some(dir) = Beneath::open_existing_dir(&self.dir).map_err(io)? else {
            return Ok(None);
        };
        let me = nix::unistd::geteuid().as_raw();
        let owners = [0, me];
        match crate::fsops::check_private(&self.dir, &dir, &owners).map_err(io)? {
            Ok(()) => {}
            Err(Exposed::Owner(uid)) => {
                return Err(self.refuse(format!(
                    "the checkout directory belongs to uid {uid}, not to root or to uid {me} running reconcile: \
                     whoever owns it decides what is applied; chown it, or pass --checkout DIR of your own"
                )))
            }
            Err(Exposed::Writable(mode)) => {
                return Err(self.refuse(format!(
                    "the checkout directory is writable by others (mode {mode:o}); `chmod go-w` it"
                )))
            }
            Err(Exposed::Ancestor(p)) => {
                return Err(self.refuse(format!(
                    "{} above the checkout directory is writable by everyone without the sticky bit",
                    p.display()
                )))
            }
        }
        match dir.try_stat(Path::new(RECORD)) {
            Ok(Some(st)) if st.kind != crate::fsops::beneath::Kind::File => {
                return Err(self.refuse(format!(
                    "{RECORD} is a {}, not reconcile's record: remove it",
                    crate::fsops::beneath::kind_name(st.kind)
                )))
            }
            Ok(_) => {}
            Err(e) => return Err(Error::io(self.dir.join(RECORD), e)),
        }
        for rel in ["repo", "repo/.git"] {
            match dir.try_stat(Path::new(rel)) {
                Ok(None) => break,
                Ok(Some(st)) if st.kind != crate::fsops::beneath::Kind::Dir => {
                    return Err(self.refuse(format!(
                        "{rel} is a {}, not a directory of reconcile's: remove it (reconcile makes a fresh clone)",
                        crate::fsops::beneath::kind_name(st.kind)
                    )))
                }
                Ok(Some(st)) if !owners.contains(&st.uid) => {
                    return Err(self.refuse(format!(
                        "{rel} belongs to uid {}, not to root or to uid {me}: a repository of someone else's is never used; remove it",
                        st.uid
                    )))
                }
                Ok(Some(st)) if st.mode & 0o022 != 0 => {
                    return Err(self.refuse(format!(
                        "{rel} is writable by others (mode {:o}); `chmod go-w` it",
                        st.mode & 0o777
                    )))
                }
                Ok(Some(_)) => {}
                Err(e) => return Err(Error::io(self.dir.join(rel), e)),
            }
        }
        Ok(Some(dir))
    }

    /// `DIR` as it is, checked (see [`Remote::checked`]); nothing is made.
    pub fn check(&self) -> Result<()> {
        self.checked(false).map(|_| ())
    }

    /// The record, read without following a symlink (a default one when there is none).
    pub fn record(&self) -> Record {
        Beneath::open_existing_dir(&self.dir)
            .ok()
            .flatten()
            .and_then(|d| d.read(Path::new(RECORD), 1 << 20).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| Record {
                url: self.url.clone(),
                reference: self.reference.clone(),
                ..Record::default()
            })
    }

    pub fn save(&self, r: &Record) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(r).expect("a record serialises");
        let dir = self
            .checked(true)?
            .ok_or_else(|| self.refuse("the checkout directory is missing".into()))?;
        dir.write_atomic(Path::new(RECORD), &bytes, 0o600)
            .map_err(|e| Error::io(self.dir.join(RECORD), e))
    }

    /// Record a fetch that failed (cleared by the next fetch that works).
    pub fn note_error(&self, why: &str) {
        let mut r = self.record();
        r.last_error = Some(format!("{}: {why}", now_rfc3339()));
        let _ = self.save(&r);
    }

    /// Record a commit not taken, and why (kept until a later commit is applied).
    pub fn note_refused(&self, commit: &str, why: &str) {
        let mut r = self.record();
        r.last_error = Some(format!("{}: {why}", now_rfc3339()));
        r.refused = Some(commit.to_string());
        let _ = self.save(&r);
    }

    /// Record that `commit` is in force.
    pub fn note_applied(&self, commit: &str) -> Result<()> {
        let mut r = self.record();
        if r.applied.as_deref() != Some(commit) {
            // a later commit (or a first one) applied: what went wrong before is over
            r.last_error = None;
            r.refused = None;
        }
        r.applied = Some(commit.to_string());
        r.applied_at = Some(now_rfc3339());
        self.save(&r)
    }

    /// Run git in `cwd` with the remote's timeout (supervised like any
    /// step: killed with what it started when time is up); its stdout.
    fn git(&self, cwd: &Path, args: &[&str]) -> std::result::Result<String, GitError> {
        self.git_env(cwd, args, &[]).map(|(out, _)| out)
    }

    /// [`Remote::git`] with more environment; stdout and stderr, also when it
    /// fails (`Err` then says how, with the first line it printed).
    fn git_env(
        &self,
        cwd: &Path,
        args: &[&str],
        env: &[(&str, &Path)],
    ) -> std::result::Result<(String, String), GitError> {
        match self.git_full(cwd, args, env)? {
            (true, out, err) => Ok((out, err)),
            (false, _, err) => Err(GitError::Unverified {
                verb: verb(args).to_string(),
                stderr: err.trim().to_string(),
            }),
        }
    }

    /// Run git with a configuration of reconcile's own: (success, stdout, stderr
    /// or, on failure, the command and its first line of stderr).
    fn git_full(
        &self,
        cwd: &Path,
        args: &[&str],
        env: &[(&str, &Path)],
    ) -> std::result::Result<(bool, String, String), GitError> {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new("git");
        // nothing of the caller's git setup counts: not its config files, not
        // GIT_CONFIG_COUNT/GIT_CONFIG_PARAMETERS, not GIT_DIR; the ssh transport's
        // settings stay (they say how to reach the remote, not what to trust)
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if (k.starts_with("GIT_") && !k.starts_with("GIT_SSH")) || k == "GNUPGHOME" {
                cmd.env_remove(k.as_ref());
            }
        }
        cmd.env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", &self.dir)
            .env("XDG_CONFIG_HOME", &self.dir)
            // no gpg key anywhere but where a verification puts its own
            .env("GNUPGHOME", self.dir.join(".gnupg-none"))
            .envs(env.iter().copied())
            .current_dir(cwd)
            // never a prompt, a pager, a hook or a surprising transport; messages in English
            .args([
                "-c",
                "protocol.ext.allow=never",
                "-c",
                "core.pager=cat",
                "-c",
                "core.hooksPath=/dev/null",
                "-c",
                "core.fsmonitor=false",
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
        let child = cmd.spawn().map_err(GitError::Spawn)?;
        let mut out = Collect::default();
        let never = std::sync::atomic::AtomicBool::new(false);
        let kill = |c: &mut std::process::Child| {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        };
        let stdout = |o: &Collect| String::from_utf8_lossy(&o.stdout).trim().to_string();
        let stderr = |o: &Collect| String::from_utf8_lossy(&o.stderr).into_owned();
        match crate::process::child::supervise(child, Some(self.timeout), &never, &kill, &mut out) {
            Err(e) => Err(GitError::Interrupted {
                verb: verb.to_string(),
                why: e.to_string(),
            }),
            Ok(Err(Interrupt::TimedOut { after, .. })) => Err(GitError::TimedOut {
                verb: verb.to_string(),
                after,
            }),
            Ok(Err(i)) => Err(GitError::Interrupted {
                verb: verb.to_string(),
                why: i.to_string(),
            }),
            Ok(Ok(exit)) if exit.success() => Ok((true, stdout(&out), stderr(&out))),
            Ok(Ok(_)) if verb == "verify-commit" => Ok((false, stdout(&out), stderr(&out))),
            Ok(Ok(exit)) => {
                let err = stderr(&out);
                let first = err
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim();
                Err(GitError::Failed {
                    verb: verb.to_string(),
                    exit: exit.to_string(),
                    first_line: first.to_string(),
                })
            }
        }
    }

    /// The repository, made when missing (`DIR` checked first).
    fn repository(&self) -> Result<PathBuf> {
        self.checked(true)?;
        let repo = self.repo();
        if !repo.join(".git").is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            match std::fs::DirBuilder::new().mode(0o700).create(&repo) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                    return Err(Error::io(&repo, e))
                }
                _ => {}
            }
            self.git(&repo, &["init", "--quiet"])
                .map_err(|why| self.refuse(why.to_string()))?;
        }
        Ok(repo)
    }

    /// Fetch the ref and decide whether its commit may be applied. An apply's
    /// fetch records what it saw in `DIR/git.json`; a preview's records
    /// nothing. Nothing is checked out here. Errors are fetch failures (the
    /// remote unreachable, the ref missing): the last good state stays in force.
    pub fn fetch(&self, role: Role) -> Result<Fetched> {
        let fail = |why: GitError| {
            let why = why.to_string();
            if role == Role::Apply {
                self.note_error(&why);
            }
            Error::Usage(format!("git remote {}: {why}", self.url))
        };
        if self.url.starts_with('-') || self.reference.starts_with('-') {
            let why = "a URL or ref may not start with `-`";
            if role == Role::Apply {
                self.note_error(why);
            }
            return Err(Error::Usage(format!("git remote {}: {why}", self.url)));
        }
        let repo = self.repository()?;
        let into = match role {
            Role::Apply => FETCHED_REF,
            Role::Preview => PREVIEW_REF,
        };
        let refspec = format!("+{}:{into}", self.reference);
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
                &["rev-parse", "--verify", &format!("{into}^{{commit}}")],
            )
            .map_err(fail)?;
        let mut record = self.record();
        let applied = record.applied.clone();
        if role == Role::Apply {
            record.url = self.url.clone();
            record.reference = self.reference.clone();
            record.fetched = Some(fetched.clone());
            record.fetched_at = Some(now_rfc3339());
            if record.refused.is_none() {
                // reachable: a fetch error before is over (a refused commit is not)
                record.last_error = None;
            }
            self.save(&record)?;
        }
        if applied.as_deref() == Some(fetched.as_str()) {
            return Ok(Fetched::Unchanged(fetched));
        }
        if let Some(why) = self.refusal(applied.as_deref(), &fetched) {
            let why = format!("commit {} not applied: {why}", short(&fetched));
            if role == Role::Apply {
                self.note_refused(&fetched, &why);
            }
            return Ok(Fetched::Refused {
                commit: fetched,
                why,
            });
        }
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
        let trusted = self.allowed_signers.as_deref()?;
        self.verify(&repo, trusted, fetched)
            .err()
            .map(|r| r.to_string())
    }

    /// `commit`'s signature checked against `file` and nothing else; the
    /// reason in words when it does not verify.
    fn verify(&self, repo: &Path, file: &Path, commit: &str) -> std::result::Result<(), Refusal> {
        let shown = file.display().to_string();
        let trust = Trust::read(file).map_err(Refusal::Trust)?;
        let object = self
            .git(repo, &["cat-file", "commit", commit])
            .map_err(Refusal::Unreadable)?;
        let signature = Signature::of(&object);
        let abs = std::path::absolute(file).map_err(|e| Refusal::Trust(format!("{shown}: {e}")))?;
        let file = shown.clone();
        match (&signature, &trust) {
            (Signature::None, _) => return Err(Refusal::Unsigned { file }),
            (Signature::Other(what), _) => {
                return Err(Refusal::OtherFormat {
                    what: what.to_string(),
                    file,
                })
            }
            (Signature::Gpg, Trust::Ssh { .. }) => return Err(Refusal::GpgForSsh { file }),
            (Signature::Ssh { .. }, Trust::Gpg) => return Err(Refusal::SshForGpg { file }),
            _ => {}
        }

        match (&signature, trust) {
            (Signature::Ssh { fingerprint }, Trust::Ssh { fingerprints }) => {
                let signers = format!("gpg.ssh.allowedSignersFile={}", abs.display());
                let (ok, _, err) = self.git_full(
                    repo,
                    &[
                        "-c",
                        "gpg.format=ssh",
                        "-c",
                        "gpg.ssh.program=ssh-keygen",
                        "-c",
                        &signers,
                        "verify-commit",
                        commit,
                    ],
                    &[],
                )?;
                if ok {
                    return Ok(());
                }
                let key = fingerprint
                    .as_deref()
                    .unwrap_or("an unreadable key")
                    .to_string();
                if !fingerprints
                    .iter()
                    .any(|f| Some(f.as_str()) == fingerprint.as_deref())
                {
                    return Err(Refusal::UnknownKey { file, key });
                }
                Err(Refusal::Bad {
                    detail: format!("{key}: {}", reason(&err)),
                })
            }
            (Signature::Gpg, Trust::Gpg) => {
                let home = Scratch::new(&self.scratch_path("gnupg"))
                    .map_err(|e| Refusal::Gpg(format!("cannot make a keyring: {e}")))?;
                let import = Command::new("gpg")
                    .env("GNUPGHOME", home.path())
                    .args(["--batch", "--quiet", "--status-fd", "1", "--import"])
                    .arg(&abs)
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| Refusal::Gpg(format!("cannot run gpg: {e}")))?;
                let status = String::from_utf8_lossy(&import.stdout);
                let imported = status
                    .lines()
                    .find_map(|l| l.strip_prefix("[GNUPG:] IMPORT_RES "))
                    .and_then(|r| r.split(' ').next())
                    .and_then(|n| n.parse::<u32>().ok())
                    .unwrap_or(0);
                if imported == 0 {
                    return Err(Refusal::Trust(format!(
                        "{shown} holds no gpg key gpg can import ({}): nothing is trusted, so no commit is applied",
                        reason(&String::from_utf8_lossy(&import.stderr))
                    )));
                }
                let (ok, _, err) = self.git_full(
                    repo,
                    &[
                        "-c",
                        "gpg.format=openpgp",
                        "-c",
                        "gpg.program=gpg",
                        "verify-commit",
                        "--raw",
                        commit,
                    ],
                    &[("GNUPGHOME", home.path())],
                )?;
                gpg_verdict(ok, &err, &shown).map_err(Refusal::Gpg)
            }
            _ => unreachable!("mismatched kinds are refused above"),
        }
    }

    fn scratch_path(&self, what: &str) -> PathBuf {
        self.dir.join(format!(
            ".{what}-{}-{}",
            std::process::id(),
            SCRATCH.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Put the work tree's tracked files at `commit` (edits by hand undone).
    /// Untracked files are left alone: a root the file names inside the
    /// checkout (a relative `dir`) is never wiped by a fetch.
    pub fn checkout(&self, commit: &str) -> Result<()> {
        let repo = self.repository()?;
        self.git(
            &repo,
            &["checkout", "--quiet", "--force", "--detach", commit],
        )
        .map_err(|why| Error::Usage(format!("git remote {}: {why}", self.url)))?;
        Ok(())
    }

    /// The work tree back at the applied commit (tracked files as committed).
    pub fn restore(&self) -> Result<()> {
        match self.record().applied {
            Some(applied) => self.checkout(&applied),
            None => Ok(()),
        }
    }

    /// Paths under `within` (relative to the work tree) that are not as the
    /// applied commit has them: changed, added or ignored files, as
    /// `git status` sees them.
    pub fn hand_edits(&self, within: &[PathBuf]) -> Result<Vec<PathBuf>> {
        if within.is_empty() {
            return Ok(Vec::new());
        }
        let repo = self.repository()?;
        let mut args = vec![
            "status",
            "--porcelain=v1",
            "-z",
            "--untracked-files=all",
            "--ignored=matching",
            "--",
        ];
        let specs: Vec<String> = within
            .iter()
            .map(|p| format!(":(literal){}", p.display()))
            .collect();
        args.extend(specs.iter().map(String::as_str));
        let out = self
            .git_env(&repo, &args, &[])
            .map_err(|why| Error::Usage(format!("git remote {}: {why}", self.url)))?
            .0;
        // entries `XY path\0`; a rename adds its source after a NUL
        let mut paths = Vec::new();
        let mut it = out.split('\0');
        while let Some(entry) = it.next() {
            if entry.len() < 4 {
                continue;
            }
            let (code, path) = entry.split_at(3);
            paths.push(PathBuf::from(path));
            if code.starts_with('R') || code.starts_with('C') {
                it.next();
            }
        }
        Ok(paths)
    }

    /// Remove `paths` (relative to the work tree) when git sees them as
    /// untracked or ignored files: files added by hand where the desired
    /// state reads. Tracked files and directories are never touched.
    pub fn remove_untracked(&self, paths: &[PathBuf]) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        let repo = self.repository()?;
        let specs: Vec<String> = paths
            .iter()
            .map(|p| format!(":(literal){}", p.display()))
            .collect();
        let mut args = vec!["clean", "-f", "-x", "-q", "--"];
        args.extend(specs.iter().map(String::as_str));
        self.git(&repo, &args)
            .map(|_| ())
            .map_err(|why| Error::Usage(format!("git remote {}: {why}", self.url)))
    }

    /// The files of `commit` in a directory of their own (removed when the
    /// [`Tree`] is dropped), written by git from its objects with an index of
    /// their own: the work tree and its index never move.
    pub fn export(&self, commit: &str) -> Result<Tree> {
        let repo = self.repository()?;
        let dir = self.scratch_path("tree");
        let tree = Tree {
            dir: Scratch::new(&dir).map_err(|e| Error::io(&dir, e))?,
            commit: commit.to_string(),
        };
        let index = dir.with_extension("index");
        let work = format!("--work-tree={}", dir.display());
        let r = self.git_env(
            &repo,
            &[&work, "read-tree", "--reset", "-u", commit],
            &[("GIT_INDEX_FILE", &index)],
        );
        let _ = std::fs::remove_file(&index);
        r.map_err(|why| Error::Usage(format!("git remote {}: {why}", self.url)))?;
        Ok(tree)
    }
}

/// The files of one commit, exported (see [`Remote::export`]).
pub struct Tree {
    dir: Scratch,
    commit: String,
}

impl Tree {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn commit(&self) -> &str {
        &self.commit
    }
}

/// What a trust file trusts: the keys of an ssh allowed-signers file (by
/// fingerprint) or a gpg keyring (armored or binary).
enum Trust {
    Ssh { fingerprints: Vec<String> },
    Gpg,
}

impl Trust {
    /// Read `file`: missing, unreadable or empty trusts nothing, which refuses every commit.
    fn read(file: &Path) -> std::result::Result<Trust, String> {
        let shown = file.display();
        let bytes = crate::fsops::read_regular(file, MAX_TRUST_FILE).map_err(|e| {
            format!("{shown} cannot be read ({e}): nothing is trusted, so no commit is applied")
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(format!(
                "{shown} is empty: it trusts no key, so no commit is applied"
            ));
        }
        let head = &bytes[..bytes.len().min(64)];
        let armored = head.starts_with(b"-----BEGIN PGP PUBLIC KEY BLOCK-----");
        // an OpenPGP public key packet (old or new format), or a keybox
        let binary = matches!(head.first(), Some(0x98 | 0x99 | 0xc6))
            || head.get(8..12) == Some(b"KBXf".as_slice());
        if armored || binary {
            return Ok(Trust::Gpg);
        }
        let fingerprints = allowed_signers(&String::from_utf8_lossy(&bytes));
        if fingerprints.is_empty() {
            return Err(format!(
                "{shown} holds no ssh public key (a line is `PRINCIPALS [OPTIONS] KEYTYPE BASE64-KEY`) \
                 and no gpg key: nothing is trusted, so no commit is applied"
            ));
        }
        Ok(Trust::Ssh { fingerprints })
    }
}

/// The `SHA256:…` fingerprints of the keys of an allowed-signers file.
fn allowed_signers(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        for pair in words.windows(2) {
            if let Some(fp) = key_fingerprint(pair[0], pair[1]) {
                out.push(fp);
                break;
            }
        }
    }
    out
}

/// The fingerprint of the key `blob` (base64) of type `kind`, when it is one.
fn key_fingerprint(kind: &str, blob: &str) -> Option<String> {
    let key_type = ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-sha2-"]
        .iter()
        .any(|p| kind.starts_with(p));
    if !key_type {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .ok()?;
    // the blob begins with its own type as an ssh string
    let (name, _) = ssh_string(&raw)?;
    (name == kind.as_bytes()).then(|| fingerprint(&raw))
}

fn fingerprint(key: &[u8]) -> String {
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha2::Sha256::digest(key))
    )
}

/// An ssh wire-format string at the start of `b`, and what follows it.
fn ssh_string(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let body = b.get(4..4 + len)?;
    Some((body, &b[4 + len..]))
}

/// A commit's signature, as its object carries it.
#[derive(Debug, PartialEq, Eq)]
enum Signature {
    None,
    /// An ssh signature and the fingerprint of the key it names (when readable).
    Ssh {
        fingerprint: Option<String>,
    },
    Gpg,
    /// Something else (an X.509 signature): what.
    Other(&'static str),
}

impl Signature {
    /// From `git cat-file commit` output: the `gpgsig` (or `gpgsig-sha256`)
    /// header and its continuation lines.
    fn of(object: &str) -> Signature {
        let mut lines = object.lines();
        let mut sig: Vec<&str> = Vec::new();
        while let Some(line) = lines.next() {
            if line.is_empty() {
                break;
            }
            let Some(first) = line
                .strip_prefix("gpgsig ")
                .or_else(|| line.strip_prefix("gpgsig-sha256 "))
            else {
                continue;
            };
            sig.push(first);
            let rest: Vec<&str> = lines
                .clone()
                .take_while(|l| l.starts_with(' '))
                .map(|l| &l[1..])
                .collect();
            sig.extend(rest);
            break;
        }
        let Some(armor) = sig.first() else {
            return Signature::None;
        };
        if armor.starts_with("-----BEGIN SSH SIGNATURE-----") {
            let body: String = sig
                .iter()
                .skip(1)
                .take_while(|l| !l.starts_with("-----END"))
                .map(|l| l.trim())
                .collect();
            // SSHSIG, version, then the public key as an ssh string
            let fingerprint = base64::engine::general_purpose::STANDARD
                .decode(body)
                .ok()
                .and_then(|raw| {
                    let rest = raw.strip_prefix(b"SSHSIG")?.get(4..)?;
                    ssh_string(rest).map(|(key, _)| fingerprint(key))
                });
            return Signature::Ssh { fingerprint };
        }
        if armor.starts_with("-----BEGIN PGP SIGNATURE-----") {
            return Signature::Gpg;
        }
        if armor.starts_with("-----BEGIN SIGNED MESSAGE-----") {
            return Signature::Other("an X.509 certificate");
        }
        Signature::Other("a signature of an unknown kind")
    }
}

/// What gpg said of a signature (`git verify-commit --raw`'s status lines).
fn gpg_verdict(ok: bool, status: &str, shown: &str) -> std::result::Result<(), String> {
    let field = |tag: &str| {
        status.lines().find_map(|l| {
            l.strip_prefix("[GNUPG:] ")
                .and_then(|l| l.strip_prefix(tag))
                .map(|rest| rest.trim().to_string())
        })
    };
    if ok && field("GOODSIG ").is_some() {
        return Ok(());
    }
    if let Some(bad) = field("BADSIG ") {
        return Err(format!(
            "bad signature (gpg key {})",
            bad.split(' ').next().unwrap_or("?")
        ));
    }
    if let Some(k) = field("EXPKEYSIG ") {
        return Err(format!(
            "signed by an expired key (gpg key {})",
            k.split(' ').next().unwrap_or("?")
        ));
    }
    if let Some(k) = field("REVKEYSIG ") {
        return Err(format!(
            "signed by a revoked key (gpg key {})",
            k.split(' ').next().unwrap_or("?")
        ));
    }
    if let Some(e) = field("ERRSIG ") {
        // ERRSIG <keyid> <pkalgo> <hashalgo> <class> <time> <rc> [<fpr>]
        let parts: Vec<&str> = e.split(' ').collect();
        let key = parts.get(6).or(parts.first()).copied().unwrap_or("?");
        if field("NO_PUBKEY ").is_some() || parts.get(5) == Some(&"9") {
            return Err(format!("signed by a key not in {shown} (gpg key {key})"));
        }
        return Err(format!("its signature cannot be checked (gpg key {key})"));
    }
    Err(format!(
        "its signature does not verify against {shown} ({})",
        reason(status)
    ))
}

/// The lines of a verifier's message that say why it refused (never its "Good …" lines).
fn reason(text: &str) -> String {
    let why: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Good ") && !l.starts_with("[GNUPG:]"))
        .collect();
    if why.is_empty() {
        "no reason given".into()
    } else {
        crate::output::escape(&why.join("; ")).into_owned()
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

/// A private directory removed when dropped (gpg's home for one verification, an export).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_told_by_its_armor_and_an_ssh_one_names_its_key() {
        assert_eq!(
            Signature::of("tree 1\nauthor a\n\nmessage\n"),
            Signature::None
        );
        // a header in the message is no signature
        assert_eq!(
            Signature::of("tree 1\n\ngpgsig -----BEGIN PGP SIGNATURE-----\n"),
            Signature::None
        );
        let gpg = "tree 1\ngpgsig -----BEGIN PGP SIGNATURE-----\n \n iQ\n -----END PGP SIGNATURE-----\n\nm\n";
        assert_eq!(Signature::of(gpg), Signature::Gpg);
        let x509 = "tree 1\ngpgsig -----BEGIN SIGNED MESSAGE-----\n x\n -----END SIGNED MESSAGE-----\n\nm\n";
        assert!(matches!(Signature::of(x509), Signature::Other(_)));
        // a real ssh signature (ssh-keygen -Y sign) of a commit
        let ssh = "tree fd43\ngpgsig -----BEGIN SSH SIGNATURE-----\n U1NIU0lHAAAAAQAAADMAAAALc3NoLWVkMjU1MTkAAAAgPephVIfcPoikKEUyIDzJFZkxg2\n F76L3DGa0HZzVbaCkAAAADZ2l0AAAAAAAAAAZzaGE1MTIAAABTAAAAC3NzaC1lZDI1NTE5\n AAAAQCQT0WY60nk3Plp/T1bXmChJWg6yP9PFlnMhegHjpK9EH2CCKSA9fahM/TE8RNSrq0\n XFns/X6V9n3XKnq5ttOQg=\n -----END SSH SIGNATURE-----\n\none\n";
        let Signature::Ssh {
            fingerprint: Some(fp),
        } = Signature::of(ssh)
        else {
            panic!("{:?}", Signature::of(ssh))
        };
        // the same key as an allowed-signers line has the same fingerprint
        let line = "a@x ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAID3qYVSH3D6IpChFMiA8yRWZMYNhe+i9wxmtB2c1W2gp a";
        assert_eq!(allowed_signers(line), vec![fp.clone()]);
        assert!(fp.starts_with("SHA256:"), "{fp}");
        // options before the key, comments and blank lines
        let file = format!("# fleet\n\nops@x namespaces=\"git\" {}\n", &line[4..]);
        assert_eq!(allowed_signers(&file), vec![fp]);
        assert!(allowed_signers("ops@x not-a-key AAAA\n").is_empty());
    }

    #[test]
    fn gpg_status_lines_say_why_in_words() {
        let shown = "keys.asc";
        assert!(gpg_verdict(true, "[GNUPG:] GOODSIG 020F g1 <g1@x>\n", shown).is_ok());
        let e = gpg_verdict(
            false,
            "[GNUPG:] ERRSIG BC15F5B16C0CF649 22 8 00 1796285908 9 CFD28E50F76DEA9CEE8FD3D3BC15F5B16C0CF649\n[GNUPG:] NO_PUBKEY BC15F5B16C0CF649\n",
            shown,
        )
        .unwrap_err();
        assert_eq!(
            e,
            "signed by a key not in keys.asc (gpg key CFD28E50F76DEA9CEE8FD3D3BC15F5B16C0CF649)"
        );
        let e =
            gpg_verdict(false, "[GNUPG:] BADSIG 020F0D0F22A1EB9C g1 <g1@x>\n", shown).unwrap_err();
        assert_eq!(e, "bad signature (gpg key 020F0D0F22A1EB9C)");
        // never "Good signature" as the reason for a refusal
        assert_eq!(
            reason("Good \"git\" signature with ED25519 key SHA256:x\nNo principal matched.\n"),
            "No principal matched."
        );
        assert_eq!(reason(""), "no reason given");
    }
}
