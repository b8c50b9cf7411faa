//! Every renderer in one place, each reading the typed results and events of
//! `ops`: text for people (`text`), Markdown for review and CI step summaries
//! (`markdown`, `step_summary`), watch's log lines (`watch_log`); JSON is
//! the types themselves, serialised. [`emit`] picks one for a command's
//! result and appends the Markdown to a CI step summary when there is one.

pub mod markdown;
pub mod page;
pub mod step_summary;
pub mod text;
pub mod watch_log;

use crate::output::Printer;

/// A command's result as the format asks: its JSON document, its Markdown
/// (made only when needed; also appended to `GITHUB_STEP_SUMMARY` when that
/// is set), or text for people.
pub fn emit<T: serde::Serialize>(
    p: &Printer,
    json: &T,
    markdown: impl FnOnce() -> String,
    text: impl FnOnce(),
) {
    let summary = step_summary::target().is_some();
    let md = (p.markdown || summary).then(markdown);
    match &md {
        _ if p.json => p.json_doc(json),
        Some(md) if p.markdown => p.raw(md),
        _ => text(),
    }
    if let (Some(md), true) = (&md, summary) {
        if let Some(w) = step_summary::append(md) {
            p.warn(&w);
        }
    }
}
