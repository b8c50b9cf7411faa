//! systemd's side of `watch` in a `Type=notify` unit: `READY=1` once the
//! first converge is done, a `STATUS=` line after every converge (the last
//! converge, the drift left), and from a thread of its own, while the loop
//! is healthy: `EXTEND_TIMEOUT_USEC=` during the first converge (a farm's
//! first converge may build machines for longer than any start timeout)
//! and, with `WatchdogSec=`, `WATCHDOG=1` every half period after it. A loop
//! that makes no progress for `--stall` stops the pings; systemd then fails
//! the start or restarts the service. Without `$NOTIFY_SOCKET` nothing is sent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sd_notify::NotifyState;

use super::monitor::Monitor;

/// How often the start timeout is extended without a watchdog to follow.
const EXTEND_EVERY: Duration = Duration::from_secs(30);

/// A stop flag a sleeping thread is woken by.
type Stop = Arc<(Mutex<bool>, Condvar)>;

pub struct Systemd {
    monitor: Arc<Monitor>,
    pinger: Option<(Stop, JoinHandle<()>)>,
    flags: Arc<Flags>,
}

#[derive(Default)]
struct Flags {
    ready: AtomicBool,
    said_unhealthy: AtomicBool,
}

impl Systemd {
    /// Start pinging when systemd listens.
    pub fn start(monitor: Arc<Monitor>) -> Systemd {
        let flags = Arc::new(Flags::default());
        let pinger = std::env::var_os("NOTIFY_SOCKET").map(|_| {
            let watchdog = sd_notify::watchdog_enabled();
            let every = watchdog.map_or(EXTEND_EVERY, |w| (w / 2).min(EXTEND_EVERY));
            let stop: Stop = Arc::new((Mutex::new(false), Condvar::new()));
            let (m, s, f) = (monitor.clone(), stop.clone(), flags.clone());
            let thread = std::thread::spawn(move || ping(&m, every, watchdog.is_some(), &s, &f));
            (stop, thread)
        });
        Systemd {
            monitor,
            pinger,
            flags,
        }
    }

    /// The first converge is done.
    pub fn ready(&self) {
        self.flags.ready.store(true, Ordering::SeqCst);
        let line = self.monitor.status_line();
        let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&line)]);
    }

    /// After a converge: the last one and the drift left.
    pub fn status(&self) {
        let line = self.monitor.status_line();
        let _ = sd_notify::notify(&[NotifyState::Status(&line)]);
    }

    pub fn stopping(&self) {
        let _ = sd_notify::notify(&[NotifyState::Stopping]);
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.pinger.take() {
            *stop.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
            stop.1.notify_all();
            let _ = thread.join();
        }
    }
}

/// Every `every`, while the loop is healthy: before READY=1 a start
/// timeout extension, after it `WATCHDOG=1` (when systemd asked for one).
/// Once the loop is unhealthy: one `STATUS=` line saying why, and silence
/// until it is healthy again.
fn ping(
    monitor: &Monitor,
    every: Duration,
    watchdog: bool,
    stop: &(Mutex<bool>, Condvar),
    flags: &Flags,
) {
    let mut stopped = stop.0.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        match monitor.healthy() {
            Ok(()) => {
                flags.said_unhealthy.store(false, Ordering::SeqCst);
                if !flags.ready.load(Ordering::SeqCst) {
                    let usec = u32::try_from((every * 3).as_micros()).unwrap_or(u32::MAX);
                    let _ = sd_notify::notify(&[NotifyState::ExtendTimeoutUsec(usec)]);
                } else if watchdog {
                    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
                }
            }
            Err(why) if !flags.said_unhealthy.swap(true, Ordering::SeqCst) => {
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
