//! `reconcile`: make a build/test farm host match one TOML desired-state file.
//!
//! The pipeline a run walks through shows in the modules: the file is loaded
//! and checked ([`config`]), the world is observed and diffed ([`plan`]) through
//! one contract every kind of object follows ([`resource`]), changes are applied
//! ([`apply`]) through atomic, journaled primitives ([`fsops`], [`state`]) from
//! verified [`source`]s. Machines live in the buildos layout of the [`store`];
//! tests (and bootstraps) run on instances of them made by one [`platform`]
//! factory (host, namespaces, QEMU) and are checked and reported by the [`harness`].

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
pub mod source;
pub mod state;
pub mod store;
#[cfg(test)]
mod testing;
