//! What a machine needs: the steps that make it match the file, each with
//! its reason (a revision built or switched to, toolchains bootstrapped, what
//! retention and pruning delete — never what a live snapshot reads through).

use std::collections::{BTreeMap, BTreeSet};

use super::{bootstrap_digest, MachineResource, Step};
use crate::config::model::{Machine, Prune};
use crate::error::{Error, Result};
use crate::resource::{Action, Candidate, Change, Context};
use crate::source::Location;
use crate::store::working::live_bases;
use crate::store::{disk, revision_of, Entry, EntryKind, MachineState};

impl MachineResource {
    /// The steps that make the machine match, with a reason each (a switch of
    /// the current revision says from which to which).
    pub(super) fn steps(&self, st: &MachineState, cx: &Context) -> Result<Vec<(Step, Change)>> {
        let mut out = self.steps_with_reasons(st, cx)?;
        if let (Some(m), Some(old)) = (
            &self.desired,
            st.link.as_deref().and_then(|l| l.rsplit('-').next()),
        ) {
            for (_, c) in out
                .iter_mut()
                .filter(|(s, _)| matches!(s, Step::SwitchLink | Step::Promote))
            {
                c.from = Some(old.to_string());
                c.to = Some(m.revision.to_string());
            }
        }
        Ok(out)
    }

    pub(super) fn steps_with_reasons(
        &self,
        st: &MachineState,
        cx: &Context,
    ) -> Result<Vec<(Step, Change)>> {
        let dir = self.layout.existing().ok().flatten();
        let live = live_bases(dir.as_ref(), st);
        let Some(m) = &self.desired else {
            return Ok(self.undeclared_steps(st, &live));
        };
        let want_src = cx.fetcher.expected_digest(&m.source)?;
        let mut out = Steps::default();
        let rebuilt = self.revision_steps(m, st, &want_src, cx, &mut out);
        // a candidate held behind its gate: toolchains stay on the current
        // revision and are bootstrapped on the candidate once it is switched in
        let held = out.0.iter().any(|(s, _)| *s == Step::Promote);
        let rebuilding = if held {
            BTreeSet::new()
        } else {
            self.toolchain_steps(m, st, &want_src, rebuilt, &mut out)?
        };
        if self.volume().prune != Prune::None {
            self.deletion_steps(m, st, &live, &rebuilding, held, &mut out);
        }
        Ok(out.0)
    }

    /// An undeclared machine: every entry goes, unless a live working
    /// snapshot needs it (none under `prune = "none"`).
    pub(super) fn undeclared_steps(
        &self,
        st: &MachineState,
        live: &BTreeMap<String, String>,
    ) -> Vec<(Step, Change)> {
        let mut out = Steps::default();
        if self.volume().prune == Prune::None {
            return out.0;
        }
        let backing = self.backing(st, live, &[]);
        for e in st.entries.values() {
            if e.receipt.is_none() && self.volume().prune != Prune::All {
                continue;
            }
            if live.contains_key(&e.name) || backing.contains(&e.name) {
                continue;
            }
            out.delete(
                &e.name,
                format!("{} of a machine no longer declared", e.name),
            );
        }
        out.0
    }

    /// The current revision: built when missing or made from another
    /// source, then the link switched to it. Whether it is (re)built.
    pub(super) fn revision_steps(
        &self,
        m: &Machine,
        st: &MachineState,
        want_src: &str,
        cx: &Context,
        out: &mut Steps,
    ) -> bool {
        let cur = self.rev_name(m.revision);
        let mut rebuilt = false;
        match st.entries.get(&cur) {
            None => {
                rebuilt = true;
                out.push(
                    Step::BuildRevision,
                    Action::Create,
                    format!(
                        "revision {} missing (build from {})",
                        m.revision,
                        Location::of(&m.source).describe()
                    ),
                )
            }
            Some(Entry {
                receipt: Some(r), ..
            }) if r.source_sha256 != want_src => {
                rebuilt = true;
                out.push(
                    Step::BuildRevision,
                    Action::Replace,
                    format!(
                        "revision {} source sha256 {}… ≠ declared {}…",
                        m.revision,
                        crate::resource::receipt::short(&r.source_sha256),
                        crate::resource::receipt::short(want_src)
                    ),
                )
            }
            // ours and current, or made by hand (buildos-style) and used as it is
            Some(_) => {}
        }
        if st.link.as_deref() != Some(cur.as_str()) {
            if let Some(p) = &m.promote {
                let c = Candidate::new(
                    cx,
                    &self.address,
                    self.name(),
                    format!("revision {}", m.revision),
                    m.revision,
                    &format!("{}\n{want_src}", m.revision),
                    &p.after,
                );
                out.0.push((
                    Step::Promote,
                    Change::new(Action::Update, c.reason()).held(c),
                ));
                return rebuilt;
            }
            let reason = match st.link.as_deref().and_then(|l| l.rsplit('-').next()) {
                Some(old) => format!("current revision {old} → {}", m.revision),
                None => format!("link {} → {cur} missing", self.name()),
            };
            out.push(Step::SwitchLink, Action::Update, reason);
        }
        rebuilt
    }

