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

use crate::platform::{Flow, Interrupt, Sink, Stream};

/// A line longer than this is split into lines of its own (a console that never prints a newline).
const MAX_LINE: usize = 64 << 10;
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
    /// The current line ending in a match; complete lines before it go to `stream`.
    Prompt(&'a Regex, Stream),
    /// A typed command's output between its markers.
    Command(&'a mut Markers),
    /// QEMU exits.
    Exit,
}

enum Found {
    Matched,
    Status(i32),
    Exited(ExitStatus),
}

/// The markers of one typed command.
pub struct Markers {
    begin: String,
    end: regex::bytes::Regex,
    begun: bool,
}

impl Markers {
    fn new(nonce: &str) -> Markers {
        Markers {
            begin: format!("{nonce}-B"),
            end: regex::bytes::Regex::new(&format!("{nonce}-([0-9]+)-")).expect("marker regex"),
            begun: false,
        }
    }
}

pub struct Driver {
    pub child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// Received bytes not yet part of a complete line.
    partial: Vec<u8>,
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
            self.wait(Want::Prompt(&login, Stream::Console), sink, &deadline)
                .await?;
            self.type_line(user).await?;
            if let Some(pw) = password {
                let pass = Regex::new(r"(?i)password:\s*\z").expect("regex");
                self.wait(Want::Prompt(&pass, Stream::Input), sink, &deadline)
                    .await?;
                self.type_line(pw).await?;
            }
        }
        self.wait(Want::Prompt(&cfg.prompt, Stream::Console), sink, &deadline)
            .await?;
        Ok(())
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
        for p in prepare {
            self.type_line(&p).await?;
            self.wait(Want::Prompt(prompt, Stream::Input), sink, deadline)
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
        self.wait(Want::Prompt(prompt, Stream::Console), sink, deadline)
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
        let mut buf = vec![0u8; 16 << 10];
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
    fn consume(
        &mut self,
        want: &mut Want,
        sink: &mut dyn Sink,
    ) -> Result<Option<Found>, Interrupt> {
        loop {
            let end = match memchr::memchr(b'\n', &self.partial) {
                Some(i) => i + 1,
                None if self.partial.len() > MAX_LINE => self.partial.len(),
                None => break,
            };
            let line: Vec<u8> = self.partial.drain(..end).collect();
            let text = visible(&line);
            let shown = text.trim();
            if !shown.is_empty() {
                self.last_line = shown.chars().take(200).collect();
            }
            match want {
                Want::Line(re) => {
                    self.deliver(sink, Stream::Console, &line)?;
                    if re.is_match(&text) {
                        return Ok(Some(Found::Matched));
                    }
                }
                Want::Prompt(_, stream) => {
                    let stream = *stream;
                    self.deliver(sink, stream, &line)?
                }
                Want::Command(m) if !m.begun => {
                    self.deliver(sink, Stream::Input, &line)?;
                    m.begun = text.contains(&m.begin);
                }
                Want::Command(m) => {
                    if let Some(c) = m.end.captures(&line) {
                        let at = c.get(0).expect("whole match").start();
                        let status = std::str::from_utf8(&c[1])
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(255);
                        if at > 0 {
                            self.deliver(sink, Stream::Stdout, &line[..at])?;
                        }
                        self.deliver(sink, Stream::Console, &line)?;
                        return Ok(Some(Found::Status(status)));
                    }
                    self.deliver(sink, Stream::Console, &line)?;
                    self.deliver(sink, Stream::Stdout, &without_cr(&line))?;
                }
                Want::Exit => self.deliver(sink, Stream::Console, &line)?,
            }
        }
        let current = visible(&self.partial);
        match want {
            Want::Line(re) | Want::Prompt(re, _) if re.is_match(&current) => {
                Ok(Some(Found::Matched))
            }
            _ => Ok(None),
        }
    }

    /// For `attach`: bytes received but not yet handed to a sink.
    pub fn take_pending(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.partial)
    }

    pub fn io(&mut self) -> (&mut ChildStdin, &mut ChildStdout) {
        (&mut self.stdin, &mut self.stdout)
    }
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
fn nonce() -> String {
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

fn getrandom(b: &mut [u8]) -> std::io::Result<()> {
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
    let mut prepare = vec!["__rc=".to_string()];
    prepare.extend(b64.as_bytes().chunks(CHUNK).map(|c| {
        format!(
            "__rc=$__rc{}",
            std::str::from_utf8(c).expect("base64 is ascii")
        )
    }));
    (
        prepare,
        format!("{begin}; eval \"$(echo $__rc | base64 -d)\"; {end}"),
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
        let joined: String = prep[1..]
            .iter()
            .map(|p| p.trim_start_matches("__rc=$__rc"))
            .collect();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(joined)
            .unwrap();
        assert_eq!(decoded, long.as_bytes());
    }

    #[test]
    fn carriage_returns_are_undone_in_output() {
        assert_eq!(without_cr(b"hello\r\n"), b"hello\n");
        assert_eq!(without_cr(b"hello\n"), b"hello\n");
    }
}
