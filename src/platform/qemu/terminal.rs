//! `reconcile spawn`: this process's terminal attached to a VM's serial
//! console, like `kola spawn`. The terminal is put in raw mode (so Ctrl-C and
//! the line editor reach the guest) and restored on every way out: the guest
//! powering off, Ctrl-] (detach), SIGTERM/SIGHUP, an error or a panic.

use std::io::{Read, Write};
use std::os::fd::AsFd;

use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::driver::Driver;
use crate::process::Interrupt;

/// Ctrl-] detaches, as in telnet.
pub const DETACH: u8 = 0x1d;

/// Raw mode on stdin while alive; the saved settings come back on drop.
pub struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    /// Raw mode when stdin is a terminal; nothing otherwise.
    pub fn enter() -> RawMode {
        let stdin = std::io::stdin();
        let Ok(saved) = termios::tcgetattr(stdin.as_fd()) else {
            return RawMode { saved: None };
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        if termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).is_err() {
            return RawMode { saved: None };
        }
        RawMode { saved: Some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, saved);
        }
    }
}

/// How an attachment ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Detached {
    /// The VM exited (the guest powered off).
    Exited,
    /// Ctrl-] or a signal.
    ByUser,
}

/// Forward the terminal to the console and back until the VM exits or the user detaches.
pub async fn attach(driver: &mut Driver, log: &mut std::fs::File) -> Result<Detached, Interrupt> {
    let _raw = RawMode::enter();
    let mut stdout = std::io::stdout();
    let pending = driver.take_pending();
    let _ = stdout.write_all(&pending);
    let _ = log.write_all(&pending);
    let _ = stdout.flush();
    // stdin is read on a thread of its own: a blocking terminal read cannot be
    // cancelled, and that thread simply ends with the process
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Interrupt::Infra(format!("cannot watch SIGTERM: {e}")))?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| Interrupt::Infra(format!("cannot watch SIGHUP: {e}")))?;
    // raw mode sends Ctrl-C to the guest; a SIGINT from elsewhere still detaches cleanly
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| Interrupt::Infra(format!("cannot watch SIGINT: {e}")))?;
    let mut buf = vec![0u8; 16 << 10];
    let mut stdin_open = true;
    loop {
        let (vm_in, vm_out) = driver.io();
        tokio::select! {
            r = vm_out.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Ok(Detached::Exited),
                Ok(n) => {
                    let _ = stdout.write_all(&buf[..n]);
                    let _ = stdout.flush();
                    let _ = log.write_all(&buf[..n]);
                }
            },
            typed = rx.recv(), if stdin_open => match typed {
                None => stdin_open = false,
                Some(bytes) => {
                    if let Some(i) = memchr::memchr(DETACH, &bytes) {
                        let _ = vm_in.write_all(&bytes[..i]).await;
                        return Ok(Detached::ByUser);
                    }
                    if vm_in.write_all(&bytes).await.is_err() {
                        return Ok(Detached::Exited);
                    }
                    let _ = vm_in.flush().await;
                }
            },
            _ = term.recv() => return Ok(Detached::ByUser),
            _ = hup.recv() => return Ok(Detached::ByUser),
            _ = int.recv() => return Ok(Detached::ByUser),
        }
    }
}
