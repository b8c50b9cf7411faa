//! The cloud executor: each test on a fresh instance of its machine's
//! published revision in an EC2-compatible cloud (kola's aws platform).
//!
//! A test is delivered as user data — a shell script the image's first-boot
//! agent (cloud-init) runs — that writes the command's output between two
//! markers to the serial console:
//!
//! ```text
//! <nonce>-B            the command starts
//! …its stdout and stderr…
//! <nonce>-<status>-    it ended with this exit status
//! ```
//!
//! The console is read with `GetConsoleOutput`, polled, and every new line
//! goes through the console checks as it arrives; a `fatal` hit, a timeout or
//! Ctrl-C terminates the instance at once, and the instance is terminated on
//! every other path too (dropping the instance). Before `RunInstances` the
//! intent is written to a ledger in the state dir (`cloud-runs/<token>.json`)
//! and the instance carries the tag `reconcile:run = <host>:<pid>:<start>`,
//! so the next run on this host reaps what a crashed run left running
//! ([`reap`]).
//!
//! A cloud's console output is a snapshot the provider refreshes now and
//! then (seconds to minutes on EC2), so there is no stall guard here: the
//! limits are the boot timeout (until the begin marker) and the test's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Facts, Instance, Provision, Step};
use crate::cloud::ec2::Launch;
use crate::cloud::{self, client::Api, TAG_MACHINE, TAG_RUN, TAG_TOKEN};
use crate::config::model::{Machine, MachineKind, Volume};
use crate::config::Desired;
use crate::error::{Error, Result};
use crate::process::identity::Owner;
use crate::process::{Exit, Flow, Interrupt, Outcome, Sink, Stream};
use crate::state::{now_rfc3339, StateDir};
use crate::store::{EntryKind, MachineDir};

/// Instance type when neither the suite nor the cloud names one.
pub const DEFAULT_INSTANCE_TYPE: &str = "t3.micro";
/// From `RunInstances` to the begin marker, unless the machine's console says otherwise.
const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_TEST_TIMEOUT: Duration = Duration::from_secs(600);
/// First console poll after this long, then less often, up to [`POLL_MAX`].
const POLL_MIN: Duration = Duration::from_millis(500);
const POLL_MAX: Duration = Duration::from_secs(5);
/// How often Ctrl-C is looked at between polls.
const TICK: Duration = Duration::from_millis(50);
/// The instance's state is looked at every this many polls.
const STATE_EVERY: u32 = 5;
/// The state dir's ledger of launched instances.
const LEDGER: &str = "cloud-runs";
/// Console bytes remembered to find where the next poll's new output begins.
const OVERLAP: usize = 4096;

/// One launched (or about to be launched) instance, as the ledger keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    cloud: String,
    /// The client token of `RunInstances`, also the tag `reconcile:token`.
    token: String,
    machine: String,
    test: String,
    host: String,
    owner: Owner,
    started: String,
    instance: Option<String>,
}

/// `<host>:<pid>:<start time>`: who launched an instance.
fn run_tag(host: &str, owner: &Owner) -> String {
    format!("{host}:{}:{}", owner.pid, owner.start_time)
}

/// A test on a fresh cloud instance; terminated when dropped.
pub struct CloudInstance {
    api: Arc<Api>,
    state: StateDir,
    machine: String,
    revision: u32,
    image: String,
    instance_type: String,
    boot_timeout: Duration,
    cancel: Arc<AtomicBool>,
    /// The launched instance and its ledger entry.
    launched: Option<(String, String)>,
    /// The ledger entry written before `RunInstances` (removed once it is terminated).
    token: Option<String>,
    started: Option<Instant>,
    boot: Option<Duration>,
}

