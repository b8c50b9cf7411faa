//! Machine revisions published to an EC2-compatible cloud: a real moto server
//! on 127.0.0.1 (started per test), reached through a proxy that counts
//! requests and injects throttling; what landed is read back with boto3.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::FileExt;

use common::*;

const BLOCK: u64 = 512 << 10;

/// A sparse disk image of `size` bytes with random data at `regions`
/// (offset, length); the indices of its non-zero 512 KiB blocks.
fn disk(farm: &Farm, rel: &str, size: u64, regions: &[(u64, usize)], seed: u8) -> BTreeSet<u64> {
    let p = farm.path(rel);
    let f = fs::File::create(&p).unwrap();
    f.set_len(size).unwrap();
    let mut blocks = BTreeSet::new();
    for (i, (off, len)) in regions.iter().enumerate() {
        let data: Vec<u8> = (0..*len)
            .map(|j| ((j * 31 + i * 7) as u8) ^ seed | 1)
            .collect();
        f.write_all_at(&data, *off).unwrap();
        for b in off / BLOCK..=(off + *len as u64 - 1) / BLOCK {
            blocks.insert(b);
        }
    }
    blocks
}

/// A dir volume, the cloud `dev` at `endpoint`, and the disk machine `kit`
/// published there (`machine`: its revision, source and other keys); `rest` follows.
fn farm_toml(endpoint: &str, machine: &str, rest: &str) -> String {
    format!(
        r#"version = 1
[volume.default]
path = "vol"
backend = "dir"

[cloud.dev]
provider = "ec2"
region = "us-east-1"
endpoint = "{endpoint}"

[machine.kit]
kind = "disk"
clouds = ["dev"]
{machine}
{rest}"#
    )
}

fn declare(farm: &Farm, endpoint: &str, revision: u32, keep: u32, source: &str) {
    farm.desired(&farm_toml(
        endpoint,
        &format!("revision = {revision}\nkeep = {keep}\nsource = {{ path = \"{source}\" }}"),
        "",
    ));
}

fn apply(farm: &Farm) -> Run {
    farm.run_env(&["apply"], CLOUD_ENV)
}

fn plan(farm: &Farm) -> Run {
    farm.run_env(&["plan"], CLOUD_ENV)
}

/// The SHA-256 of each 512 KiB block of a local file, by index.
fn local_blocks(path: &std::path::Path, indices: impl Iterator<Item = u64>) -> Vec<(u64, String)> {
    let f = fs::File::open(path).unwrap();
    indices
        .map(|i| {
            let mut buf = vec![0u8; BLOCK as usize];
            let n = f.read_at(&mut buf, i * BLOCK).unwrap();
            buf[n..].fill(0);
            (i, sha(&buf))
        })
        .collect()
}

#[test]
#[ignore = "needs moto (target/venv)"]
fn a_published_revision_reads_back_block_for_block_and_a_second_apply_writes_nothing() {
    let farm = Farm::new();
    let Some(moto) = Moto::start(farm.dir.path()) else {
        return;
    };
    let proxy = Proxy::start(&moto.url);
    // a few MiB of data in a 1 GiB volume, one region straddling two blocks, one at the very end
    let blocks = disk(
        &farm,
        "disk-1.img",
        1 << 30,
        &[
            (0, 4096),
            (5 << 20, 1 << 20),
            ((300 << 20) + 400_000, 200_000),
            ((1 << 30) - 512, 512),
        ],
        1,
    );
    declare(&farm, &proxy.url, 1, 2, "disk-1.img");
    let p = plan(&farm);
    p.expect(2);
    assert!(
        p.stdout.contains("+ cloud.dev.machine.kit@1") && p.stdout.contains("not published"),
        "{}",
        p.stdout
    );
    let applied = apply(&farm);
    applied.expect(0);
    let said = format!(
        "uploaded {} of 2048 blocks ({} zero blocks skipped",
        blocks.len(),
        2048 - blocks.len()
    );
    assert!(applied.stderr.contains(&said), "{}", applied.all());
    assert_eq!(
        proxy.count("PutSnapshotBlock"),
        blocks.len(),
        "one PUT per non-zero block ({} of 2048), none for zero blocks",
        blocks.len()
    );

    let cloud = moto.boto(
        r#"
snaps = our_snapshots()
out = dict(images=ours(), snapshots=snaps, blocks={})
for s in snaps:
    for b in ebs.list_snapshot_blocks(SnapshotId=s['id'])['Blocks']:
        d = ebs.get_snapshot_block(SnapshotId=s['id'], BlockIndex=b['BlockIndex'], BlockToken=b['BlockToken'])['BlockData'].read()
        out['blocks'][str(b['BlockIndex'])] = hashlib.sha256(d).hexdigest()
print(json.dumps(out))
"#,
    );
    let images = cloud["images"].as_array().unwrap();
    let snaps = cloud["snapshots"].as_array().unwrap();
    assert_eq!((images.len(), snaps.len()), (1, 1), "{cloud}");
    let tags = &images[0]["tags"];
    let digest = sha_file(&farm.path("disk-1.img"));
    assert_eq!(tags["reconcile:machine"], "kit");
    assert_eq!(tags["reconcile:revision"], "1");
    assert_eq!(tags["reconcile:digest"], digest.as_str());
    assert_eq!(tags["reconcile:snapshot"], snaps[0]["id"]);
    assert_eq!(snaps[0]["tags"]["reconcile:digest"], digest.as_str());
    // every block in the cloud is the local revision's block, and every non-zero local block is there
    let stored = farm.path("vol/kit/kit-1/disk.img");
    let want = local_blocks(&stored, blocks.iter().copied());
    let got: Vec<(u64, String)> = cloud["blocks"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.parse().unwrap(), v.as_str().unwrap().to_string()))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    assert_eq!(got, want);

    // in sync: the plan says so, and an apply writes nothing to the cloud
    let writes = proxy.writes();
    plan(&farm).expect(0);
    apply(&farm).expect(0);
    assert_eq!(proxy.writes(), writes, "{:?}", proxy.snapshot());
    let status = farm.run_env(&["status", "--json"], CLOUD_ENV);
    status.expect(0);
    let doc: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let r = doc["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == "cloud.dev.machine.kit@1")
        .expect("status lists the published image");
    assert_eq!(r["images"][0]["id"], images[0]["id"]);
    assert_eq!(r["credentials"], "environment");
}

