//! `vm.transport = "ssh"`: commands over SSH, for images that run sshd —
//! kola's way. QEMU's user network forwards a loopback port to the guest's
//! port 22 (`hostfwd=tcp:127.0.0.1:PORT-:22`; the network stays restricted
//! unless `vm.network = "user"`).
//!
//! Trust comes from the serial console, never from the network: after the
//! login, reconcile types one line that appends a key it just made to the
//! user's `authorized_keys` and prints the guest's host keys, which become
//! the only entries of a known-hosts file of its own (strict checking, no
//! agent, no user configuration, no password). One master connection
//! (`ssh -M -N`, supervised like QEMU) carries every command, upload,
//! collect and the journal as sessions of their own, so a command costs a
//! session, not a handshake.
//!
//! Each command: stdin from /dev/null, no terminal (`-T`), stdout and stderr
//! apart, its exact status. sshd runs it in a session of its own, so at its
//! time limit a second session kills the whole process group (the pid is
//! written to a file in the guest's `$TMPDIR` while it runs).

use std::fs::File;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::time::Instant;

use super::agent;
use super::driver::{nonce, Deadline, Driver};
use crate::platform::Upload;
use crate::process::{Interrupt, Sink, Stream};

/// A free loopback port for the forward (QEMU binds it; a race with another
/// program taking it in between shows as QEMU failing to start, named in its log).
pub fn free_port() -> io::Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(l.local_addr()?.port())
}

/// The forward QEMU's user network needs.
pub fn hostfwd(port: u16) -> String {
    format!("hostfwd=tcp:127.0.0.1:{port}-:22")
}

/// The key, the known hosts and the master's socket: a private directory
/// under the system's temporary one (a control socket's path must be short).
pub struct Keys {
    dir: PathBuf,
    pub port: u16,
}

impl Keys {
    /// A new key pair for one VM.
    pub fn new(port: u16) -> Result<Keys, Interrupt> {
        let dir = std::env::temp_dir().join(format!("reconcile-ssh-{}", nonce()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Interrupt::Infra(format!("cannot make {}: {e}", dir.display())))?;
        let keys = Keys { dir, port };
        let made = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "reconcile", "-f"])
            .arg(keys.key())
            .stdin(Stdio::null())
            .output();
        match made {
            Ok(o) if o.status.success() => Ok(keys),
            Ok(o) => Err(Interrupt::Infra(format!(
                "ssh-keygen failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Interrupt::Infra(
                "vm.transport = \"ssh\" needs ssh and ssh-keygen (apt-get install openssh-client)"
                    .into(),
            )),
            Err(e) => Err(Interrupt::Infra(format!("cannot run ssh-keygen: {e}"))),
        }
    }

    /// The key a saved guest trusts, with its host keys and user (see
    /// [`Ssh::save_keys`]), in a private directory of its own; the port is
    /// set when QEMU starts.
    pub fn saved(from: &Path) -> io::Result<(Keys, String)> {
        let dir = std::env::temp_dir().join(format!("reconcile-ssh-{}", nonce()));
        std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
        let keys = Keys { dir, port: 0 };
        for f in ["id", "id.pub", "known_hosts"] {
            std::fs::copy(from.join(f), keys.dir.join(f))?;
        }
        let user = std::fs::read_to_string(from.join("user"))?
            .trim()
            .to_string();
        Ok((keys, user))
    }

    fn key(&self) -> PathBuf {
        self.dir.join("id")
    }

    fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    fn control(&self) -> PathBuf {
        self.dir.join("ctl")
    }

    /// The line typed on the console: authorise the key, then say who is
    /// logged in and the host's public keys.
    pub fn grant(&self) -> Result<String, Interrupt> {
        let public = std::fs::read_to_string(self.dir.join("id.pub"))
            .map_err(|e| Interrupt::Infra(format!("cannot read the new ssh key: {e}")))?;
        Ok(format!(
            "umask 077; mkdir -p ~/.ssh && printf '%s\\n' {} >>~/.ssh/authorized_keys && echo \"{USER}$(id -un)\" && sed 's/^/{HOST_KEY}/' /etc/ssh/ssh_host_*_key.pub",
            shell_words::quote(public.trim())
        ))
    }