    /// Each declared toolchain bootstrapped on the current revision with its
    /// current command. The snapshots being (re)made.
    pub(super) fn toolchain_steps(
        &self,
        m: &Machine,
        st: &MachineState,
        want_src: &str,
        rebuilt: bool,
        out: &mut Steps,
    ) -> Result<BTreeSet<String>> {
        let mut rebuilding: BTreeSet<String> = BTreeSet::new();
        for (tc, t) in &m.toolchain {
            let name = self.tc_name(tc);
            let want = bootstrap_digest(&t.bootstrap);
            let reason = match st.entries.get(&name).and_then(|e| e.receipt.as_ref()) {
                None if st.entries.contains_key(&name) && self.volume().prune != Prune::All => {
                    return Err(Error::Foreign {
                        address: self.address.clone(),
                        path: self.entry_path(&name),
                    })
                }
                None => Some((Action::Create, format!("toolchain {tc} not bootstrapped"))),
                Some(r) if r.revision != m.revision || rebuilt || r.source_sha256 != want_src => {
                    Some((
                        Action::Update,
                        format!(
                            "toolchain {tc} built on revision {}, current is {}",
                            r.revision, m.revision
                        ),
                    ))
                }
                Some(r) if r.bootstrap_sha256.as_deref() != Some(want.as_str()) => Some((
                    Action::Update,
                    format!("toolchain {tc} bootstrap command changed"),
                )),
                Some(_) => None,
            };
            if let Some((action, reason)) = reason {
                rebuilding.insert(name);
                out.push(
                    Step::Bootstrap {
                        toolchain: tc.clone(),
                    },
                    action,
                    reason,
                );
            }
        }
        Ok(rebuilding)
    }

    /// What goes: stale working snapshots, undeclared toolchains, revisions
    /// beyond `keep`, strays (`prune = "all"`) — never what a live working
    /// snapshot or a staying toolchain reads through.
    pub(super) fn deletion_steps(
        &self,
        m: &Machine,
        st: &MachineState,
        live: &BTreeMap<String, String>,
        rebuilding: &BTreeSet<String>,
        held: bool,
        out: &mut Steps,
    ) {
        let cur = self.rev_name(m.revision);
        let staying: Vec<&str> = m
            .toolchain
            .keys()
            .map(|tc| self.tc_name(tc))
            .filter(|n| !rebuilding.contains(n))
            .filter_map(|n| st.entries.get_key_value(&n).map(|(k, _)| k.as_str()))
            .collect();
        let backing = self.backing(st, live, &staying);
        let mut older: Vec<(u32, &Entry)> = Vec::new();
        for e in st.entries.values() {
            // the declared revision stays; while it is a candidate held
            // behind its gate, the current one stays too and `keep` counts
            // the older ones (a candidate never pushes out the current
            // revision's rollback)
            if e.name == cur
                || (held && st.link.as_deref() == Some(e.name.as_str()))
                || live.contains_key(&e.name)
                || backing.contains(&e.name)
            {
                continue;
            }
            let r = e.receipt.as_ref();
            match r.map(|r| r.kind) {
                Some(EntryKind::Working) => {
                    let owner = r.and_then(|r| r.owner.as_ref()).map(|o| o.pid).unwrap_or(0);
                    out.delete(
                        &e.name,
                        format!(
                            "stale working snapshot {} (owner pid {owner} is gone)",
                            e.name
                        ),
                    );
                }
                Some(EntryKind::Toolchain) => {
                    let tc = r.and_then(|r| r.toolchain.clone()).unwrap_or_default();
                    if !m.toolchain.contains_key(&tc) {
                        out.delete(&e.name, format!("toolchain {tc} not declared any more"));
                    }
                }
                Some(EntryKind::Revision) => older.push((r.map(|r| r.revision).unwrap_or(0), e)),
                None => match revision_of(self.name(), &e.name) {
                    // a hand-made revision counts toward `keep` only under buildos behaviour
                    Some(rev) if self.volume().prune == Prune::All => older.push((rev, e)),
                    _ if self.volume().prune == Prune::All
                        && !m.toolchain.contains_key(
                            e.name.trim_start_matches(&format!("{}-", self.name())),
                        ) =>
                    {
                        out.delete(&e.name, format!("stray {} (prune = \"all\")", e.name))
                    }
                    _ => {}
                },
            }
        }
        older.sort_by_key(|e| std::cmp::Reverse(e.0));
        for (i, (rev, e)) in older.iter().enumerate() {
            if i < m.keep as usize {
                continue;
            }
            if live.values().any(|base| base.as_str() == e.name) {
                continue;
            }
            if live_revisions(st, live).contains(rev) {
                continue;
            }
            out.delete(&e.name, format!("revision {rev} beyond keep = {}", m.keep));
        }
    }

    /// Entries some overlay that stays still reads through: the backing chains
    /// of live working snapshots and of `staying` toolchain snapshots (disk
    /// machines; a btrfs or directory snapshot needs nothing it was made from).
    pub(super) fn backing(
        &self,
        st: &MachineState,
        live: &BTreeMap<String, String>,
        staying: &[&str],
    ) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut todo: Vec<String> = live
            .keys()
            .map(String::as_str)
            .chain(staying.iter().copied())
            .map(str::to_string)
            .collect();
        while let Some(entry) = todo.pop() {
            if let Some(base) = disk::backing_entry(&self.entry_path(&entry)) {
                if st.entries.contains_key(&base) && out.insert(base.clone()) {
                    todo.push(base);
                }
            }
        }
        out
    }
}

/// Revisions that live working snapshots were made from.
/// A machine's steps as they are planned, each with its change.
#[derive(Default)]
pub(super) struct Steps(Vec<(Step, Change)>);

impl Steps {
    fn push(&mut self, step: Step, action: Action, reason: String) {
        self.0.push((step, Change::new(action, reason)));
    }

    fn delete(&mut self, name: &str, reason: String) {
        self.push(
            Step::Delete {
                name: name.to_string(),
            },
            Action::Delete,
            reason,
        );
    }
}

pub(super) fn live_revisions(st: &MachineState, live: &BTreeMap<String, String>) -> BTreeSet<u32> {
    live.keys()
        .filter_map(|w| {
            st.entries
                .get(w)
                .and_then(|e| e.receipt.as_ref())
                .map(|r| r.revision)
        })
        .collect()
}
