//! `reconcile watch` running in the background: drift repair, renamed-in edits,
//! invalid edits, signals, idle CPU, and the lock only held while applying.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Generous bounds: these only decide when a test gives up, they assert no speed.
const PATIENCE: Duration = Duration::from_secs(30);

struct Watch {
    child: Child,
    events: mpsc::Receiver<serde_json::Value>,
    seen: Vec<serde_json::Value>,
}

impl Watch {
    fn start(farm: &Farm) -> Watch {
        Self::start_with(farm, &[], &[])
    }

    /// With more arguments and environment.
    fn start_with(farm: &Farm, args: &[&str], env: &[(&str, &str)]) -> Watch {
        let mut all = vec!["watch", "--json", "--interval", "1h"];
        all.extend_from_slice(args);
        let mut child = farm
            .cmd(&all)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let v: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not a JSON line: {line}: {e}"));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let mut w = Watch {
            child,
            events,
            seen: Vec::new(),
        };
        // `started` comes once the first converge is done and every managed tree is watched
        w.wait_for("started", |_| true);
        w
    }

    /// The front door's address (`--listen`): said before the first converge.
    fn url(&self, path: &str) -> String {
        let listening = self
            .seen
            .iter()
            .find(|e| e["event"] == "listening")
            .unwrap_or_else(|| panic!("no `listening` event: {:#?}", self.seen));
        format!(
            "{}{}",
            listening["url"].as_str().unwrap().trim_end_matches('/'),
            path
        )
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Wait for an event named `name` matching `pred`; panics with the log after PATIENCE.
    fn wait_for(
        &mut self,
        name: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + PATIENCE;
        while let Ok(v) = self
            .events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(v.clone());
            if v["event"] == name && pred(&v) {
                return v;
            }
        }
        panic!("no `{name}` event; events so far: {:#?}", self.seen);
    }

    /// An event seen already (the first converge's come before `started`), or the next one.
    fn seen_or_wait(&mut self, name: &str) -> serde_json::Value {
        match self.seen.iter().find(|e| e["event"] == name) {
            Some(e) => e.clone(),
            None => self.wait_for(name, |_| true),
        }
    }

    fn stop(mut self) -> std::process::ExitStatus {
        kill(self.pid(), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "watch did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn plugin(farm: &Farm, version: &str) {
    farm.write(
        &format!("src/{version}/tool"),
        format!("#!/bin/sh\necho {version}\n"),
    );
    farm.desired(&format!("version = 1\n[plugin.tool]\nversion = \"{version}\"\nsource = {{ dir = \"src/{version}\" }}\n"));
}

/// What the installed plugin's executable says.
fn tool(farm: &Farm) -> String {
    fs::read_to_string(farm.path("plugins/tool/tool")).unwrap()
}

/// Write the desired file the way editors save: a temporary file renamed over it.
fn save_by_rename(farm: &Farm, text: &str) {
    let tmp = farm.path(".reconcile.toml.swp");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, farm.path("reconcile.toml")).unwrap();
}

#[test]
fn a_deleted_managed_file_is_repaired() {
    let farm = Farm::new();
    plugin(&farm, "1");
    let mut w = Watch::start(&farm);
    assert!(
        farm.path("plugins/tool/tool").exists(),
        "started after the first converge"
    );
    let bin = farm.path("plugins/tool/tool");
    fs::remove_file(&bin).unwrap();
    let drift = w.wait_for("drift", |_| true);
    assert_eq!(drift["addresses"][0], "plugin.tool");
    w.wait_for("applied", |_| true);
    assert_eq!(fs::read_to_string(&bin).unwrap(), "#!/bin/sh\necho 1\n");
    // a whole deleted plugin directory too
    fs::remove_dir_all(farm.path("plugins/tool")).unwrap();
    w.wait_for("applied", |_| true);
    assert!(bin.exists());
    assert!(w.stop().success());
}

#[test]
fn a_renamed_in_edit_is_applied() {
    let farm = Farm::new();
    plugin(&farm, "1");
    let mut w = Watch::start(&farm);
    farm.write("src/2/tool", "#!/bin/sh\necho 2\n");
    save_by_rename(
        &farm,
        "version = 1\n[plugin.tool]\nversion = \"2\"\nsource = { dir = \"src/2\" }\n",
    );
    w.wait_for("changed", |_| true);
    w.wait_for("applied", |_| true);
    assert_eq!(tool(&farm), "#!/bin/sh\necho 2\n");
    assert!(w.stop().success());
}

