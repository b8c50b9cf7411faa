//! `expect` matchers on a stream: `"text"` (contains), `"!text"` (does not
//! contain), `"/regex/"` (matches), `"!/regex/"` (does not match) — parsed
//! once, when the file (or a test's header) is read.

use regex::bytes::Regex;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone)]
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
        let contains = |needle: &str| memchr::memmem::find(text, needle.as_bytes()).is_some();
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

/// A matcher as the file writes it, parsed when the file is read: the text
/// (what is shown and saved) and the matcher, or why it is not one (the
/// file's validation reports that, located).
#[derive(Debug, Clone)]
pub struct Spec {
    pub text: String,
    pub parsed: Result<Matcher, String>,
}

impl Spec {
    pub fn new(text: &str) -> Spec {
        Spec {
            text: text.to_string(),
            parsed: Matcher::parse(text).map_err(|e| {
                // regex errors end with the line that says what is wrong
                e.to_string()
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            }),
        }
    }
}

impl<'de> Deserialize<'de> for Spec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Spec::new(&String::deserialize(d)?))
    }
}

impl Serialize for Spec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
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
        assert!(check("", "").is_none());
        assert!(Spec::new("!/pa(nic/").parsed.is_err());
        assert!(Spec::new("/Linux/").parsed.is_ok());
        let bad = Spec::new("/a(/");
        assert!(bad.parsed.is_err());
        assert_eq!(bad.text, "/a(/");
    }
}
