//! The test harness: selection (`select`), running on working snapshots with
//! output and console checks (`run`, `checks`, `matchers`), and reports
//! (`report`: JSON, JUnit, TAP 14).

pub mod checks;
mod cluster;
pub mod matchers;
pub mod report;
pub mod run;
pub mod runs;
pub mod select;