impl CloudInstance {
    /// The instance a test of `suite` on `machine` runs on: the image of the
    /// machine's current revision (as stored here) in the suite's cloud.
    pub fn provision(
        p: &Provision,
        suite: Option<&str>,
        machine: &str,
        m: &Machine,
        volume: &Volume,
        revision: Option<u32>,
    ) -> Result<CloudInstance> {
        let model = &p.desired.model;
        let suite = suite.and_then(|s| model.suite.get(s)).ok_or_else(|| {
            Error::Usage("the cloud executor runs only the tests of a suite".into())
        })?;
        let cname = suite.cloud.as_deref().ok_or_else(|| {
            Error::Usage("a suite with executor = \"cloud\" names its `cloud`".into())
        })?;
        let c = model
            .cloud
            .get(cname)
            .ok_or_else(|| Error::Usage(format!("no cloud `{cname}` is declared")))?;
        // the run's connection and inventory (read once), or ones of its own
        // outside a run
        let own;
        let clouds = match p.clouds {
            Some(c) => c,
            None => {
                own = super::Clouds::default();
                &own
            }
        };
        let api = clouds.api(p.desired, cname)?;
        let inventory = clouds.inventory(p.desired, cname)?;
        // a gate's test launches its candidate; behind a gate, everything
        // else launches what is current
        let (revision, image) = match (revision, c.promote.is_some()) {
            (None, true) => current_image(&api, &inventory.images, machine, m.revision)?,
            (revision, _) => {
                let revision = revision.unwrap_or(m.revision);
                let digest = stored_digest(volume, machine, m, revision)?;
                let image = published_image(&api, &inventory.images, machine, revision, &digest)?;
                (revision, image)
            }
        };
        let instance_type = suite
            .instance_type
            .clone()
            .or_else(|| c.instance_type.clone())
            .unwrap_or_else(|| DEFAULT_INSTANCE_TYPE.into());
        let boot_timeout = m
            .console
            .as_ref()
            .and_then(|c| c.boot_timeout)
            .unwrap_or(DEFAULT_BOOT_TIMEOUT);
        Ok(CloudInstance {
            api,
            state: p.state.clone(),
            machine: machine.to_string(),
            revision,
            image,
            instance_type,
            boot_timeout,
            cancel: p.cancel.clone(),
            launched: None,
            token: None,
            started: None,
            boot: None,
        })
    }

    fn infra(&self, doing: &str, e: cloud::client::CallError) -> Interrupt {
        Interrupt::Infra(cloud::error(&self.api, "ec2", doing, e).to_string())
    }

    /// Journal the intent, then launch with the step as user data.
    fn launch(&mut self, step: &Step, nonce: &str) -> std::result::Result<String, Interrupt> {
        let token = format!("reconcile-{}", nonce);
        let host = crate::process::identity::kernel_hostname();
        let owner = Owner::me();
        let mut entry = Entry {
            cloud: self.api.cloud.clone(),
            token: token.clone(),
            machine: self.machine.clone(),
            test: step.name.clone(),
            host: host.clone(),
            owner: owner.clone(),
            started: now_rfc3339(),
            instance: None,
        };
        ledger_write(&self.state, &entry)
            .map_err(|e| Interrupt::Infra(format!("cannot record the launch: {e}")))?;
        self.token = Some(token.clone());
        let tags = vec![
            (TAG_RUN.to_string(), run_tag(&host, &owner)),
            (TAG_TOKEN.to_string(), token.clone()),
            (TAG_MACHINE.to_string(), self.machine.clone()),
            ("Name".to_string(), format!("reconcile-test-{}", step.name)),
        ];
        let script = user_data(step, nonce);
        let id = self
            .api
            .run_instance(&Launch {
                image: &self.image,
                instance_type: &self.instance_type,
                user_data: script.as_bytes(),
                client_token: &token,
                tags: &tags,
            })
            .map_err(|e| self.infra(&format!("RunInstances of {}", self.image), e))?;
        entry.instance = Some(id.clone());
        // the tags find it even if this write is lost
        let _ = ledger_write(&self.state, &entry);
        self.launched = Some((id.clone(), token));
        self.started = Some(Instant::now());
        Ok(id)
    }

