//! Property tests of loading: a full desired-state file mangled at random
//! (bytes inserted, lines dropped or repeated, values swapped for others of
//! the wrong type) is always either a model or a list of diagnostics that
//! point inside the file — never a panic, never a hang.

use proptest::prelude::*;

const GOOD: &str = r#"version = 1
[settings]
extract_limit = "64 MiB"
[volume.default]
path = "machines"
backend = "dir"
[machine.kit]
revision = 2
kind = "disk"
source = { path = "kit.img", sha256 = "0000000000000000000000000000000000000000000000000000000000000000" }
vm = { memory = "512M", cpus = 1, accel = "tcg" }
console = { ready = 'kit: up', prompt = 'kit# ', boot_timeout = "120s" }
[machine.kit.toolchain.build2]
bootstrap = ["sh", "-c", "true"]
timeout = "30m"
[image.net]
root = "tftp"
arch = "amd64"
release = "kit"
purpose = "test"
files.linux = { path = "linux" }
ipxe = { kernel = "linux", cmdline = "console=ttyS0" }
[plugin.kolet]
version = "1.2.0"
source = { url = "https://example.org/k.tgz", sha256 = "1111111111111111111111111111111111111111111111111111111111111111" }
[check.c]
regex = 'oops'
count = 2
[suite.vm]
machines = ["kit"]
executor = "qemu"
parallel = 2
[suite.vm.test.t]
run = ["true"]
timeout = "60s"
retries = { infra = 1 }
expect = { stdout = ["/ok/"] }
[[skip]]
pattern = "vm.*"
reason = "flaky"
[run]
suites = ["vm"]
"#;

#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, String),
    DropLine(usize),
    RepeatLine(usize),
    Replace(usize, String),
}

fn junk() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("[".to_string()),
        Just("]".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("=".to_string()),
        Just("\n".to_string()),
        Just("{".to_string()),
        Just(" = 0".to_string()),
        Just("\u{1b}]0;x\u{7}".to_string()),
        Just("é".to_string()),
        Just("-1".to_string()),
        Just("1e400".to_string()),
        Just("\"5 parsecs\"".to_string()),
        Just("[[skip]]\n".to_string()),
        Just("include = [\"/**/*\"]\n".to_string()),
        "[a-z_.]{1,8}",
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (0..2000usize, junk()).prop_map(|(at, s)| Edit::Insert(at, s)),
        1 => (0..60usize).prop_map(Edit::DropLine),
        1 => (0..60usize).prop_map(Edit::RepeatLine),
        2 => (0..60usize, junk()).prop_map(|(l, s)| Edit::Replace(l, s)),
    ]
}

fn apply(edits: &[Edit]) -> String {
    let mut text = GOOD.to_string();
    for e in edits {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        match e {
            Edit::Insert(at, s) => {
                let mut at = (*at).min(text.len());
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                text.insert_str(at, s);
                continue;
            }
            Edit::DropLine(l) if *l < lines.len() => {
                lines.remove(*l);
            }
            Edit::RepeatLine(l) if *l < lines.len() => {
                let line = lines[*l].clone();
                lines.insert(*l, line);
            }
            Edit::Replace(l, s) if *l < lines.len() => {
                if let Some((k, _)) = lines[*l].split_once('=') {
                    lines[*l] = format!("{k}= {s}");
                }
            }
            _ => {}
        }
        text = lines.join("\n") + "\n";
    }
    text
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn mangled_files_give_a_model_or_located_diagnostics(edits in prop::collection::vec(edit(), 0..6)) {
        let d = tempfile::tempdir().unwrap();
        let text = apply(&edits);
        let path = d.path().join("reconcile.toml");
        std::fs::write(&path, &text).unwrap();
        let lines = text.lines().count().max(1);
        match super::load(&path) {
            Ok(_) => {}
            Err(crate::error::Error::Invalid(diags)) => {
                prop_assert!(!diags.is_empty());
                for diag in &diags {
                    if diag.file == "reconcile.toml" || diag.file.ends_with("reconcile.toml") {
                        prop_assert!(diag.line >= 1 && diag.line <= lines + 1, "{} of {lines}: {}", diag.line, diag.message);
                        prop_assert!(diag.column >= 1);
                    }
                }
            }
            Err(e) => prop_assert!(false, "not a diagnostic: {e}"),
        }
        // loading writes nothing
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        prop_assert_eq!(names.len(), 1);
    }
}