#[test]
#[ignore = "needs moto (target/venv)"]
fn retention_deregisters_beyond_keep_prunes_undeclared_machines_and_never_touches_foreign_images() {
    let farm = Farm::new();
    let Some(moto) = Moto::start(farm.dir.path()) else {
        return;
    };
    // someone else's image and snapshot in the same account, without reconcile's tags
    let foreign = moto.boto(
        r#"
vol = ec2.create_volume(Size=1, AvailabilityZone='us-east-1a')
snap = ec2.create_snapshot(VolumeId=vol['VolumeId'], TagSpecifications=[dict(ResourceType='snapshot', Tags=[dict(Key='team', Value='kernel')])])
img = ec2.register_image(Name='kernel-team-image', RootDeviceName='/dev/xvda', BlockDeviceMappings=[dict(DeviceName='/dev/xvda', Ebs=dict(SnapshotId=snap['SnapshotId']))])
print(json.dumps(dict(image=img['ImageId'], snapshot=snap['SnapshotId'])))
"#,
    );
    for rev in 1..=3u32 {
        disk(
            &farm,
            &format!("disk-{rev}.img"),
            64 << 20,
            &[(rev as u64 * BLOCK, 1000)],
            rev as u8,
        );
    }
    declare(&farm, &moto.url, 1, 1, "disk-1.img");
    apply(&farm).expect(0);
    declare(&farm, &moto.url, 2, 1, "disk-2.img");
    apply(&farm).expect(0);
    declare(&farm, &moto.url, 3, 1, "disk-3.img");
    let p = plan(&farm);
    p.expect(2);
    assert!(
        p.stdout.contains("- cloud.dev.machine.kit@1")
            && p.stdout.contains("revision 1 beyond keep = 1"),
        "{}",
        p.stdout
    );
    assert!(
        p.stdout.contains("+ cloud.dev.machine.kit@3"),
        "{}",
        p.stdout
    );
    apply(&farm).expect(0);
    let revs = |v: &serde_json::Value, key: &str| -> BTreeSet<String> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                i["tags"]["reconcile:revision"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let cloud = moto.boto("print(json.dumps(dict(images=ours(), snapshots=our_snapshots())))");
    assert_eq!(revs(&cloud, "images"), ["2", "3"].map(String::from).into());
    assert_eq!(
        revs(&cloud, "snapshots"),
        ["2", "3"].map(String::from).into(),
        "revision 1's snapshot is deleted too"
    );
    plan(&farm).expect(0);

    // the machine is no longer declared: its images go, the foreign ones stay
    farm.desired(&format!(
        "version = 1\n[volume.default]\npath = \"vol\"\nbackend = \"dir\"\n[cloud.dev]\nprovider = \"ec2\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\n",
        moto.url
    ));
    let p = plan(&farm);
    p.expect(2);
    assert!(
        p.stdout.contains("- cloud.dev.machine.kit@2")
            && p.stdout.contains("not declared any more (owned)"),
        "{}",
        p.stdout
    );
    apply(&farm).expect(0);
    let check = format!(
        r#"
imgs = [i['ImageId'] for i in ec2.describe_images(Owners=['self'])['Images']]
snaps = [s['SnapshotId'] for s in ec2.describe_snapshots(OwnerIds=['self'])['Snapshots']]
print(json.dumps(dict(ours=len(ours()), our_snapshots=len(our_snapshots()), image='{}' in imgs, snapshot='{}' in snaps)))
"#,
        foreign["image"].as_str().unwrap(),
        foreign["snapshot"].as_str().unwrap()
    );
    let after = moto.boto(&check);
    assert_eq!(after["ours"], 0, "{after}");
    assert_eq!(after["our_snapshots"], 0, "{after}");
    assert_eq!(after["image"], true, "the foreign image is untouched");
    assert_eq!(after["snapshot"], true, "the foreign snapshot is untouched");
    plan(&farm).expect(0);
}

#[test]
#[ignore = "needs moto (target/venv)"]
fn an_image_retagged_by_hand_shows_as_a_replace_and_is_replaced() {
    let farm = Farm::new();
    let Some(moto) = Moto::start(farm.dir.path()) else {
        return;
    };
    disk(&farm, "disk-1.img", 16 << 20, &[(0, 10_000)], 7);
    declare(&farm, &moto.url, 1, 1, "disk-1.img");
    apply(&farm).expect(0);
    farm.run_env(&["plan", "--out", "saved.json"], CLOUD_ENV)
        .expect(0);
    let before = moto.boto(
        r#"
img = ours()[0]
ec2.create_tags(Resources=[img['id']], Tags=[dict(Key='reconcile:digest', Value='0' * 64)])
print(json.dumps(img))
"#,
    );
    let p = plan(&farm);
    p.expect(2);
    assert!(
        p.stdout.contains("± cloud.dev.machine.kit@1") && p.stdout.contains("digest differs"),
        "{}",
        p.stdout
    );
    // a plan saved before the cloud moved on is refused
    let stale = farm.run_env(&["apply", "saved.json"], CLOUD_ENV);
    stale.expect(1);
    assert!(
        stale.stderr.contains("stale")
            && stale
                .stderr
                .contains("cloud.dev.machine.kit@1 changed since the plan"),
        "{}",
        stale.stderr
    );
    apply(&farm).expect(0);
    let after = moto.boto("print(json.dumps(dict(images=ours(), snapshots=our_snapshots())))");
    let images = after["images"].as_array().unwrap();
    assert_eq!(images.len(), 1, "{after}");
    assert_ne!(
        images[0]["id"], before["id"],
        "a new image replaced the retagged one"
    );
    assert_eq!(
        images[0]["tags"]["reconcile:digest"],
        sha_file(&farm.path("disk-1.img")).as_str()
    );
    assert_eq!(
        after["snapshots"].as_array().unwrap().len(),
        1,
        "the old snapshot went with it: {after}"
    );
    plan(&farm).expect(0);
}

#[test]
#[ignore = "needs moto (target/venv)"]
fn a_publish_killed_at_any_step_is_finished_or_undone_by_the_next_run() {
    let farm = Farm::new();
    let Some(moto) = Moto::start(farm.dir.path()) else {
        return;
    };
    let blocks = disk(
        &farm,
        "disk-1.img",
        32 << 20,
        &[(0, 4096), (9 << 20, 3 << 20)],
        3,
    );
    assert!(blocks.len() > 2);
    declare(&farm, &moto.url, 1, 1, "disk-1.img");
    // the machine itself first, so each killed run has only the publish to do
    farm.run_env(&["apply", "--target", "machine.kit"], CLOUD_ENV)
        .expect(0);
    let digest = sha_file(&farm.path("disk-1.img"));
    for step in [
        "begin",
        "start",
        "started",
        "upload",
        "upload-partial",
        "complete",
        "wait",
        "register",
        "registered",
        "tag",
    ] {
        moto.reset();
        let killed = farm.run_env(
            &["apply"],
            &[
                CLOUD_ENV,
                &[(
                    "RECONCILE_FAULT",
                    &format!("cloud.dev.machine.kit@1:{step}"),
                )],
            ]
            .concat(),
        );
        assert_eq!(killed.signal, Some(9), "killed at {step}: {}", killed.all());
        let next = apply(&farm);
        next.expect(0);
        assert!(
            next.all().contains("cloud.dev.machine.kit@1"),
            "{step}: {}",
            next.all()
        );
        let cloud = moto.boto(
            r#"
snaps = our_snapshots()
imgs = ours()
state = {s['id']: s['state'] for s in snaps}
print(json.dumps(dict(images=imgs, snapshots=snaps, image_snapshot_state=[state.get(i['tags'].get('reconcile:snapshot')) for i in imgs])))
"#,
        );
        let images = cloud["images"].as_array().unwrap();
        assert_eq!(
            images.len(),
            1,
            "killed at {step}: one image for the revision: {cloud}"
        );
        assert_eq!(
            images[0]["tags"]["reconcile:digest"],
            digest.as_str(),
            "{step}: {cloud}"
        );
        assert_eq!(
            cloud["snapshots"].as_array().unwrap().len(),
            1,
            "killed at {step}: no orphan snapshot: {cloud}"
        );
        assert_eq!(
            cloud["image_snapshot_state"][0], "completed",
            "{step}: {cloud}"
        );
        plan(&farm).expect(0);
    }
}

#[test]
#[ignore = "needs moto (target/venv)"]
fn throttling_is_retried_and_a_cloud_that_keeps_refusing_leaves_nothing_half_made() {
    let farm = Farm::new();
    let Some(moto) = Moto::start(farm.dir.path()) else {
        return;
    };
    let proxy = Proxy::start(&moto.url);
    disk(
        &farm,
        "disk-1.img",
        16 << 20,
        &[(0, 10_000), (8 << 20, 10_000)],
        5,
    );
    declare(&farm, &proxy.url, 1, 1, "disk-1.img");
    farm.run_env(&["apply", "--target", "machine.kit"], CLOUD_ENV)
        .expect(0);

    // a few throttled answers: retried with backoff, the apply succeeds
    proxy.throttle.store(3, std::sync::atomic::Ordering::SeqCst);
    apply(&farm).expect(0);
    assert_eq!(proxy.throttled.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert_eq!(moto.boto("print(json.dumps(len(ours())))"), 1);

    // a cloud that refuses everything: a clear error, and the next run finishes cleanly
    moto.reset();
    proxy
        .throttle
        .store(usize::MAX, std::sync::atomic::Ordering::SeqCst);
    let r = apply(&farm);
    r.expect(1);
    assert!(
        r.stderr.contains("cloud dev (")
            && r.stderr.contains("RequestLimitExceeded")
            && r.stderr.contains("attempts"),
        "{}",
        r.stderr
    );
    proxy.throttle.store(0, std::sync::atomic::Ordering::SeqCst);
    apply(&farm).expect(0);
    let cloud =
        moto.boto("print(json.dumps(dict(images=len(ours()), snapshots=len(our_snapshots()))))");
    assert_eq!(cloud, serde_json::json!({"images": 1, "snapshots": 1}));
}

#[test]
fn an_unreachable_endpoint_or_missing_credentials_is_a_clear_error() {
    let farm = Farm::new();
    disk(&farm, "disk-1.img", 1 << 20, &[(0, 100)], 1);
    // nothing listens on this port
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    declare(
        &farm,
        &format!("http://127.0.0.1:{port}"),
        1,
        1,
        "disk-1.img",
    );
    let r = plan(&farm);
    r.expect(1);
    assert!(
        r.stderr
            .contains(&format!("cloud dev (http://127.0.0.1:{port})"))
            && r.stderr.contains("did not answer"),
        "{}",
        r.stderr
    );

    let home = farm.path("empty-home");
    fs::create_dir_all(&home).unwrap();
    let mut cmd = farm.cmd(&["plan"]);
    for k in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE",
    ] {
        cmd.env_remove(k);
    }
    let out = cmd
        .env("HOME", &home)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no credentials")
            && stderr.contains("AWS_ACCESS_KEY_ID")
            && stderr.contains("profile"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-a-secret"));
}

#[test]
#[ignore = "needs moto (target/venv)"]
fn credentials_come_from_a_web_identity_token_through_sts_or_from_imdsv2() {
    let farm = Farm::new();
    let Some(moto) = Moto::start(farm.dir.path()) else {
        return;
    };
    disk(&farm, "disk-1.img", 1 << 20, &[(0, 100)], 1);
    declare(&farm, &moto.url, 1, 1, "disk-1.img");
    let token = farm.write("oidc-token", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJjaSJ9.");
    let status = |env: &[(&str, String)]| {
        let mut cmd = farm.cmd(&["status", "--json"]);
        for k in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
        ] {
            cmd.env_remove(k);
        }
        cmd.env("HOME", farm.path("empty-home"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        doc["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["address"] == "cloud.dev.machine.kit@1")
            .unwrap()["credentials"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // a CI's OIDC role: AssumeRoleWithWebIdentity at STS (moto's, named as STS)
    let from = status(&[
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token.display().to_string()),
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/ci".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("AWS_ENDPOINT_URL_STS", moto.url.clone()),
    ]);
    assert_eq!(from, "web identity (arn:aws:iam::123456789012:role/ci)");

    // an instance's role: IMDSv2, a session token first, then the credentials
    let imds = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!(
        "http://127.0.0.1:{}",
        imds.server_addr().to_ip().unwrap().port()
    );
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    let server = std::thread::spawn(move || {
        for req in imds.incoming_requests() {
            let token = req
                .headers()
                .iter()
                .find(|h| h.field.equiv("x-aws-ec2-metadata-token"))
                .map(|h| h.value.to_string());
            log.lock().unwrap().push(format!(
                "{} {} {}",
                req.method(),
                req.url(),
                token.clone().unwrap_or_default()
            ));
            let body = match (req.method().as_str(), req.url(), token.as_deref()) {
                ("PUT", "/latest/api/token", _) => "session-token-1".to_string(),
                (_, _, Some("session-token-1")) if req.url().ends_with("/security-credentials/") => "farm-role\n".into(),
                (_, _, Some("session-token-1")) if req.url().ends_with("/farm-role") => {
                    r#"{"Code":"Success","AccessKeyId":"ASIAIMDS","SecretAccessKey":"s","Token":"t","Expiration":"2099-01-01T00:00:00Z"}"#.into()
                }
                _ => {
                    let _ = req.respond(tiny_http::Response::from_string("no").with_status_code(401));
                    continue;
                }
            };
            let _ = req.respond(tiny_http::Response::from_string(body));
        }
    });
    let from = status(&[("AWS_EC2_METADATA_SERVICE_ENDPOINT", url.clone())]);
    assert_eq!(from, "instance metadata (role farm-role)");
    let seen = seen.lock().unwrap().clone();
    assert!(seen[0].starts_with("PUT /latest/api/token"), "{seen:?}");
    assert!(
        seen[1..].iter().all(|l| l.ends_with("session-token-1")),
        "every GET carries the session token: {seen:?}"
    );
    drop(server);
}

/// A listener on 127.0.0.1 that answers 500 to everything and keeps what it was sent.
fn recording_listener() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let url = format!(
        "http://127.0.0.1:{}",
        server.server_addr().to_ip().unwrap().port()
    );
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for mut req in server.incoming_requests() {
            let mut body = String::new();
            let _ = std::io::Read::read_to_string(req.as_reader(), &mut body);
            let headers: Vec<String> = req.headers().iter().map(|h| h.to_string()).collect();
            log.lock().unwrap().push(format!(
                "{} {}\n{}\n{body}",
                req.method(),
                req.url(),
                headers.join("\n")
            ));
            let _ = req.respond(tiny_http::Response::from_string("no").with_status_code(500));
        }
    });
    (url, seen)
}

#[test]
#[ignore = "needs moto (target/venv)"]
fn the_web_identity_token_goes_to_sts_only_never_to_the_ec2_endpoint() {
    let farm = Farm::new();
    let Some(moto) = Moto::start(farm.dir.path()) else {
        return;
    };
    let secret = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ0aGUtdG9rZW4ifQ.";
    let token = farm.write("oidc-token", secret);
    disk(&farm, "disk-1.img", 1 << 20, &[(0, 100)], 1);
    // the file's EC2 endpoint records everything it is sent
    let (ec2, seen) = recording_listener();
    declare(&farm, &ec2, 1, 1, "disk-1.img");
    let run = |extra: &[(&str, &str)]| {
        let mut cmd = farm.cmd(&["plan"]);
        for k in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
        ] {
            cmd.env_remove(k);
        }
        cmd.env("HOME", farm.path("empty-home"))
            .env("AWS_WEB_IDENTITY_TOKEN_FILE", &token)
            .env("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/ci")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // with no STS named: the region's STS (unreachable here), never the EC2 endpoint
    let err = run(&[]);
    assert!(err.contains("sts.us-east-1.amazonaws.com"), "{err}");
    // STS named (moto): the token goes there; the EC2 endpoint gets signed calls only
    run(&[("AWS_ENDPOINT_URL_STS", &moto.url)]);
    let calls = seen.lock().unwrap().clone();
    assert!(!calls.is_empty(), "the EC2 endpoint was never called");
    assert!(
        calls.iter().all(|c| !c.contains(secret)),
        "the token reached the EC2 endpoint: {calls:?}"
    );
    assert!(
        calls
            .iter()
            .all(|c| !c.contains("AssumeRoleWithWebIdentity")),
        "{calls:?}"
    );
    // plain http to an address that is not loopback: never sent
    let err = run(&[("AWS_ENDPOINT_URL_STS", "http://192.0.2.1:5000")]);
    assert!(
        err.contains("refusing to send the web identity token"),
        "{err}"
    );
    // and in the file, a located diagnostic
    let toml = fs::read_to_string(farm.path("reconcile.toml"))
        .unwrap()
        .replace(
            "[cloud.dev]\n",
            "[cloud.dev]\nsts_endpoint = \"http://sts.example.org\"\n",
        );
    farm.desired(&toml);
    let r = farm.run(&["validate"]);
    r.expect(1);
    assert!(
        r.stderr.contains("sts_endpoint") && r.stderr.contains("not a loopback address"),
        "{}",
        r.stderr
    );
}

// ---------- the cloud executor ----------

/// A published disk machine and a suite that tests it on instances in `dev`.
fn declare_suite(farm: &Farm, endpoint: &str, boot_timeout: &str, extra: &str) {
    disk(farm, "disk-1.img", 8 << 20, &[(0, 4096)], 1);
    farm.desired(&farm_toml(
        endpoint,
        &format!(
            "revision = 1\nsource = {{ path = \"disk-1.img\" }}\nconsole = {{ boot_timeout = \"{boot_timeout}\" }}"
        ),
        &format!(
            "[suite.cs]\nmachines = [\"kit\"]\nexecutor = \"cloud\"\ncloud = \"dev\"\ninstance_type = \"t3.nano\"\n{extra}"
        ),
    ));
    farm.run_env(&["apply", "--no-test"], CLOUD_ENV).expect(0);
}

/// Every instance moto knows, with its state, type, image, tags and user data.
fn instances(moto: &Moto) -> Vec<serde_json::Value> {
    let v = moto.boto(
        r#"
out = []
for r in ec2.describe_instances()['Reservations']:
    for i in r['Instances']:
        ud = ec2.describe_instance_attribute(InstanceId=i['InstanceId'], Attribute='userData')['UserData'].get('Value', '')
        out.append(dict(id=i['InstanceId'], state=i['State']['Name'], type=i['InstanceType'], image=i['ImageId'], tags=tags(i), user_data=base64.b64decode(ud).decode()))
print(json.dumps(out))
"#,
    );
    v.as_array().unwrap().clone()
}

fn running(moto: &Moto) -> Vec<serde_json::Value> {
    instances(moto)
        .into_iter()
        .filter(|i| matches!(i["state"].as_str(), Some("pending" | "running")))
        .collect()
}

fn test_named<'r>(report: &'r serde_json::Value, name: &str) -> &'r serde_json::Value {
    report["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no test {name} in {report}"))
}