#[test]
fn an_invalid_edit_keeps_the_old_state_and_drift_is_still_repaired() {
    let farm = Farm::new();
    plugin(&farm, "1");
    let mut w = Watch::start(&farm);
    save_by_rename(
        &farm,
        "version = 1\n[plugin.tool]\nversion = \"2\"\nsource = { dir = \"src/2\" }\ncolour = 1\n",
    );
    let invalid = w.wait_for("invalid-config", |_| true);
    let diag = &invalid["diagnostics"][0];
    assert_eq!(diag["line"], 5);
    assert!(
        diag["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `colour`"),
        "{invalid}"
    );
    assert_eq!(tool(&farm), "#!/bin/sh\necho 1\n");
    // the last good file is still in force
    fs::remove_file(farm.path("plugins/tool/tool")).unwrap();
    w.wait_for("applied", |_| true);
    assert_eq!(tool(&farm), "#!/bin/sh\necho 1\n");
    // and the next valid save is picked up
    farm.write("src/3/tool", "#!/bin/sh\necho 3\n");
    save_by_rename(
        &farm,
        "version = 1\n[plugin.tool]\nversion = \"3\"\nsource = { dir = \"src/3\" }\n",
    );
    w.wait_for("applied", |_| true);
    assert_eq!(tool(&farm), "#!/bin/sh\necho 3\n");
    assert!(w.stop().success());
}

#[test]
fn sighup_reloads() {
    let farm = Farm::new();
    // the file is a symlink to a directory watch does not look at, so only SIGHUP tells it
    fs::create_dir_all(farm.path("conf")).unwrap();
    farm.write("src/1/tool", "#!/bin/sh\necho 1\n");
    farm.write("src/2/tool", "#!/bin/sh\necho 2\n");
    farm.write(
        "conf/real.toml",
        "version = 1\n[plugin.tool]\nversion = \"1\"\nsource = { dir = \"src/1\" }\n",
    );
    std::os::unix::fs::symlink("conf/real.toml", farm.path("reconcile.toml")).unwrap();
    let mut w = Watch::start(&farm);
    fs::write(
        farm.path("conf/real.toml"),
        "version = 1\n[plugin.tool]\nversion = \"2\"\nsource = { dir = \"src/2\" }\n",
    )
    .unwrap();
    kill(w.pid(), Signal::SIGHUP).unwrap();
    w.wait_for("changed", |_| true);
    w.wait_for("applied", |_| true);
    assert_eq!(tool(&farm), "#!/bin/sh\necho 2\n");
    assert!(w.stop().success());
}

#[test]
fn sigterm_during_an_apply_leaves_every_plugin_old_or_new() {
    let farm = Farm::new();
    let big = |tag: u8| -> Vec<u8> {
        let mut v = vec![tag; 24 << 20];
        v[..4].copy_from_slice(b"\x7fELF");
        v
    };
    let mut toml = String::from("version = 1\n");
    for name in ["a", "b", "c", "d"] {
        for (v, tag) in [("1", 1u8), ("2", 2u8)] {
            farm.write(
                &format!("src/{name}{v}.tar"),
                tar_bytes(&[Entry::File(name, &big(tag), 0o755)]),
            );
        }
        toml.push_str(&format!(
            "[plugin.{name}]\nversion = \"1\"\nsource = {{ path = \"src/{name}1.tar\" }}\n"
        ));
    }
    farm.desired(&toml);
    let mut w = Watch::start(&farm);
    let (old, new) = (sha(&big(1)), sha(&big(2)));
    save_by_rename(
        &farm,
        &toml
            .replace("version = \"1\"", "version = \"2\"")
            .replace("1.tar", "2.tar"),
    );
    w.wait_for("planned", |v| v["trigger"] == "config");
    let status = w.stop();
    assert!(status.success(), "{status:?}");
    let mut states = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let got = sha_file(&farm.path(&format!("plugins/{name}/{name}")));
        assert!(
            got == old || got == new,
            "plugin {name} is neither old nor new"
        );
        states.push(if got == new { "new" } else { "old" });
    }
    assert!(
        farm.leftovers("plugins").is_empty(),
        "{:?}",
        farm.leftovers("plugins")
    );
    eprintln!("after SIGTERM: {states:?}");
    // whatever was left old is finished by the next apply
    farm.run(&["apply"]).expect(0);
    farm.run(&["plan"]).expect(0);
}