    /// Terminate what was launched; the ledger entry goes once the cloud agreed.
    fn terminate(&mut self) -> std::result::Result<(), String> {
        if let Some((id, _)) = &self.launched {
            self.api.terminate_instance(id).map_err(|e| {
                cloud::error(&self.api, "ec2", &format!("TerminateInstances {id}"), e).to_string()
            })?;
            self.launched = None;
        }
        if let Some(token) = self.token.take() {
            ledger_remove(&self.state, &token);
        }
        Ok(())
    }

    /// Poll the console until the end marker, streaming new lines to `sink`.
    fn follow(
        &mut self,
        id: &str,
        nonce: &str,
        timeout: Duration,
        sink: &mut dyn Sink,
    ) -> std::result::Result<i32, Interrupt> {
        let begin = format!("{nonce}-B");
        let end = regex::bytes::Regex::new(&format!("{nonce}-([0-9]+)-")).expect("marker regex");
        let t0 = Instant::now();
        let mut deadline = (
            t0 + self.boot_timeout,
            self.boot_timeout,
            "boot (waiting for the test to start)",
        );
        let mut seen = Vec::<u8>::new();
        let mut partial = Vec::<u8>::new();
        let mut begun = false;
        let mut stdout = Vec::<u8>::new();
        let mut poll = POLL_MIN;
        let mut polls = 0u32;
        let mut next = Instant::now();
        loop {
            // wait for the next poll, watching for Ctrl-C and the deadline
            loop {
                if self.cancel.load(Ordering::SeqCst) {
                    return Err(Interrupt::Cancelled);
                }
                let now = Instant::now();
                if now >= deadline.0 {
                    return Err(Interrupt::TimedOut {
                        what: deadline.2.into(),
                        after: deadline.1,
                    });
                }
                if now >= next {
                    break;
                }
                std::thread::sleep(TICK.min(next - now).min(deadline.0 - now));
            }
            polls += 1;
            let output = self
                .api
                .console_output(id)
                .map_err(|e| self.infra(&format!("GetConsoleOutput {id}"), e))?;
            partial.extend_from_slice(fresh(&seen, &output));
            seen = output[output.len().saturating_sub(OVERLAP)..].to_vec();
            // complete lines only; a partial one waits for the next poll
            let cut = partial
                .iter()
                .rposition(|&b| b == b'\n')
                .map(|i| i + 1)
                .unwrap_or(0);
            let lines: Vec<u8> = partial.drain(..cut).collect();
            let mut status = None;
            for line in lines.split_inclusive(|&b| b == b'\n') {
                if sink.output(Stream::Console, line) == Flow::Stop {
                    return Err(Interrupt::Stopped);
                }
                if !begun {
                    if memchr::memmem::find(line, begin.as_bytes()).is_some() {
                        begun = true;
                        self.boot = Some(t0.elapsed());
                        deadline = (Instant::now() + timeout, timeout, "the command");
                    }
                    continue;
                }
                match end.captures(line) {
                    Some(c) => {
                        let at = c.get(0).expect("whole match").start();
                        stdout.extend_from_slice(&line[..at]);
                        status = Some(
                            std::str::from_utf8(&c[1])
                                .ok()
                                .and_then(|s| s.parse().ok())
                                .unwrap_or(255),
                        );
                        break;
                    }
                    None => stdout.extend(line.iter().filter(|&&b| b != b'\r')),
                }
            }
            if !stdout.is_empty() {
                if sink.output(Stream::Stdout, &stdout) == Flow::Stop {
                    return Err(Interrupt::Stopped);
                }
                stdout.clear();
            }
            if let Some(s) = status {
                return Ok(s);
            }
            if polls % STATE_EVERY == 0 {
                let state = self
                    .api
                    .instance_state(id)
                    .map_err(|e| self.infra(&format!("DescribeInstances {id}"), e))?;
                if let Some(s) = state
                    .filter(|s| matches!(s.as_str(), "shutting-down" | "terminated" | "stopped"))
                {
                    return Err(Interrupt::Infra(format!(
                        "instance {id} is {s} before the test ended (console: {} bytes read)",
                        seen.len()
                    )));
                }
            }
            poll = (poll * 2).min(POLL_MAX);
            next = Instant::now() + poll;
        }
    }
}

