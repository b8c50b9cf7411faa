//! The JSON Schema of the desired-state file, generated from the model types,
//! and the file reference (`docs/reference.md`) generated from that schema.

use serde_json::Value;

use crate::config::DesiredFile;

pub fn value() -> Value {
    serde_json::to_value(schemars::schema_for!(DesiredFile)).expect("schema serialises")
}

pub fn json() -> String {
    serde_json::to_string_pretty(&value()).expect("schema serialises")
}

/// The file reference as Markdown: every table, key, type, default and description.
pub fn markdown() -> String {
    let schema = value();
    let defs = schema["$defs"].as_object().cloned().unwrap_or_default();
    let mut out = String::from(
        "# File reference\n\n\
         Generated from the JSON Schema (`reconcile schema --markdown`); a test fails when this\n\
         file and the schema disagree. Unknown keys are errors everywhere.\n\n",
    );
    out.push_str("## Top level\n\n");
    table(&mut out, &schema);
    for (name, def) in &defs {
        out.push_str(&format!("\n## {name}\n\n"));
        if let Some(d) = def["description"].as_str() {
            out.push_str(&format!("{d}\n\n"));
        }
        if let Some(variants) = def["oneOf"].as_array() {
            out.push_str("| value | meaning |\n|---|---|\n");
            for v in variants {
                let desc = cell(v["description"].as_str().unwrap_or(""));
                let consts: Vec<&Value> = match v["enum"].as_array() {
                    Some(list) => list.iter().collect(),
                    None => vec![&v["const"]],
                };
                for c in consts {
                    out.push_str(&format!("| `{c}` | {desc} |\n"));
                }
            }
        } else if let Some(values) = def["enum"].as_array() {
            let vals: Vec<String> = values.iter().map(|v| format!("`{v}`")).collect();
            out.push_str(&format!("One of {}.\n", vals.join(", ")));
        } else {
            table(&mut out, def);
        }
    }
    out
}

fn table(out: &mut String, obj: &Value) {
    let Some(props) = obj["properties"].as_object() else {
        return;
    };
    let required: Vec<&str> = obj["required"]
        .as_array()
        .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    out.push_str("| key | type | required | default | description |\n|---|---|---|---|---|\n");
    for (key, p) in props {
        let default = match &p["default"] {
            Value::Null => String::new(),
            v => format!("`{v}`"),
        };
        out.push_str(&format!(
            "| `{key}` | {} | {} | {default} | {} |\n",
            type_of(p),
            if required.contains(&key.as_str()) {
                "yes"
            } else {
                ""
            },
            cell(p["description"].as_str().unwrap_or(""))
        ));
    }
}

fn type_of(p: &Value) -> String {
    if let Some(r) = p["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("[{name}](#{})", name.to_lowercase());
    }
    if let Some(any) = p["anyOf"].as_array() {
        let parts: Vec<String> = any
            .iter()
            .filter(|v| v["type"] != "null")
            .map(type_of)
            .collect();
        return parts.join(" or ");
    }
    match &p["type"] {
        Value::String(t) if t == "array" => format!("array of {}", type_of(&p["items"])),
        Value::String(t) if t == "object" => match &p["additionalProperties"] {
            Value::Object(_) => format!("table of name → {}", type_of(&p["additionalProperties"])),
            _ => "table".into(),
        },
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts
            .iter()
            .filter_map(|t| t.as_str())
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".into(),
    }
}

fn cell(s: &str) -> String {
    s.replace('\n', " ").replace('|', "\\|")
}