fn cpu_ticks(pid: Pid) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15; after the `)` they are at 11 and 12
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn idle_watch_uses_almost_no_cpu_and_holds_no_lock() {
    let farm = Farm::new();
    plugin(&farm, "1");
    let w = Watch::start(&farm);
    let before = cpu_ticks(w.pid());
    std::thread::sleep(Duration::from_secs(5));
    let used = cpu_ticks(w.pid()) - before;
    // clock ticks are 1/100 s: a busy loop would burn ~500 over 5 s
    assert!(
        used <= 10,
        "watch used {used} ticks of CPU in 5 idle seconds"
    );
    // the lock is only held while applying: other commands work meanwhile
    farm.run(&["plan"]).expect(0);
    farm.run(&["status"]).expect(0);
    farm.run(&["apply", "--lock-timeout", "10s"]).expect(0);
    assert!(w.stop().success());
}

#[test]
fn watch_refuses_an_invalid_file_at_start() {
    let farm = Farm::new();
    farm.desired("version = 1\nbogus = true\n");
    let r = farm.run(&["watch"]);
    r.expect(1);
    assert!(r.stderr.contains("unknown key `bogus`"), "{}", r.stderr);
    assert!(!Path::new(&farm.path(".reconcile")).exists());
}

#[test]
fn watch_runs_the_test_plan_after_a_converge_when_asked() {
    let farm = Farm::new();
    farm.write("src/1/tool", "#!/bin/sh\necho 1\n");
    let conf = |v: &str| {
        format!(
            "version = 1\n[watch]\ntest = true\n[plugin.tool]\nversion = \"{v}\"\nsource = {{ dir = \"src/{v}\" }}\n\
             [suite.s.test.tool-runs]\nrun = [\"/bin/sh\", \"-c\", \"sh plugins/tool/tool\"]\nexpect = {{ stdout = [\"{v}\"] }}\n[run]\nsuites = [\"s\"]\n"
        )
    };
    farm.desired(&conf("1"));
    let mut w = Watch::start(&farm);
    farm.write("src/2/tool", "#!/bin/sh\necho 2\n");
    save_by_rename(&farm, &conf("2"));
    let tested = w.wait_for("tested", |_| true);
    assert_eq!(tested["pass"], 1, "{tested}");
    assert_eq!(tested["fail"], 0, "{tested}");
    assert!(w.stop().success());
}

// ---------- the front door (`--listen`) and systemd ----------

struct Got {
    status: u16,
    content_type: String,
    body: String,
}

