//! `reconcile`: make a build/test farm host match one TOML desired-state file.
//!
//! The modules stand in floors, and every import points down (the table is
//! `tests/architecture.rs`; `docs/guide.md` "How the code is laid out"):
//!
//! - [`cli`] parses the command line, calls one entry point of [`ops`] and
//!   hands its typed result to [`render`] (text, Markdown; JSON is the
//!   result types serialised). [`serve`] is `watch --listen`'s front door
//!   (metrics, probes, status, a page): it reads what `ops` records and
//!   renders with [`render`].
//! - [`ops`] is the one floor where commands are put together: loading the
//!   file (from disk or a verified git commit, [`fleet`]), planning
//!   ([`plan`]), converging ([`apply`]), then running tests ([`harness`]).
//! - [`plan`] and [`apply`] drive every kind through one contract
//!   ([`resource`]): observe, diff into changes with reasons, apply in
//!   atomic, journaled steps; each kind recovers its own interrupted
//!   transactions (`resource::recoveries`).
//! - Machines live in the buildos layout of the [`store`] on a [`backend`]
//!   (btrfs or plain directories); tests and bootstraps run on instances of
//!   them made by one [`platform`] factory (host, namespaces, QEMU, cloud).
//! - Beneath: the state dir and its generic journal ([`state`]), verified
//!   [`source`]s, the EC2 client ([`cloud`]), and [`config`], which owns the
//!   file's grammar (parsed once: host selectors, matchers, executors).
//! - The ground floor imports nothing of the crate: [`fsops`] (staging,
//!   renameat2, digests), [`process`] (child supervision), [`output`],
//!   [`diagnostic`], [`fault`]; [`error`] adds the error type and exit codes.

pub mod apply;
pub mod backend;
pub mod cli;
#[cfg(feature = "cloud")]
pub mod cloud;
pub mod config;
pub mod diagnostic;
pub mod error;
pub mod fault;
pub mod fleet;
pub mod fsops;
pub mod harness;
pub mod ops;
pub mod output;
pub mod plan;
pub mod platform;
pub mod process;
pub mod render;
pub mod resource;
pub mod schema;
pub mod serve;
pub mod source;
pub mod state;
pub mod store;
#[cfg(test)]
mod testing;
