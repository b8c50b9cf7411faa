//! `expect` matchers on a stream: `"text"` (contains), `"!text"` (does not
//! contain), `"/regex/"` (matches), `"!/regex/"` (does not match).

use regex::bytes::Regex;

#[derive(Debug)]
pub enum Matcher {
    Contains(String),
    Lacks(String),
    Matches(Regex),
    Rejects(Regex),
}

impl Matcher {
    pub fn parse(m: &str) -> Result<Matcher, regex::Error> {
        let (negate, body) = match m.strip_prefix('!') {
            Some(b) => (true, b),
            None => (false, m),
        };
        if body.len() >= 2 && body.starts_with('/') && body.ends_with('/') {
            let re = Regex::new(&format!("(?m){}", &body[1..body.len() - 1]))?;
            Ok(if negate {
                Matcher::Rejects(re)
            } else {
                Matcher::Matches(re)
            })
        } else {
            let s = body.to_string();
            Ok(if negate {
                Matcher::Lacks(s)
            } else {
                Matcher::Contains(s)
            })
        }
    }

    /// None when `text` satisfies the matcher, else why not.
    pub fn check(&self, text: &[u8]) -> Option<String> {
        let contains = |needle: &str| {
            text.windows(needle.len().max(1))
                .any(|w| w == needle.as_bytes())
        };
        match self {
            Matcher::Contains(s) if !contains(s) => Some(format!("expected {s:?}, not found")),
            Matcher::Lacks(s) if contains(s) => Some(format!("found {s:?}, which must not appear")),
            Matcher::Matches(re) if !re.is_match(text) => Some(format!(
                "expected /{}/ to match, it does not",
                re.as_str().trim_start_matches("(?m)")
            )),
            Matcher::Rejects(re) if re.is_match(text) => Some(format!(
                "/{}/ matches, which it must not",
                re.as_str().trim_start_matches("(?m)")
            )),
            _ => None,
        }
    }
}

/// The first failing matcher over (stream name, matchers, captured text).
/// The first failing matcher over (stream name, matchers, file holding the
/// captured stream); a file is read only when a matcher looks at it.
pub fn first_failure(streams: &[(&str, &Vec<String>, &std::path::Path)]) -> Option<String> {
    for (name, matchers, file) in streams {
        if matchers.is_empty() {
            continue;
        }
        let text = std::fs::read(file).unwrap_or_default();
        for m in matchers.iter() {
            match Matcher::parse(m) {
                Ok(matcher) => {
                    if let Some(why) = matcher.check(&text) {
                        return Some(format!("{name}: {why}"));
                    }
                }
                Err(e) => return Some(format!("{name}: bad matcher {m:?}: {e}")),
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(m: &str, text: &str) -> Option<String> {
        Matcher::parse(m).unwrap().check(text.as_bytes())
    }

    #[test]
    fn every_form() {
        assert!(check("Linux", "Linux 6.1").is_none());
        assert!(check("Linux", "Darwin").is_some());
        assert!(check("!panic", "all good").is_none());
        assert!(check("!panic", "kernel panic").is_some());
        assert!(check("/^Linux \\d/", "x\nLinux 6\n").is_none());
        assert!(check("/^Linux \\d/", "Linux x").is_some());
        assert!(check("!/err(or)?/", "fine").is_none());
        assert!(check("!/err(or)?/", "an error").is_some());
    }
}
