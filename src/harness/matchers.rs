//! A test's `expect` matchers (parsed when the file was read, see
//! `config::matcher`) applied to the streams it captured.

use crate::config::matcher::Spec;

/// The first failing matcher over (stream name, matchers, file holding the
/// captured stream); a file is read only when a matcher looks at it.
pub fn first_failure(streams: &[(&str, &[Spec], &std::path::Path)]) -> Option<String> {
    for (name, matchers, file) in streams {
        if matchers.is_empty() {
            continue;
        }
        let text = std::fs::read(file).unwrap_or_default();
        for m in matchers.iter() {
            match &m.parsed {
                Ok(matcher) => {
                    if let Some(why) = matcher.check(&text) {
                        return Some(format!("{name}: {why}"));
                    }
                }
                // validation refuses a file with one; a header read later says it here
                Err(e) => return Some(format!("{name}: bad matcher {:?}: {e}", m.text)),
            }
        }
    }
    None
}
