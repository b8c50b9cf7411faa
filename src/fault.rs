//! Fault injection for crash tests: `RECONCILE_FAULT=<step>` (or
//! `<address>:<step>`) makes the process SIGKILL itself when it reaches that
//! step, right after the journal recorded it and before the step's action.

use nix::sys::signal::{raise, Signal};

pub const ENV: &str = "RECONCILE_FAULT";

/// Kill the process here if the fault hook names this step.
pub fn point(address: &str, step: &str) {
    let Ok(want) = std::env::var(ENV) else { return };
    let hit = match want.rsplit_once(':') {
        Some((addr, s)) => addr == address && s == step,
        None => want == step,
    };
    if hit {
        eprintln!("reconcile: fault injection: killing at {address}:{step}");
        let _ = raise(Signal::SIGKILL);
        // SIGKILL cannot be caught; this is never reached.
        std::process::abort();
    }
}
