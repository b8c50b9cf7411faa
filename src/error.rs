//! Errors the user can cause, each knowing its exit code and what to do about it.

use std::path::{Path, PathBuf};

use crate::diagnostic::Diagnostic;

/// Exit codes of SPEC §2, in one place.
pub mod exit {
    pub const OK: i32 = 0;
    pub const ERROR: i32 = 1;
    /// `plan`: changes pending.
    pub const CHANGES: i32 = 2;
    /// `apply`: the lock was held past `--lock-timeout`.
    pub const LOCKED: i32 = 3;
    /// Tests failed (or `checks` found a fail/fatal hit).
    pub const TESTS_FAILED: i32 = 4;
    /// The command line is wrong: an unknown flag, a bad value, a missing
    /// argument (sysexits' EX_USAGE). Never 2, which means "plan has changes".
    pub const USAGE: i32 = 64;

    /// The codes every command shares, after its own.
    pub const SHARED: &[(i32, &str)] = &[(
        USAGE,
        "usage error: an unknown flag, a bad value or a missing argument (nothing was done)",
    )];

    /// Every command's exit codes and what each means there: the one table
    /// `--help`, the man page and the README's table are made from.
    pub const TABLE: &[(&str, &[(i32, &str)])] = &[
        ("validate", &[(OK, "the file is valid"), (ERROR, "the file has problems (each printed with its line and column)")]),
        ("plan", &[(OK, "in sync: nothing to do"), (ERROR, "error (with --git: the fetched commit was not taken)"), (CHANGES, "changes pending")]),
        (
            "apply",
            &[
                (OK, "converged (and the [run] tests passed)"),
                (ERROR, "error: a resource failed (the others converged), interrupted, the saved plan is stale, or (with --git) the fetched commit was not taken"),
                (LOCKED, "another apply held the lock past --lock-timeout"),
                (TESTS_FAILED, "converged, but a test of the [run] plan failed, or a candidate's promotion gate did (the old revision stays current)"),
            ],
        ),
        ("watch", &[(OK, "stopped by SIGTERM or SIGINT"), (ERROR, "fatal error (an invalid file at start)")]),
        ("test", &[(OK, "every test passed (warnings allowed)"), (ERROR, "harness error, a selector that matches nothing, or interrupted"), (TESTS_FAILED, "a test failed")]),
        ("checks", &[(OK, "clean"), (ERROR, "error"), (TESTS_FAILED, "a fail or fatal check hit")]),
        ("status", &[(OK, "the status was printed"), (ERROR, "the file cannot be read")]),
        ("exec", &[(124, "timed out"), (ERROR, "error before the command ran; otherwise the command's own exit status")]),
        ("spawn", &[(OK, "the VM stopped or Ctrl-] detached"), (ERROR, "error")]),
        ("lock", &[(OK, "every remote source pinned"), (ERROR, "error")]),
        ("export", &[(OK, "the stream was written"), (ERROR, "error (nothing written)")]),
        ("schema", &[(OK, "the schema was printed")]),
        ("completions", &[(OK, "the completions were printed")]),
        ("man", &[(OK, "the pages were printed or written"), (ERROR, "a page could not be written")]),
    ];

    /// `command`'s codes, its own then the shared ones.
    pub fn codes(command: &str) -> Vec<(i32, String)> {
        let own = TABLE
            .iter()
            .find(|(c, _)| *c == command)
            .map(|(_, codes)| *codes)
            .unwrap_or(&[]);
        own.iter()
            .chain(SHARED)
            .map(|(c, m)| (*c, m.to_string()))
            .collect()
    }

    /// Every code any command exits with, in a word each (the main page's).
    pub fn summary() -> Vec<(i32, String)> {
        [
            (OK, "success; for plan: nothing to do"),
            (ERROR, "error"),
            (CHANGES, "plan: changes pending"),
            (LOCKED, "apply: another apply held the lock"),
            (TESTS_FAILED, "a test (or a check) failed"),
            (124, "exec: the command timed out"),
            (USAGE, SHARED[0].1),
        ]
        .into_iter()
        .map(|(c, m)| (c, m.to_string()))
        .collect()
    }

