//! QEMU's machine protocol (QMP) on a socketpair QEMU inherits (`-chardev
//! socket,fd=N -mon mode=control`): no socket file, nothing another user
//! can connect to. Used to pause a booted VM and save its state
//! ([`Qmp::save`]) and to wait for a restored one to run.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::time::Instant;

/// The socketpair: reconcile's end and QEMU's.
pub struct QmpWiring {
    host: std::os::unix::net::UnixStream,
    pub guest: Option<OwnedFd>,
}

impl QmpWiring {
    pub fn new() -> io::Result<QmpWiring> {
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        a.set_nonblocking(true)?;
        Ok(QmpWiring {
            host: a,
            guest: Some(OwnedFd::from(b)),
        })
    }

    pub fn guest_fd(&self) -> Option<RawFd> {
        self.guest.as_ref().map(|f| f.as_raw_fd())
    }

    /// Connect (inside a tokio runtime): read the greeting, leave
    /// negotiation mode.
    pub async fn connect(self) -> Result<Qmp, String> {
        let stream = UnixStream::from_std(self.host).map_err(|e| e.to_string())?;
        let (r, w) = stream.into_split();
        let mut q = Qmp {
            lines: BufReader::new(r).lines(),
            w,
        };
        let greeting = q.read().await?;
        if greeting.get("QMP").is_none() {
            return Err(format!("QEMU's monitor greeted with {greeting}"));
        }
        q.execute("qmp_capabilities", json!({})).await?;
        Ok(q)
    }
}

/// QEMU's arguments for a monitor on the inherited `fd`.
pub fn qemu_args(fd: RawFd) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,id=rc-qmp,fd={fd}"),
        "-mon".into(),
        "chardev=rc-qmp,mode=control".into(),
    ]
}

pub struct Qmp {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    w: tokio::net::unix::OwnedWriteHalf,
}

impl Qmp {
    async fn read(&mut self) -> Result<Value, String> {
        let line = self
            .lines
            .next_line()
            .await
            .map_err(|e| format!("QEMU's monitor: {e}"))?
            .ok_or("QEMU's monitor closed (QEMU exited)")?;
        serde_json::from_str(&line).map_err(|e| format!("QEMU's monitor said {line:?}: {e}"))
    }

    /// Run `command`; events that arrive meanwhile are passed over.
    pub async fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let request = json!({ "execute": command, "arguments": arguments });
        self.w
            .write_all(format!("{request}\n").as_bytes())
            .await
            .map_err(|e| format!("QEMU's monitor: {e}"))?;
        loop {
            let v = self.read().await?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(format!(
                    "{command}: {}",
                    e.get("desc").and_then(Value::as_str).unwrap_or("failed")
                ));
            }
            // an event: not ours
        }
    }

    /// Pause the VM and write its whole state (devices and memory) to
    /// `to` through `cat`, waiting until `deadline`.
    pub async fn save(&mut self, to: &std::path::Path, deadline: Instant) -> Result<(), String> {
        self.execute("stop", json!({})).await?;
        let uri = format!(
            "exec:cat > {}",
            shell_words::quote(&to.display().to_string())
        );
        self.execute("migrate", json!({ "uri": uri })).await?;
        self.wait_migration(deadline).await
    }

    /// Poll the migration until it completed (or failed, or `deadline`).
    pub async fn wait_migration(&mut self, deadline: Instant) -> Result<(), String> {
        loop {
            let st = self.execute("query-migrate", json!({})).await?;
            match st.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some("failed") | Some("cancelled") => {
                    return Err(format!(
                        "the migration failed: {}",
                        st.get("error-desc")
                            .and_then(Value::as_str)
                            .unwrap_or("no reason given")
                    ))
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err("the migration did not complete in time".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until the VM runs (a restored one, once its state is loaded).
    pub async fn wait_running(&mut self, deadline: Instant) -> Result<(), String> {
        loop {
            let st = self.execute("query-status", json!({})).await?;
            match st.get("status").and_then(Value::as_str) {
                Some("running") => return Ok(()),
                Some("inmigrate") | Some("prelaunch") | Some("restore-vm") => {
                    // an incoming migration that failed leaves QEMU waiting
                    let m = self.execute("query-migrate", json!({})).await?;
                    if m.get("status").and_then(Value::as_str) == Some("failed") {
                        return Err(format!(
                            "loading it failed: {}",
                            m.get("error-desc")
                                .and_then(Value::as_str)
                                .unwrap_or("no reason given")
                        ));
                    }
                }
                Some("paused") => {
                    self.execute("cont", json!({})).await?;
                }
                Some(other) => return Err(format!("the restored VM is {other}, not running")),
                None => return Err(format!("query-status said {st}")),
            }
            if Instant::now() >= deadline {
                return Err("the saved state did not load in time".into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Ask QEMU to exit.
    pub async fn quit(&mut self) {
        let _ = self.execute("quit", json!({})).await;
    }
}
