//! The committed schema and file reference match the code; every example is
//! valid for reconcile and for a real JSON Schema validator.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn generated(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// Compare a committed file with what the code generates; `RECONCILE_BLESS=1` rewrites it.
fn check_committed(rel: &str, now: &str) {
    let path = repo().join(rel);
    if std::env::var("RECONCILE_BLESS").is_ok_and(|v| v == "1") {
        fs::write(&path, now).unwrap();
    }
    let committed = fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == now,
        "{rel} is out of date: run `RECONCILE_BLESS=1 cargo test --test schema` and commit it"
    );
}

#[test]
fn committed_schema_matches_the_code() {
    check_committed("schema/reconcile.schema.json", &generated(&["schema"]));
}

#[test]
fn file_reference_matches_the_schema() {
    let md = generated(&["schema", "--markdown"]);
    // every key of every table in the schema is documented
    let schema: serde_json::Value = serde_json::from_str(&generated(&["schema"])).unwrap();
    for (name, def) in schema["$defs"].as_object().unwrap() {
        assert!(
            md.contains(&format!("## {name}")),
            "{name} missing from the reference"
        );
        for key in def["properties"]
            .as_object()
            .into_iter()
            .flat_map(|p| p.keys())
        {
            assert!(
                md.contains(&format!("| `{key}` |")),
                "{name}.{key} missing from the reference"
            );
        }
    }
    check_committed("docs/reference.md", &md);
}

fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(repo().join("examples"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    v.sort();
    assert!(
        v.len() >= 2,
        "examples/ should hold the quickstart and a full farm file"
    );
    v
}

#[test]
fn every_example_is_valid() {
    for ex in examples() {
        let out = Command::new(BIN)
            .args(["validate", "-f"])
            .arg(&ex)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            ex.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// TOML → JSON the way a JSON Schema validator sees it (dates become strings).
fn to_json(v: toml::Value) -> serde_json::Value {
    match v {
        toml::Value::String(s) => s.into(),
        toml::Value::Integer(i) => i.into(),
        toml::Value::Float(f) => f.into(),
        toml::Value::Boolean(b) => b.into(),
        toml::Value::Datetime(d) => d.to_string().into(),
        toml::Value::Array(a) => a.into_iter().map(to_json).collect::<Vec<_>>().into(),
        toml::Value::Table(t) => t
            .into_iter()
            .map(|(k, v)| (k, to_json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
    }
}

fn python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("RECONCILE_PYTHON").map(PathBuf::from),
        Some(repo().join("target/venv/bin/python3")),
    ];
    candidates.into_iter().flatten().find(|p| {
        p.exists()
            && Command::new(p)
                .args(["-c", "import jsonschema"])
                .output()
                .is_ok_and(|o| o.status.success())
    })
}

/// Validate `docs` (name → JSON) with the `jsonschema` Python package; returns the names that failed.
fn jsonschema_failures(py: &Path, docs: &[(String, serde_json::Value)]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("schema.json"), generated(&["schema"])).unwrap();
    let mut names = Vec::new();
    for (i, (name, doc)) in docs.iter().enumerate() {
        fs::write(
            dir.path().join(format!("{i}.json")),
            serde_json::to_vec(doc).unwrap(),
        )
        .unwrap();
        names.push(name.clone());
    }
    let script = r#"
import json, sys, jsonschema
d = sys.argv[1]
schema = json.load(open(f"{d}/schema.json"))
jsonschema.Draft202012Validator.check_schema(schema)
v = jsonschema.Draft202012Validator(schema)
for i in range(int(sys.argv[2])):
    errs = list(v.iter_errors(json.load(open(f"{d}/{i}.json"))))
    print("FAIL" if errs else "OK", i, "; ".join(e.message for e in errs))
"#;
    let out = Command::new(py)
        .args(["-c", script])
        .arg(dir.path())
        .arg(docs.len().to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "validator crashed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .filter(|l| l.starts_with("FAIL"))
        .map(|l| {
            let i: usize = l.split_whitespace().nth(1).unwrap().parse().unwrap();
            format!("{}: {l}", names[i])
        })
        .collect()
}

#[test]
#[ignore = "needs python jsonschema (target/venv, made by scripts/test)"]
fn examples_validate_against_the_schema_with_a_real_validator() {
    let Some(py) = python() else {
        skip("python with the jsonschema package (run the test command in README, which makes target/venv)");
        return;
    };
    let docs: Vec<(String, serde_json::Value)> = examples()
        .into_iter()
        .map(|p| {
            (
                p.display().to_string(),
                to_json(toml::from_str(&fs::read_to_string(&p).unwrap()).unwrap()),
            )
        })
        .collect();
    assert_eq!(jsonschema_failures(&py, &docs), Vec::<String>::new());

    // the validator is real: documents with mistakes are rejected
    let mut unknown_key = docs[0].1.clone();
    unknown_key["plugin"]["hello"]["colour"] = "red".into();
    let mut wrong_enum = docs[0].1.clone();
    wrong_enum["volume"] = serde_json::json!({ "v": { "path": "x", "backend": "zfs" } });
    let bad = vec![
        ("unknown key".to_string(), unknown_key),
        ("wrong enum".to_string(), wrong_enum),
    ];
    assert_eq!(jsonschema_failures(&py, &bad).len(), 2);
}