#[test]
#[ignore = "needs moto (target/venv)"]
fn cloud_tests_pass_and_fail_by_their_markers_with_the_user_data_run_on_the_host_in_place_of_a_guest(
) {
    let farm = Farm::new();
    let Some(moto) = Moto::start(farm.dir.path()) else {
        return;
    };
    let proxy = Proxy::start(&moto.url);
    proxy.guest.store(true, std::sync::atomic::Ordering::SeqCst);
    declare_suite(
        &farm,
        &proxy.url,
        "60s",
        r#"
[suite.cs.test.ok]
run = ["/bin/sh", "-c", "echo hello from $RECONCILE_TEST; echo to stderr >&2"]
expect = { stdout = ["/hello from cs.ok/", "/to stderr/"] }
[suite.cs.test.fails]
run = ["/bin/sh", "-c", "echo about to fail; exit 3"]
"#,
    );
    let image = moto.boto("print(json.dumps(ours()[0]['id']))");
    let r = farm.run_env(&["test"], CLOUD_ENV);
    r.expect(4);
    let report = farm.report();
    let ok = test_named(&report, "cs.ok");
    assert_eq!(ok["result"], "PASS", "{report}");
    let fails = test_named(&report, "cs.fails");
    assert_eq!(fails["result"], "FAIL", "{report}");
    assert_eq!(fails["class"], "test", "{report}");
    assert!(
        fails["reason"].as_str().unwrap().contains("exit status 3"),
        "{report}"
    );
    // the instance's boot (launch → the begin marker) is counted as boot, not as the command
    let phases = &ok["attempts"][0]["phases"];
    assert!(phases["boot_ms"].as_u64().unwrap() > 0, "{phases}");
    let out = std::path::Path::new(fails["output"].as_str().unwrap());
    assert_eq!(
        fs::read_to_string(out.join("stdout.txt")).unwrap(),
        "about to fail\n"
    );
    assert!(fs::read_to_string(out.join("console.txt"))
        .unwrap()
        .contains("about to fail"));

    // the launch parameters, as the cloud recorded them; every instance terminated
    let all = instances(&moto);
    assert_eq!(all.len(), 2, "one instance per test: {all:?}");
    for i in &all {
        assert_eq!(i["state"], "terminated", "{i}");
        assert_eq!(
            i["image"], image,
            "launched from the published revision: {i}"
        );
        assert_eq!(i["type"], "t3.nano", "{i}");
        assert_eq!(i["tags"]["reconcile:machine"], "kit", "{i}");
        let run = i["tags"]["reconcile:run"].as_str().unwrap();
        let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
        assert!(
            run.starts_with(&format!("{host}:")) && run.split(':').count() == 3,
            "{i}"
        );
        assert!(
            i["tags"]["reconcile:token"]
                .as_str()
                .unwrap()
                .starts_with("reconcile-"),
            "{i}"
        );
        assert!(
            i["user_data"].as_str().unwrap().starts_with("#!/bin/sh\n"),
            "{i}"
        );
    }
    assert!(all
        .iter()
        .any(|i| i["user_data"].as_str().unwrap().contains("exit 3")));
    assert_eq!(proxy.count("TerminateInstances"), 2);
    assert!(proxy
        .guests
        .lock()
        .unwrap()
        .values_mut()
        .all(|g| !g.running()));
    // nothing left in the ledger
    let ledger = farm.path(".reconcile/cloud-runs");
    assert_eq!(fs::read_dir(&ledger).map(|d| d.count()).unwrap_or(0), 0);
}