impl Instance for CloudInstance {
    fn run(&mut self, step: &Step, sink: &mut dyn Sink) -> Outcome {
        sink.step(&step.name);
        let nonce = super::qemu::driver::nonce();
        let id = self.launch(step, &nonce)?;
        let timeout = step.timeout.unwrap_or(DEFAULT_TEST_TIMEOUT);
        let r = self.follow(&id, &nonce, timeout, sink);
        // terminate now on every path (a fatal check, a timeout, Ctrl-C, the end)
        if let Err(why) = self.terminate() {
            return Err(Interrupt::Infra(format!(
                "{} — and the instance could not be terminated: {why}; the next run reaps it",
                match &r {
                    Ok(s) => format!("the test ended with exit status {s}"),
                    Err(i) => i.to_string(),
                }
            )));
        }
        r.map(Exit::Code)
    }

    fn facts(&self) -> Facts {
        Facts {
            boot: self.boot,
            ..Facts::default()
        }
    }

    fn keep(mut self: Box<Self>) -> Result<Option<PathBuf>> {
        // an instance costs money: it is never kept
        self.terminate().map_err(|reason| Error::Cloud {
            cloud: self.api.cloud.clone(),
            endpoint: self.api.endpoint("ec2"),
            reason,
        })?;
        Ok(None)
    }
}

impl Drop for CloudInstance {
    fn drop(&mut self) {
        // the ledger entry stays when this fails: the next run reaps the instance
        let _ = self.terminate();
    }
}

impl std::fmt::Debug for CloudInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudInstance")
            .field("cloud", &self.api.cloud)
            .field("machine", &self.machine)
            .field("revision", &self.revision)
            .field("image", &self.image)
            .finish_non_exhaustive()
    }
}

/// The part of `output` after what `seen` (the end of the previous poll's
/// output) already covered. The console is a window that may slide (EC2
/// keeps the last 64 KiB): `seen` is looked for whole, else the longest end
/// of it that `output` starts with; nothing in common, all is new.
fn fresh<'o>(seen: &[u8], output: &'o [u8]) -> &'o [u8] {
    if seen.is_empty() {
        return output;
    }
    if let Some(at) = memchr::memmem::find(output, seen) {
        return &output[at + seen.len()..];
    }
    for k in (1..seen.len().min(output.len())).rev() {
        if output.starts_with(&seen[seen.len() - k..]) {
            return &output[k..];
        }
    }
    output
}

/// The user data of one step: a script that writes the command's output
/// between the markers to the serial console. `RECONCILE_CONSOLE` names
/// another place to write to (running the script outside a VM).
pub fn user_data(step: &Step, nonce: &str) -> String {
    let mut command = String::new();
    for (k, v) in &step.env {
        command.push_str(&format!("{k}={} ", shell_words::quote(v)));
    }
    command.push_str(&shell_words::join(&step.argv));
    format!(
        "#!/bin/sh\n\
         # reconcile: test {name}\n\
         out=/dev/ttyS0\n\
         [ -c \"$out\" ] && [ -w \"$out\" ] || out=/dev/console\n\
         [ -n \"$RECONCILE_CONSOLE\" ] && out=$RECONCILE_CONSOLE\n\
         {{\n\
         printf '%s-B\\n' {nonce}\n\
         cd {dir} && {command}\n\
         echo {nonce}-$?-\n\
         }} </dev/null >>\"$out\" 2>&1\n",
        name = shell_words::quote(&step.name).replace('\n', " "),
        dir = shell_words::quote(step.cwd.as_deref().unwrap_or("/")),
    )
}

