//! Command-line interface: argument definitions (the one source of `--help`,
//! the man page and shell completions) and dispatch. One file per subcommand.

mod apply;
mod checks;
mod exec;
mod export;
mod lock;
mod plan;
mod spawn;
mod status;
mod test;
mod validate;
mod watch;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

use crate::error::{exit, Error};
use crate::output::{ColorChoice, Format, Printer};
use crate::render::text as render;

/// Declarative reconciler for build and test farms.
///
/// One TOML file declares machines, netboot images, plugins and test suites;
/// reconcile observes the host, shows the difference and converges it with
/// atomic, journaled, crash-safe steps.
#[derive(Debug, Parser)]
#[command(
    name = "reconcile",
    version,
    propagate_version = true,
    disable_help_subcommand = true,
    max_term_width = 100
)]
pub struct Cli {
    /// The desired-state file.
    #[arg(
        short = 'f',
        long = "file",
        global = true,
        default_value = "reconcile.toml",
        env = "RECONCILE_FILE"
    )]
    pub file: PathBuf,
    /// Whether `-f` (or RECONCILE_FILE) was given rather than defaulted.
    #[arg(skip)]
    pub file_given: bool,
    /// Print only the summary line and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print more about each step.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Act as this host for `hosts = [...]` selectors (default: this host's name);
    /// `plan` takes several to preview each host in one run.
    #[arg(long, global = true, value_name = "NAME")]
    pub hostname: Vec<String>,
    /// Colour: auto (only on a terminal, never with NO_COLOR), always, never.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
    #[command(subcommand)]
    pub command: Command,
}

/// stdout for plan, apply and test: text, JSON or Markdown.
#[derive(Debug, Clone, clap::Args)]
pub struct DocumentArgs {
    /// What goes to stdout: text (for people), json (a versioned document) or
    /// markdown (for a pull request comment or a CI step summary).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Short for `--format json`.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
}

/// stdout for the other commands that print a result: text or JSON.
#[derive(Debug, Clone, clap::Args)]
pub struct JsonArgs {
    /// What goes to stdout: text (for people) or json (a versioned document).
    #[arg(long, value_enum, default_value_t = PlainFormat::Text)]
    pub format: PlainFormat,
    /// Short for `--format json`.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlainFormat {
    Text,
    Json,
}

impl DocumentArgs {
    fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            self.format
        }
    }
}