#[test]
#[ignore = "needs moto (target/venv)"]
fn against_moto_canned_console_a_fatal_check_on_it_and_a_boot_timeout_each_terminate_the_instance()
{
    let farm = Farm::new();
    let Some(moto) = Moto::start(farm.dir.path()) else {
        return;
    };
    // moto's console output is a canned Xen boot log; a fatal check on one of its lines
    declare_suite(
        &farm,
        &moto.url,
        "600s",
        r#"
[suite.cs.test.uname]
run = ["/bin/uname", "-a"]
[check.xen-ram-map]
regex = "BIOS-provided physical RAM map"
severity = "fatal"
"#,
    );
    let r = farm.run_env(&["test"], CLOUD_ENV);
    r.expect(4);
    let report = farm.report();
    let t = test_named(&report, "cs.uname");
    assert_eq!(t["class"], "check", "{report}");
    assert!(
        t["reason"]
            .as_str()
            .unwrap()
            .contains("xen-ram-map (line 2"),
        "{report}"
    );
    assert!(running(&moto).is_empty(), "{:?}", instances(&moto));
    assert_eq!(instances(&moto).len(), 1);

    // the test never starts (moto runs no user data): the boot timeout ends it
    declare_suite(
        &farm,
        &moto.url,
        "2s",
        r#"
[suite.cs.test.uname]
run = ["/bin/uname", "-a"]
"#,
    );
    let r = farm.run_env(&["test"], CLOUD_ENV);
    r.expect(4);
    let report = farm.report();
    let t = test_named(&report, "cs.uname");
    assert_eq!(t["class"], "timeout", "{report}");
    assert!(
        t["reason"]
            .as_str()
            .unwrap()
            .contains("boot (waiting for the test to start) timed out after 2s"),
        "{report}"
    );
    let console =
        fs::read_to_string(std::path::Path::new(t["output"].as_str().unwrap()).join("console.txt"))
            .unwrap();
    assert!(
        console.contains("Linux version 2.6.16-xenU"),
        "the canned console was read: {console}"
    );
    assert_eq!(
        console.matches("Linux version").count(),
        1,
        "each line once, however often polled: {console}"
    );
    assert!(running(&moto).is_empty(), "{:?}", instances(&moto));
    assert_eq!(instances(&moto).len(), 2);
}