/// The content digest of the machine's current revision as stored on this host.
fn stored_digest(volume: &Volume, name: &str, m: &Machine, revision: u32) -> Result<String> {
    if m.kind != MachineKind::Disk {
        return Err(Error::Usage(format!(
            "machine {name} is a root filesystem; the cloud executor boots disk machines"
        )));
    }
    let layout = MachineDir::new(volume, name);
    let backend = layout.backend().map(|b| b.name()).unwrap_or("dir");
    let st = layout.observe(backend)?;
    st.entries
        .get(&layout.rev_name(revision))
        .and_then(|e| e.receipt.as_ref())
        .filter(|r| r.kind == EntryKind::Revision)
        .map(|r| r.source_sha256.clone())
        .ok_or_else(|| {
            Error::Usage(format!(
                "revision {revision} of machine {name} is not stored here: run `reconcile apply` first"
            ))
        })
}

/// Behind a gate: the newest available image of `machine` tagged `current`.
fn current_image(
    api: &Api,
    images: &[crate::cloud::ec2::Image],
    machine: &str,
    declared: u32,
) -> Result<(u32, String)> {
    images
        .iter()
        .filter(|i| {
            i.tags.get(TAG_MACHINE).map(String::as_str) == Some(machine)
                && i.tags.get(cloud::TAG_STATE).map(String::as_str) == Some("current")
                && i.state == "available"
        })
        .filter_map(|i| {
            let rev = i.tags.get(cloud::TAG_REVISION)?.parse::<u32>().ok()?;
            Some((rev, i.id.clone()))
        })
        .max()
        .ok_or_else(|| {
            Error::Usage(format!(
                "no image of machine {machine} is current in cloud {} yet: revision {declared} is a candidate until its promotion gate passes (`reconcile apply`)",
                api.cloud
            ))
        })
}

/// The available image of that revision and digest.
/// The image of `machine@revision` with `digest` among `images` (what the
/// cloud holds tagged by reconcile), available.
fn published_image(
    api: &Api,
    images: &[crate::cloud::ec2::Image],
    machine: &str,
    revision: u32,
    digest: &str,
) -> Result<String> {
    let rev = revision.to_string();
    let mine = |i: &&crate::cloud::ec2::Image| {
        i.tags.get(TAG_MACHINE).map(String::as_str) == Some(machine)
            && i.tags.get(cloud::TAG_REVISION) == Some(&rev)
    };
    let candidates: Vec<_> = images.iter().filter(mine).collect();
    match candidates
        .iter()
        .find(|i| i.tags.get(cloud::TAG_DIGEST).map(String::as_str) == Some(digest) && i.state == "available")
    {
        Some(i) => Ok(i.id.clone()),
        None if candidates.is_empty() => Err(Error::Usage(format!(
            "machine {machine}@{revision} is not published to cloud {}: run `reconcile apply` first",
            api.cloud
        ))),
        None => Err(Error::Usage(format!(
            "the image of {machine}@{revision} in cloud {} is not the revision stored here \
             (digest differs or not available yet): run `reconcile apply` first",
            api.cloud
        ))),
    }
}

fn ledger_write(state: &StateDir, e: &Entry) -> Result<()> {
    let dir = state.open()?;
    dir.create_dir_all(Path::new(LEDGER), 0o700)
        .map_err(|err| Error::io(state.root.join(LEDGER), err))?;
    state.write_file(
        &format!("{LEDGER}/{}.json", e.token),
        &serde_json::to_vec_pretty(e).expect("an entry serialises"),
    )
}

fn ledger_remove(state: &StateDir, token: &str) {
    if let Ok(dir) = state.open() {
        let _ = dir.remove_file(&Path::new(LEDGER).join(format!("{token}.json")));
    }
}

