//! The cloud tests' servers, all on 127.0.0.1: a real moto server (the
//! EC2-compatible endpoint, from the venv `scripts/test` makes under
//! `target/`), a proxy in front of it that counts every request by action and
//! can answer with throttling errors, and boto3 (from the same venv) to look
//! at the cloud independently of reconcile's own client.
//!
//! moto launches no VM: its console output is a canned Xen boot log. For the
//! tests that need a test's own output on the console, the proxy can stand in
//! for the guest (`guest`): it runs each instance's user data with /bin/sh on
//! this host as cloud-init would, and answers `GetConsoleOutput` for that
//! instance with what the script wrote; `TerminateInstances` kills it. Every
//! call still goes to moto, which keeps the instances' real state.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Credentials moto accepts (it checks no signatures).
pub const CLOUD_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "AKIDRECONCILETEST"),
    ("AWS_SECRET_ACCESS_KEY", "not-a-secret"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

fn venv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin")
}

/// A free port on 127.0.0.1 (bound and let go: another process may take it first, rarely).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A moto server of its own, stopped when dropped.
pub struct Moto {
    pub url: String,
    child: Child,
    pub log: PathBuf,
}

impl Moto {
    /// Start one, or None (with a loud skip) when the venv has no moto.
    pub fn start(dir: &Path) -> Option<Moto> {
        let bin = venv().join("moto_server");
        if !bin.exists() {
            super::skip("needs moto in target/venv (scripts/test installs it)");
            return None;
        }
        let port = free_port();
        let log = dir.join("moto.log");
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("moto_server starts");
        let url = format!("http://127.0.0.1:{port}");
        let m = Moto { url, child, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if ureq::get(format!("{}/moto-api/", m.url)).call().is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "moto did not start: see {}",
                m.log.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(m)
    }

    /// Forget everything (all regions, all services).
    pub fn reset(&self) {
        ureq::post(format!("{}/moto-api/reset", self.url))
            .send(&[][..])
            .unwrap();
    }

    /// Run a Python snippet with boto3 clients `ec2` and `ebs` for this server;
    /// what it prints to stdout, parsed as JSON.
    pub fn boto(&self, script: &str) -> serde_json::Value {
        let prelude = format!(
            "import boto3, json, sys, base64, hashlib\n\
             ec2 = boto3.client('ec2', region_name='us-east-1', endpoint_url='{url}')\n\
             ebs = boto3.client('ebs', region_name='us-east-1', endpoint_url='{url}')\n\
             def tags(x): return {{t['Key']: t['Value'] for t in x.get('Tags', [])}}\n\
             def ours(): return [dict(id=i['ImageId'], name=i['Name'], tags=tags(i)) for i in ec2.describe_images(Owners=['self'], Filters=[dict(Name='tag-key', Values=['reconcile:machine'])])['Images']]\n\
             def our_snapshots(): return [dict(id=s['SnapshotId'], state=s['State'], tags=tags(s)) for s in ec2.describe_snapshots(OwnerIds=['self'], Filters=[dict(Name='tag-key', Values=['reconcile:machine'])])['Snapshots']]\n",
            url = self.url
        );
        let out = Command::new(venv().join("python3"))
            .args(["-c", &format!("{prelude}{script}")])
            .envs(CLOUD_ENV.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "boto3 script failed:\n{script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "boto3 script printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the proxy names a request: the EC2 `Action`, or the EBS operation.
fn action_of(method: &str, path: &str, body: &[u8]) -> String {
    if path.starts_with("/snapshots") {
        return match (
            method,
            path.split('/')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .as_slice(),
        ) {
            ("POST", ["snapshots"]) => "StartSnapshot".into(),
            ("POST", ["snapshots", "completion", _]) => "CompleteSnapshot".into(),
            ("PUT", ["snapshots", _, "blocks", _]) => "PutSnapshotBlock".into(),
            ("GET", ["snapshots", _, "blocks", ..]) if path.contains("blockToken") => {
                "GetSnapshotBlock".into()
            }
            ("GET", ["snapshots", _, "blocks", ..]) => "ListSnapshotBlocks".into(),
            _ => format!("{method} {path}"),
        };
    }
    let body = String::from_utf8_lossy(body);
    body.split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or("?")
        .to_string()
}

/// A proxy on 127.0.0.1 in front of moto: counts requests by action, and
/// answers the next N requests (or every one) with a throttling error.
pub struct Proxy {
    pub url: String,
    /// Run each launched instance's user data on this host (see the module doc).
    pub guest: Arc<std::sync::atomic::AtomicBool>,
    /// Scripts started in place of guests, by instance id.
    pub guests: Arc<Mutex<BTreeMap<String, Guest>>>,
    pub counts: Arc<Mutex<BTreeMap<String, usize>>>,
    /// Requests still to answer with 503 RequestLimitExceeded (usize::MAX: all).
    pub throttle: Arc<AtomicUsize>,
    pub throttled: Arc<AtomicUsize>,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn start(upstream: &str) -> Proxy {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let counts: Arc<Mutex<BTreeMap<String, usize>>> = Default::default();
        let throttle = Arc::new(AtomicUsize::new(0));
        let throttled = Arc::new(AtomicUsize::new(0));
        let guest = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let guests: Arc<Mutex<BTreeMap<String, Guest>>> = Default::default();
        let (g, gs) = (guest.clone(), guests.clone());
        let (s, c, t, td, up) = (
            server.clone(),
            counts.clone(),
            throttle.clone(),
            throttled.clone(),
            upstream.to_string(),
        );
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let thread = std::thread::spawn(move || {
            for mut req in s.incoming_requests() {
                let mut body = Vec::new();
                let _ = req.as_reader().read_to_end(&mut body);
                let method = req.method().to_string();
                let url = req.url().to_string();
                let path = url.split('?').next().unwrap_or("").to_string();
                let action = action_of(&method, &path, &body);
                *c.lock().unwrap().entry(action.clone()).or_default() += 1;
                let left = t.load(Ordering::SeqCst);
                if left > 0 {
                    if left != usize::MAX {
                        t.fetch_sub(1, Ordering::SeqCst);
                    }
                    td.fetch_add(1, Ordering::SeqCst);
                    let _ = req.respond(
                        tiny_http::Response::from_string(
                            "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>proxy-throttle</RequestID></Response>",
                        )
                        .with_status_code(503),
                    );
                    continue;
                }
                let params = form_params(&body);
                if action == "GetConsoleOutput" {
                    let id = params.get("InstanceId").cloned().unwrap_or_default();
                    if let Some(out) = gs.lock().unwrap().get(&id).map(Guest::console) {
                        use base64::Engine;
                        let xml = format!(
                            "<GetConsoleOutputResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
                             <requestId>proxy-guest</requestId><instanceId>{id}</instanceId>\
                             <timestamp>2026-01-01T00:00:00Z</timestamp><output>{}</output>\
                             </GetConsoleOutputResponse>",
                            base64::engine::general_purpose::STANDARD.encode(out)
                        );
                        let _ = req.respond(tiny_http::Response::from_string(xml));
                        continue;
                    }
                }
                if action == "TerminateInstances" {
                    for (k, id) in &params {
                        if k.starts_with("InstanceId.") {
                            if let Some(gst) = gs.lock().unwrap().get_mut(id) {
                                gst.kill();
                            }
                        }
                    }
                }
                let mut fwd = ureq::http::Request::builder()
                    .method(method.as_str())
                    .uri(format!("{up}{url}"));
                for h in req.headers() {
                    let name = h.field.as_str().as_str();
                    if name.eq_ignore_ascii_case("host")
                        || name.eq_ignore_ascii_case("content-length")
                    {
                        continue;
                    }
                    fwd = fwd.header(name, h.value.as_str());
                }
                let resp = agent.run(fwd.body(body).unwrap());
                let _ = match resp {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let headers: Vec<tiny_http::Header> = r
                            .headers()
                            .iter()
                            .filter(|(k, _)| {
                                !matches!(
                                    k.as_str(),
                                    "content-length" | "transfer-encoding" | "connection"
                                )
                            })
                            .filter_map(|(k, v)| {
                                tiny_http::Header::from_bytes(k.as_str().as_bytes(), v.as_bytes())
                                    .ok()
                            })
                            .collect();
                        let bytes = r.into_body().read_to_vec().unwrap_or_default();
                        if action == "RunInstances" && status == 200 && g.load(Ordering::SeqCst) {
                            use base64::Engine;
                            let text = String::from_utf8_lossy(&bytes);
                            let id = text
                                .split("<instanceId>")
                                .nth(1)
                                .and_then(|r| r.split('<').next())
                                .unwrap_or_default()
                                .to_string();
                            let script = params
                                .get("UserData")
                                .and_then(|u| {
                                    base64::engine::general_purpose::STANDARD.decode(u).ok()
                                })
                                .unwrap_or_default();
                            gs.lock().unwrap().insert(id, Guest::start(&script));
                        }
                        let mut out =
                            tiny_http::Response::from_data(bytes).with_status_code(status);
                        for h in headers {
                            out.add_header(h);
                        }
                        req.respond(out)
                    }
                    Err(e) => req.respond(
                        tiny_http::Response::from_string(e.to_string()).with_status_code(502),
                    ),
                };
            }
        });
        Proxy {
            url: format!("http://127.0.0.1:{port}"),
            guest,
            guests,
            counts,
            throttle,
            throttled,
            server,
            thread: Some(thread),
        }
    }

    pub fn count(&self, action: &str) -> usize {
        self.counts
            .lock()
            .unwrap()
            .get(action)
            .copied()
            .unwrap_or(0)
    }

    /// Requests that change something (anything but Describe*, Get*, List*).
    pub fn writes(&self) -> usize {
        self.counts
            .lock()
            .unwrap()
            .iter()
            .filter(|(a, _)| {
                !(a.starts_with("Describe") || a.starts_with("Get") || a.starts_with("List"))
            })
            .map(|(_, n)| n)
            .sum()
    }

    pub fn snapshot(&self) -> BTreeMap<String, usize> {
        self.counts.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The parameters of a form-encoded (EC2 Query) body.
fn form_params(body: &[u8]) -> BTreeMap<String, String> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(v) => {
                            out.push(v);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// A user-data script run on this host in place of a guest: what it writes
/// to "the console" goes to a file the proxy serves as the console output.
pub struct Guest {
    child: Child,
    console: tempfile::NamedTempFile,
    _script: tempfile::NamedTempFile,
    pub killed: bool,
}

impl Guest {
    fn start(script: &[u8]) -> Guest {
        use std::io::Write;
        use std::os::unix::process::CommandExt;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(script).unwrap();
        let console = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new("/bin/sh")
            .arg(file.path())
            .env("RECONCILE_CONSOLE", console.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        Guest {
            child,
            console,
            _script: file,
            killed: false,
        }
    }

    fn console(&self) -> Vec<u8> {
        std::fs::read(self.console.path()).unwrap_or_default()
    }

    /// Kill the script and everything it started (terminating the "guest").
    fn kill(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
        self.killed = true;
    }

    /// Is the script (or what it started) still running?
    pub fn running(&mut self) -> bool {
        !self.killed && matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}
