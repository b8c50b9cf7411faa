//! The command channel (`vm.transport = "agent"`): commands run in the guest
//! without a terminal, their stdout and stderr apart, files copied in and
//! out, the journal streamed — kola's SSH plus its journal port, without
//! installing anything in the image.
//!
//! QEMU gets a virtio-serial device with five ports, each a socketpair whose
//! other end reconcile keeps: `reconcile.ctl` (requests and replies, one line
//! each), `reconcile.out` and `reconcile.err` (a command's stdout and stderr,
//! raw bytes), `reconcile.data` (file contents) and `reconcile.journal`
//! (`journalctl -f` when the guest has systemd). The agent is a POSIX `sh`
//! loop ([`AGENT`]) typed once on the serial console after the login; it
//! finds its ports by name in `/sys/class/virtio-ports`.
//!
//! The protocol, host → guest on ctl:
//!
//! ```text
//! run <id> <script>                       run a one-line shell script
//! run64 <id> <script, base64>             any other script
//! kill <id> <pid>                         kill a command's session (its time is up)
//! put <id> <size> <mode> <path, base64>   then <size> bytes on data
//! get <id> <pattern, base64>              copy matching files out
//! ```
//!
//! and guest → host: `hello 1` once, `pid <id> <pid>` when a command
//! started, `file <id> <size> <path, base64>` followed by `<size>` bytes on
//! data, and `done <id> <status>`. Each command runs in a subshell of its
//! own, so the loop stays free for a `kill`; a plain command costs the guest
//! two forks (the subshell, the command), which matters under TCG. A command's stdout and
//! stderr end with `<id>` written to out and err, so the host knows it has
//! all of both (the ports are separate streams; `done` may overtake them).
//! The ids are random, so no output can end a stream early by accident.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

use super::driver::{nonce, Deadline, Driver};
use crate::platform::Upload;
use crate::process::{Interrupt, Sink, Stream};

/// The ports, in the order of [`Wiring::guest`] and of the agent's arguments.
pub const PORTS: [&str; 5] = [
    "reconcile.ctl",
    "reconcile.out",
    "reconcile.err",
    "reconcile.data",
    "reconcile.journal",
];

/// The environment every command gets: no terminal, so no pager, no colour,
/// no folding.
const NO_TERMINAL: &str =
    "export TERM=dumb PAGER=cat SYSTEMD_PAGER=cat GIT_PAGER=cat NO_COLOR=1 SYSTEMD_COLORS=0";

