//! The serial console driver: QEMU's serial port on a pipe, read as a stream.
//!
//! Every complete line goes to the sink as it arrives (console checks see it
//! at once; a `fatal` hit kills the VM). Prompts are matched against the
//! current, unterminated line with terminal control sequences stripped. A
//! command is typed as one shell line,
//!
//! ```text
//! printf '%s-B\n' <nonce>; <argv shell-quoted>; echo <nonce>-$?-
//! ```
//!
//! so the echo of what was typed (which never contains `<nonce>-B` or
//! `<nonce>-<digits>-` literally) is told apart from the output: console lines
//! up to the begin marker are the echo (logged, not scanned), the output runs
//! up to the end marker, and the number in it is the exit status. A line that
//! cannot be typed safely (control characters, very long) is sent base64-encoded
//! and decoded by the guest's shell. Waiting is bounded three ways: a deadline,
//! a stall guard (no console byte for a while) and Ctrl-C.

use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use regex::Regex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::time::Instant;

use crate::process::{Flow, Interrupt, Sink, Stream};

/// A line longer than this is cut: its first bytes go on (to the logs and
/// the checks), then a note of how much was left out, then its last bytes
/// (where a command's end marker or a prompt is). Memory stays bounded
/// whatever a guest prints.
pub const MAX_LINE: usize = 1 << 20;
/// What is kept of a cut line's end.
const TAIL: usize = 4096;
/// The current, unterminated line is matched against prompts over at most
/// its last this many bytes (a console arriving a byte at a time costs no
/// more than this per byte).
const PROMPT_WINDOW: usize = 1024;
/// Longest line typed as it is; longer (or unprintable) ones go base64-encoded.
const MAX_TYPED: usize = 400;
/// Base64 sent per typed line when a command is too long for one.
const CHUNK: usize = 400;
/// How often Ctrl-C is checked while nothing else happens.
const TICK: Duration = Duration::from_millis(50);

/// The console settings, compiled, with every duration already scaled for the accelerator.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub ready: Option<Regex>,
    /// Anchored at the end of the current line.
    pub prompt: Regex,
    pub login: Option<(String, Option<String>)>,
    pub shutdown: String,
    pub boot_timeout: Duration,
    pub stall: Duration,
}

/// A time limit and what it limits (for the message).
#[derive(Debug, Clone)]
pub struct Deadline {
    pub at: Instant,
    pub after: Duration,
    pub what: String,
}

impl Deadline {
    pub fn after(d: Duration, what: &str) -> Deadline {
        Deadline {
            at: Instant::now() + d,
            after: d,
            what: what.to_string(),
        }
    }
}