fn spawn_test(farm: &Farm) -> std::process::Child {
    farm.cmd(&["test"])
        .envs(CLOUD_ENV.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
#[ignore = "needs moto (target/venv)"]
fn ctrl_c_terminates_the_instance_and_a_crashed_runs_instance_is_reaped_by_the_next_run() {
    let farm = Farm::new();
    let Some(moto) = Moto::start(farm.dir.path()) else {
        return;
    };
    declare_suite(
        &farm,
        &moto.url,
        "600s",
        r#"
[suite.cs.test.waits]
run = ["/bin/true"]
"#,
    );
    // Ctrl-C while the test waits for its instance
    let child = spawn_test(&farm);
    wait_until(
        "no instance was launched",
        std::time::Duration::from_secs(60),
        || !running(&moto).is_empty(),
    );
    interrupt(&child);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(farm.report()["incomplete"], true);
    assert!(running(&moto).is_empty(), "{:?}", instances(&moto));

    // SIGKILL: nothing terminates the instance, the ledger remembers it
    let mut child = spawn_test(&farm);
    wait_until(
        "no instance was launched",
        std::time::Duration::from_secs(60),
        || !running(&moto).is_empty(),
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let left = running(&moto);
    assert_eq!(left.len(), 1, "{left:?}");
    let ledger = farm.path(".reconcile/cloud-runs");
    assert_eq!(fs::read_dir(&ledger).unwrap().count(), 1);

    // the next run reaps it before it launches its own
    declare_suite(
        &farm,
        &moto.url,
        "1s",
        "[suite.cs.test.waits]\nrun = [\"/bin/true\"]\n",
    );
    let r = farm.run_env(&["test"], CLOUD_ENV);
    r.expect(4);
    let id = left[0]["id"].as_str().unwrap();
    assert!(
        r.all()
            .contains(&format!("terminated instance {id} left by a crashed run")),
        "{}",
        r.all()
    );
    assert!(running(&moto).is_empty(), "{:?}", instances(&moto));
    assert_eq!(fs::read_dir(&ledger).unwrap().count(), 0);
}

#[test]
#[ignore = "needs moto (target/venv)"]
fn a_root_filesystem_machine_is_refused_for_the_cloud_with_a_diagnostic_and_nothing_is_published() {
    let farm = Farm::new();
    let Some(moto) = Moto::start(farm.dir.path()) else {
        return;
    };
    fs::create_dir_all(farm.path("tree/etc")).unwrap();
    farm.write("tree/etc/os-release", "ID=debian\n");
    farm.desired(&format!(
        r#"version = 1
[volume.default]
path = "vol"
backend = "dir"
[cloud.dev]
provider = "ec2"
region = "us-east-1"
endpoint = "{}"
[machine.tree]
revision = 1
source = {{ dir = "tree" }}
clouds = ["dev"]
"#,
        moto.url
    ));
    let r = apply(&farm);
    r.expect(1);
    assert!(
        r.stderr.contains("cloud.dev.machine.tree@1")
            && r.stderr.contains("only disk machines are published"),
        "{}",
        r.stderr
    );
    assert_eq!(
        moto.boto("print(json.dumps(len(ours()) + len(our_snapshots())))"),
        0
    );
    // like any plan with an error, nothing was applied; without `clouds` it converges
    let toml = fs::read_to_string(farm.path("reconcile.toml")).unwrap();
    farm.desired(&toml.replace("clouds = [\"dev\"]\n", ""));
    apply(&farm).expect(0);
    plan(&farm).expect(0);
}

#[test]
#[ignore = "needs moto (target/venv)"]
fn a_cloud_image_is_a_candidate_until_its_gate_passes_and_only_then_becomes_the_one_launched() {
    let farm = Farm::new();
    let Some(moto) = Moto::start(farm.dir.path()) else {
        return;
    };
    let proxy = Proxy::start(&moto.url);
    proxy.guest.store(true, std::sync::atomic::Ordering::SeqCst);
    disk(&farm, "disk-1.img", 8 << 20, &[(0, 4096)], 1);
    disk(&farm, "disk-2.img", 8 << 20, &[(0, 4096)], 2);
    // the gate passes while the file `ok` exists on the host (the proxy runs
    // the instance's user data here, in place of a guest)
    let ok = farm.path("ok");
    let declare = |rev: u32| {
        farm.desired(&farm_toml(
            &proxy.url,
            &format!("revision = {rev}\nkeep = 1\nsource = {{ path = \"disk-{rev}.img\" }}\nconsole = {{ boot_timeout = \"60s\" }}"),
            &format!(
                "[suite.cs]\nmachines = [\"kit\"]\nexecutor = \"cloud\"\ncloud = \"dev\"\ninstance_type = \"t3.nano\"\n\
                 [suite.cs.test.ok]\nrun = [\"/bin/sh\", \"-c\", \"test -e {}\"]\n",
                ok.display()
            ),
        ));
        // the gate belongs to the cloud table
        let text = fs::read_to_string(farm.path("reconcile.toml"))
            .unwrap()
            .replace("endpoint = ", "promote = { after = [\"cs\"] }\nendpoint = ");
        fs::write(farm.path("reconcile.toml"), text).unwrap();
    };
    let state_of = |rev: u32| -> serde_json::Value {
        moto.boto(&format!(
            "print(json.dumps([i['tags'].get('reconcile:state') for i in ours() if i['tags'].get('reconcile:revision') == '{rev}']))"
        ))
    };
    fs::write(&ok, "").unwrap();
    declare(1);
    let a = apply(&farm);
    a.expect(0);
    assert!(
        a.stderr
            .contains("testing candidate image of revision 1 of cloud.dev.machine.kit@1"),
        "{}",
        a.all()
    );
    assert_eq!(state_of(1), serde_json::json!(["current"]));

    // revision 2 fails its gate: registered, tagged a candidate, not launched
    fs::remove_file(&ok).unwrap();
    declare(2);
    let p = plan(&farm);
    p.expect(2);
    assert!(
        p.stdout
            .contains("candidate image of revision 2: not tested (promoted after cs)"),
        "{}",
        p.stdout
    );
    let a = apply(&farm);
    a.expect(4);
    assert!(
        a.stdout.contains(
            "Not promoted: cloud.dev.machine.kit@2: candidate image of revision 2 failed cs.ok"
        ),
        "{}",
        a.all()
    );
    assert_eq!(state_of(2), serde_json::json!(["candidate"]));
    assert_eq!(state_of(1), serde_json::json!(["current"]));
    let st: serde_json::Value =
        serde_json::from_str(&farm.run_env(&["status", "--json"], CLOUD_ENV).stdout).unwrap();
    assert_eq!(
        st["candidates"][0]["address"], "cloud.dev.machine.kit@2",
        "{st}"
    );
    assert_eq!(st["candidates"][0]["state"], "failed", "{st}");
    // the tests outside the gate launch what is current: revision 1's image
    let current_image = moto.boto("print(json.dumps([i['id'] for i in ours() if i['tags'].get('reconcile:state') == 'current'][0]))");
    fs::write(&ok, "").unwrap();
    farm.run_env(&["test"], CLOUD_ENV).expect(0);
    let launched: Vec<serde_json::Value> = instances(&moto)
        .into_iter()
        .map(|i| i["image"].clone())
        .collect();
    assert_eq!(launched.last(), Some(&current_image), "{launched:?}");

    // retested, it passes: tagged current, the one before previous
    farm.run_env(&["apply", "--retest"], CLOUD_ENV).expect(0);
    assert_eq!(state_of(2), serde_json::json!(["current"]));
    assert_eq!(state_of(1), serde_json::json!(["previous"]));
    plan(&farm).expect(0);

    // killed between tagging the new image current and the old one previous:
    // two are current, the newest is launched, the next apply finishes
    disk(&farm, "disk-3.img", 8 << 20, &[(0, 4096)], 3);
    declare(3);
    let killed = farm.run_env(
        &["apply"],
        &[
            CLOUD_ENV,
            &[("RECONCILE_FAULT", "cloud.dev.machine.kit@3:switched")],
        ]
        .concat(),
    );
    assert_eq!(killed.signal, Some(9), "{}", killed.all());
    assert_eq!(state_of(3), serde_json::json!(["current"]));
    assert_eq!(state_of(2), serde_json::json!(["current"]));
    let newest = moto.boto("print(json.dumps([i['id'] for i in ours() if i['tags'].get('reconcile:revision') == '3'][0]))");
    farm.run_env(&["test"], CLOUD_ENV).expect(0);
    let launched: Vec<serde_json::Value> = instances(&moto)
        .into_iter()
        .map(|i| i["image"].clone())
        .collect();
    assert_eq!(launched.last(), Some(&newest), "{launched:?}");
    apply(&farm).expect(0);
    assert_eq!(state_of(2), serde_json::json!(["previous"]));
    assert_eq!(state_of(3), serde_json::json!(["current"]));
    plan(&farm).expect(0);

    // killed before the new image is tagged current: the old one stays
    // current; the next apply switches without testing again
    disk(&farm, "disk-4.img", 8 << 20, &[(0, 4096)], 4);
    declare(4);
    let killed = farm.run_env(
        &["apply"],
        &[
            CLOUD_ENV,
            &[("RECONCILE_FAULT", "cloud.dev.machine.kit@4:switch")],
        ]
        .concat(),
    );
    assert_eq!(killed.signal, Some(9), "{}", killed.all());
    assert_eq!(state_of(4), serde_json::json!(["candidate"]));
    assert_eq!(state_of(3), serde_json::json!(["current"]));
    let a = apply(&farm);
    a.expect(0);
    assert!(!a.stderr.contains("testing candidate"), "{}", a.all());
    assert_eq!(state_of(4), serde_json::json!(["current"]));
    assert_eq!(state_of(3), serde_json::json!(["previous"]));

    // a candidate that fails never pushes out the current image's rollback
    // (keep = 1: revision 3 stays beside current 4)…
    fs::remove_file(&ok).unwrap();
    disk(&farm, "disk-5.img", 8 << 20, &[(0, 4096)], 5);
    declare(5);
    apply(&farm).expect(4);
    assert_eq!(state_of(5), serde_json::json!(["candidate"]));
    assert_eq!(state_of(4), serde_json::json!(["current"]));
    assert_eq!(state_of(3), serde_json::json!(["previous"]));
    // …and with keep = 0 the current image is still not retired (nothing
    // would be launched), only what is previous
    let text = |rev: u32| {
        declare(rev);
        let t = fs::read_to_string(farm.path("reconcile.toml"))
            .unwrap()
            .replace("keep = 1", "keep = 0");
        fs::write(farm.path("reconcile.toml"), t).unwrap();
    };
    text(5);
    apply(&farm).expect(4);
    assert_eq!(state_of(5), serde_json::json!(["candidate"]));
    assert_eq!(state_of(4), serde_json::json!(["current"]));
    assert_eq!(
        state_of(3),
        serde_json::json!([]),
        "previous goes with keep = 0"
    );

    // validation: a gate suite that does not launch in this cloud
    let text = fs::read_to_string(farm.path("reconcile.toml"))
        .unwrap()
        .replace("executor = \"cloud\"", "executor = \"host\"");
    fs::write(farm.path("reconcile.toml"), text).unwrap();
    let v = farm.run(&["validate"]);
    v.expect(1);
    assert!(
        v.all()
            .contains("suite `cs` does not launch instances in cloud `dev`"),
        "{}",
        v.all()
    );
}
