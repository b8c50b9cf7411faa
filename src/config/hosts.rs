//! Host selection: one desired-state file for many hosts. `hosts = [...]` on
//! a machine, image, plugin or suite lists globs over the host name
//! (`build-*`) and label selectors (`label:arch=arm64`, from the host's
//! `[settings] labels_file`); a leading `!` excludes. A resource is for a host
//! when no positive entry is given or one matches, and no `!` entry matches.
//!
//! A resource that is not for this host is left out of this host's desired
//! state, as if it were not declared: the plan lists it as "not for this
//! host", and what reconcile installed for it earlier is pruned by the usual
//! rules — owned plugins and images go, machines go only as their volume's
//! `prune` allows (`prune = "none"` keeps everything).

use std::collections::BTreeMap;
use std::path::Path;

/// A host as selectors see it.
#[derive(Debug, Clone, Default)]
pub struct Host {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// Read a labels file: `key=value` per line, `#` comments, blank lines.
pub fn read_labels(path: &Path) -> std::result::Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("{}:{}: not `key=value`", path.display(), i + 1))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// What one entry selects.
#[derive(Debug, Clone)]
enum Pattern {
    Name(glob::Pattern),
    Label(String, String),
}

/// One entry of a `hosts` list as the file writes it, parsed when the file
/// is read: negated or not, and what it selects — or why it is malformed
/// (validation reports that, located).
#[derive(Debug, Clone)]
pub struct Selector {
    pub text: String,
    parsed: std::result::Result<(bool, Pattern), String>,
}

impl Selector {
    pub fn new(text: &str) -> Selector {
        Selector {
            text: text.to_string(),
            parsed: parse(text),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(Selector::new(&String::deserialize(d)?))
    }
}

impl serde::Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

/// Parse one entry; the reason when it is malformed.
fn parse(entry: &str) -> std::result::Result<(bool, Pattern), String> {
    let (negated, rest) = match entry.strip_prefix('!') {
        Some(r) => (true, r),
        None => (false, entry),
    };
    if let Some(label) = rest.strip_prefix("label:") {
        let (k, v) = label
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .ok_or_else(|| format!("`{entry}`: a label selector is label:KEY=VALUE"))?;
        return Ok((negated, Pattern::Label(k.to_string(), v.to_string())));
    }
    if rest.is_empty() {
        return Err(format!("`{entry}`: an empty host pattern"));
    }
    glob::Pattern::new(rest)
        .map(|g| (negated, Pattern::Name(g)))
        .map_err(|e| format!("`{entry}`: {e}"))
}

/// The malformed entries of a `hosts` list (validation).
pub fn check(entries: &[Selector]) -> Vec<(usize, String)> {
    entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| e.parsed.as_ref().err().map(|why| (i, why.clone())))
        .collect()
}

/// None when `entries` select `host`; else why not.
pub fn excludes(entries: &[Selector], host: &Host) -> Option<String> {
    if entries.is_empty() {
        return None;
    }
    let matches = |s: &Pattern| match s {
        Pattern::Name(g) => g.matches(&host.name),
        Pattern::Label(k, v) => host.labels.get(k) == Some(v),
    };
    let parsed: Vec<(bool, &Pattern, &String)> = entries
        .iter()
        .filter_map(|e| e.parsed.as_ref().ok().map(|(n, s)| (*n, s, &e.text)))
        .collect();
    if let Some((_, _, e)) = parsed.iter().find(|(neg, s, _)| *neg && matches(s)) {
        return Some(format!("{} matches {e}", host.name));
    }
    let positive: Vec<&(bool, &Pattern, &String)> =
        parsed.iter().filter(|(neg, _, _)| !neg).collect();
    if !positive.is_empty() && !positive.iter().any(|(_, s, _)| matches(s)) {
        let list: Vec<&str> = positive.iter().map(|(_, _, e)| e.as_str()).collect();
        return Some(format!("{} matches none of {}", host.name, list.join(", ")));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sels(texts: &[&str]) -> Vec<Selector> {
        texts.iter().map(|t| Selector::new(t)).collect()
    }

    fn host(name: &str, labels: &[(&str, &str)]) -> Host {
        Host {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn globs_labels_and_exclusions() {
        let sel = sels(&["build-*", "!build-arm-*"]);
        assert_eq!(excludes(&sel, &host("build-1", &[])), None);
        assert!(excludes(&sel, &host("build-arm-1", &[]))
            .unwrap()
            .contains("!build-arm-*"));
        assert!(excludes(&sel, &host("test-1", &[]))
            .unwrap()
            .contains("none of build-*"));
        let arm = sels(&["label:arch=arm64"]);
        assert_eq!(excludes(&arm, &host("x", &[("arch", "arm64")])), None);
        assert!(excludes(&arm, &host("x", &[("arch", "amd64")])).is_some());
        let not_arm = sels(&["!label:arch=arm64"]);
        assert_eq!(excludes(&not_arm, &host("x", &[])), None);
        assert!(excludes(&not_arm, &host("x", &[("arch", "arm64")])).is_some());
        assert_eq!(excludes(&[], &host("anything", &[])), None);
        assert_eq!(check(&sels(&["label:=x", "!", "[", "ok-*"])).len(), 3);
    }
}
