//! Every renderer in one place, each reading typed data: text for people
//! (`text`), Markdown for review and CI step summaries (`markdown`,
//! `step_summary`); JSON is the types themselves, serialised.

pub mod markdown;
pub mod step_summary;
pub mod text;