    /// `Exit status:` and one line per code, for `--help`: `command`'s, or
    /// (none) the main help's summary of every code.
    pub fn help(command: Option<&str>) -> String {
        let codes = match command {
            Some(c) => codes(c),
            None => summary(),
        };
        let mut s = String::from("Exit status:\n");
        for (code, meaning) in codes {
            s.push_str(&format!("  {code:>3}  {meaning}\n"));
        }
        if command.is_none() {
            s.push_str(
                "\nEach command's --help lists its own; `reconcile man` prints the pages.\n",
            );
        }
        s
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the desired-state file has {} problem(s)", .0.len())]
    Invalid(Vec<Diagnostic>),

    #[error("cannot read the desired-state file {path}: {source}")]
    ReadDesired {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("another reconcile is applying to this state dir: {holder}")]
    LockHeld {
        holder: String,
        waited: Option<std::time::Duration>,
    },

    #[error("checksum mismatch for {what}: got sha256 {actual}, declared {expected}")]
    Checksum {
        what: String,
        expected: String,
        actual: String,
    },

    #[error("download of {url} failed: {reason}")]
    Download { url: String, reason: String },

    /// A download cache object whose bytes are not the ones it is named by
    /// (the disk under the state dir changed it): removed, and downloaded
    /// again in the same run; this error only when that failed too.
    #[error("the cached copy {} was corrupt (sha256 {actual}, named {expected}) and is removed{}", .object.display(), .then.as_deref().map(|t| format!("; downloading it again failed: {t}")).unwrap_or_default())]
    CorruptCache {
        object: PathBuf,
        expected: String,
        actual: String,
        /// What happened when it was downloaded again.
        then: Option<String>,
    },

    #[error("refusing archive {archive}: entry `{entry}` {reason}")]
    HostileArchive {
        archive: String,
        entry: String,
        reason: String,
    },

    #[error("cannot read archive {archive}: {reason}")]
    Archive { archive: String, reason: String },

    #[error("{address}: version mismatch: plugin.json says {found}, the file declares {declared}")]
    VersionMismatch {
        address: String,
        found: String,
        declared: String,
    },

    #[error("{address}: {path} exists and was not made by reconcile (no receipt)")]
    Foreign { address: String, path: PathBuf },

    #[error("{address}: {reason}")]
    Resource { address: String, reason: String },

    #[error("the saved plan is stale: {}", .reasons.join("; "))]
    StalePlan { reasons: Vec<String> },

    #[error("cannot use the saved plan {path}: {reason}")]
    BadPlan { path: PathBuf, reason: String },

    /// A command line that cannot be carried out on this file (an unknown
    /// machine, a selector that matches nothing, `--locked` refusing).
    #[error("{0}")]
    Usage(String),

    /// `spawn` of a root-filesystem machine (it boots disks and netboot images).
    #[error(
        "machine `{machine}` is a root filesystem; spawn boots disk machines and netboot images"
    )]
    NotBootable { machine: String },

    /// A command line that is wrong whatever the file says (a pattern that
    /// does not parse, `--hostname` twice outside plan): exit 64.
    #[error("{0}")]
    BadArgument(String),

    #[error("state dir {path}: {reason}")]
    State { path: PathBuf, reason: String },

    /// A cloud call that failed, or a cloud that cannot be reached or signed into.
    #[error("cloud {cloud} ({endpoint}): {reason}")]
    Cloud {
        cloud: String,
        endpoint: String,
        reason: String,
    },
}

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::LockHeld { .. } => exit::LOCKED,
            Error::BadArgument(_) => exit::USAGE,
            _ => exit::ERROR,
        }
    }

    /// What the user can do about it.
    pub fn help(&self) -> Option<String> {
        Some(match self {
            Error::Invalid(_) => "run `reconcile validate` to see every problem".into(),
            Error::ReadDesired { .. } => "pass the file with -f FILE (default reconcile.toml)".into(),
            Error::LockHeld { waited: None, .. } => "wait for it to finish, or pass --lock-timeout 5m to wait here".into(),
            Error::LockHeld { waited: Some(_), .. } => "the other apply is still running; try again later or raise --lock-timeout".into(),
            Error::Checksum { .. } => "nothing was installed and the old version stays; if the new content is intended, update `sha256` in the file (or re-run `reconcile lock`)".into(),
            Error::Download { .. } => "nothing was installed and the old version stays; check the URL and the network, then apply again".into(),
            Error::CorruptCache { .. } => "nothing was installed and the old version stays; the source itself is fine — its cached copy in the state dir was damaged on disk (check that disk); apply again once the source can be downloaded".into(),
            Error::HostileArchive { .. } => "nothing was installed; the archive tries to write outside its tree or carries unsafe entries — get a clean archive from its publisher".into(),
            Error::Archive { .. } => "nothing was installed; check that the source is the archive you meant (or set `format`)".into(),
            Error::VersionMismatch { .. } => "nothing was installed and the old version stays; fix `version` in the file or the source URL".into(),
            Error::Foreign { .. } => "move it away (reconcile never deletes what it did not make), then apply again".into(),
            Error::StalePlan { .. } => "run `reconcile plan --out FILE` again and review the new plan".into(),
            Error::BadPlan { .. } => "make the plan again with `reconcile plan --out FILE`".into(),
            Error::Io { .. } | Error::State { .. } => "check permissions and free space; the journal lets the next apply finish or undo this one".into(),
            Error::Cloud { .. } => "nothing half-made is left: the journal lets the next apply finish or remove it; check the endpoint, the region and the credentials (environment, profile, web identity or instance role)".into(),
            Error::Resource { .. } | Error::Usage(_) => return None,
            Error::NotBootable { machine } => format!("for a shell in it: `reconcile exec {machine} -- sh`"),
            Error::BadArgument(_) => "see the command's --help".into(),
        })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
