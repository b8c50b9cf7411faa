use super::{Cli, PlanArgs};
use crate::error::{exit, Result};
use crate::ops::plan::{self, Request};
use crate::output::Printer;
use crate::render::{self, markdown, text};

pub fn run(cli: &Cli, a: &PlanArgs, p: &Printer) -> Result<i32> {
    let req = Request {
        verify: a.converge.verify,
        targets: a.converge.target.clone(),
        locked: a.converge.locked,
        out: a.out.clone(),
    };
    if cli.hostname.len() > 1 {
        return several_hosts(cli, a, &req, p);
    }
    let loaded = crate::ops::load(
        &cli.file,
        a.git.remote(cli, (&a.preview).into()),
        cli.load_options(),
        true,
    )?;
    if let Some((remote, commit)) = &loaded.git {
        text::pulled(p, &remote.url, commit);
    }
    let planned = plan::plan(&loaded, &req)?;
    let plan = &planned.plan;
    if let Some(out) = &a.out {
        p.info(&format!(
            "Saved the plan to {}; apply it with `{}`.",
            out.display(),
            super::command_line(&["apply"], cli, &[out.display().to_string()])
        ));
    }
    let full = match &a.out {
        Some(out) => format!("the saved plan `{}`", out.display()),
        None => "`reconcile plan --format json`".to_string(),
    };
    render::emit(
        p,
        plan,
        || markdown::plan(plan, &full),
        || text::plan(p, plan),
    );
    let code = if plan.has_changes() {
        exit::CHANGES
    } else {
        exit::OK
    };
    if let (Some(nt), Some((_, commit))) = (&loaded.not_taken, &loaded.git) {
        text::not_taken(p, nt, commit);
        return Ok(exit::ERROR);
    }
    // the process exits next: the OS reclaims what the plan observed at once
    std::mem::forget((planned, loaded));
    Ok(code)
}

/// `plan --hostname h1 --hostname h2 …`: each host's plan of the same file,
/// for review (nothing saved; exit 2 when any host has changes).
fn several_hosts(cli: &Cli, a: &PlanArgs, req: &Request, p: &Printer) -> Result<i32> {
    let remote = a.git.remote(cli, (&a.preview).into());
    let hosts = plan::hosts(&cli.file, remote.as_ref(), &cli.hostname, req)?;
    if let (Some(r), Some(c)) = (&remote, &hosts.commit) {
        text::pulled(p, &r.url, c);
    }
    if p.json {
        let doc = hosts.doc();
        p.json_doc(&doc);
    } else if p.markdown {
        for (_, planned) in &hosts.plans {
            p.raw(&markdown::plan(
                &planned.plan,
                "`reconcile plan --hostname HOST --format json`",
            ));
        }
    } else {
        for (h, planned) in &hosts.plans {
            p.out(&format!("Host {}:", crate::output::escape(h)));
            text::plan(p, &planned.plan);
            p.out("");
        }
    }
    if let (Some(nt), Some(c)) = (&hosts.not_taken, &hosts.commit) {
        text::not_taken(p, nt, c);
        return Ok(exit::ERROR);
    }
    let changes = hosts.plans.iter().any(|(_, pl)| pl.plan.has_changes());
    std::mem::forget(hosts);
    Ok(if changes { exit::CHANGES } else { exit::OK })
}