/// What a wait looks for.
enum Want<'a> {
    /// A line (complete or current) matching.
    Line(&'a Regex),
    /// The current line ending in a match; complete lines before it are the
    /// console's, but the echo of what was just typed.
    Prompt(&'a Regex, Option<&'a Typed>),
    /// A typed command's output between its markers.
    Command(&'a mut Markers),
    /// QEMU exits.
    Exit,
    /// Nothing: every line is the console's (commands run over the channel).
    Nothing,
    /// A prompt during a login, or a sign that the login failed.
    Login(&'a Regex, Option<&'a Typed>, &'a Refusal),
}

/// What ends a login at once: a complete line saying so (`Login incorrect`),
/// or a prompt where another was expected (`login:` again, a password prompt
/// with no password configured).
pub struct Refusal {
    lines: Regex,
    current: Option<Regex>,
}

impl Refusal {
    fn new(current: Option<&str>) -> Refusal {
        Refusal {
            lines: Regex::new(
                r"(?i)login incorrect|permission denied|authentication fail|access denied",
            )
            .expect("regex"),
            current: current.map(|c| Regex::new(c).expect("regex")),
        }
    }
}

/// How the echo of a typed line is told from console output: by the nonce
/// it carries, or (a user name at `login:`) by ending in what was typed.
pub struct Typed {
    needle: Vec<u8>,
    at_end: bool,
}

impl Typed {
    fn carrying(nonce: &str) -> Typed {
        Typed {
            needle: nonce.as_bytes().to_vec(),
            at_end: false,
        }
    }

    fn ending_in(text: &str) -> Typed {
        Typed {
            needle: text.as_bytes().to_vec(),
            at_end: true,
        }
    }

    fn echoes(&self, line: &[u8]) -> bool {
        if self.at_end {
            visible_line(line)
                .trim_end()
                .as_bytes()
                .ends_with(&self.needle)
        } else {
            memchr::memmem::find(line, &self.needle).is_some()
        }
    }
}

enum Found {
    Matched,
    /// The login failed: the line that showed it.
    Refused(String),
    Status(i32),
    Exited(ExitStatus),
}

/// The markers of one typed command.
pub struct Markers {
    begin: String,
    end: regex::bytes::Regex,
    /// The echo of the typed line carries the nonce.
    echo: Typed,
    begun: bool,
}

impl Markers {
    fn new(nonce: &str) -> Markers {
        Markers {
            begin: format!("{nonce}-B"),
            end: regex::bytes::Regex::new(&format!("{nonce}-([0-9]+)-")).expect("marker regex"),
            echo: Typed::carrying(nonce),
            begun: false,
        }
    }
}

/// A line too long to keep whole, while its end has not arrived.
struct Cut {
    /// Bytes left out so far.
    dropped: u64,
    /// Its last bytes (what a marker or prompt is found in).
    tail: Vec<u8>,
}

pub struct Driver {
    pub child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// Received bytes not yet part of a complete line.
    partial: Vec<u8>,
    /// A line being cut (longer than [`MAX_LINE`]).
    cut: Option<Cut>,
    /// The last non-empty line, for stall and exit reports.
    pub last_line: String,
    last_byte: Instant,
    stall: Duration,
    cancel: Arc<AtomicBool>,
    eof: bool,
}

impl Driver {
    pub fn new(mut child: Child, stall: Duration, cancel: Arc<AtomicBool>) -> Driver {
        let stdin = child.stdin.take().expect("stdin piped");
        let stdout = child.stdout.take().expect("stdout piped");
        Driver {
            child,
            stdin,
            stdout,
            partial: Vec::new(),
            cut: None,
            last_line: String::new(),
            last_byte: Instant::now(),
            stall,
            cancel,
            eof: false,
        }
    }

    /// Up to the prompt: `ready`, then a login when configured, then the prompt.
    pub async fn boot(
        &mut self,
        cfg: &ConsoleConfig,
        sink: &mut dyn Sink,
    ) -> Result<(), Interrupt> {
        let deadline = Deadline::after(cfg.boot_timeout, "boot (waiting for the prompt)");
        if let Some(ready) = &cfg.ready {
            self.wait(Want::Line(ready), sink, &deadline).await?;
        }
        if let Some((user, password)) = &cfg.login {
            let login = Regex::new(r"(?i)login:\s*\z").expect("regex");
            self.wait(Want::Prompt(&login, None), sink, &deadline)
                .await?;
            self.type_line(user).await?;
            let echo = Typed::ending_in(user);
            let password_prompt = r"(?i)password:\s*\z";
            let refused = match password {
                Some(pw) => {
                    let pass = Regex::new(password_prompt).expect("regex");
                    let first = Refusal::new(None);
                    self.login_step(Want::Login(&pass, Some(&echo), &first), sink, &deadline)
                        .await?;
                    self.type_line(pw).await?;
                    // a second `login:` means the password was not taken
                    Refusal::new(Some(r"(?i)login:\s*\z"))
                }
                None => Refusal::new(Some(password_prompt)),
            };
            return self
                .login_step(
                    Want::Login(&cfg.prompt, Some(&echo), &refused),
                    sink,
                    &deadline,
                )
                .await;
        }
        self.wait(Want::Prompt(&cfg.prompt, None), sink, &deadline)
            .await?;
        Ok(())
    }

    /// One wait of a login: a refusal ends the boot as the configuration's fault.
    async fn login_step(
        &mut self,
        want: Want<'_>,
        sink: &mut dyn Sink,
        deadline: &Deadline,
    ) -> Result<(), Interrupt> {
        match self.wait(want, sink, deadline).await? {
            Found::Refused(line) => {
                self.kill();
                Err(Interrupt::Refused(format!(
                    "the console login failed: {line:?} (check console.login: user and password)"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Type `script` (one shell command line) and return its exit status; its
    /// output goes to the sink as `Stdout` (and `Console`). Waits for the next prompt.
    pub async fn run(
        &mut self,
        script: &str,
        prompt: &Regex,
        sink: &mut dyn Sink,
        deadline: &Deadline,
    ) -> Result<i32, Interrupt> {
        let nonce = nonce();
        let (prepare, line) = typed(script, &nonce);
        let echo = Typed::carrying(&nonce);
        for p in prepare {
            self.type_line(&p).await?;
            self.wait(Want::Prompt(prompt, Some(&echo)), sink, deadline)
                .await?;
        }
        self.type_line(&line).await?;
        let mut markers = Markers::new(&nonce);
        let status = match self
            .wait(Want::Command(&mut markers), sink, deadline)
            .await?
        {
            Found::Status(s) => s,
            _ => unreachable!("a command wait ends with a status"),
        };
        self.wait(Want::Prompt(prompt, None), sink, deadline)
            .await?;
        Ok(status)
    }

    /// Type the shutdown command and wait for QEMU to exit.
    pub async fn shutdown(
        &mut self,
        command: &str,
        sink: &mut dyn Sink,
        deadline: &Deadline,
    ) -> Result<ExitStatus, Interrupt> {
        self.type_line(command).await?;
        match self.wait(Want::Exit, sink, deadline).await? {
            Found::Exited(s) => Ok(s),
            _ => unreachable!("an exit wait ends with an exit"),
        }
    }

    async fn type_line(&mut self, line: &str) -> Result<(), Interrupt> {
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        self.stdin
            .write_all(&bytes)
            .await
            .map_err(|e| Interrupt::Infra(format!("cannot type on the serial console: {e}")))?;
        self.stdin
            .flush()
            .await
            .map_err(|e| Interrupt::Infra(format!("cannot type on the serial console: {e}")))
    }

    /// Kill QEMU now (a fatal check, a timeout, Ctrl-C).
    fn kill(&mut self) {
        let _ = self.child.start_kill();
    }

    async fn wait(
        &mut self,
        mut want: Want<'_>,
        sink: &mut dyn Sink,
        deadline: &Deadline,
    ) -> Result<Found, Interrupt> {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            if let Some(found) = self.consume(&mut want, sink)? {
                return Ok(found);
            }
            if self.eof {
                let status = self
                    .child
                    .wait()
                    .await
                    .map_err(|e| Interrupt::Infra(format!("cannot wait for QEMU: {e}")))?;
                return match want {
                    Want::Exit => Ok(Found::Exited(status)),
                    _ => Err(Interrupt::Infra(format!(
                        "QEMU exited ({status}) during {}; last console line: {:?}",
                        deadline.what, self.last_line
                    ))),
                };
            }
            let now = Instant::now();
            if self.cancel.load(Ordering::SeqCst) {
                self.kill();
                return Err(Interrupt::Cancelled);
            }
            if now >= deadline.at {
                self.kill();
                return Err(Interrupt::TimedOut {
                    what: deadline.what.clone(),
                    after: deadline.after,
                });
            }
            let stall_at = self.last_byte + self.stall;
            if now >= stall_at {
                self.kill();
                return Err(Interrupt::Stalled {
                    after: self.stall,
                    last_line: self.last_line.clone(),
                });
            }
            let wake = deadline.at.min(stall_at).min(now + TICK);
            tokio::select! {
                r = self.stdout.read(&mut buf) => match r {
                    Ok(0) => {
                        self.eof = true;
                        if let Some(cut) = self.cut.take() {
                            self.deliver(sink, Stream::Console, cut_note(cut.dropped).as_bytes())?;
                            self.deliver(sink, Stream::Console, &cut.tail)?;
                        }
                        if !self.partial.is_empty() {
                            let rest = std::mem::take(&mut self.partial);
                            self.deliver(sink, Stream::Console, &rest)?;
                        }
                    }
                    Ok(n) => {
                        self.partial.extend_from_slice(&buf[..n]);
                        self.last_byte = Instant::now();
                    }
                    Err(e) => return Err(Interrupt::Infra(format!("cannot read the serial console: {e}"))),
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn deliver(
        &mut self,
        sink: &mut dyn Sink,
        stream: Stream,
        bytes: &[u8],
    ) -> Result<(), Interrupt> {
        if sink.output(stream, bytes) == Flow::Stop {
            self.kill();
            return Err(Interrupt::Stopped);
        }
        Ok(())
    }

    /// Hand complete lines to the sink and look for what `want` waits for.
    /// Lines are walked in place and handed over in runs (one call per run of
    /// lines bound for the same stream), so a fast console costs a few calls
    /// per read, not one per line. A line longer than [`MAX_LINE`] is cut:
    /// its head goes on at once, the rest is dropped but for its last bytes,
    /// which go on with a note of what was left out once its newline comes.
    fn consume(
        &mut self,
        want: &mut Want,
        sink: &mut dyn Sink,
    ) -> Result<Option<Found>, Interrupt> {
        let mut buf = std::mem::take(&mut self.partial);
        let mut out = Runs::default();
        let mut pos = 0;
        let mut last_shown: Option<Vec<u8>> = None;
        let mut found = None;
        while found.is_none() {
            match memchr::memchr(b'\n', &buf[pos..]) {
                Some(i) if self.cut.is_some() => {
                    // the end of a cut line: the note, what was kept of it, up to its newline
                    let cut = self.cut.take().expect("cutting");
                    let mut seg = cut.tail;
                    seg.extend_from_slice(&buf[pos..pos + i + 1]);
                    // only its last bytes are kept, however much this read brought of it
                    let mut dropped = cut.dropped;
                    if seg.len() > TAIL {
                        let d = seg.len() - TAIL;
                        dropped += d as u64;
                        seg.drain(..d);
                    }
                    let note = cut_note(dropped).into_bytes();
                    if matches!(want, Want::Command(m) if m.begun) {
                        // a command's output says it was cut, like the console does
                        out.stdout.extend_from_slice(&note);
                    }
                    out.push_owned(stream_of(want, &seg), note);
                    found = classify(want, Piece::Owned(seg.clone()), &seg, &mut out);
                    if seg.iter().any(|b| !b.is_ascii_whitespace()) {
                        last_shown = Some(seg);
                    }
                    pos += i + 1;
                }
                Some(i) => {
                    let end = pos + i + 1;
                    let line = &buf[pos..end];
                    if line.iter().any(|b| !b.is_ascii_whitespace()) {
                        last_shown = Some(line.to_vec());
                    }
                    found = classify(want, Piece::Range(pos..end), line, &mut out);
                    pos = end;
                }
                None if self.cut.is_some() => {
                    // still inside a cut line: keep its last bytes only
                    let cut = self.cut.as_mut().expect("cutting");
                    cut.tail.extend_from_slice(&buf[pos..]);
                    if cut.tail.len() > TAIL {
                        let drop = cut.tail.len() - TAIL;
                        cut.dropped += drop as u64;
                        cut.tail.drain(..drop);
                    }
                    pos = buf.len();
                    break;
                }
                None if buf.len() - pos > MAX_LINE => {
                    // a line too long to keep: its head goes on now (short of the
                    // last bytes, so a marker is never split between head and tail)
                    let head = pos..pos + MAX_LINE - TAIL;
                    let piece = &buf[head.clone()];
                    let _ = classify(want, Piece::Range(head.clone()), piece, &mut out);
                    self.cut = Some(Cut {
                        dropped: 0,
                        tail: Vec::new(),
                    });
                    pos = head.end;
                }
                None => break,
            }
        }
        if let Some(l) = last_shown {
            self.last_line = visible_line(&l).trim().chars().take(200).collect();
        }
        let delivered = out.deliver(&buf, sink);
        buf.drain(..pos);
        self.partial = buf;
        if delivered == Flow::Stop {
            self.kill();
            return Err(Interrupt::Stopped);
        }
        if found.is_some() {
            return Ok(found);
        }
        // the current line: a prompt (or a ready line) is at its end
        let current: &[u8] = match &self.cut {
            Some(c) => &c.tail,
            None => {
                let p = &self.partial;
                &p[p.len().saturating_sub(PROMPT_WINDOW)..]
            }
        };
        let shown = visible(current);
        Ok(match want {
            Want::Line(re) | Want::Prompt(re, _) | Want::Login(re, ..) if re.is_match(&shown) => {
                Some(Found::Matched)
            }
            Want::Login(_, _, r) if r.current.as_ref().is_some_and(|c| c.is_match(&shown)) => {
                Some(Found::Refused(shown.trim().to_string()))
            }
            _ => None,
        })
    }

    /// The serial console's stream, for a caller that reads it together with
    /// other streams (the command channel); what it reads goes to [`Driver::ingest`].
    pub fn console(&mut self) -> &mut ChildStdout {
        &mut self.stdout
    }

    /// Console bytes read by the caller: complete lines go to the sink (and
    /// its checks) as the console's.
    pub fn ingest(&mut self, bytes: &[u8], sink: &mut dyn Sink) -> Result<(), Interrupt> {
        if bytes.is_empty() {
            self.eof = true;
            return Ok(());
        }
        self.partial.extend_from_slice(bytes);
        self.last_byte = Instant::now();
        self.consume(&mut Want::Nothing, sink).map(|_| ())
    }

    /// The console ended (QEMU exited) while `what` went on: what is left of
    /// the console goes to the sink, and the error says how QEMU ended.
    pub async fn ended(&mut self, what: &str, sink: &mut dyn Sink) -> Interrupt {
        self.eof = true;
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            if let Err(i) = self.deliver(sink, Stream::Console, &rest) {
                return i;
            }
        }
        match self.child.wait().await {
            Ok(status) => Interrupt::Infra(format!(
                "QEMU exited ({status}) during {what}; last console line: {:?}",
                self.last_line
            )),
            Err(e) => Interrupt::Infra(format!("cannot wait for QEMU: {e}")),
        }
    }

    /// Hand the current, unterminated line to the sink as the console's (at
    /// the end of a step, however it ended: a hang is explained by that line).
    pub fn flush_partial(&mut self, sink: &mut dyn Sink) {
        let mut rest = Vec::new();
        if let Some(cut) = self.cut.take() {
            rest.extend_from_slice(cut_note(cut.dropped).as_bytes());
            rest.extend_from_slice(&cut.tail);
        }
        rest.append(&mut self.partial);
        if !rest.is_empty() {
            let _ = sink.output(Stream::Console, &rest);
        }
    }

    /// Ctrl-C was pressed (or SIGTERM came).
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Kill QEMU now (a timeout, Ctrl-C, a broken channel).
    pub fn kill_now(&mut self) {
        self.kill();
    }

    /// For `attach`: bytes received but not yet handed to a sink.
    pub fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.partial)
    }

    pub fn io(&mut self) -> (&mut ChildStdin, &mut ChildStdout) {
        (&mut self.stdin, &mut self.stdout)
    }
}

/// Where a complete line (or a piece of a long one) goes while `want` waits,
/// and whether it is what it waits for. Before a command's begin marker
/// only the echo of what was typed is kept from the checks (every other
/// line, a kernel message among them, is the console's).
fn classify(want: &mut Want, piece: Piece, line: &[u8], out: &mut Runs) -> Option<Found> {
    match want {
        Want::Line(re) => {
            out.add(Stream::Console, piece);
            re.is_match(&visible_line(line)).then_some(Found::Matched)
        }
        Want::Prompt(_, Some(echo)) | Want::Login(_, Some(echo), _) if echo.echoes(line) => {
            out.add(Stream::Input, piece);
            None
        }
        Want::Login(_, _, refusal) => {
            out.add(Stream::Console, piece);
            let shown = visible_line(line);
            refusal
                .lines
                .is_match(&shown)
                .then(|| Found::Refused(shown.trim().to_string()))
        }
        Want::Prompt(..) | Want::Exit | Want::Nothing => {
            out.add(Stream::Console, piece);
            None
        }
        Want::Command(m) if !m.begun => {
            if m.echo.echoes(line) {
                m.begun = memchr::memmem::find(line, m.begin.as_bytes()).is_some();
                out.add(Stream::Input, piece);
            } else {
                out.add(Stream::Console, piece);
            }
            None
        }
        Want::Command(m) => {
            out.add(Stream::Console, piece);
            if let Some(c) = m.end.captures(line) {
                let at = c.get(0).expect("whole match").start();
                out.stdout.extend_from_slice(&line[..at]);
                let status = std::str::from_utf8(&c[1])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(255);
                return Some(Found::Status(status));
            }
            out.stdout.extend_from_slice(&without_cr(line));
            None
        }
    }
}

/// The stream a line goes to while `want` waits (for the note of a cut line).
fn stream_of(want: &Want, line: &[u8]) -> Stream {
    match want {
        Want::Prompt(_, Some(echo)) | Want::Login(_, Some(echo), _) if echo.echoes(line) => {
            Stream::Input
        }
        Want::Command(m) if !m.begun && m.echo.echoes(line) => Stream::Input,
        _ => Stream::Console,
    }
}

/// What stands in a log for the part of a line that was cut.
fn cut_note(dropped: u64) -> String {
    format!(" [… reconcile cut {dropped} bytes of this line, longer than {MAX_LINE} …] ")
}

/// Part of what a read brought: a range of the read buffer, or bytes of
/// their own (a cut line's end, a note).
enum Piece {
    Range(std::ops::Range<usize>),
    Owned(Vec<u8>),
}

/// Lines bound for the sink, as runs of the read buffer per stream (and the
/// command's output, which is copied: carriage returns come out of it).
#[derive(Default)]
struct Runs {
    runs: Vec<(Stream, Piece)>,
    stdout: Vec<u8>,
}

impl Runs {
    fn add(&mut self, stream: Stream, piece: Piece) {
        match (self.runs.last_mut(), piece) {
            (Some((s, Piece::Range(last))), Piece::Range(r))
                if *s == stream && last.end == r.start =>
            {
                last.end = r.end
            }
            (_, piece) => self.runs.push((stream, piece)),
        }
    }

    fn push_owned(&mut self, stream: Stream, bytes: Vec<u8>) {
        self.runs.push((stream, Piece::Owned(bytes)));
    }

    /// Hand everything over; `Stop` as soon as the sink says so.
    fn deliver(self, buf: &[u8], sink: &mut dyn Sink) -> Flow {
        for (stream, piece) in self.runs {
            let bytes = match &piece {
                Piece::Range(r) => &buf[r.clone()],
                Piece::Owned(b) => &b[..],
            };
            if sink.output(stream, bytes) == Flow::Stop {
                return Flow::Stop;
            }
        }
        if !self.stdout.is_empty() && sink.output(Stream::Stdout, &self.stdout) == Flow::Stop {
            return Flow::Stop;
        }
        Flow::Continue
    }
}

/// [`visible`] without copying when the line holds nothing a terminal would hide.
fn visible_line(line: &[u8]) -> std::borrow::Cow<'_, str> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    if body.iter().all(|&b| b >= 0x20 && b != 0x7f || b == b'\t') {
        if let Ok(s) = std::str::from_utf8(body) {
            return std::borrow::Cow::Borrowed(s);
        }
    }
    std::borrow::Cow::Owned(visible(line))
}

/// `line\r\n` → `line\n` (the tty's output translation undone).
fn without_cr(line: &[u8]) -> Vec<u8> {
    match line {
        [rest @ .., b'\r', b'\n'] => {
            let mut v = rest.to_vec();
            v.push(b'\n');
            v
        }
        _ => line.to_vec(),
    }
}

/// What a terminal would show of `bytes` on one line: escape sequences (CSI,
/// OSC, two-byte) and other control characters removed, a carriage return
/// starting the line over, a backspace erasing, the trailing newline dropped.
pub fn visible(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    let mut restart = false;
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                Some('[') => {
                    // CSI: parameters and intermediates up to a final byte in @..~
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    // OSC: up to BEL or ESC \
                    while let Some(c) = chars.next() {
                        if c == '\x07' || (c == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\r' => restart = true,
            '\x08' => {
                out.pop();
            }
            '\n' => {}
            c if c.is_control() && c != '\t' => {}
            c => {
                if restart {
                    out.clear();
                    restart = false;
                }
                out.push(c);
            }
        }
    }
    out
}

/// A fresh nonce per command: 64 random bits in hex.
pub fn nonce() -> String {
    let mut b = [0u8; 8];
    if getrandom(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b = ((t as u64) ^ ((std::process::id() as u64) << 32)).to_le_bytes();
    }
    hex::encode(b)
}

pub fn getrandom(b: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(b)
}

/// The lines to type for `script`: preparatory lines (a long command sent in
/// base64 chunks) and the command line with its markers.
pub fn typed(script: &str, nonce: &str) -> (Vec<String>, String) {
    let begin = format!("printf '%s-B\\n' {nonce}");
    let end = format!("echo {nonce}-$?-");
    let safe = |s: &str| s.len() <= MAX_TYPED && s.bytes().all(|b| (0x20..0x7f).contains(&b));
    let plain = format!("{begin}; {script}; {end}");
    if safe(&plain) {
        return (Vec::new(), plain);
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(script);
    if b64.len() <= MAX_TYPED - 100 {
        return (
            Vec::new(),
            format!("{begin}; eval \"$(echo {b64} | base64 -d)\"; {end}"),
        );
    }
    // each line carries the nonce (a comment), so its echo is told from console output
    let mut prepare = vec![format!("__rc= # {nonce}")];
    prepare.extend(b64.as_bytes().chunks(CHUNK).map(|c| {
        format!(
            "__rc=${{__rc}}{} # {nonce}",
            std::str::from_utf8(c).expect("base64 is ascii")
        )
    }));
    (
        prepare,
        format!("{begin}; eval \"$(echo \"${{__rc}}\" | base64 -d)\"; {end}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visible_strips_what_a_terminal_would_not_show() {
        assert_eq!(visible(b"kit# \x1b[6n"), "kit# ");
        assert_eq!(visible(b"\x1b[0;1miPXE\x1b[0m ok\r\n"), "iPXE ok");
        assert_eq!(visible(b"\x1b]0;title\x07$ "), "$ ");
        assert_eq!(visible(b"\x1b]0;title\x1b\\$ "), "$ ");
        assert_eq!(visible(b"progress 10%\rprogress 99%\r"), "progress 99%");
        assert_eq!(visible(b"ab\x08c"), "ac");
        assert_eq!(visible("naïve ✓".as_bytes()), "naïve ✓");
    }

    #[test]
    fn plain_commands_are_typed_with_markers() {
        let (prep, line) = typed("'uname' '-r'", "abc123");
        assert!(prep.is_empty());
        assert_eq!(
            line,
            "printf '%s-B\\n' abc123; 'uname' '-r'; echo abc123-$?-"
        );
        // the echo of the typed line never contains either marker
        let m = Markers::new("abc123");
        assert!(!line.contains(&m.begin));
        assert!(!m.end.is_match(line.as_bytes()));
        assert!(m.end.is_match(b"helloabc123-3-\r\n"));
    }

    #[test]
    fn unsafe_and_long_commands_go_base64() {
        let script = "printf 'a\\tb\\n'; echo 'two\nlines'";
        let (prep, line) = typed(script, "n1");
        assert!(prep.is_empty());
        assert!(line.contains("base64 -d"));
        assert!(line.bytes().all(|b| (0x20..0x7f).contains(&b)));
        let b64 = line
            .split("echo ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(decoded, script.as_bytes());

        let long = format!("echo {}", "x".repeat(5000));
        let (prep, line) = typed(&long, "n2");
        assert!(prep.len() > 10, "{}", prep.len());
        assert!(prep
            .iter()
            .chain([&line])
            .all(|l| l.len() <= MAX_TYPED + 20));
        // each line carries the nonce, as a comment the shell ignores
        assert!(prep.iter().all(|p| p.ends_with(" # n2")), "{prep:?}");
        let joined: String = prep[1..]
            .iter()
            .map(|p| {
                p.trim_start_matches("__rc=${__rc}")
                    .trim_end_matches(" # n2")
            })
            .collect();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(joined)
            .unwrap();
        assert_eq!(decoded, long.as_bytes());
    }

    /// What the guest's shell makes of the typed lines: run them in /bin/sh.
    fn through_a_shell(script: &str) -> String {
        let (prep, line) = typed(script, "n0nce");
        let all = prep
            .into_iter()
            .chain([line])
            .collect::<Vec<_>>()
            .join("\n");
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(all)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn every_typed_form_runs_the_command_in_a_real_shell() {
        let q = |args: &[&str]| shell_words::join(args);
        assert_eq!(
            through_a_shell(&q(&["printf", "%s|", "a b", "it's"])),
            "n0nce-B\na b|it's|n0nce-0-\n"
        );
        let tab = q(&["printf", "%s\n", "tab\there", "two\nlines"]);
        assert_eq!(
            through_a_shell(&tab),
            "n0nce-B\ntab\there\ntwo\nlines\nn0nce-0-\n"
        );
        let long = "y".repeat(3000);
        let out = through_a_shell(&q(&["sh", "-c", &format!("echo {long}; exit 5")]));
        assert_eq!(out, format!("n0nce-B\n{long}\nn0nce-5-\n"));
    }

    #[test]
    fn carriage_returns_are_undone_in_output() {
        assert_eq!(without_cr(b"hello\r\n"), b"hello\n");
        assert_eq!(without_cr(b"hello\n"), b"hello\n");
    }

    /// A stand-in guest: a real shell on the other end of the pipes, with a
    /// boot banner, a ready line and a prompt followed by a cursor query.
    fn guest(script: &str) -> (tokio::runtime::Runtime, Driver) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let child = {
            let _g = rt.enter();
            tokio::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(script)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .unwrap()
        };
        let d = Driver::new(
            child,
            Duration::from_millis(800),
            Arc::new(AtomicBool::new(false)),
        );
        (rt, d)
    }

    const SHELL: &str = r#"echo 'Linux booting'; echo 'kit: up'; while :; do printf 'kit# \033[6n'; IFS= read -r line || exit 0; eval "$line"; done"#;

    /// Collects what a sink gets; stops on a line containing `stop_on`.
    #[derive(Default)]
    struct Collect {
        got: BTreeMap<&'static str, Vec<u8>>,
        stop_on: Option<&'static str>,
    }

    use std::collections::BTreeMap;

    impl Sink for Collect {
        fn step(&mut self, _name: &str) {}
        fn output(&mut self, stream: Stream, bytes: &[u8]) -> Flow {
            let key = match stream {
                Stream::Stdout => "stdout",
                Stream::Console => "console",
                Stream::Input => "input",
                _ => "other",
            };
            self.got.entry(key).or_default().extend_from_slice(bytes);
            match self.stop_on {
                Some(s)
                    if stream == Stream::Console && String::from_utf8_lossy(bytes).contains(s) =>
                {
                    Flow::Stop
                }
                _ => Flow::Continue,
            }
        }
    }

    fn config() -> ConsoleConfig {
        ConsoleConfig {
            ready: Some(Regex::new("kit: up").unwrap()),
            prompt: Regex::new(r"(?:kit# )\z").unwrap(),
            login: None,
            shutdown: "exit".into(),
            boot_timeout: Duration::from_secs(10),
            stall: Duration::from_millis(800),
        }
    }

    #[test]
    fn a_command_over_the_console_gives_its_exact_output_and_status() {
        let (rt, mut d) = guest(SHELL);
        let cfg = config();
        let mut sink = Collect::default();
        rt.block_on(d.boot(&cfg, &mut sink)).unwrap();
        let deadline = Deadline::after(Duration::from_secs(10), "the command");
        let script = shell_words::join(["sh", "-c", "echo one; printf two; exit 3"]);
        let status = rt
            .block_on(d.run(&script, &cfg.prompt, &mut sink, &deadline))
            .unwrap();
        assert_eq!(status, 3);
        assert_eq!(String::from_utf8_lossy(&sink.got["stdout"]), "one\ntwo");
        let console = String::from_utf8_lossy(&sink.got["console"]).into_owned();
        assert!(console.starts_with("Linux booting\nkit: up\n"), "{console}");
        // what was typed never reaches the checks
        assert!(!console.contains("printf '%s-B"), "{console}");
        // and the shutdown command ends the guest
        let exit = rt
            .block_on(d.shutdown(
                "exit 0",
                &mut sink,
                &Deadline::after(Duration::from_secs(5), "shutdown"),
            ))
            .unwrap();
        assert!(exit.success());
    }

    /// Run `argv` (as typed) on the stand-in guest `script`; status and what the sink got.
    fn run_on(script: &str, argv: &[&str]) -> (Result<i32, Interrupt>, Collect, Driver) {
        let (rt, mut d) = guest(script);
        let cfg = config();
        let mut sink = Collect::default();
        rt.block_on(d.boot(&cfg, &mut sink)).unwrap();
        let deadline = Deadline::after(Duration::from_secs(20), "the command");
        let r = rt.block_on(d.run(&shell_words::join(argv), &cfg.prompt, &mut sink, &deadline));
        (r, sink, d)
    }

    #[test]
    fn a_line_of_many_mebibytes_is_cut_in_the_logs_and_its_end_marker_still_found() {
        // 5 MiB without a newline, then the command's status
        let (r, sink, d) = run_on(
            SHELL,
            &["sh", "-c", "head -c 5242880 /dev/zero | tr '\\0' x; exit 7"],
        );
        assert_eq!(r, Ok(7));
        let out = &sink.got["stdout"];
        assert!(out.len() < MAX_LINE + 2 * TAIL + 200, "{}", out.len());
        assert!(out.starts_with(&vec![b'x'; 1000]));
        let text = String::from_utf8_lossy(out);
        assert!(text.contains("reconcile cut"), "no note of the cut");
        let note = text.split("reconcile cut ").nth(1).unwrap();
        let dropped: usize = note.split(' ').next().unwrap().parse().unwrap();
        // head + dropped + tail is the whole line
        let tail = text.rsplit(" …] ").next().unwrap().trim_end();
        assert_eq!(MAX_LINE - TAIL + dropped + tail.len(), 5 << 20);
        assert!(d.partial.len() <= MAX_LINE);
    }

    #[test]
    fn a_marker_split_across_reads_at_any_boundary_is_found() {
        // a 65,530-byte line without newline (the old line limit, less a few), then the marker
        let (r, sink, _) = run_on(
            SHELL,
            &["sh", "-c", "head -c 65530 /dev/zero | tr '\\0' y; exit 3"],
        );
        assert_eq!(r, Ok(3));
        assert_eq!(sink.got["stdout"].len(), 65530);
        // the console a byte at a time: every marker and prompt is still found
        let slow = format!("{{ {SHELL}; }} | dd bs=1 status=none");
        let (r, sink, _) = run_on(&slow, &["sh", "-c", "echo one; printf two; exit 5"]);
        assert_eq!(r, Ok(5));
        assert_eq!(String::from_utf8_lossy(&sink.got["stdout"]), "one\ntwo");
    }

    #[test]
    fn a_kernel_line_before_the_begin_marker_is_the_consoles_and_only_the_echo_is_not() {
        // the guest prints an oops after the command was typed, before it runs; and it echoes what it reads
        let script = r#"echo 'kit: up'; while :; do printf 'kit# '; IFS= read -r line || exit 0; printf '%s\r\n' "$line"; echo '[ 1.0] Oops: 0000 [#1] SMP'; eval "$line"; done"#;
        let (r, sink, _) = run_on(
            script,
            &["echo", "Kernel panic - not syncing: typed, not printed"],
        );
        assert_eq!(r, Ok(0));
        let console = String::from_utf8_lossy(&sink.got["console"]).into_owned();
        let input = String::from_utf8_lossy(&sink.got["input"]).into_owned();
        assert!(console.contains("Oops: 0000"), "{console}");
        assert!(!input.contains("Oops"), "{input}");
        // the echo of the typed line is input, never console
        assert!(input.contains("printf '%s-B"), "{input}");
        assert!(!console.contains("printf '%s-B"), "{console}");
        // the command's own output is the console's too (and its stdout)
        assert!(console.contains("typed, not printed"));
    }

    #[test]
    fn a_stop_from_the_sink_kills_the_guest_at_once() {
        let (rt, mut d) = guest(SHELL);
        let cfg = config();
        let mut sink = Collect {
            stop_on: Some("not syncing"),
            ..Collect::default()
        };
        rt.block_on(d.boot(&cfg, &mut sink)).unwrap();
        let script = shell_words::join([
            "sh",
            "-c",
            "echo 'Kernel panic - not syncing: x'; sleep 30; echo never",
        ]);
        let deadline = Deadline::after(Duration::from_secs(60), "the command");
        let r = rt.block_on(d.run(&script, &cfg.prompt, &mut sink, &deadline));
        assert_eq!(r, Err(Interrupt::Stopped));
        // killed: the guest is gone without having printed the rest
        let status = rt.block_on(d.child.wait()).unwrap();
        assert!(!status.success());
        assert!(!String::from_utf8_lossy(&sink.got["console"]).contains("never"));
    }

    #[test]
    fn silence_trips_the_stall_guard_naming_the_last_line() {
        let (rt, mut d) = guest("echo 'Loading kernel'; echo 'last words'; sleep 30");
        let mut sink = Collect::default();
        let r = rt.block_on(d.boot(&config(), &mut sink));
        match r {
            Err(Interrupt::Stalled { after, last_line }) => {
                assert_eq!(after, Duration::from_millis(800));
                assert_eq!(last_line, "last words");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_chatty_guest_that_never_prompts_times_out() {
        let (rt, mut d) = guest("while :; do echo still booting; sleep 0.05; done");
        let mut cfg = config();
        cfg.boot_timeout = Duration::from_millis(600);
        let mut sink = Collect::default();
        match rt.block_on(d.boot(&cfg, &mut sink)) {
            Err(Interrupt::TimedOut { what, after }) => {
                assert!(what.starts_with("boot"), "{what}");
                assert_eq!(after, Duration::from_millis(600));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_guest_that_dies_is_infra_with_its_last_line() {
        let (rt, mut d) = guest("echo 'kit: up'; echo 'segfault in init'; exit 1");
        let mut sink = Collect::default();
        match rt.block_on(d.boot(&config(), &mut sink)) {
            Err(Interrupt::Infra(why)) => {
                assert!(
                    why.contains("QEMU exited") && why.contains("segfault in init"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
