use super::{load, render, targets, Cli, PlanArgs};
use crate::error::{exit, Error, Result};
use crate::output::Printer;
use crate::render::{markdown, step_summary};
use crate::{apply, fsops};

pub fn run(cli: &Cli, a: &PlanArgs, p: &Printer) -> Result<i32> {
    if cli.hostname.len() > 1 {
        return several_hosts(cli, a, p);
    }
    let loaded = load(cli, &a.git, p, true)?;
    let desired = &loaded.desired;
    if a.locked {
        let problems = desired.unlocked_sources();
        if !problems.is_empty() {
            return Err(Error::Usage(format!(
                "--locked: {}; run `reconcile lock`",
                problems.join("; ")
            )));
        }
    }
    let (plan, observations) = apply::dry_run(desired, a.verify, &targets(&a.target)?)?;
    // the process exits next: the OS reclaims these at once
    std::mem::forget(observations);
    if let Some(out) = &a.out {
        let bytes = serde_json::to_vec_pretty(&plan).expect("plan serialises");
        fsops::write_atomic(out, &bytes).map_err(|e| Error::io(out, e))?;
        p.info(&format!(
            "Saved the plan to {}; apply it with `reconcile apply {}`.",
            out.display(),
            out.display()
        ));
    }
    let full = match &a.out {
        Some(out) => format!("the saved plan `{}`", out.display()),
        None => "`reconcile plan --format json`".to_string(),
    };
    let summary = step_summary::target().is_some();
    let md = (p.markdown || summary).then(|| markdown::plan(&plan, &full));
    match &md {
        _ if p.json => p.json_doc(&plan),
        Some(md) if p.markdown => print!("{md}"),
        _ => render::plan(p, &plan),
    }
    if let (Some(md), true) = (&md, summary) {
        if let Some(w) = step_summary::append(md) {
            p.warn(&w);
        }
    }
    let code = if plan.has_changes() {
        exit::CHANGES
    } else {
        exit::OK
    };
    if let (Some(nt), Some((_, commit))) = (&loaded.not_taken, &loaded.git) {
        return Ok(super::not_taken(p, nt, commit));
    }
    std::mem::forget((plan, loaded));
    Ok(code)
}

/// `plan --hostname h1 --hostname h2 …`: each host's plan of the same file,
/// for review (nothing saved; exit 2 when any host has changes).
fn several_hosts(cli: &Cli, a: &PlanArgs, p: &Printer) -> Result<i32> {
    if a.out.is_some() {
        return Err(Error::Usage(
            "--out saves one host's plan: give one --hostname".into(),
        ));
    }
    let remote = a.git.remote(cli);
    let preview = remote.as_ref().map(crate::fleet::preview).transpose()?;
    let mut plans = Vec::new();
    for host in &cli.hostname {
        let desired = match (&remote, &preview) {
            (Some(r), Some(pv)) => crate::fleet::load_export(r, &pv.tree, Some(host.clone()))?,
            _ => crate::config::load_with(
                &cli.file,
                crate::config::LoadOptions {
                    hostname: Some(host.clone()),
                    ..Default::default()
                },
            )?,
        };
        let (plan, observations) = apply::dry_run(&desired, a.verify, &targets(&a.target)?)?;
        std::mem::forget(observations);
        plans.push((host.clone(), plan));
    }
    if p.json {
        let doc: Vec<_> = plans
            .iter()
            .map(|(h, plan)| serde_json::json!({ "host": h, "plan": plan }))
            .collect();
        p.json_doc(&doc);
    } else if p.markdown {
        for (_, plan) in &plans {
            print!(
                "{}",
                markdown::plan(plan, "`reconcile plan --hostname HOST --format json`")
            );
        }
    } else {
        for (h, plan) in &plans {
            p.out(&format!("Host {}:", crate::output::escape(h)));
            render::plan(p, plan);
            p.out("");
        }
    }
    if let Some(pv) = &preview {
        if let Some(nt) = &pv.not_taken {
            return Ok(super::not_taken(p, nt, &pv.commit));
        }
    }
    Ok(if plans.iter().any(|(_, plan)| plan.has_changes()) {
        exit::CHANGES
    } else {
        exit::OK
    })
}
