//! The JSON Schema of the desired-state file, generated from the model types.

use crate::config::DesiredFile;

pub fn json() -> String {
    let schema = schemars::schema_for!(DesiredFile);
    serde_json::to_string_pretty(&schema).expect("schema serialises")
}