fn http(method: &str, url: &str, accept: Option<&str>) -> Got {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(PATIENCE))
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = match method {
        "GET" => {
            let mut req = agent.get(url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            req.call()
        }
        _ => agent.post(url).send_empty(),
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    Got {
        status: r.status().as_u16(),
        content_type: r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        body: r.body_mut().read_to_string().unwrap(),
    }
}

fn get(url: &str) -> Got {
    http("GET", url, None)
}

/// Poll `f` until it gives something (the loop records a converge just
/// after it logs it); panics with the last miss after PATIENCE.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match f() {
            Ok(v) => return v,
            Err(miss) if Instant::now() > deadline => panic!("{what}: {miss}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The value of one sample in a text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A plugin and, after each converge that changed something, one test that
/// fails with a kernel panic on the second line of its stdout.
fn watched_farm() -> Farm {
    let farm = Farm::new();
    farm.write("src/1/tool", "#!/bin/sh\necho 1\n");
    farm.desired(&watched_conf(""));
    farm
}

fn watched_conf(extra: &str) -> String {
    format!(
        "version = 1\n[watch]\ntest = true\n[plugin.tool]\nversion = \"1\"\nsource = {{ dir = \"src/1\" }}\n\
         {extra}\
         [suite.s.test.panics]\nrun = [\"/bin/sh\", \"-c\", \"echo booting; echo 'Kernel panic - not syncing: boom'\"]\n\
         [run]\nsuites = [\"s\"]\n"
    )
}

#[test]
fn watch_listen_serves_metrics_probes_status_and_a_page() {
    let farm = watched_farm();
    let mut w = Watch::start_with(&farm, &["--listen", "127.0.0.1:0"], &[]);
    let tested = w.seen_or_wait("tested");
    assert_eq!(tested["fail"], 1, "{tested}");

    // metrics: the text format for a client that does not ask for OpenMetrics
    let m = get(&w.url("/metrics"));
    assert_eq!(m.status, 200);
    assert!(
        m.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        m.content_type
    );
    let t = &m.body;
    assert_eq!(
        sample(t, r#"reconcile_resources{kind="plugin",state="ready"}"#),
        Some(1.0),
        "{t}"
    );
    // the first converge, and one more once the new plugin tree is watched
    let converges = sample(t, r#"reconcile_converge_total{result="success"}"#).unwrap();
    assert!(converges >= 1.0, "{t}");
    assert_eq!(
        sample(t, r#"reconcile_converge_total{result="failure"}"#),
        Some(0.0),
        "{t}"
    );
    assert_eq!(
        sample(t, r#"reconcile_tests_total{result="fail"}"#),
        Some(1.0),
        "{t}"
    );
    // every converge counted is timed (a scrape may land between the two updates)
    eventually("each converge counted and timed", || {
        let t = get(&w.url("/metrics")).body;
        let total = sample(&t, r#"reconcile_converge_total{result="success"}"#);
        let timed = sample(
            &t,
            r#"reconcile_converge_duration_seconds_count{result="success"}"#,
        );
        match (total, timed) {
            (Some(a), Some(b)) if a == b && a >= converges => Ok(()),
            _ => Err(t),
        }
    });
    assert!(
        sample(t, "reconcile_last_success_timestamp_seconds").unwrap() > 1.7e9,
        "{t}"
    );
    assert!(t.contains("reconcile_build_info{version=\""), "{t}");
    // no per-resource labels
    assert!(!t.contains("plugin.tool"), "{t}");
    // promtool, Prometheus' own checker, accepts the exposition
    if Path::new("/usr/bin/promtool").exists() {
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(t.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        skip("promtool (Debian's prometheus package) to check the exposition");
    }
    // OpenMetrics for a scraper that asks for it
    let om = http(
        "GET",
        &w.url("/metrics"),
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
    );
    assert!(
        om.content_type.starts_with("application/openmetrics-text"),
        "{}",
        om.content_type
    );
    assert!(
        om.body.contains("# TYPE reconcile_converge counter\n"),
        "{}",
        om.body
    );
    assert!(om.body.ends_with("# EOF\n"), "{}", om.body);

    // probes and status
    let h = get(&w.url("/healthz"));
    assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
    let r = get(&w.url("/readyz"));
    assert_eq!((r.status, r.body.as_str()), (200, "ok\n"));
    let st = get(&w.url("/status"));
    assert_eq!(st.status, 200);
    let doc: serde_json::Value = serde_json::from_str(&st.body).unwrap();
    assert_eq!(doc["resources"][0]["address"], "plugin.tool", "{doc}");
    assert_eq!(doc["resources"][0]["installed_version"], "1", "{doc}");
    assert_eq!(doc["last_tests"]["summary"]["fail"], 1, "{doc}");

    // the page: the failure links to the line of its log the check hit
    let page = get(&w.url("/"));
    assert_eq!(page.status, 200);
    assert!(
        page.content_type.starts_with("text/html"),
        "{}",
        page.content_type
    );
    let link = page
        .body
        .split("href=\"")
        .skip(1)
        .map(|s| &s[..s.find('"').unwrap()])
        .find(|h| h.starts_with("/runs/"))
        .unwrap_or_else(|| panic!("no link to a run's log: {}", page.body))
        .to_string();
    // the host executor's console is the command's output
    assert!(link.ends_with("/s.panics/console.txt#L2"), "{link}");
    let log = get(&w.url(link.split('#').next().unwrap()));
    assert_eq!(log.status, 200, "{}", log.body);
    assert!(
        log.body.contains("id=\"L2\"")
            && log.body.contains("Kernel panic - not syncing: boom</pre>"),
        "{}",
        log.body
    );

    // what is not served
    assert_eq!(http("POST", &w.url("/"), None).status, 405);
    assert_eq!(get(&w.url("/nothing")).status, 404);
    let out = get(&w.url("/runs/..%2F..%2Freconcile.toml"));
    assert_ne!(out.status, 200, "{}", out.body);
    assert!(!out.body.contains("[plugin.tool]"), "{}", out.body);

    // drift repaired: counted by kind
    fs::remove_file(farm.path("plugins/tool/tool")).unwrap();
    w.wait_for("applied", |_| true);
    eventually("a drift repair counted", || {
        let t = get(&w.url("/metrics")).body;
        match sample(&t, r#"reconcile_drift_repairs_total{kind="plugin"}"#) {
            Some(1.0) => Ok(()),
            _ => Err(t),
        }
    });

    // a converge that fails: not ready, and why
    fs::create_dir_all(farm.path("plugins/other")).unwrap();
    fs::write(farm.path("plugins/other/by-hand"), "x").unwrap();
    save_by_rename(
        &farm,
        &watched_conf("[plugin.other]\nversion = \"1\"\nsource = { dir = \"src/1\" }\n"),
    );
    w.wait_for("error", |_| true);
    let r = eventually("not ready", || match get(&w.url("/readyz")) {
        r if r.status == 503 => Ok(r),
        r => Err(r.body),
    });
    assert!(r.body.contains("the last converge (config"), "{}", r.body);
    assert!(r.body.contains("plugins/other"), "{}", r.body);
    // alive all the same
    assert_eq!(get(&w.url("/healthz")).status, 200);
    let t = get(&w.url("/metrics")).body;
    assert_eq!(
        sample(&t, r#"reconcile_converge_total{result="failure"}"#),
        Some(1.0),
        "{t}"
    );
    assert!(w.stop().success());
}

/// A notify socket as systemd's: every datagram watch sends, as text.
fn notify_socket(dir: &Path) -> (std::path::PathBuf, mpsc::Receiver<String>) {
    let path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            if tx
                .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    (path, rx)
}

/// The next datagram that `pred` accepts (panics after PATIENCE with what came).
fn next_message(
    rx: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    pred: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + PATIENCE;
    while let Ok(m) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        seen.push(m.clone());
        if pred(&m) {
            return m;
        }
    }
    panic!("no such notification; so far: {seen:#?}");
}

#[test]
fn systemd_hears_ready_and_status_and_the_watchdog_goes_quiet_while_the_loop_stalls() {
    let farm = Farm::new();
    plugin(&farm, "1");
    let (socket, rx) = notify_socket(farm.path("").as_path());
    let socket = socket.to_str().unwrap().to_string();
    // WatchdogSec=400ms: a ping every 200 ms while healthy
    let w = Watch::start_with(
        &farm,
        &[
            "--listen",
            "127.0.0.1:0",
            "--stall",
            "1s",
            "--lock-timeout",
            "4s",
        ],
        &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "400000")],
    );
    let mut seen = Vec::new();
    let ready = next_message(&rx, &mut seen, |m| m.contains("READY=1"));
    assert!(ready.contains("STATUS=converged at "), "{ready}");
    assert!(
        ready.contains("1 resources, 0 drifted, 0 failed"),
        "{ready}"
    );
    next_message(&rx, &mut seen, |m| m == "WATCHDOG=1\n");
    next_message(&rx, &mut seen, |m| m == "WATCHDOG=1\n");

    // another apply holds the lock: the next converge waits for it, reporting nothing
    struct Group(Child);
    impl Drop for Group {
        fn drop(&mut self) {
            // flock and its sleep, the whole group
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.0.id())])
                .status();
            let _ = self.0.wait();
        }
    }
    let holder = Group(
        Command::new("flock")
            .arg("-o")
            .arg(farm.path(".reconcile/lock"))
            .args(["sleep", "60"])
            .process_group(0)
            .spawn()
            .expect("flock (util-linux)"),
    );
    std::thread::sleep(Duration::from_millis(300));
    kill(w.pid(), Signal::SIGHUP).unwrap();
    let unhealthy = next_message(&rx, &mut seen, |m| m.contains("unhealthy"));
    assert!(
        unhealthy.contains("STATUS=unhealthy: a converge has reported nothing for"),
        "{unhealthy}"
    );
    let h = get(&w.url("/healthz"));
    // (the converge may have given up on the lock by now: then it is alive again)
    if h.status == 503 {
        assert!(h.body.contains("--stall"), "{}", h.body);
    }
    // no ping while it is stalled (about 3 s: 15 pings if it went on; one
    // may slip in between the converge giving up and its STATUS= line)
    let mark = seen.len();
    let failed = next_message(&rx, &mut seen, |m| m.contains("STATUS=converge failed at "));
    assert!(failed.contains("0 failed"), "{failed}");
    let pings = seen[mark..].iter().filter(|m| *m == "WATCHDOG=1\n").count();
    assert!(pings <= 1, "{pings} pings while stalled: {seen:#?}");
    // alive again: the pings resume
    next_message(&rx, &mut seen, |m| m == "WATCHDOG=1\n");
    let r = get(&w.url("/readyz"));
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(
        r.body.contains("another reconcile is applying"),
        "{}",
        r.body
    );
    drop(holder);

    // SIGTERM: systemd hears that it is stopping
    assert!(w.stop().success());
    next_message(&rx, &mut seen, |m| m.contains("STOPPING=1"));
}

#[test]
fn prometheus_scrapes_watch_and_chromium_shows_its_resources() {
    let have_prometheus = Path::new("/usr/bin/prometheus").exists();
    let have_chromium = Path::new("/usr/bin/chromium").exists();
    if !have_prometheus {
        skip("prometheus (Debian's prometheus package) to scrape watch --listen");
    }
    if !have_chromium {
        skip("chromium (Debian's chromium package) to load watch's page");
    }
    if !have_prometheus && !have_chromium {
        return;
    }
    let farm = watched_farm();
    let w = Watch::start_with(&farm, &["--listen", "127.0.0.1:0"], &[]);
    let target = w.url("").trim_start_matches("http://").to_string();

    if have_prometheus {
        let port = free_port();
        farm.write(
            "prometheus.yml",
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: reconcile\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        );
        struct Kill(Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let _prometheus = Kill(
            Command::new("prometheus")
                .arg(format!(
                    "--config.file={}",
                    farm.path("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    farm.path("tsdb").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        );
        let query = |q: &str| -> Result<Vec<serde_json::Value>, String> {
            let url = format!("http://127.0.0.1:{port}/api/v1/query?query={q}");
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
                .into();
            let body = agent
                .get(&url)
                .call()
                .map_err(|e| e.to_string())?
                .body_mut()
                .read_to_string()
                .map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            match v["data"]["result"].as_array() {
                Some(r) if !r.is_empty() => Ok(r.clone()),
                _ => Err(body),
            }
        };
        let up = eventually("Prometheus scraped watch", || query("up"));
        assert_eq!(up[0]["metric"]["job"], "reconcile", "{up:?}");
        assert_eq!(up[0]["value"][1], "1", "the scrape failed: {up:?}");
        let resources = eventually("reconcile_resources in Prometheus", || {
            query("reconcile_resources")
        });
        assert_eq!(resources.len(), 1, "{resources:?}");
        assert_eq!(resources[0]["metric"]["kind"], "plugin", "{resources:?}");
        assert_eq!(resources[0]["metric"]["state"], "ready", "{resources:?}");
        assert_eq!(resources[0]["value"][1], "1", "{resources:?}");
        let tests = eventually("reconcile_tests_total in Prometheus", || {
            query("reconcile_tests_total%7Bresult%3D%22fail%22%7D")
        });
        assert_eq!(tests[0]["value"][1], "1", "{tests:?}");
    }

    if have_chromium {
        let shot = farm.path("page.png");
        let chromium = |extra: &[&str]| {
            Command::new("chromium")
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--window-size=1000,700",
                ])
                .arg(format!(
                    "--user-data-dir={}",
                    farm.path("chromium").display()
                ))
                .args(extra)
                .arg(w.url("/"))
                .output()
                .unwrap()
        };
        let out = chromium(&["--dump-dom"]);
        let dom = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{dom}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let table = &dom[dom
            .find("<table id=\"resources\">")
            .unwrap_or_else(|| panic!("no resources table: {dom}"))..];
        let table = &table[..table.find("</table>").unwrap()];
        assert!(
            table.contains(
                "<td><code>plugin.tool</code></td><td>plugin</td><td class=\"ready\">ready</td>"
            ),
            "{table}"
        );
        assert!(dom.contains("<p id=\"by-state\">1 ready</p>"), "{dom}");
        assert!(dom.contains("1 failed"), "the last test run: {dom}");
        let out = chromium(&[&format!("--screenshot={}", shot.display())]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let png = fs::read(&shot).unwrap();
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000,
            "not a screenshot"
        );
    }
    assert!(w.stop().success());
}

#[test]
fn drift_warn_is_logged_counted_and_left_as_it_is() {
    let farm = Farm::new();
    farm.write("src/1/tool", "#!/bin/sh\necho 1\n");
    farm.desired("version = 1\n[plugin.tool]\nversion = \"1\"\nsource = { dir = \"src/1\" }\ndrift = \"warn\"\n");
    let mut w = Watch::start_with(&farm, &["--listen", "127.0.0.1:0"], &[]);
    fs::write(farm.path("plugins/tool/tool"), "#!/bin/sh\necho by hand\n").unwrap();
    let kept = w.wait_for("drift-kept", |_| true);
    assert_eq!(kept["addresses"][0], "plugin.tool", "{kept}");
    let t = eventually("the drifted resource counted", || {
        let t = get(&w.url("/metrics")).body;
        match sample(&t, r#"reconcile_resources{kind="plugin",state="drifted"}"#) {
            Some(1.0) => Ok(t),
            _ => Err(t),
        }
    });
    assert_eq!(
        sample(&t, r#"reconcile_resources{kind="plugin",state="ready"}"#),
        None,
        "{t}"
    );
    assert_eq!(
        sample(&t, r#"reconcile_drift_repairs_total{kind="plugin"}"#),
        Some(0.0),
        "{t}"
    );
    // drift left on purpose is not a failure
    assert_eq!(get(&w.url("/readyz")).status, 200);
    let page = get(&w.url("/")).body;
    assert!(
        page.contains("<td class=\"drifted\">drifted</td><td>file tool modified"),
        "{page}"
    );
    assert_eq!(tool(&farm), "#!/bin/sh\necho by hand\n");
    let at = w
        .seen
        .iter()
        .position(|e| e["event"] == "drift-kept")
        .unwrap();
    assert!(
        !w.seen[at..].iter().any(|e| e["event"] == "applied"),
        "{:#?}",
        w.seen
    );
    assert!(w.stop().success());
    assert_eq!(tool(&farm), "#!/bin/sh\necho by hand\n");
}

#[test]
#[ignore = "needs busybox-static for a test root filesystem"]
fn watch_logs_a_failed_gate_and_counts_the_candidate() {
    let farm = Farm::new();
    for (name, marker) in [("1", "r1"), ("2", "bad")] {
        if rootfs_tar(&farm, &format!("rootfs-{name}.tar.gz"), marker).is_none() {
            return;
        }
    }
    let conf = |rev: u32| {
        format!(
            "version = 1\n[volume.default]\npath = \"machines\"\nbackend = \"dir\"\n\
             [machine.deb]\nrevision = {rev}\nsource = {{ path = \"rootfs-{rev}.tar.gz\" }}\npromote = {{ after = [\"smoke\"] }}\n\
             [suite.smoke]\nmachines = [\"deb\"]\nexecutor = \"host\"\n\
             [suite.smoke.test.os]\nrun = [\"/bin/sh\", \"-c\", \"grep -q 'VERSION_ID=\\\"r1\\\"' etc/os-release\"]\n"
        )
    };
    farm.desired(&conf(1));
    let mut w = Watch::start_with(&farm, &["--listen", "127.0.0.1:0"], &[]);
    let promoted = w.seen_or_wait("gate");
    assert_eq!(promoted["result"], "promoted", "{promoted}");
    save_by_rename(&farm, &conf(2));
    let failed = w.wait_for("gate", |e| e["result"] == "failed");
    assert_eq!(failed["address"], "machine.deb", "{failed}");
    assert_eq!(failed["failed"][0], "smoke.os", "{failed}");
    let t = eventually("the failed candidate counted", || {
        let t = get(&w.url("/metrics")).body;
        match sample(&t, r#"reconcile_candidates{state="failed"}"#) {
            Some(1.0) => Ok(t),
            _ => Err(t),
        }
    });
    assert_eq!(
        sample(&t, r#"reconcile_candidates{state="not-tested"}"#),
        Some(0.0),
        "{t}"
    );
    assert_eq!(
        fs::read_link(farm.path("machines/deb/deb")).unwrap(),
        Path::new("deb-1")
    );
    assert!(w.stop().success());
}
