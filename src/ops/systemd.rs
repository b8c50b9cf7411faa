//! systemd's side of `watch` in a `Type=notify` unit: `READY=1` once the
//! first converge is done, a `STATUS=` line after every converge (the last
//! converge, the drift left), and with `WatchdogSec=` a `WATCHDOG=1` every
//! half period from a thread of its own — sent only while the loop is
//! healthy, so a loop stuck for longer than `--stall` is restarted by
//! systemd. Without `$NOTIFY_SOCKET` every call does nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sd_notify::NotifyState;

use super::monitor::Monitor;

/// A stop flag a sleeping thread is woken by.
type Stop = Arc<(Mutex<bool>, Condvar)>;

pub struct Systemd {
    monitor: Arc<Monitor>,
    watchdog: Option<(Stop, JoinHandle<()>)>,
    said_unhealthy: Arc<AtomicBool>,
}

impl Systemd {
    /// Start the watchdog thread when systemd asked for one.
    pub fn start(monitor: Arc<Monitor>) -> Systemd {
        let said_unhealthy = Arc::new(AtomicBool::new(false));
        let watchdog = sd_notify::watchdog_enabled().map(|period| {
            let stop = Arc::new((Mutex::new(false), Condvar::new()));
            let (m, s, said) = (monitor.clone(), stop.clone(), said_unhealthy.clone());
            let thread = std::thread::spawn(move || watchdog(&m, period / 2, &s, &said));
            (stop, thread)
        });
        Systemd {
            monitor,
            watchdog,
            said_unhealthy,
        }
    }

    /// The first converge is done.
    pub fn ready(&self) {
        let line = self.monitor.status_line();
        let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&line)]);
    }

    /// After a converge: the last one and the drift left.
    pub fn status(&self) {
        self.said_unhealthy.store(false, Ordering::SeqCst);
        let line = self.monitor.status_line();
        let _ = sd_notify::notify(&[NotifyState::Status(&line)]);
    }

    pub fn stopping(&self) {
        let _ = sd_notify::notify(&[NotifyState::Stopping]);
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.watchdog.take() {
            *stop.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
            stop.1.notify_all();
            let _ = thread.join();
        }
    }
}

/// Every `every`, `WATCHDOG=1` while the loop is healthy; once it is not,
/// one `STATUS=` line saying why, and silence until it is again.
fn watchdog(
    monitor: &Monitor,
    every: Duration,
    stop: &(Mutex<bool>, Condvar),
    said_unhealthy: &AtomicBool,
) {
    let mut stopped = stop.0.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        match monitor.healthy() {
            Ok(()) => {
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            }
            Err(why) if !said_unhealthy.swap(true, Ordering::SeqCst) => {
                let line = format!("unhealthy: {why}");
                let _ = sd_notify::notify(&[NotifyState::Status(&line)]);
            }
            Err(_) => {}
        }
        stopped = match stop.1.wait_timeout(stopped, every) {
            Ok((g, _)) => g,
            Err(e) => e.into_inner().0,
        };
        if *stopped {
            return;
        }
    }
}