    /// Keep the host keys the console printed. Returns the user. Kernel
    /// and systemd lines arrive between them on the console: only the
    /// marked lines count.
    pub fn trust(&self, said: &str) -> Result<String, Interrupt> {
        let marked = |mark: &'static str| {
            said.lines()
                .filter_map(move |l| l.split_once(mark).map(|(_, rest)| rest.trim()))
        };
        let user = marked(USER).next().unwrap_or("root").to_string();
        let hosts: Vec<String> = marked(HOST_KEY)
            .filter(|l| l.starts_with("ssh-") || l.starts_with("ecdsa-"))
            .map(|l| {
                let mut f = l.split_whitespace();
                let (kind, key) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
                format!("{ALIAS} {kind} {key}\n")
            })
            .collect();
        if hosts.is_empty() {
            return Err(Interrupt::Infra(
                "the guest printed no sshd host key from /etc/ssh/ssh_host_*_key.pub \
                 (is openssh-server installed? vm.transport = \"agent\" needs no sshd)"
                    .into(),
            ));
        }
        std::fs::write(self.known_hosts(), hosts.concat())
            .map_err(|e| Interrupt::Infra(format!("cannot write the known hosts: {e}")))?;
        Ok(user)
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The name the guest's host keys are filed under (whatever the port).
const ALIAS: &str = "reconcile-guest";
/// What the granting line prints before the user's name and each host key.
const USER: &str = "reconcile-ssh-user: ";
const HOST_KEY: &str = "reconcile-ssh-host-key: ";

/// The connection: a master and the sessions over it.
pub struct Ssh {
    keys: Keys,
    user: String,
    master: Child,
    journal: Option<(Child, ChildStdout)>,
    factor: f64,
    bufs: Bufs,
}

struct Bufs {
    console: Vec<u8>,
    out: Vec<u8>,
    err: Vec<u8>,
    journal: Vec<u8>,
}

/// Where one of a session's streams goes.
enum To<'a> {
    Sink(Stream),
    Keep(&'a mut Vec<u8>),
}

/// A session while it runs.
struct Session {
    child: Child,
    out: Option<ChildStdout>,
    err: Option<ChildStderr>,
}

impl Ssh {
    /// Connect (retrying while sshd comes up, until `deadline`), then start
    /// the journal. The console is read meanwhile.
    pub async fn connect(
        keys: Keys,
        user: String,
        factor: f64,
        deadline: &Deadline,
        driver: &mut Driver,
        sink: &mut dyn Sink,
    ) -> Result<Ssh, Interrupt> {
        let mut console = vec![0u8; 64 << 10];
        let mut last = String::new();
        let master = loop {
            let mut master = command(&keys, &user, true)
                .args(["-M", "-N", "-o", "ControlPersist=no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| Interrupt::Infra(format!("cannot run ssh: {e}")))?;
            let mut stderr = master.stderr.take().expect("piped");
            let mut said = Vec::new();
            let up = loop {
                if keys.control().exists() {
                    break true;
                }
                if driver.cancelled() {
                    driver.kill_now();
                    return Err(Interrupt::Cancelled);
                }
                if Instant::now() >= deadline.at {
                    return Err(Interrupt::Infra(format!(
                        "sshd in the guest did not let reconcile in on 127.0.0.1:{} within {}{} \
                         (vm.transport = \"agent\" needs no sshd)",
                        keys.port,
                        humantime::format_duration(deadline.after),
                        if last.is_empty() {
                            String::new()
                        } else {
                            format!("; ssh said: {last}")
                        }
                    )));
                }
                tokio::select! {
                    r = driver.console().read(&mut console) => {
                        let n = r.map_err(|e| Interrupt::Infra(format!("cannot read the serial console: {e}")))?;
                        if n == 0 {
                            return Err(driver.ended(&deadline.what, sink).await);
                        }
                        driver.ingest(&console[..n], sink)?;
                    }
                    _ = master.wait() => {
                        let _ = stderr.read_to_end(&mut said).await;
                        break false;
                    }
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            };
            if up {
                break master;
            }
            if let Some(l) = String::from_utf8_lossy(&said)
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
            {
                last = l.trim().to_string();
            }
            // sshd not listening yet (the guest still booting): try again
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let mut ssh = Ssh {
            keys,
            user,
            master,
            journal: None,
            factor,
            bufs: Bufs {
                console,
                out: vec![0; 256 << 10],
                err: vec![0; 64 << 10],
                journal: vec![0; 64 << 10],
            },
        };
        let mut journal = command(&ssh.keys, &ssh.user, false)
            .arg("command -v journalctl >/dev/null 2>&1 && exec journalctl -b -f -o short-precise --no-pager")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Interrupt::Infra(format!("cannot run ssh: {e}")))?;
        let out = journal.stdout.take().expect("piped");
        ssh.journal = Some((journal, out));
        Ok(ssh)
    }

    /// Keep the key, the host keys and the user in `to` (a booted
    /// snapshot: its restored guests trust this key).
    pub fn save_keys(&self, to: &Path) -> io::Result<()> {
        std::fs::DirBuilder::new().mode(0o700).create(to)?;
        for f in ["id", "id.pub", "known_hosts"] {
            std::fs::copy(self.keys.dir.join(f), to.join(f))?;
        }
        std::fs::write(to.join("user"), &self.user)
    }

    /// A session running `remote`, its stdin from `input` (else /dev/null).
    fn session(&self, remote: &str, input: Option<File>) -> Result<Session, Interrupt> {
        let mut child = command(&self.keys, &self.user, false)
            .arg(remote)
            .stdin(input.map_or_else(Stdio::null, Stdio::from))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Interrupt::Infra(format!("cannot run ssh: {e}")))?;
        Ok(Session {
            out: child.stdout.take(),
            err: child.stderr.take(),
            child,
        })
    }

    /// Run `script` (see [`agent::script`]); at `limit` its process group
    /// is killed by a second session, and if that does not end it within a
    /// grace period the VM goes (the caller drops it).
    pub async fn run(
        &mut self,
        script: &str,
        limit: Duration,
        driver: &mut Driver,
        sink: &mut dyn Sink,
    ) -> Result<agent::Ran, Interrupt> {
        let pidfile = format!("${{TMPDIR:-/tmp}}/.reconcile-{}", nonce());
        // the parentheses keep the pid file's shell (the session's leader)
        // alive to remove it; the script's exit status is the session's
        let remote =
            format!("echo $$ >\"{pidfile}\"; ({script}); __st=$?; rm -f \"{pidfile}\"; exit $__st");
        let mut s = self.session(&remote, None)?;
        let deadline = Deadline::after(limit, "the command");
        let first = self
            .drive(
                &mut s,
                To::Sink(Stream::Stdout),
                To::Sink(Stream::Stderr),
                driver,
                sink,
                &deadline,
            )
            .await;
        let status = match first {
            Ok(st) => return self.status(st, false),
            Err(Interrupt::TimedOut { .. }) => {
                let kill = format!(
                    "p=$(cat \"{pidfile}\" 2>/dev/null) && kill -KILL -- \"-$p\" 2>/dev/null; rm -f \"{pidfile}\""
                );
                let mut k = self.session(&kill, None)?;
                let grace =
                    Deadline::after(Duration::from_secs(10).mul_f64(self.factor), "the command");
                let (mut o, mut e) = (Vec::new(), Vec::new());
                self.drive(
                    &mut k,
                    To::Keep(&mut o),
                    To::Keep(&mut e),
                    driver,
                    sink,
                    &grace,
                )
                .await
                .map_err(|e| over(e, limit))?;
                self.drive(
                    &mut s,
                    To::Sink(Stream::Stdout),
                    To::Sink(Stream::Stderr),
                    driver,
                    sink,
                    &grace,
                )
                .await
                .map_err(|e| over(e, limit))?
            }
            Err(e) => return Err(e),
        };
        self.status(status, true)
    }

    /// ssh's own failures exit 255, as a command may: the master still
    /// being there tells them apart.
    fn status(&mut self, st: ExitStatus, timed_out: bool) -> Result<agent::Ran, Interrupt> {
        let status = st.code().unwrap_or(255);
        if status == 255 && !timed_out && self.master.try_wait().ok().flatten().is_some() {
            return Err(Interrupt::Infra(
                "the ssh connection to the guest broke (the master connection ended)".into(),
            ));
        }
        Ok(agent::Ran { status, timed_out })
    }

    /// Copy each file in: to a temporary name beside it, then renamed.
    pub async fn upload(
        &mut self,
        files: &[Upload],
        driver: &mut Driver,
        sink: &mut dyn Sink,
    ) -> Result<(), Interrupt> {
        for f in files {
            let from = File::open(&f.from).map_err(|e| {
                Interrupt::Infra(format!(
                    "cannot upload {}: cannot read {}: {e}",
                    f.guest,
                    f.from.display()
                ))
            })?;
            let size = from.metadata().map(|m| m.len()).unwrap_or(0);
            let dest = shell_words::quote(&f.guest).into_owned();
            let remote = format!(
                "d=$(dirname -- {dest}) && mkdir -p -- \"$d\" && t=\"$d/.reconcile-upload-{}\" && \
                 cat >\"$t\" && chmod {:o} \"$t\" && mv -f -- \"$t\" {dest} || {{ rm -f -- \"$t\"; exit 1; }}",
                nonce(),
                f.mode
            );
            let mut s = self.session(&remote, Some(from))?;
            let wait =
                Duration::from_secs(60).mul_f64(self.factor) + Duration::from_millis(size / 1000);
            let deadline = Deadline::after(wait, "an upload");
            let (mut o, mut e) = (Vec::new(), Vec::new());
            let st = self
                .drive(
                    &mut s,
                    To::Keep(&mut o),
                    To::Keep(&mut e),
                    driver,
                    sink,
                    &deadline,
                )
                .await?;
            if !st.success() {
                return Err(Interrupt::Infra(format!(
                    "cannot upload {}: {}",
                    f.guest,
                    last_line(&e).unwrap_or("the guest could not write it")
                )));
            }
        }
        Ok(())
    }

    /// Copy the guest files matching each pattern into `into`, under their
    /// guest paths: one session per pattern sends `<size> <path, base64>`
    /// and the bytes of each file.
    pub async fn collect(
        &mut self,
        patterns: &[String],
        into: &Path,
        driver: &mut Driver,
        sink: &mut dyn Sink,
    ) -> Result<usize, Interrupt> {
        let mut count = 0;
        for pattern in patterns {
            let remote = format!(
                "t=${{TMPDIR:-/tmp}}/.reconcile-collect-{}; for f in {pattern}; do \
                 [ -f \"$f\" ] && cp -- \"$f\" \"$t\" 2>/dev/null || continue; \
                 printf '%s %s\\n' $(wc -c <\"$t\") \"$(printf '%s' \"$f\" | base64 | tr -d '\\n')\"; \
                 cat \"$t\"; rm -f -- \"$t\"; done; true",
                nonce()
            );
            let mut s = self.session(&remote, None)?;
            let deadline =
                Deadline::after(Duration::from_secs(300).mul_f64(self.factor), "collect");
            let (mut o, mut e) = (Vec::new(), Vec::new());
            self.drive(
                &mut s,
                To::Keep(&mut o),
                To::Keep(&mut e),
                driver,
                sink,
                &deadline,
            )
            .await?;
            count += unpack(&o, into)?;
        }
        Ok(count)
    }

    /// Read a session's streams, the console and the journal until the
    /// session ends (or the deadline: the session is left as it is).
    async fn drive(
        &mut self,
        s: &mut Session,
        mut out: To<'_>,
        mut err: To<'_>,
        driver: &mut Driver,
        sink: &mut dyn Sink,
        deadline: &Deadline,
    ) -> Result<ExitStatus, Interrupt> {
        let b = &mut self.bufs;
        loop {
            if s.out.is_none() && s.err.is_none() {
                return s
                    .child
                    .wait()
                    .await
                    .map_err(|e| Interrupt::Infra(format!("cannot wait for ssh: {e}")));
            }
            if driver.cancelled() {
                driver.kill_now();
                return Err(Interrupt::Cancelled);
            }
            let now = Instant::now();
            if now >= deadline.at {
                return Err(timed_out(deadline.after));
            }
            let wake = deadline.at.min(now + Duration::from_millis(50));
            tokio::select! {
                r = driver.console().read(&mut b.console) => {
                    let n = r.map_err(|e| Interrupt::Infra(format!("cannot read the serial console: {e}")))?;
                    if n == 0 {
                        return Err(driver.ended(&deadline.what, sink).await);
                    }
                    driver.ingest(&b.console[..n], sink)?;
                }
                r = read_opt(&mut s.out, &mut b.out) => match r {
                    Ok(0) | Err(_) => s.out = None,
                    Ok(n) => put(&mut out, &b.out[..n], driver, sink)?,
                },
                r = read_opt(&mut s.err, &mut b.err) => match r {
                    Ok(0) | Err(_) => s.err = None,
                    Ok(n) => put(&mut err, &b.err[..n], driver, sink)?,
                },
                r = read_journal(&mut self.journal, &mut b.journal), if self.journal.is_some() => match r {
                    Ok(0) | Err(_) => self.journal = None,
                    Ok(n) => put(&mut To::Sink(Stream::Journal), &b.journal[..n], driver, sink)?,
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

/// The grace after a time limit ran out too: the command's limit is what
/// the result names (Ctrl-C and the rest pass as they are).
fn over(e: Interrupt, limit: Duration) -> Interrupt {
    match e {
        Interrupt::TimedOut { .. } => timed_out(limit),
        other => other,
    }
}

fn timed_out(after: Duration) -> Interrupt {
    Interrupt::TimedOut {
        what: "the command".into(),
        after,
    }
}

/// `ssh` with the options every use shares: this VM's key and host keys
/// only, nothing from the user's configuration, never a password or a
/// terminal. `master`: the connection the others go through.
fn command(keys: &Keys, user: &str, master: bool) -> Command {
    let mut c = Command::new("ssh");
    c.arg("-F").arg("/dev/null");
    for o in [
        "BatchMode=yes",
        "IdentitiesOnly=yes",
        "IdentityAgent=none",
        "PasswordAuthentication=no",
        "KbdInteractiveAuthentication=no",
        "StrictHostKeyChecking=yes",
        "GlobalKnownHostsFile=/dev/null",
        "LogLevel=ERROR",
        "ConnectTimeout=20",
    ] {
        c.arg("-o").arg(o);
    }
    c.arg("-o").arg(format!("HostKeyAlias={ALIAS}"));
    c.arg("-o").arg(format!(
        "UserKnownHostsFile={}",
        keys.known_hosts().display()
    ));
    c.arg("-i").arg(keys.key());
    c.arg("-S").arg(keys.control());
    if !master {
        c.args(["-o", "ControlMaster=no", "-T"]);
    }
    c.arg("-p")
        .arg(keys.port.to_string())
        .arg(format!("{user}@127.0.0.1"));
    if !master {
        c.arg("--");
    }
    c.kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only
    // makes the syscalls of `tie_to_parent`; it allocates nothing.
    unsafe {
        c.pre_exec(|| crate::process::child::tie_to_parent(None));
    }
    c
}

async fn read_opt<R: tokio::io::AsyncRead + Unpin>(
    r: &mut Option<R>,
    buf: &mut [u8],
) -> io::Result<usize> {
    match r {
        Some(s) => s.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn read_journal(j: &mut Option<(Child, ChildStdout)>, buf: &mut [u8]) -> io::Result<usize> {
    match j {
        Some((_, out)) => out.read(buf).await,
        None => std::future::pending().await,
    }
}

fn put(
    to: &mut To,
    bytes: &[u8],
    driver: &mut Driver,
    sink: &mut dyn Sink,
) -> Result<(), Interrupt> {
    match to {
        To::Sink(stream) => agent::deliver(driver, sink, *stream, bytes),
        To::Keep(v) => {
            v.extend_from_slice(bytes);
            Ok(())
        }
    }
}

fn last_line(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes)
        .ok()?
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
}

/// The files of one collect session, stored under `into`.
fn unpack(mut bytes: &[u8], into: &Path) -> Result<usize, Interrupt> {
    let mut count = 0;
    while !bytes.is_empty() {
        let bad = || Interrupt::Infra("the guest's collect output was cut short".into());
        let nl = memchr::memchr(b'\n', bytes).ok_or_else(bad)?;
        let head = String::from_utf8_lossy(&bytes[..nl]).into_owned();
        let (size, path) = head.split_once(' ').ok_or_else(bad)?;
        let size: usize = size.trim().parse().map_err(|_| bad())?;
        let body = bytes.get(nl + 1..nl + 1 + size).ok_or_else(bad)?;
        let guest = agent::unbase64(path.trim());
        agent::store(into, &guest, body)?;
        count += 1;
        bytes = &bytes[nl + 1 + size..];
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collected_files_are_unpacked_under_their_guest_paths() {
        let dir = std::env::temp_dir().join(format!("rc-unpack-{}", nonce()));
        let mut stream = Vec::new();
        for (path, body) in [("/var/log/a.log", &b"one\ntwo"[..]), ("/x y", b"")] {
            stream.extend_from_slice(format!("{} {}\n", body.len(), agent::b64(path)).as_bytes());
            stream.extend_from_slice(body);
        }
        assert_eq!(unpack(&stream, &dir).unwrap(), 2);
        assert_eq!(
            std::fs::read(dir.join("var/log/a.log")).unwrap(),
            b"one\ntwo"
        );
        assert_eq!(std::fs::read(dir.join("x y")).unwrap(), b"");
        assert!(
            unpack(b"7 L2E=\nabc", &dir).is_err(),
            "a short file is an error"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn host_keys_are_filed_under_the_alias_and_the_user_comes_first() {
        let keys = Keys {
            dir: std::env::temp_dir().join(format!("rc-keys-{}", nonce())),
            port: 2222,
        };
        std::fs::create_dir_all(&keys.dir).unwrap();
        let user = keys
            .trust(
                "[  113.6] cloud-init[414]: ssh-rsa AAAAB3 from a log line\r\n\
                 reconcile-ssh-user: tester\r\n\
                 reconcile-ssh-host-key: ssh-ed25519 AAAAC3 root@deb\r\n\
                 [  113.7] random: crng init done\r\n\
                 reconcile-ssh-host-key: ecdsa-sha2-nistp256 AAAAE2 root@deb\r\n",
            )
            .unwrap();
        assert_eq!(user, "tester");
        let known = std::fs::read_to_string(keys.known_hosts()).unwrap();
        assert_eq!(
            known,
            "reconcile-guest ssh-ed25519 AAAAC3\nreconcile-guest ecdsa-sha2-nistp256 AAAAE2\n"
        );
        let none = keys
            .trust("reconcile-ssh-user: root\nsed: /etc/ssh/ssh_host_*_key.pub: No such file\n");
        assert!(matches!(none, Err(Interrupt::Infra(m)) if m.contains("openssh-server")));
    }
}