impl JsonArgs {
    fn format(&self) -> Format {
        match (self.json, self.format) {
            (true, _) | (_, PlainFormat::Json) => Format::Json,
            _ => Format::Text,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse and check the file; print every problem with its line and column.
    Validate(ValidateArgs),
    /// Observe, diff and print the changes; write nothing outside the state dir.
    Plan(PlanArgs),
    /// Converge the host to the file, then run the [run] tests.
    Apply(ApplyArgs),
    /// Apply, then keep converging on file change, drift and a periodic resync. SIGHUP reloads; SIGTERM/SIGINT finish the step in progress and exit 0.
    Watch(WatchArgs),
    /// Run tests (glob patterns over suite.test names).
    Test(TestArgs),
    /// Scan logs with the built-in and declared console checks.
    Checks(ChecksArgs),
    /// Show what is installed, the last apply and (with --git/--checkout) the commits.
    Status(StatusArgs),
    /// Run a command in a fresh working snapshot of a machine (namespaces as root; QEMU for a disk machine), deleted afterwards; exits with the command's status.
    Exec(ExecArgs),
    /// Boot a working snapshot of a disk machine (or a netboot image over PXE) in QEMU and attach this terminal to its serial console; Ctrl-] detaches.
    Spawn(SpawnArgs),
    /// Pin the sha256 of every remote source in reconcile.lock (downloads what is not pinned yet).
    Lock(LockArgs),
    /// Write a machine revision as a `btrfs send` stream (another host receives it as a source).
    Export(ExportArgs),
    /// Print the JSON Schema of the desired-state file.
    Schema {
        /// Print the file reference as Markdown instead (docs/reference.md).
        #[arg(long)]
        markdown: bool,
        /// Print the JSON Schema of a test run's report.json instead.
        #[arg(long, conflicts_with = "markdown")]
        report: bool,
    },
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man pages (roff), or write them into a directory (packaging).
    Man {
        /// Write reconcile.1 and one reconcile-COMMAND.1 per subcommand here.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Pull-based GitOps: the desired-state file from a git repository.
#[derive(Debug, Clone, clap::Args)]
pub struct GitArgs {
    /// Take the desired-state file from this git repository (URL or path) instead of -f;
    /// it is fetched into --checkout first.
    #[arg(long, value_name = "URL")]
    pub git: Option<String>,
    /// The branch, tag or ref to follow.
    #[arg(long = "ref", value_name = "REF", default_value = "main")]
    pub reference: String,
    /// The desired-state file inside the repository.
    #[arg(long, value_name = "FILE", default_value = "reconcile.toml")]
    pub path: PathBuf,
    /// Where the checkout lives (DIR/repo) with its record (DIR/git.json); a relative
    /// state_dir resolves in DIR. Default /var/lib/reconcile for root, else ~/.local/state/reconcile.
    #[arg(long, value_name = "DIR")]
    pub checkout: Option<PathBuf>,
    /// Kill a git command that takes longer than this.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "2m")]
    pub git_timeout: Duration,
}

/// Which fetched commits apply and watch take.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TakeArgs {
    /// Apply a commit that does not descend from the applied one (a force-push, a rewind).
    #[arg(long)]
    pub allow_rewind: bool,
    /// Apply only commits whose signature verifies against this ssh allowed-signers file or gpg keyring.
    #[arg(long, value_name = "FILE")]
    pub verify_signatures: Option<PathBuf>,
}

/// Which fetched commits plan previews (by the rules apply takes them by).
#[derive(Debug, Clone, clap::Args)]
pub struct PreviewArgs {
    /// Preview a commit that does not descend from the applied one, as `apply --allow-rewind` would take it.
    #[arg(long)]
    pub allow_rewind: bool,
    /// Read only a commit whose signature verifies against this ssh allowed-signers file or gpg
    /// keyring, as `apply --verify-signatures` does; any other is not previewed.
    #[arg(long, value_name = "FILE")]
    pub verify_signatures: Option<PathBuf>,
}

impl From<&PreviewArgs> for TakeArgs {
    fn from(p: &PreviewArgs) -> TakeArgs {
        TakeArgs {
            allow_rewind: p.allow_rewind,
            verify_signatures: p.verify_signatures.clone(),
        }
    }
}

impl Cli {
    /// How every command takes the file: as `--hostname` (when one is given).
    pub fn load_options(&self) -> crate::config::LoadOptions {
        crate::config::LoadOptions {
            hostname: match self.hostname.as_slice() {
                [one] => Some(one.clone()),
                _ => None,
            },
            ..Default::default()
        }
    }

    /// What goes to stdout, by the command's own `--format`/`--json`.
    pub fn format(&self) -> Format {
        match &self.command {
            Command::Plan(a) => a.output.format(),
            Command::Apply(a) => a.output.format(),
            Command::Test(a) => a.document.format(),
            Command::Validate(a) => a.output.format(),
            Command::Status(a) => a.output.format(),
            Command::Checks(a) => a.output.format(),
            Command::Lock(a) => a.output.format(),
            Command::Watch(a) => a.output.format(),
            _ => Format::Text,
        }
    }
}

impl GitArgs {
    /// The remote, when `--git` is given; `take` says which fetched commits
    /// are taken (`status` fetches nothing and reads the applied commit).
    pub fn remote(&self, cli: &Cli, take: TakeArgs) -> Option<crate::fleet::git::Remote> {
        let url = self.git.clone()?;
        Some(crate::fleet::git::Remote {
            url,
            reference: self.reference.clone(),
            path: self.path.clone(),
            dir: self
                .checkout
                .clone()
                .unwrap_or_else(crate::fleet::git::default_dir),
            allow_rewind: take.allow_rewind,
            allowed_signers: take.verify_signatures,
            timeout: self.git_timeout,
            hostname: cli.load_options().hostname,
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub git: GitArgs,
    #[command(flatten)]
    pub output: JsonArgs,
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub output: JsonArgs,
}

/// What plan and apply share: how the world is looked at and what is touched.
#[derive(Debug, Clone, clap::Args)]
pub struct ConvergeArgs {
    /// Re-hash every file instead of trusting the stat index.
    #[arg(long)]
    pub verify: bool,
    /// Only these resource addresses (glob patterns, e.g. `plugin.*`).
    #[arg(long, value_name = "ADDR")]
    pub target: Vec<String>,
    /// Refuse remote sources not pinned in reconcile.lock.
    #[arg(long)]
    pub locked: bool,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub git: GitArgs,
    #[command(flatten)]
    pub preview: PreviewArgs,
    #[command(flatten)]
    pub output: DocumentArgs,
    #[command(flatten)]
    pub converge: ConvergeArgs,
    /// Save the plan; `reconcile apply FILE` applies exactly it or refuses.
    #[arg(long, value_name = "PLAN")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub git: GitArgs,
    #[command(flatten)]
    pub take: TakeArgs,
    #[command(flatten)]
    pub output: DocumentArgs,
    /// A plan saved with `plan --out`; refused when the file or the world changed since.
    #[arg(value_name = "PLAN")]
    pub plan: Option<PathBuf>,
    /// Do not run the [run] test plan after converging.
    #[arg(long)]
    pub no_test: bool,
    /// Test again a candidate whose promotion gate failed, though it did not change.
    #[arg(long)]
    pub retest: bool,
    /// Wait this long for another apply to finish (e.g. 30s, 5m); exit 3 after it.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub lock_timeout: Option<Duration>,
    #[command(flatten)]
    pub converge: ConvergeArgs,
}

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Glob patterns over `suite.test` names; a pattern that matches nothing is an error.
    pub patterns: Vec<String>,
    /// Only tests of this suite (repeatable).
    #[arg(long)]
    pub suite: Vec<String>,
    /// Only tests with this tag; `!TAG` excludes it (repeatable).
    #[arg(long, allow_hyphen_values = true)]
    pub tag: Vec<String>,
    /// Tests run at once (default: the number of cores).
    #[arg(short, long)]
    pub jobs: Option<usize>,
    /// List the selected tests instead of running them.
    #[arg(long)]
    pub list: bool,
    /// With --list: also every test not selected and why.
    #[arg(long, requires = "list")]
    pub explain: bool,
    /// Run the tests that failed in the last run.
    #[arg(long)]
    pub rerun_failed: bool,
    /// Where runs go (default <state_dir>/runs): <DIR>/<UTC time>-<pid>/ and <DIR>/latest.
    #[arg(long, value_name = "DIR")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub document: DocumentArgs,
    /// Run only this share of the selected tests: hash:K/N (by a hash of each
    /// name: stable as tests come and go) or count:K/N (every N-th), as cargo-nextest.
    #[arg(long, value_name = "hash:K/N|count:K/N")]
    pub partition: Option<crate::harness::select::Partition>,
    /// Multiply every test's timeout (slow machines, emulation): 0.01 to 1000.
    #[arg(long, default_value_t = 1.0, value_parser = parse_multiplier)]
    pub timeout_multiplier: f64,
}

#[derive(Debug, clap::Args)]
pub struct ChecksArgs {
    /// Take `[check.*]` from this desired-state file as well (default: the file given with -f).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Which checks apply: those for this scope (any: all of them).
    #[arg(long, value_enum, default_value = "any")]
    pub scope: crate::config::model::Scope,
    /// Log files (console, journal, output).
    #[arg(required = true)]
    pub logs: Vec<PathBuf>,
    #[command(flatten)]
    pub output: JsonArgs,
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The machine.
    pub machine: String,
    /// Snapshot this toolchain's bootstrapped snapshot instead of the current revision.
    #[arg(short, long)]
    pub toolchain: Option<String>,
    /// Kill the command (and everything it started) after this long; exit 124.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Run on the host with the working directory in the snapshot ($RECONCILE_ROOT) instead of in namespaces.
    #[arg(long)]
    pub host: bool,
    /// Also give the command an empty network namespace.
    #[arg(long)]
    pub no_network: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct SpawnArgs {
    /// A disk machine or a netboot image.
    #[arg(value_name = "MACHINE|IMAGE")]
    pub target: String,
    /// Boot this toolchain's snapshot instead of the current revision.
    #[arg(short, long)]
    pub toolchain: Option<String>,
    /// Keep the working snapshot after the VM stops (apply leaves kept snapshots alone).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub git: GitArgs,
    #[command(flatten)]
    pub take: TakeArgs,
    #[command(flatten)]
    pub output: JsonArgs,
    /// Full resync period, catching what filesystem events miss.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "5m")]
    pub interval: Duration,
    /// Quiet time that coalesces a burst of filesystem events into one converge.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "50ms")]
    pub debounce: Duration,
    /// How long a converge waits for another apply holding the lock before it reports an error.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "30s")]
    pub lock_timeout: Duration,
    /// Serve /metrics (Prometheus), /healthz, /readyz, /status and a page at / on this
    /// address; a bare port listens on 127.0.0.1. Off by default.
    #[arg(long, value_name = "[ADDR:]PORT", value_parser = crate::serve::parse_listen)]
    pub listen: Option<std::net::SocketAddr>,
    /// The loop is unhealthy (/healthz 503, no systemd WATCHDOG=1) once it has
    /// made no progress for this long: an idle loop wakes up regularly, a
    /// converge reports each resource and test.
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "30m")]
    pub stall: Duration,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The revision: `machine.NAME@REV`.
    #[arg(value_name = "machine.NAME@REV")]
    pub revision: String,
    /// Send incrementally against this kept revision (the receiver needs it too).
    #[arg(long, value_name = "REV")]
    pub parent: Option<u32>,
    /// Where to write the stream (zstd-compressed when it ends in .zst).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct LockArgs {
    /// Download and re-pin every remote source, not only unpinned ones.
    #[arg(long)]
    pub update: bool,
    #[command(flatten)]
    pub output: JsonArgs,
}

fn parse_multiplier(s: &str) -> Result<f64, String> {
    let m: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if m.is_finite() && (0.01..=1000.0).contains(&m) {
        Ok(m)
    } else {
        Err(format!("{s} is not between 0.01 and 1000"))
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write e.g. 30s, 5m, 1h)"))
}

/// A command line a user can paste: `reconcile [-f FILE] WORDS… ARGS…`
/// (the file named when it is not the default).
pub fn command_line(words: &[&str], cli: &Cli, args: &[String]) -> String {
    let mut line = vec!["reconcile".to_string()];
    if cli.file != Path::new("reconcile.toml") {
        line.push("-f".into());
        line.push(shell_words::quote(&cli.file.to_string_lossy()).into_owned());
    }
    line.extend(words.iter().map(|w| w.to_string()));
    line.extend(args.iter().map(|a| shell_words::quote(a).into_owned()));
    line.join(" ")
}

/// The man page, then one page per subcommand, each with its EXIT STATUS
/// (from [`exit::TABLE`]) and the version in its footer: on stdout one after
/// the other, or as files in `dir`.
fn man(dir: Option<&std::path::Path>) -> Result<i32, Error> {
    let cmd = Cli::command();
    let version = format!("reconcile {}", env!("CARGO_PKG_VERSION"));
    let mut pages = vec![("reconcile".to_string(), None, cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("reconcile-{}", sub.get_name());
        let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
        let codes = sub.get_name().to_string();
        pages.push((
            name,
            Some(codes),
            sub.clone().name(leaked).version(env!("CARGO_PKG_VERSION")),
        ));
    }
    for (name, codes, page) in pages {
        let man = clap_mangen::Man::new(page.clone())
            .title(name.clone())
            .section("1")
            .source(version.clone());
        let mut roff = Vec::new();
        let render = |out: &mut Vec<u8>| -> std::io::Result<()> {
            man.render_title(out)?;
            man.render_name_section(out)?;
            man.render_synopsis_section(out)?;
            man.render_description_section(out)?;
            if page.get_arguments().any(|a| !a.is_hide_set()) {
                man.render_options_section(out)?;
            }
            if page.has_subcommands() {
                man.render_subcommands_section(out)?;
            }
            out.extend_from_slice(exit_status_roff(codes.as_deref()).as_bytes());
            man.render_version_section(out)
        };
        render(&mut roff).map_err(|e| Error::io(std::path::Path::new(&name), e))?;
        match dir {
            Some(d) => {
                let path = d.join(format!("{name}.1"));
                std::fs::write(&path, &roff).map_err(|e| Error::io(&path, e))?;
            }
            None => crate::output::stdout_bytes(&roff),
        }
    }
    Ok(exit::OK)
}

/// `.SH "EXIT STATUS"` of one command's page (or, for the main page, the
/// codes every command shares).
fn exit_status_roff(command: Option<&str>) -> String {
    let codes: Vec<(i32, String)> = match command {
        Some(c) => exit::codes(c),
        None => exit::summary(),
    };
    let mut s = String::from(".SH \"EXIT STATUS\"\n");
    for (code, meaning) in codes {
        s.push_str(&format!(".TP\n\\fB{code}\\fR\n{}\n", roff_escape(&meaning)));
    }
    s
}

fn roff_escape(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with('.') || t.starts_with('\'') {
        format!("\\&{t}")
    } else {
        t
    }
}

/// The command line, with each subcommand's exit codes (from [`exit::TABLE`])
/// after its help, and the shared ones after the main help.
pub fn command() -> clap::Command {
    let mut cmd = Cli::command().after_help(exit::help(None));
    for (name, _) in exit::TABLE {
        cmd = cmd.mut_subcommand(*name, |c| c.after_help(exit::help(Some(name))));
    }
    cmd
}

/// Parse the command line; a usage error (an unknown flag, a bad value, a
/// missing argument) exits with [`exit::USAGE`], never 2 — that means "plan
/// has changes".
fn parse() -> Result<Cli, i32> {
    use clap::FromArgMatches;
    let fail = |e: clap::Error| {
        let _ = e.print();
        if e.use_stderr() {
            exit::USAGE
        } else {
            exit::OK
        }
    };
    let matches = command().try_get_matches().map_err(fail)?;
    let mut cli = Cli::from_arg_matches(&matches).map_err(fail)?;
    cli.file_given = matches!(
        matches.value_source("file"),
        Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
    );
    Ok(cli)
}

pub fn main() -> i32 {
    let cli = match parse() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let printer = Printer::new(cli.quiet, cli.verbose, cli.format(), cli.color);
    if cli.hostname.len() > 1 && !matches!(cli.command, Command::Plan(_)) {
        let e = Error::BadArgument(
            "only `plan` takes --hostname more than once (to preview several hosts)".into(),
        );
        render::error(&printer, &e, e.help().as_deref());
        return exit::USAGE;
    }
    let result = match &cli.command {
        Command::Validate(_) => validate::run(&cli, &printer),
        Command::Plan(a) => plan::run(&cli, a, &printer),
        Command::Apply(a) => apply::run(&cli, a, &printer),
        Command::Status(a) => status::run(&cli, a, &printer),
        Command::Test(a) => test::run(&cli, a, &printer),
        Command::Checks(a) => checks::run(&cli, a, &printer),
        Command::Watch(a) => watch::run(&cli, a, &printer),
        Command::Exec(a) => exec::run(&cli, a, &printer),
        Command::Spawn(a) => spawn::run(&cli, a, &printer),
        Command::Lock(a) => lock::run(&cli, a, &printer),
        Command::Export(a) => export::run(&cli, a, &printer),
        Command::Schema { markdown, report } => {
            if *report {
                printer.raw(&format!("{}\n", crate::ops::test::report_schema()));
            } else if *markdown {
                printer.raw(&crate::schema::markdown());
            } else {
                printer.raw(&format!("{}\n", crate::schema::json()));
            }
            Ok(exit::OK)
        }
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut command(), "reconcile", &mut out);
            crate::output::stdout_bytes(&out);
            Ok(exit::OK)
        }
        Command::Man { dir } => man(dir.as_deref()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            render::error(&printer, &e, hint(&cli, &e).as_deref());
            e.exit_code()
        }
    }
}

/// What to do about `e`, as commands that work when pasted: with this
/// invocation's `-f`, and no journal where the command keeps none.
fn hint(cli: &Cli, e: &Error) -> Option<String> {
    let journaled = matches!(cli.command, Command::Apply(_) | Command::Watch(_));
    let plan_file = match &cli.command {
        Command::Apply(a) => a.plan.as_ref().map(|p| p.display().to_string()),
        _ => None,
    };
    let again = || {
        command_line(
            &["plan", "--out"],
            cli,
            &[plan_file.clone().unwrap_or_else(|| "PLAN".into())],
        )
    };
    Some(match e {
        Error::Invalid(_) => format!("run `{}` to see every problem", command_line(&["validate"], cli, &[])),
        Error::StalePlan { .. } => format!("run `{}` again and review the new plan", again()),
        Error::BadPlan { .. } => format!("make the plan again with `{}`", again()),
        Error::NotBootable { machine } => {
            let host = !nix::unistd::geteuid().is_root();
            let words: &[&str] = if host { &["exec", "--host"] } else { &["exec"] };
            // as root the shell runs in the machine's namespaces; otherwise on
            // the host, in the snapshot
            let args = [machine.clone(), "--".into(), "sh".into()];
            format!("for a shell in it: `{}`", command_line(words, cli, &args))
        }
        Error::Io { .. } | Error::State { .. } if !journaled => "check the path's permissions and free space".into(),
        Error::Cloud { .. } if !journaled => "check the endpoint, the region and the credentials (environment, profile, web identity or instance role)".into(),
        _ => return e.help(),
    })
}