/// Clouds this process already reaped.
static REAPED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Terminate what crashed runs on this host left in cloud `cname`: instances
/// of ledger entries whose process is gone, and instances tagged
/// `reconcile:run` by a process of this host that is gone. Once per cloud and
/// process; one line per instance terminated.
pub fn reap(
    desired: &Desired,
    state: &StateDir,
    clouds: &super::Clouds,
    cname: &str,
) -> Result<Vec<String>> {
    if !REAPED.lock().unwrap().insert(cname.to_string()) {
        return Ok(Vec::new());
    }
    let api = clouds.api(desired, cname)?;
    let host = crate::process::identity::kernel_hostname();
    let mut notes = Vec::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let terminate = |id: &str, why: &str, notes: &mut Vec<String>| -> Result<()> {
        api.terminate_instance(id)
            .map_err(|e| cloud::error(&api, "ec2", &format!("TerminateInstances {id}"), e))?;
        notes.push(format!(
            "cloud {cname}: terminated instance {id} left by {why}"
        ));
        Ok(())
    };
    let running = api
        .instances_tagged(TAG_RUN)
        .map_err(|e| cloud::error(&api, "ec2", "DescribeInstances", e))?;
    // the ledger first: it knows launches whose tags may not be visible yet
    if let Ok(dir) = state.open().and_then(|d| {
        d.open_dir(Path::new(LEDGER))
            .map_err(|e| Error::io(state.root.join(LEDGER), e))
    }) {
        for (name, _) in dir.entries().unwrap_or_default() {
            let rel = Path::new(LEDGER).join(&name);
            let Some(entry) = state
                .read_file(&rel.to_string_lossy())
                .and_then(|b| serde_json::from_slice::<Entry>(&b).ok())
            else {
                continue;
            };
            if entry.cloud != cname || entry.owner.alive() {
                continue;
            }
            let ids: BTreeSet<String> = running
                .iter()
                .filter(|i| i.tags.get(TAG_TOKEN) == Some(&entry.token))
                .map(|i| i.id.clone())
                .chain(entry.instance.clone())
                .collect();
            for id in ids {
                let why = format!(
                    "a crashed run (test {}, started {})",
                    entry.test, entry.started
                );
                terminate(&id, &why, &mut notes)?;
                done.insert(id);
            }
            ledger_remove(state, &entry.token);
        }
    }
    for i in running.iter().filter(|i| !done.contains(&i.id)) {
        let Some(tag) = i.tags.get(TAG_RUN) else {
            continue;
        };
        let mut parts = tag.rsplitn(3, ':');
        let (Some(start), Some(pid), Some(h)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(pid), Ok(start_time)) = (pid.parse(), start.parse()) else {
            continue;
        };
        if h != host || (Owner { pid, start_time }).alive() {
            continue;
        }
        terminate(
            &i.id,
            &format!("a crashed run ({TAG_RUN} = {tag})"),
            &mut notes,
        )?;
    }
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_output_is_what_follows_the_previous_poll() {
        assert_eq!(fresh(b"", b"abc\n"), b"abc\n");
        assert_eq!(fresh(b"abc\n", b"abc\ndef\n"), b"def\n");
        // a window that slid: the old tail is found further in
        assert_eq!(fresh(b"one\ntwo\n", b"two\nthree\n"), b"three\n");
        // the same canned text again: nothing new
        assert_eq!(fresh(b"same\n", b"same\n"), b"");
        // nothing in common: all of it is new
        assert_eq!(fresh(b"xyz", b"abc"), b"abc");
    }

    #[test]
    fn user_data_brackets_the_command_with_the_markers() {
        let step = Step {
            name: "smoke.it's".into(),
            argv: vec!["/bin/echo".into(), "a b".into()],
            env: vec![("RECONCILE_TEST".into(), "smoke.it's".into())],
            ..Step::default()
        };
        let s = user_data(&step, "00ff");
        assert!(s.starts_with("#!/bin/sh\n"), "{s}");
        assert!(s.contains("printf '%s-B\\n' 00ff\n"), "{s}");
        assert!(
            s.contains("cd / && RECONCILE_TEST='smoke.it'\\''s' /bin/echo 'a b'\n"),
            "{s}"
        );
        assert!(s.contains("echo 00ff-$?-\n"), "{s}");
        // the script's own text never contains a marker a console could mistake
        assert!(!s.contains("00ff-B") && !s.contains("00ff-0-"), "{s}");
    }

    #[test]
    fn run_tags_name_host_pid_and_start_time() {
        let o = Owner {
            pid: 42,
            start_time: 7,
        };
        assert_eq!(run_tag("build-1", &o), "build-1:42:7");
    }
}