/// The agent, defined and started from the login shell. It takes the port
/// devices as arguments; each command runs in a session of its own
/// (`setsid`), so a timeout kills all it started.
const AGENT: &str = r#"__rc_port() {
    for __p in /sys/class/virtio-ports/*; do
        if [ "$(cat "$__p/name" 2>/dev/null)" = "$1" ] && [ -c "/dev/${__p##*/}" ]; then
            echo "/dev/${__p##*/}"
            return 0
        fi
    done
    return 1
}
__rc_agent() {
    exec 3<>"$1" 4>"$2" 5>"$3" 6<>"$4" </dev/null >/dev/null 2>&1
    if [ -n "$5" ] && command -v journalctl >/dev/null 2>&1; then
        journalctl -b -f -o short-precise --no-pager >"$5" 2>&1 3>&- 4>&- 5>&- 6>&- &
    fi
    __ss=
    command -v setsid >/dev/null 2>&1 && __ss=setsid
    printf 'hello 1\n' >&3
    while IFS=' ' read -r __v __id __rest <&3; do
        case $__v in
        run | run64)
            if [ "$__v" = run64 ]; then __s=$(printf '%s' "$__rest" | base64 -d); else __s=$__rest; fi
            # a subshell per command: the loop stays free to take a `kill`
            (
                $__ss sh -c "$__s" </dev/null >&4 2>&5 3>&- 4>&- 5>&- 6>&- &
                __pid=$!
                printf 'pid %s %s\n' "$__id" "$__pid" >&3
                wait "$__pid"
                __st=$?
                printf '%s' "$__id" >&4
                printf '%s' "$__id" >&5
                printf 'done %s %s\n' "$__id" "$__st" >&3
            ) 6>&- &
            ;;
        kill)
            kill -KILL -- "-$__rest" 2>/dev/null || kill -KILL "$__rest" 2>/dev/null
            ;;
        put)
            set -f
            # shellcheck disable=SC2086
            set -- $__rest
            set +f
            __a=$1 __b=$2 __c=$3
            __p=$(printf '%s' "$__c" | base64 -d)
            __d=${__p%/*}
            [ -n "$__d" ] || __d=/
            __t="$__d/.reconcile-upload-$__id"
            mkdir -p -- "$__d" 2>/dev/null
            dd bs=65536 count="$__a" iflag=count_bytes,fullblock <&6 2>/dev/null |
                { cat >"$__t" 2>/dev/null || { cat >/dev/null; false; }; }
            if [ $? = 0 ] && chmod "$__b" "$__t" 2>/dev/null && mv -f -- "$__t" "$__p" 2>/dev/null; then
                __st=0
            else
                rm -f -- "$__t" 2>/dev/null
                __st=1
            fi
            printf 'done %s %s\n' "$__id" "$__st" >&3
            ;;
        get)
            __g=$(printf '%s' "$__rest" | base64 -d)
            __t=${TMPDIR:-/tmp}/.reconcile-collect-$__id
            for __f in $__g; do
                [ -f "$__f" ] || continue
                cp -- "$__f" "$__t" 2>/dev/null || continue
                __n=$(wc -c <"$__t")
                printf 'file %s %s %s\n' "$__id" $__n "$(printf '%s' "$__f" | base64 | tr -d '\n')" >&3
                cat "$__t" >&6
                rm -f -- "$__t"
            done
            printf 'done %s 0\n' "$__id" >&3
            ;;
        *)
            printf 'done %s 127\n' "$__id" >&3
            ;;
        esac
    done
}
__rc_start() {
    __i=0
    while ! __rc_port reconcile.ctl >/dev/null; do
        __i=$((__i + 1))
        if [ $__i -gt 20 ]; then
            echo "reconcile: no virtio-serial port reconcile.ctl in /sys/class/virtio-ports (does the guest kernel have virtio_console?)"
            return 3
        fi
        sleep 0.5
    done
    for __c in base64 dd sh; do
        command -v $__c >/dev/null 2>&1 || { echo "reconcile: the guest has no $__c"; return 4; }
    done
    __rc_agent "$(__rc_port reconcile.ctl)" "$(__rc_port reconcile.out)" "$(__rc_port reconcile.err)" \
        "$(__rc_port reconcile.data)" "$(__rc_port reconcile.journal)" </dev/null >/dev/null 2>&1 &
    echo "reconcile: agent started"
}
__rc_start"#;

/// What is typed on the console to start the agent.
pub fn starter() -> &'static str {
    AGENT
}

/// The socketpairs of the ports: reconcile's ends and QEMU's.
pub struct Wiring {
    host: Vec<std::os::unix::net::UnixStream>,
    /// QEMU's ends, inherited by it (the fd numbers are on its command line).
    pub guest: Vec<OwnedFd>,
}

impl Wiring {
    pub fn new() -> io::Result<Wiring> {
        let mut host = Vec::new();
        let mut guest = Vec::new();
        for _ in PORTS {
            let (a, b) = std::os::unix::net::UnixStream::pair()?;
            a.set_nonblocking(true)?;
            host.push(a);
            guest.push(OwnedFd::from(b));
        }
        Ok(Wiring { host, guest })
    }

    /// The fds QEMU must inherit.
    pub fn guest_fds(&self) -> Vec<RawFd> {
        self.guest.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// reconcile's ends as async streams (inside a tokio runtime).
    pub fn into_channel(self, factor: f64) -> io::Result<Channel> {
        let mut streams = self
            .host
            .into_iter()
            .map(UnixStream::from_std)
            .collect::<io::Result<Vec<_>>>()?
            .into_iter();
        let mut next = || streams.next().expect("five ports");
        Ok(Channel {
            ctl: next(),
            out: next(),
            err: next(),
            data: Some(next()),
            journal: Some(next()),
            lines: Vec::new(),
            bufs: Bufs::default(),
            factor,
        })
    }
}

/// QEMU's arguments for the ports, given the fds it inherits (in [`PORTS`] order).
pub fn qemu_args(fds: &[RawFd]) -> Vec<String> {
    let mut a = vec![
        "-device".to_string(),
        "virtio-serial-pci,id=rc-vser".to_string(),
    ];
    for (i, (name, fd)) in PORTS.iter().zip(fds).enumerate() {
        a.push("-chardev".into());
        a.push(format!("socket,id=rc-port{i},fd={fd}"));
        a.push("-device".into());
        a.push(format!(
            "virtserialport,bus=rc-vser.0,chardev=rc-port{i},name={name}"
        ));
    }
    a
}

/// The script a step runs: no terminal, its environment and directory, its
/// argv — one line (sent as it is) unless an argument holds a newline or
/// other control characters (then it goes base64-encoded).
pub fn script(argv: &[String], env: &[(String, String)], cwd: Option<&str>) -> String {
    let mut s = format!("{NO_TERMINAL}; ");
    for (k, v) in env {
        s.push_str(&format!("export {k}={}; ", shell_words::quote(v)));
    }
    if let Some(d) = cwd {
        s.push_str(&format!("cd -- {} || exit 125; ", shell_words::quote(d)));
    }
    s.push_str("exec ");
    s.push_str(&shell_words::join(argv));
    s
}

pub(super) fn b64(s: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A path the guest sent base64-encoded (empty when it does not decode).
pub(super) fn unbase64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .ok()
        .and_then(|p| String::from_utf8(p).ok())
        .unwrap_or_default()
}

/// The end of a command's stream: `needle` is written after its last byte.
struct Tail {
    needle: Vec<u8>,
    held: Vec<u8>,
    done: bool,
}

impl Tail {
    fn new(id: &str) -> Tail {
        Tail {
            needle: id.as_bytes().to_vec(),
            held: Vec::new(),
            done: false,
        }
    }

    /// Bytes received; returns what is surely the command's (all but what
    /// could be the start of the needle).
    fn take(&mut self, bytes: &[u8]) -> Vec<u8> {
        if self.done {
            return Vec::new();
        }
        self.held.extend_from_slice(bytes);
        if let Some(at) = memchr::memmem::find(&self.held, &self.needle) {
            self.done = true;
            let mut out = std::mem::take(&mut self.held);
            out.truncate(at);
            return out;
        }
        let keep = self.needle.len().saturating_sub(1).min(self.held.len());
        let cut = self.held.len() - keep;
        self.held.drain(..cut).collect()
    }
}

/// What arrived on the channel that a request waits for.
enum Event {
    Line(String),
    Data(Vec<u8>),
    /// A command's stdout or stderr reached its end.
    Ended,
}

/// How a command over the channel ended.
pub struct Ran {
    pub status: i32,
    /// It was killed at its time limit.
    pub timed_out: bool,
}

/// reconcile's side of the ports.
pub struct Channel {
    ctl: UnixStream,
    out: UnixStream,
    err: UnixStream,
    /// Taken out while an upload writes to it.
    data: Option<UnixStream>,
    /// Dropped once the guest closes it (no systemd: nothing is written).
    journal: Option<UnixStream>,
    /// Bytes of ctl not yet a complete line.
    lines: Vec<u8>,
    bufs: Bufs,
    factor: f64,
}

/// Read buffers, one per stream, kept across requests.
struct Bufs {
    console: Vec<u8>,
    out: Vec<u8>,
    err: Vec<u8>,
    journal: Vec<u8>,
    ctl: Vec<u8>,
    data: Vec<u8>,
}

impl Default for Bufs {
    fn default() -> Bufs {
        Bufs {
            console: vec![0; 64 << 10],
            out: vec![0; 256 << 10],
            err: vec![0; 64 << 10],
            journal: vec![0; 64 << 10],
            ctl: vec![0; 4096],
            data: vec![0; 256 << 10],
        }
    }
}

/// A broken channel is the platform's failure.
fn broken(what: &str, e: io::Error) -> Interrupt {
    Interrupt::Infra(format!("the command channel broke ({what}): {e}"))
}

impl Channel {
    /// Wait for the agent's `hello`.
    pub async fn hello(
        &mut self,
        driver: &mut Driver,
        sink: &mut dyn Sink,
    ) -> Result<(), Interrupt> {
        let wait = Duration::from_secs(30).mul_f64(self.factor);
        let deadline = Deadline::after(wait, "the agent's hello on reconcile.ctl");
        let mut streams = Streams::default();
        match self.next(driver, sink, &deadline, &mut streams, 0).await {
            Ok(Event::Line(l)) if l.starts_with("hello ") => Ok(()),
            Ok(Event::Line(l)) => Err(Interrupt::Infra(format!(
                "the agent said {l:?} instead of hello"
            ))),
            Ok(Event::Data(_) | Event::Ended) => unreachable!("no command ran"),
            Err(Interrupt::TimedOut { after, .. }) => Err(Interrupt::Infra(format!(
                "the agent started on the console but did not answer on its virtio port in {}",
                humantime::format_duration(after)
            ))),
            Err(i) => Err(i),
        }
    }

    async fn send(&mut self, line: &str) -> Result<(), Interrupt> {
        self.ctl
            .write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| broken("writing a request", e))
    }

    /// Run `script`; at `limit` its session is killed in the guest (so
    /// files can still be collected), and if even that gets no answer in a
    /// grace period, the VM goes (the caller drops it).
    pub async fn run(
        &mut self,
        script: &str,
        limit: Duration,
        driver: &mut Driver,
        sink: &mut dyn Sink,
    ) -> Result<Ran, Interrupt> {
        let id = nonce();
        let one_line = !script.is_empty()
            && script.len() < 16 << 10
            && script.bytes().all(|b| (0x20..0x7f).contains(&b))
            && !script.starts_with(' ')
            && !script.ends_with(' ');
        if one_line {
            self.send(&format!("run {id} {script}")).await?;
        } else {
            self.send(&format!("run64 {id} {}", b64(script))).await?;
        }
        let mut deadline = Deadline::after(limit, "the command");
        let mut streams = Streams {
            out: Some(Tail::new(&id)),
            err: Some(Tail::new(&id)),
        };
        let (mut status, mut pid, mut killed) = (None, None::<u32>, false);
        while status.is_none() || !streams.done() {
            match self.next(driver, sink, &deadline, &mut streams, 0).await {
                Err(Interrupt::TimedOut { .. }) if !killed => {
                    killed = true;
                    if let Some(p) = pid {
                        self.send(&format!("kill {id} {p}")).await?;
                    }
                    let grace = Duration::from_secs(10).mul_f64(self.factor);
                    deadline = Deadline::after(grace, "the command");
                }
                Err(Interrupt::TimedOut { .. }) => {
                    return Err(Interrupt::TimedOut {
                        what: "the command".into(),
                        after: limit,
                    })
                }
                Err(e) => return Err(e),
                Ok(Event::Line(l)) => match reply(&l, &id) {
                    Some(("pid", p)) => pid = p.trim().parse().ok(),
                    Some(("done", rest)) => status = Some(rest.trim().parse().unwrap_or(255)),
                    _ => {}
                },
                Ok(Event::Ended) => {}
                Ok(Event::Data(_)) => unreachable!("no data was asked for"),
            }
        }
        Ok(Ran {
            status: status.expect("done"),
            timed_out: killed,
        })
    }

    /// Copy each file in: to a temporary name beside it, then renamed.
    pub async fn upload(
        &mut self,
        files: &[Upload],
        driver: &mut Driver,
        sink: &mut dyn Sink,
    ) -> Result<(), Interrupt> {
        let mut data = self
            .data
            .take()
            .expect("the data port is back after every upload");
        let mut r = Ok(());
        for f in files {
            r = self.put(f, &mut data, driver, sink).await;
            if r.is_err() {
                break;
            }
        }
        self.data = Some(data);
        r
    }

    async fn put(
        &mut self,
        f: &Upload,
        data: &mut UnixStream,
        driver: &mut Driver,
        sink: &mut dyn Sink,
    ) -> Result<(), Interrupt> {
        let bytes = std::fs::read(&f.from).map_err(|e| {
            Interrupt::Infra(format!(
                "cannot upload {}: cannot read {}: {e}",
                f.guest,
                f.from.display()
            ))
        })?;
        let id = nonce();
        self.send(&format!(
            "put {id} {} {:o} {}",
            bytes.len(),
            f.mode,
            b64(&f.guest)
        ))
        .await?;
        let wait = Duration::from_secs(60).mul_f64(self.factor)
            + Duration::from_millis(bytes.len() as u64 / 1000);
        let deadline = Deadline::after(wait, "an upload");
        // the contents go while the console and the other ports are read
        let mut rest: &[u8] = &bytes;
        let mut streams = Streams::default();
        loop {
            let event = if rest.is_empty() {
                self.next(driver, sink, &deadline, &mut streams, 0).await?
            } else {
                let chunk = &rest[..rest.len().min(64 << 10)];
                tokio::select! {
                    r = data.write(chunk) => {
                        let n = r.map_err(|e| broken("writing a file", e))?;
                        rest = &rest[n..];
                        continue;
                    }
                    e = self.next(driver, sink, &deadline, &mut streams, 0) => e?,
                }
            };
            if let Event::Line(l) = event {
                if let Some(("done", st)) = reply(&l, &id) {
                    if st.trim() != "0" {
                        return Err(Interrupt::Infra(format!(
                            "cannot upload {}: the guest could not write it (read-only, full, or not a directory on the way?)",
                            f.guest
                        )));
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Copy the guest files matching each pattern into `into`, under their
    /// guest paths (`/var/log/a.log` → `into/var/log/a.log`).
    pub async fn collect(
        &mut self,
        patterns: &[String],
        into: &Path,
        driver: &mut Driver,
        sink: &mut dyn Sink,
    ) -> Result<usize, Interrupt> {
        let mut count = 0;
        for pattern in patterns {
            let id = nonce();
            self.send(&format!("get {id} {}", b64(pattern))).await?;
            let deadline =
                Deadline::after(Duration::from_secs(300).mul_f64(self.factor), "collect");
            let mut streams = Streams::default();
            loop {
                let Event::Line(l) = self.next(driver, sink, &deadline, &mut streams, 0).await?
                else {
                    unreachable!("no command ran and no data was asked for")
                };
                match reply(&l, &id) {
                    Some(("file", rest)) => {
                        let (size, path) = rest.split_once(' ').unwrap_or((rest, ""));
                        let size: usize = size
                            .parse()
                            .map_err(|_| Interrupt::Infra(format!("the agent said {l:?}")))?;
                        let mut bytes = Vec::with_capacity(size.min(64 << 20));
                        while bytes.len() < size {
                            let want = size - bytes.len();
                            if let Event::Data(d) = self
                                .next(driver, sink, &deadline, &mut streams, want)
                                .await?
                            {
                                bytes.extend_from_slice(&d);
                            }
                        }
                        let guest = unbase64(path.trim());
                        store(into, &guest, &bytes)?;
                        count += 1;
                    }
                    Some(("done", _)) => break,
                    _ => {}
                }
            }
        }
        Ok(count)
    }

    /// Read everything until a ctl line arrives (or, with `want_data`, up
    /// to that many bytes of data): the console goes to the driver, a
    /// command's stdout and stderr and the journal to the sink.
    async fn next(
        &mut self,
        driver: &mut Driver,
        sink: &mut dyn Sink,
        deadline: &Deadline,
        streams: &mut Streams,
        want_data: usize,
    ) -> Result<Event, Interrupt> {
        let b = &mut self.bufs;
        let dlen = want_data.clamp(1, b.data.len());
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.lines) {
                let line: Vec<u8> = self.lines.drain(..=i).collect();
                return Ok(Event::Line(
                    String::from_utf8_lossy(&line[..i]).into_owned(),
                ));
            }
            if driver.cancelled() {
                driver.kill_now();
                return Err(Interrupt::Cancelled);
            }
            let now = Instant::now();
            if now >= deadline.at {
                return Err(Interrupt::TimedOut {
                    what: deadline.what.clone(),
                    after: deadline.after,
                });
            }
            let wake = deadline.at.min(now + Duration::from_millis(50));
            let journal_open = self.journal.is_some();
            tokio::select! {
                r = driver.console().read(&mut b.console) => {
                    let n = r.map_err(|e| Interrupt::Infra(format!("cannot read the serial console: {e}")))?;
                    if n == 0 {
                        return Err(driver.ended(&deadline.what, sink).await);
                    }
                    driver.ingest(&b.console[..n], sink)?;
                }
                r = self.ctl.read(&mut b.ctl) => match r {
                    Ok(0) => return Err(Interrupt::Infra("the command channel closed (reconcile.ctl)".into())),
                    Ok(n) => self.lines.extend_from_slice(&b.ctl[..n]),
                    Err(e) => return Err(broken("reading replies", e)),
                },
                r = self.out.read(&mut b.out) => {
                    let got = r.map_err(|e| broken("reading stdout", e))?;
                    if let Some(e) = command_output(streams.out.as_mut(), &b.out[..got], Stream::Stdout, driver, sink, &deadline.what).await? {
                        return Ok(e);
                    }
                }
                r = self.err.read(&mut b.err) => {
                    let got = r.map_err(|e| broken("reading stderr", e))?;
                    if let Some(e) = command_output(streams.err.as_mut(), &b.err[..got], Stream::Stderr, driver, sink, &deadline.what).await? {
                        return Ok(e);
                    }
                }
                r = read_opt(&mut self.journal, &mut b.journal), if journal_open => match r {
                    Ok(0) | Err(_) => self.journal = None,
                    Ok(n) => deliver(driver, sink, Stream::Journal, &b.journal[..n])?,
                },
                r = read_opt(&mut self.data, &mut b.data[..dlen]), if want_data > 0 => {
                    let n = r.map_err(|e| broken("reading a file", e))?;
                    if n == 0 {
                        return Err(Interrupt::Infra("the command channel closed (reconcile.data)".into()));
                    }
                    return Ok(Event::Data(b.data[..n].to_vec()));
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }
}

/// Bytes read from a command's stdout or stderr port: the command's part
/// goes to the sink; [`Event::Ended`] once its end arrived. No bytes at all
/// means QEMU is gone (the port's socket closed), said as the console says it.
async fn command_output(
    tail: Option<&mut Tail>,
    bytes: &[u8],
    stream: Stream,
    driver: &mut Driver,
    sink: &mut dyn Sink,
    what: &str,
) -> Result<Option<Event>, Interrupt> {
    if bytes.is_empty() {
        return Err(driver.ended(what, sink).await);
    }
    let Some(t) = tail else {
        return Ok(None);
    };
    let mine = t.take(bytes);
    deliver(driver, sink, stream, &mine)?;
    Ok(t.done.then_some(Event::Ended))
}

/// A read of a stream that may be gone (then it never completes).
async fn read_opt(j: &mut Option<UnixStream>, buf: &mut [u8]) -> io::Result<usize> {
    match j {
        Some(s) => s.read(buf).await,
        None => std::future::pending().await,
    }
}

/// A command's two output streams while it runs.
#[derive(Default)]
struct Streams {
    out: Option<Tail>,
    err: Option<Tail>,
}

impl Streams {
    fn done(&self) -> bool {
        self.out.as_ref().is_none_or(|t| t.done) && self.err.as_ref().is_none_or(|t| t.done)
    }
}

pub(super) fn deliver(
    driver: &mut Driver,
    sink: &mut dyn Sink,
    stream: Stream,
    bytes: &[u8],
) -> Result<(), Interrupt> {
    if bytes.is_empty() {
        return Ok(());
    }
    if sink.output(stream, bytes) == crate::process::Flow::Stop {
        driver.kill_now();
        return Err(Interrupt::Stopped);
    }
    Ok(())
}

/// `<verb> <id> <rest>` for request `id`.
fn reply<'a>(line: &'a str, id: &str) -> Option<(&'a str, &'a str)> {
    let (verb, rest) = line.split_once(' ')?;
    let (got, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    (got == id).then_some((verb, rest))
}

/// A collected file, written under `into` at its guest path (never outside it).
pub(super) fn store(into: &Path, guest: &str, bytes: &[u8]) -> Result<(), Interrupt> {
    let rel: std::path::PathBuf = Path::new(guest)
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(p) => Some(p),
            _ => None,
        })
        .collect();
    if rel.as_os_str().is_empty() {
        return Ok(());
    }
    let to = into.join(rel);
    let fail = |e: io::Error| Interrupt::Infra(format!("cannot write {}: {e}", to.display()));
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    std::fs::write(&to, bytes).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_ends_at_its_id_even_split_across_reads() {
        let mut t = Tail::new("abc123");
        let mut got = t.take(b"hello ab");
        got.extend(t.take(b"c1"));
        assert!(!t.done);
        got.extend(t.take(b"23"));
        assert!(t.done);
        assert_eq!(got, b"hello ");
        assert!(t.take(b"late").is_empty());
    }

    #[test]
    fn output_that_only_starts_like_the_id_is_kept() {
        let mut t = Tail::new("abc123");
        let mut got = t.take(b"abc12");
        got.extend(t.take(b"X and more\n"));
        got.extend(t.take(b"abc123"));
        assert_eq!(got, b"abc12X and more\n");
    }

    #[test]
    fn scripts_quote_what_they_are_given() {
        let s = script(
            &["printf".into(), "%s\n".into(), "a b".into()],
            &[("MSG".into(), "it's".into())],
            Some("/tmp/x y"),
        );
        assert!(s.starts_with("export TERM=dumb"), "{s}");
        assert!(s.contains("; export MSG='it'\\''s'; "), "{s}");
        assert!(s.contains("; cd -- '/tmp/x y' || exit 125; "), "{s}");
        // the argument's newline is kept (so this script goes base64-encoded)
        assert!(s.ends_with("exec printf '%s\n' 'a b'"), "{s}");
        let plain = script(&["true".into()], &[], None);
        assert!(
            !plain.contains('\n') && plain.ends_with("; exec true"),
            "{plain}"
        );
    }

    #[test]
    fn replies_are_matched_to_their_request() {
        assert_eq!(reply("done ab 0", "ab"), Some(("done", "0")));
        assert_eq!(reply("done cd 0", "ab"), None);
        assert_eq!(reply("file ab 12 L3g=", "ab"), Some(("file", "12 L3g=")));
    }

    #[test]
    fn collected_files_stay_under_the_run_folder() {
        let d = tempfile::tempdir().unwrap();
        store(d.path(), "/var/log/../../etc/x.log", b"x").unwrap();
        assert_eq!(
            std::fs::read(d.path().join("var/log/etc/x.log")).unwrap(),
            b"x"
        );
    }

    #[test]
    fn every_port_is_on_the_command_line() {
        let a = qemu_args(&[10, 11, 12, 13, 14]).join(" ");
        assert!(a.starts_with("-device virtio-serial-pci,id=rc-vser"), "{a}");
        for (i, p) in PORTS.iter().enumerate() {
            assert!(
                a.contains(&format!("socket,id=rc-port{i},fd={}", 10 + i)),
                "{a}"
            );
            assert!(a.contains(&format!("chardev=rc-port{i},name={p}")), "{a}");
        }
    }
}
