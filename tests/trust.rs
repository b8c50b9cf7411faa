//! Issue 18's trust boundaries, tried the way an attacker or an unlucky
//! operator would, against the real tools: commits signed with ssh and gpg
//! keys made here (and keys the file does not trust, planted in root's
//! ambient GnuPG home and git config), committed symlinks leading out of the
//! checkout, a checkout directory others could write to, and text meant to
//! drive the terminal. Each must refuse, say why in words, and leave the last
//! good state in force.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn have(tool: &str, arg: &str) -> bool {
    Command::new(tool).arg(arg).output().is_ok()
}

/// `SHA256:…` of an ssh public key file, as ssh-keygen prints it.
fn ssh_fingerprint(key: &Path) -> String {
    let out = stdout_of(
        Command::new("ssh-keygen")
            .arg("-lf")
            .arg(key.with_extension("pub")),
    );
    out.split_whitespace().nth(1).unwrap().to_string()
}

/// `reconcile apply --git …` with more arguments and environment.
fn apply(f: &Fleet, url: &str, extra: &[&str], env: &[(&str, &str)]) -> Run {
    let mut a = vec!["apply"];
    a.extend(f.args(url));
    a.extend_from_slice(extra);
    f.farm.run_env(&a, env)
}

fn head_of(repo: &Path) -> String {
    git(repo, &["rev-parse", "HEAD"])
}

// ---------- signatures mean what they say ----------

#[test]
fn item_1_trust_comes_from_the_file_alone_never_from_ambient_keys_or_config() {
    if !have("ssh-keygen", "-?") || !have("gpg", "--version") {
        skip("needs ssh-keygen (openssh-client) and gpg");
        return;
    }
    let f = Fleet::new();
    let (trusted, signers) = keys(&f.farm.path(""));
    let url = f.url();
    let verify = ["--verify-signatures", signers.to_str().unwrap()];
    f.stage(&["a"], "");
    f.commit_ssh_signed("good", &trusted);
    apply(&f, &url, &verify, &[]).expect(0);
    assert!(f.installed("a"));

    // a gpg key in root's ambient GnuPG home signs: FILE is an ssh file, so gpg never counts
    let ambient = f.farm.path("root-gnupg");
    let fpr = gpg_key(
        &ambient,
        &f.farm.path("ambient.asc"),
        "intruder@example.org",
    );
    f.stage(&["a", "b"], "");
    let gpg_signed = f.commit_gpg_signed("gpg", &ambient, &fpr);
    let r = apply(
        &f,
        &url,
        &verify,
        &[("GNUPGHOME", ambient.to_str().unwrap())],
    );
    r.expect(1);
    assert!(
        r.stderr.contains(&gpg_signed[..12])
            && r.stderr.contains("signed with a gpg key")
            && r.stderr.contains("ssh allowed-signers file"),
        "{}",
        r.stderr
    );
    assert!(!f.installed("b"));

    // an ssh key that root's git config trusts, in every way git reads config
    let intruder_dir = f.farm.path("intruder");
    fs::create_dir_all(&intruder_dir).unwrap();
    let (intruder, intruder_signers) = keys(&intruder_dir);
    let cfg = f.farm.write(
        "root-gitconfig",
        format!(
            "[gpg \"ssh\"]\n\tallowedSignersFile = {}\n",
            intruder_signers.display()
        ),
    );
    let home = f.farm.path("root-home");
    fs::create_dir_all(&home).unwrap();
    fs::copy(&cfg, home.join(".gitconfig")).unwrap();
    f.stage(&["a", "c"], "");
    let ssh_signed = f.commit_ssh_signed("ssh intruder", &intruder);
    let r = apply(
        &f,
        &url,
        &verify,
        &[
            ("GIT_CONFIG_GLOBAL", cfg.to_str().unwrap()),
            ("HOME", home.to_str().unwrap()),
            ("GIT_CONFIG_COUNT", "1"),
            ("GIT_CONFIG_KEY_0", "gpg.ssh.allowedSignersFile"),
            ("GIT_CONFIG_VALUE_0", intruder_signers.to_str().unwrap()),
        ],
    );
    r.expect(1);
    let fp = ssh_fingerprint(&intruder);
    assert!(
        r.stderr.contains(&ssh_signed[..12])
            && r.stderr
                .contains(&format!("signed by a key not in {}", signers.display()))
            && r.stderr.contains(&fp),
        "{fp}\n{}",
        r.stderr
    );
    assert!(!f.installed("c") && !f.installed("b"));

    // the reverse: FILE is a gpg keyring; an ssh signature root's config would trust does not count
    let g = Fleet::new();
    let ops_home = g.farm.path("ops-gnupg");
    let keyring = g.farm.path("trusted.asc");
    let ops = gpg_key(&ops_home, &keyring, "ops@example.org");
    let (ssh_key, ssh_signers) = keys(&g.farm.path(""));
    let gurl = g.url();
    let gverify = ["--verify-signatures", keyring.to_str().unwrap()];
    g.stage(&["a"], "");
    g.commit_gpg_signed("good", &ops_home, &ops);
    apply(&g, &gurl, &gverify, &[]).expect(0);
    g.stage(&["a", "b"], "");
    g.commit_ssh_signed("ssh", &ssh_key);
    let r = apply(
        &g,
        &gurl,
        &gverify,
        &[
            ("GIT_CONFIG_COUNT", "1"),
            ("GIT_CONFIG_KEY_0", "gpg.ssh.allowedSignersFile"),
            ("GIT_CONFIG_VALUE_0", ssh_signers.to_str().unwrap()),
        ],
    );
    r.expect(1);
    assert!(
        r.stderr.contains("signed with an ssh key") && r.stderr.contains("gpg keyring"),
        "{}",
        r.stderr
    );
    assert!(!g.installed("b"));
    for h in [&ambient, &ops_home] {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", h)
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

#[test]
fn item_2_a_missing_empty_or_unreadable_trust_file_refuses_everything() {
    if !have("ssh-keygen", "-?") {
        skip("needs ssh-keygen (openssh-client)");
        return;
    }
    let f = Fleet::new();
    let (key, _) = keys(&f.farm.path(""));
    let url = f.url();
    f.stage(&["a"], "");
    let signed = f.commit_ssh_signed("signed", &key);
    let empty = f.farm.write("empty", "");
    let blank = f.farm.write("blank", "\n   \n");
    let junk = f
        .farm
        .write("junk", "# nobody\nops@example.org not-a-key\n");
    let dir = f.farm.path("a-directory");
    fs::create_dir_all(&dir).unwrap();
    let fifo = f.farm.path("a-fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let missing = f.farm.path("missing");
    for (file, why) in [
        (&missing, "cannot be read"),
        (&empty, "is empty"),
        (&blank, "is empty"),
        (&junk, "holds no ssh public key"),
        (&dir, "cannot be read"),
        (&fifo, "cannot be read"),
    ] {
        let r = apply(
            &f,
            &url,
            &["--verify-signatures", file.to_str().unwrap()],
            &[],
        );
        r.expect(1);
        assert!(
            r.stderr.contains(&signed[..12]) && r.stderr.contains(why),
            "{}: {}",
            file.display(),
            r.stderr
        );
        assert!(!f.installed("a"), "{} let a commit through", file.display());
    }
}

#[test]
fn item_3_a_refusal_says_why_in_words() {
    if !have("ssh-keygen", "-?") {
        skip("needs ssh-keygen (openssh-client)");
        return;
    }
    let f = Fleet::new();
    let (key, signers) = keys(&f.farm.path(""));
    let other_dir = f.farm.path("other");
    fs::create_dir_all(&other_dir).unwrap();
    let (other, _) = keys(&other_dir);
    let url = f.url();
    let verify = ["--verify-signatures", signers.to_str().unwrap()];
    let refused = |why: &str| {
        let r = apply(&f, &url, &verify, &[]);
        r.expect(1);
        assert!(r.stderr.contains(why), "want {why:?}:\n{}", r.stderr);
        // never a verifier's "Good signature" given as the reason for a refusal
        assert!(!r.stderr.contains("Good"), "{}", r.stderr);
        assert!(!r.stderr.contains("failed (exit status"), "{}", r.stderr);
        r
    };
    f.stage(&["a"], "");
    f.commit_staged("unsigned", &[], &[]);
    refused("it has no signature");
    f.stage(&["a"], "# signed by another\n");
    f.commit_ssh_signed("other", &other);
    refused(&format!(
        "signed by a key not in {} ({})",
        signers.display(),
        ssh_fingerprint(&other)
    ));
    // a signature of the trusted key over another message: the object is
    // rewritten by hand, its signature kept
    f.stage(&["a"], "# signed\n");
    let good = f.commit_ssh_signed("the real message", &key);
    let object = git(&f.origin, &["cat-file", "commit", &good]);
    let forged = f.farm.write(
        "forged",
        object.replace("the real message", "a message never signed") + "\n",
    );
    let id = git(
        &f.origin,
        &[
            "hash-object",
            "-t",
            "commit",
            "-w",
            forged.to_str().unwrap(),
        ],
    );
    git(&f.origin, &["update-ref", "refs/heads/main", &id]);
    let r = refused("bad signature");
    assert!(r.stderr.contains(&ssh_fingerprint(&key)), "{}", r.stderr);
    assert!(!f.installed("a"));
    // the real one is applied
    git(&f.origin, &["update-ref", "refs/heads/main", &good]);
    apply(&f, &url, &verify, &[]).expect(0);
    assert!(f.installed("a"));
}

#[test]
fn item_4_previews_never_move_the_work_tree_and_hand_edits_are_put_back_not_applied() {
    if !have("ssh-keygen", "-?") {
        skip("needs ssh-keygen (openssh-client)");
        return;
    }
    let f = Fleet::new();
    let (key, signers) = keys(&f.farm.path(""));
    let url = f.url();
    // a plugin from a directory too, to add a file to by hand
    let dsrc = f.origin.join("srcd");
    fs::create_dir_all(&dsrc).unwrap();
    fs::write(dsrc.join("d"), "#!/bin/sh\necho d\n").unwrap();
    fs::set_permissions(dsrc.join("d"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(dsrc.join("plugin.json"), r#"{"name": "d", "version": "1"}"#).unwrap();
    let dplugin = format!(
        "[plugin.d]\nversion = \"1\"\ndir = \"{}\"\nsource = {{ dir = \"srcd\" }}\n",
        f.plugins.display()
    );
    f.stage(&["a"], &dplugin);
    let good = f.commit_ssh_signed("good", &key);
    let w = f.watch(&url, &["--verify-signatures", signers.to_str().unwrap()]);
    wait_until("the signed commit was not applied", LIMIT, || {
        f.installed("a") && f.plugins.join("d/d").exists()
    });
    let repo = f.checkout.join("repo");
    let committed = fs::read_to_string(repo.join("farm.toml")).unwrap();
    assert_eq!(head_of(&repo), good);

    // an unsigned commit: a plan that verifies nothing previews it, the work tree stays
    f.stage(&["a", "b"], &dplugin);
    let unsigned = f.commit_staged("unsigned", &[], &[]);
    let before = snapshot(&repo, &[".git"]);
    let mut a = vec!["plan"];
    a.extend(f.args(&url));
    let r = f.farm.run(&a);
    r.expect(2);
    assert!(r.stdout.contains("+ plugin.b"), "{}", r.stdout);
    assert!(r.stderr.contains(&unsigned[..12]), "{}", r.stderr);
    assert_eq!(head_of(&repo), good, "plan moved the work tree");
    assert_eq!(
        snapshot(&repo, &[".git"]),
        before,
        "plan changed the work tree"
    );
    let st = f.status(&url);
    assert_eq!(st["git"]["applied"], good.as_str(), "{st}");
    assert_eq!(head_of(&repo), good, "status moved the work tree");
    // and the watch, which verifies, never applies it
    wait_until("the watch never refused the unsigned commit", LIMIT, || {
        f.status(&url)["git"]["refused"] == unsigned.as_str()
    });
    std::thread::sleep(Duration::from_millis(900));
    assert!(!f.installed("b"));

    // edits by hand: the file, a tracked source, a file added to a dir source
    fs::write(
        repo.join("farm.toml"),
        committed.clone() + "[plugin.z]\nversion = \"1\"\nsource = { path = \"src/a\" }\n",
    )
    .unwrap();
    fs::write(repo.join("src/a"), "#!/bin/sh\necho hacked\n").unwrap();
    fs::write(repo.join("srcd/planted"), "#!/bin/sh\necho planted\n").unwrap();
    wait_until("the hand edits were never put back", LIMIT, || {
        fs::read_to_string(repo.join("farm.toml")).is_ok_and(|t| t == committed)
            && fs::read_to_string(repo.join("src/a")).is_ok_and(|t| t == "#!/bin/sh\necho a\n")
            && !repo.join("srcd/planted").exists()
    });
    // a resync or two later: nothing of them was ever applied
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(
        fs::read_to_string(f.plugins.join("a/a")).unwrap(),
        "#!/bin/sh\necho a\n"
    );
    assert!(!f.plugins.join("z").exists());
    assert!(!f.plugins.join("d/planted").exists());
    let log = stop(w);
    assert!(log.contains("\"event\":\"checkout-drift\""), "{log}");
}

#[test]
fn item_5_a_one_shot_apply_of_a_commit_not_taken_exits_1_on_the_last_good_one() {
    let f = Fleet::new();
    let url = f.url();
    let first = f.commit(&["a"], "");
    apply(&f, &url, &[], &[]).expect(0);

    // an invalid file: its diagnostics, one line naming the commit, exit 1, the last good state kept
    f.stage(&["a", "b"], "[plugin.c]\nversion = 1\n");
    let invalid = f.commit_staged("broken", &[], &[]);
    for _ in 0..2 {
        let r = apply(&f, &url, &[], &[]);
        r.expect(1);
        // the diagnostic names the commit's file as git does, with its line
        assert!(
            r.stderr
                .contains(&format!("{}:farm.toml:11:11", &invalid[..12])),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("expected a string"), "{}", r.stderr);
        assert!(
            r.stderr
                .contains(&format!("commit {} not applied", &invalid[..12]))
                && r.stderr
                    .contains(&format!("the last good commit {}", &first[..12])),
            "{}",
            r.stderr
        );
        assert!(f.installed("a") && !f.installed("b"));
        // the refusal stays in the record until a later commit is applied
        let st = f.status(&url);
        assert_eq!(st["git"]["applied"], first.as_str(), "{st}");
        assert!(
            st["git"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(&invalid[..12])),
            "{st}"
        );
    }
    let mut p = vec!["plan"];
    p.extend(f.args(&url));
    let r = f.farm.run(&p);
    r.expect(1);
    assert!(r.stderr.contains("would not be applied"), "{}", r.stderr);

    // a later valid commit is applied and clears it
    let second = f.commit(&["a", "b"], "");
    apply(&f, &url, &[], &[]).expect(0);
    let st = f.status(&url);
    assert_eq!(st["git"]["applied"], second.as_str());
    assert!(st["git"]["last_error"].is_null(), "{st}");

    // a rewound ref
    git(&f.origin, &["reset", "-q", "--hard", &first]);
    let r = apply(&f, &url, &[], &[]);
    r.expect(1);
    assert!(r.stderr.contains("does not descend"), "{}", r.stderr);
    assert!(f.installed("b"));
    git(&f.origin, &["reset", "-q", "--hard", &second]);

    // an unreachable remote
    let away = f.farm.path("origin-away");
    fs::rename(&f.origin, &away).unwrap();
    let r = apply(&f, &url, &[], &[]);
    r.expect(1);
    assert!(
        r.stderr.contains("git fetch failed") && r.stderr.contains(&second[..12]),
        "{}",
        r.stderr
    );
    assert!(f.installed("a") && f.installed("b"));
    fs::rename(&away, &f.origin).unwrap();
    apply(&f, &url, &[], &[]).expect(0);
}

// ---------- the checkout is a trust boundary ----------

#[test]
fn item_6_files_of_a_commit_are_read_with_the_checkout_as_their_root() {
    let f = Fleet::new();
    let url = f.url();
    let secret = f
        .farm
        .write("secret.toml", "TOP SECRET = \"x\"\n[[broken\n");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let good = f.commit(&["a"], "");
    apply(&f, &url, &[], &[]).expect(0);
    let plugins = f.plugins.display().to_string();
    let plugin = |name: &str, source: &str| {
        format!("[plugin.{name}]\nversion = \"1\"\ndir = \"{plugins}\"\nsource = {source}\n")
    };
    // (what, how it is planted in the origin, what the file says, what the refusal names)
    type Case<'a> = (&'a str, Box<dyn Fn(&Path) + 'a>, String, &'a str);
    let cases: Vec<Case> = vec![
        (
            "a path source that is a link to a file outside",
            Box::new(|o: &Path| symlink(&secret, o.join("src/evil")).unwrap()),
            plugin("evil", "{ path = \"src/evil\" }"),
            "src/evil",
        ),
        (
            "a relative link that climbs out",
            Box::new(|o: &Path| symlink("../../../../secret.toml", o.join("src/climb")).unwrap()),
            plugin("climb", "{ path = \"src/climb\" }"),
            "src/climb",
        ),
        (
            "a directory source that is a link to /etc",
            Box::new(|o: &Path| symlink("/etc", o.join("rootfs")).unwrap()),
            plugin("etc", "{ dir = \"rootfs\" }"),
            "rootfs",
        ),
        (
            "an image file through a link to /proc/self",
            Box::new(|o: &Path| symlink("/proc/self", o.join("boot")).unwrap()),
            format!(
                "[image.i]\nroot = \"{}\"\narch = \"amd64\"\nrelease = \"x\"\npurpose = \"install\"\nfiles.linux = {{ path = \"boot/environ\" }}\n",
                f.farm.path("host/tftp").display()
            ),
            "boot",
        ),
        (
            "an include that is a link to a file outside",
            Box::new(|o: &Path| symlink(&secret, o.join("inc.toml")).unwrap()),
            "include = [\"inc.toml\"]\n".to_string(),
            "inc.toml",
        ),
        (
            "an absolute path outside the checkout",
            Box::new(|_: &Path| {}),
            plugin("abs", &format!("{{ path = \"{}\" }}", secret.display())),
            "outside the checkout",
        ),
    ];
    for (what, plant, extra, named) in cases {
        plant(&f.origin);
        fs::write(f.origin.join("farm.toml"), format!("version = 1\n{extra}")).unwrap();
        let bad = f.commit_staged(what, &[], &[]);
        let r = apply(&f, &url, &[], &[]);
        r.expect(1);
        assert!(
            r.all().contains(named) && r.all().contains(&bad[..12]),
            "{what}: {}",
            r.all()
        );
        assert!(
            r.all().contains("outside the checkout") || r.all().contains("leads outside"),
            "{what}: {}",
            r.all()
        );
        assert!(!r.all().contains("TOP SECRET"), "{what} showed the file");
        assert_eq!(f.status(&url)["git"]["applied"], good.as_str(), "{what}");
        // nothing of it landed
        for p in ["evil", "climb", "etc", "abs"] {
            assert!(!f.plugins.join(p).exists(), "{what} installed {p}");
        }
        assert!(!f.farm.path("host/tftp").exists(), "{what}");
        git(&f.origin, &["reset", "-q", "--hard", &good]);
        git(&f.origin, &["clean", "-fdq"]);
    }
    // the file itself as a link out of the checkout
    fs::remove_file(f.origin.join("farm.toml")).unwrap();
    symlink(&secret, f.origin.join("farm.toml")).unwrap();
    f.commit_staged("the file is a link", &[], &[]);
    let r = apply(&f, &url, &[], &[]);
    r.expect(1);
    assert!(r.all().contains("farm.toml"), "{}", r.all());
    assert!(!r.all().contains("TOP SECRET"), "{}", r.all());
    assert_eq!(
        fs::read_to_string(&secret).unwrap(),
        "TOP SECRET = \"x\"\n[[broken\n"
    );

    // without git too: the kernel's view is never a source
    let farm = Farm::new();
    farm.desired(
        "version = 1\n[plugin.env]\nversion = \"1\"\nsource = { path = \"/proc/self/environ\" }\n",
    );
    let r = farm.run(&["validate"]);
    r.expect(1);
    assert!(r.stderr.contains("kernel's view"), "{}", r.stderr);
}

#[test]
fn item_7_a_checkout_directory_others_could_write_to_is_refused_and_nothing_is_written() {
    let f = Fleet::new();
    let url = f.url();
    f.commit(&["a"], "");
    let victim = f.farm.write("victim", "do not touch\n");
    // writable by everyone
    fs::create_dir_all(&f.checkout).unwrap();
    fs::set_permissions(&f.checkout, fs::Permissions::from_mode(0o777)).unwrap();
    let r = apply(&f, &url, &[], &[]);
    r.expect(1);
    assert!(r.stderr.contains("writable by others"), "{}", r.stderr);
    assert!(
        fs::read_dir(&f.checkout).unwrap().next().is_none(),
        "wrote into it"
    );
    fs::set_permissions(&f.checkout, fs::Permissions::from_mode(0o755)).unwrap();

    // a repository planted as a symlink
    let elsewhere = f.farm.path("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    git(&elsewhere, &["init", "-q"]);
    let before = snapshot(&elsewhere, &[]);
    symlink(&elsewhere, f.checkout.join("repo")).unwrap();
    let r = apply(&f, &url, &[], &[]);
    r.expect(1);
    assert!(r.stderr.contains("repo is a symlink"), "{}", r.stderr);
    assert_eq!(snapshot(&elsewhere, &[]), before);
    assert!(!f.checkout.join("git.json").exists());
    fs::remove_file(f.checkout.join("repo")).unwrap();

    // the record planted as a symlink
    symlink(&victim, f.checkout.join("git.json")).unwrap();
    let r = apply(&f, &url, &[], &[]);
    r.expect(1);
    assert!(r.stderr.contains("git.json is a symlink"), "{}", r.stderr);
    let mut s = vec!["status"];
    s.extend(f.args(&url));
    f.farm.run(&s).expect(1);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "do not touch\n");
    assert!(!f.installed("a"));
    fs::remove_file(f.checkout.join("git.json")).unwrap();
    apply(&f, &url, &[], &[]).expect(0);
}

#[test]
#[ignore = "needs root (to hand the checkout to another user)"]
fn item_7_a_checkout_of_another_user_is_refused() {
    if !nix::unistd::geteuid().is_root() {
        skip("needs root");
        return;
    }
    let f = Fleet::new();
    let url = f.url();
    f.commit(&["a"], "");
    apply(&f, &url, &[], &[]).expect(0);
    let nobody = nix::unistd::Uid::from_raw(65534);
    let repo = f.checkout.join("repo");
    stdout_of(Command::new("chown").args(["-R", "65534"]).arg(&repo));
    f.commit(&["a", "b"], "");
    let before = snapshot(&repo, &[]);
    let r = apply(&f, &url, &[], &[]);
    r.expect(1);
    assert!(
        r.stderr.contains("repo belongs to uid 65534"),
        "{}",
        r.stderr
    );
    assert_eq!(
        snapshot(&repo, &[]),
        before,
        "the foreign repository was written to"
    );
    assert!(!f.installed("b"));
    stdout_of(Command::new("chown").args(["-R", "0"]).arg(&repo));
    nix::unistd::chown(&f.checkout, Some(nobody), None).unwrap();
    let r = apply(&f, &url, &[], &[]);
    r.expect(1);
    assert!(r.stderr.contains("belongs to uid 65534"), "{}", r.stderr);
}

#[test]
fn item_8_text_from_a_commit_never_drives_the_terminal() {
    let f = Fleet::new();
    let url = f.url();
    f.commit(&["a"], "");
    apply(&f, &url, &[], &[]).expect(0);
    // an escape in a comment (invalid TOML: the snippet shows it), and an
    // included file whose name carries one
    let evil = "\u{1b}]0;pwned\u{7}\u{1b}[2J\u{1b}[31m";
    fs::create_dir_all(f.origin.join("farm.d")).unwrap();
    fs::write(
        f.origin.join(format!("farm.d/{evil}.toml")),
        format!("[plugin.x]\nversion = 1 # {evil}\n"),
    )
    .unwrap();
    fs::write(
        f.origin.join("farm.toml"),
        format!("version = 1\ninclude = [\"farm.d/*.toml\"]\n# {evil}\n"),
    )
    .unwrap();
    f.commit_staged(&format!("subject {evil}"), &[], &[]);
    let r = apply(&f, &url, &[], &[]);
    r.expect(1);
    assert!(r.stderr.contains("not applied"), "{}", r.stderr);
    assert!(!r.all().contains('\u{1b}'), "{:?}", r.all());
    assert!(!r.all().contains('\u{7}'), "{:?}", r.all());
    // a watch in text mode says it too, escaped
    let mut a = vec!["watch", "--interval", "300ms"];
    a.extend(f.args(&url));
    let child = f
        .farm
        .cmd(&a)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the watch never refused the commit", LIMIT, || {
        f.status(&url)["git"]["refused"].is_string()
    });
    std::thread::sleep(Duration::from_millis(500));
    interrupt(&child);
    let out = child.wait_with_output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("not applied"), "{all}");
    assert!(!all.contains('\u{1b}') && !all.contains('\u{7}'), "{all:?}");
}

// ---------- btrfs send streams and export ----------

/// A read-only subvolume `name` under `dir` holding `files`.
fn subvolume(dir: &Path, name: &str, files: &[(&str, &[u8])]) -> std::path::PathBuf {
    fs::create_dir_all(dir).unwrap();
    let s = dir.join(name);
    btrfs(&["subvolume", "create", s.to_str().unwrap()]);
    for (f, data) in files {
        let p = s.join(f);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }
    btrfs(&["property", "set", "-ts", s.to_str().unwrap(), "ro", "true"]);
    s
}

/// `btrfs send` of `sub` (against `parent`) into `out`.
fn send(sub: &Path, parent: Option<&Path>, out: &Path) {
    let mut a = vec!["send", "-q"];
    if let Some(p) = parent {
        a.extend(["-p", p.to_str().unwrap()]);
    }
    a.extend(["-f", out.to_str().unwrap(), sub.to_str().unwrap()]);
    btrfs(&a);
}

/// Machines on a btrfs volume, each from a send stream `(name, revision, file, parent)`.
fn machines(farm: &Farm, ms: &[(&str, u32, &Path, Option<u32>)], extra: &str) {
    let mut toml = format!(
        "version = 1\n{extra}\n[volume.default]\npath = \"machines\"\nbackend = \"btrfs\"\n"
    );
    for (name, rev, file, parent) in ms {
        toml.push_str(&format!(
            "[machine.{name}]\nrevision = {rev}\nkeep = 2\nsource = {{ path = \"{}\", format = \"btrfs-send\", sha256 = \"{}\"{} }}\n",
            file.display(),
            sha_file(file),
            parent.map(|p| format!(", parent = {p}")).unwrap_or_default()
        ));
    }
    farm.desired(&toml);
}

fn stray(farm: &Farm, machine: &str) -> Vec<String> {
    fs::read_dir(farm.path(&format!("machines/{machine}")))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.') && n != ".reconcile")
                .collect()
        })
        .unwrap_or_default()
}

/// A `btrfs` first on PATH that logs how it is called and, on `receive`,
/// swaps the source file for other bytes before the real one runs.
fn logging_btrfs(farm: &Farm) -> (std::path::PathBuf, std::path::PathBuf) {
    let bin = farm.path("shim");
    fs::create_dir_all(&bin).unwrap();
    let log = farm.path("btrfs.log");
    let real = [
        "/usr/bin/btrfs",
        "/bin/btrfs",
        "/usr/sbin/btrfs",
        "/sbin/btrfs",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .unwrap();
    let shim = bin.join("btrfs");
    fs::write(
        &shim,
        format!(
            "#!/bin/sh\necho \"$@\" >> {log}\nif [ \"$1\" = receive ] && [ -n \"$SWAP_FROM\" ]; then cp \"$SWAP_FROM\" \"$SWAP_TO\"; fi\nexec {real} \"$@\"\n",
            log = log.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).unwrap();
    (bin, log)
}

#[test]
#[ignore = "needs root and btrfs-progs (a loop-mounted btrfs)"]
fn item_9_a_streams_digest_is_checked_before_receive_sees_a_byte() {
    let Some(mnt) = BtrfsMount::new() else { return };
    let farm = mnt.farm();
    let good = subvolume(
        &farm.path("build"),
        "good",
        &[("etc/os-release", b"ID=good\n")],
    );
    let evil = subvolume(
        &farm.path("build"),
        "evil",
        &[("etc/os-release", b"ID=evil\n")],
    );
    let stream = farm.path("kit-1.btrfs");
    let other = farm.path("other.btrfs");
    send(&good, None, &stream);
    send(&evil, None, &other);
    let (bin, log) = logging_btrfs(&farm);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    // declared digest of other bytes: refused, and receive never ran
    machines(&farm, &[("kit", 1, &other, None)], "");
    let toml = fs::read_to_string(farm.path("reconcile.toml"))
        .unwrap()
        .replace(&sha_file(&other), &sha_file(&stream))
        .replace(other.to_str().unwrap(), stream.to_str().unwrap());
    farm.desired(&toml);
    fs::copy(&other, &stream).unwrap();
    let r = farm.run_env(&["apply"], &[("PATH", &path)]);
    r.expect(1);
    assert!(
        r.stderr.contains("checksum mismatch") && r.stderr.contains("nothing was received"),
        "{}",
        r.stderr
    );
    let calls = fs::read_to_string(&log).unwrap_or_default();
    assert!(!calls.contains("receive"), "receive ran: {calls}");
    assert!(!farm.path("machines/kit/kit-1").exists() && stray(&farm, "kit").is_empty());
    // the right bytes, swapped for others the moment receive starts: what is
    // received is the copy that was checked
    send(&good, None, &farm.path("good.btrfs"));
    fs::copy(farm.path("good.btrfs"), &stream).unwrap();
    let r = farm.run_env(
        &["apply"],
        &[
            ("PATH", &path),
            ("SWAP_FROM", other.to_str().unwrap()),
            ("SWAP_TO", stream.to_str().unwrap()),
        ],
    );
    r.expect(0);
    assert!(
        fs::read_to_string(&log).unwrap().contains("receive -C"),
        "not chrooted"
    );
    assert_eq!(
        fs::read_to_string(farm.path("machines/kit/kit-1/etc/os-release")).unwrap(),
        "ID=good\n"
    );
}

/// CRC-32C (Castagnoli) as btrfs send computes it: seed 0, no final inversion.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc: u32 = 0;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// One command of a send stream: its type and its attributes (type, value).
type Cmd = (u16, Vec<(u16, Vec<u8>)>);

/// A send stream written by hand.
fn crafted(cmds: &[Cmd]) -> Vec<u8> {
    let mut out = b"btrfs-stream\0".to_vec();
    out.extend(1u32.to_le_bytes());
    for (cmd, attrs) in cmds {
        let mut body = Vec::new();
        for (t, v) in attrs {
            body.extend(t.to_le_bytes());
            body.extend((v.len() as u16).to_le_bytes());
            body.extend(v);
        }
        let mut c = (body.len() as u32).to_le_bytes().to_vec();
        c.extend(cmd.to_le_bytes());
        c.extend([0u8; 4]);
        c.extend(&body);
        let crc = crc32c(&c);
        c[6..10].copy_from_slice(&crc.to_le_bytes());
        out.extend(c);
    }
    out
}

#[test]
#[ignore = "needs root and btrfs-progs (a loop-mounted btrfs)"]
fn item_10_a_crafted_stream_writes_nothing_outside_its_subvolume() {
    let Some(mnt) = BtrfsMount::new() else { return };
    let farm = mnt.farm();
    // the helper's CRC is the one btrfs writes (checked on a real stream)
    let real = subvolume(&farm.path("build"), "real", &[("f", b"x")]);
    send(&real, None, &farm.path("real.btrfs"));
    let bytes = fs::read(farm.path("real.btrfs")).unwrap();
    let len = u32::from_le_bytes(bytes[17..21].try_into().unwrap()) as usize;
    let mut first = bytes[17..27 + len].to_vec();
    let want = u32::from_le_bytes(first[6..10].try_into().unwrap());
    first[6..10].copy_from_slice(&[0; 4]);
    assert_eq!(crc32c(&first), want);

    let outside = farm.path("outside");
    fs::create_dir_all(&outside).unwrap();
    let (path, link, ino, uuid, ctransid) = (15u16, 17u16, 3u16, 1u16, 2u16);
    let subvol = (
        1u16,
        vec![
            (path, b"evil".to_vec()),
            (uuid, vec![0x42; 16]),
            (ctransid, 1u64.to_le_bytes().to_vec()),
        ],
    );
    let end = (21u16, vec![]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a path with ..",
            crafted(&[
                subvol.clone(),
                (
                    3,
                    vec![
                        (path, b"../../../outside/dotdot".to_vec()),
                        (ino, 257u64.to_le_bytes().to_vec()),
                    ],
                ),
                end.clone(),
            ]),
            "leads out of its subvolume",
        ),
        (
            "an absolute path",
            crafted(&[
                subvol.clone(),
                (
                    3,
                    vec![
                        (path, format!("{}/abs", outside.display()).into_bytes()),
                        (ino, 257u64.to_le_bytes().to_vec()),
                    ],
                ),
                end.clone(),
            ]),
            "absolute",
        ),
        (
            // a link to the outside directory, then a file made through it:
            // receive runs chrooted into its scratch directory, where that path leads nowhere
            "a write through a symlink it made",
            crafted(&[
                subvol.clone(),
                (
                    8,
                    vec![
                        (path, b"link".to_vec()),
                        (ino, 257u64.to_le_bytes().to_vec()),
                        (link, outside.to_str().unwrap().as_bytes().to_vec()),
                    ],
                ),
                (
                    3,
                    vec![
                        (path, b"link/through".to_vec()),
                        (ino, 258u64.to_le_bytes().to_vec()),
                    ],
                ),
                end.clone(),
            ]),
            "btrfs receive failed",
        ),
    ];
    for (what, stream, why) in cases {
        let file = farm.path("evil.btrfs");
        fs::write(&file, &stream).unwrap();
        machines(&farm, &[("kit", 1, &file, None)], "");
        let r = farm.run(&["apply"]);
        r.expect(1);
        assert!(r.stderr.contains(why), "{what}: {}", r.stderr);
        assert!(
            fs::read_dir(&outside).unwrap().next().is_none(),
            "{what} wrote outside"
        );
        assert!(!farm.path("machines/kit/kit-1").exists(), "{what}");
        assert!(
            stray(&farm, "kit").is_empty(),
            "{what}: {:?}",
            stray(&farm, "kit")
        );
        for p in ["dotdot", "abs", "through"] {
            assert!(!farm.path(p).exists() && !farm.path(&format!("machines/{p}")).exists());
        }
    }
}

#[test]
#[ignore = "needs root and btrfs-progs (a loop-mounted btrfs)"]
fn item_11_parent_n_means_this_machines_revision_n() {
    let Some(mnt) = BtrfsMount::new() else { return };
    let farm = mnt.farm();
    let build = farm.path("build");
    let s0 = subvolume(&build, "s0", &[("etc/os-release", b"ID=zero\n")]);
    let s1 = subvolume(&build, "s1", &[("etc/os-release", b"ID=one\n")]);
    let s2 = build.join("s2");
    btrfs(&[
        "subvolume",
        "snapshot",
        s1.to_str().unwrap(),
        s2.to_str().unwrap(),
    ]);
    fs::write(s2.join("new-in-2"), "two\n").unwrap();
    btrfs(&["property", "set", "-ts", s2.to_str().unwrap(), "ro", "true"]);
    let (f0, f1, inc) = (
        farm.path("s0.btrfs"),
        farm.path("s1.btrfs"),
        farm.path("s2-inc.btrfs"),
    );
    send(&s0, None, &f0);
    send(&s1, None, &f1);
    send(&s2, Some(&s1), &inc);
    // a's revision 1 is another subvolume than the one the stream was made against
    machines(&farm, &[("a", 1, &f0, None), ("b", 1, &f1, None)], "");
    farm.run(&["apply"]).expect(0);
    machines(&farm, &[("a", 2, &inc, Some(1)), ("b", 1, &f1, None)], "");
    let r = farm.run(&["apply"]);
    r.expect(1);
    assert!(
        r.stderr.contains("is made against the subvolume"),
        "{}",
        r.stderr
    );
    assert!(!farm.path("machines/a/a-2").exists() && stray(&farm, "a").is_empty());

    // c's revision 1 is that subvolume received, but b received it first: receive
    // would take b's as the parent (it looks it up by UUID on the whole
    // filesystem, first received first); the snapshot it made is refused
    let Some(mnt2) = BtrfsMount::new() else {
        return;
    };
    let other = mnt2.farm();
    machines(&other, &[("b", 1, &f1, None)], "");
    other.run(&["apply"]).expect(0);
    machines(&other, &[("b", 1, &f1, None), ("c", 1, &f1, None)], "");
    other.run(&["apply"]).expect(0);
    machines(&other, &[("b", 1, &f1, None), ("c", 2, &inc, Some(1))], "");
    let r = other.run(&["apply"]);
    r.expect(1);
    assert!(
        r.stderr.contains("took its parent from another subvolume"),
        "{}",
        r.stderr
    );
    assert!(!other.path("machines/c/c-2").exists() && stray(&other, "c").is_empty());

    // alone on its filesystem, the same stream is taken
    let Some(mnt3) = BtrfsMount::new() else {
        return;
    };
    let third = mnt3.farm();
    machines(&third, &[("c", 1, &f1, None)], "");
    third.run(&["apply"]).expect(0);
    machines(&third, &[("c", 2, &inc, Some(1))], "");
    third.run(&["apply"]).expect(0);
    assert_eq!(
        fs::read_to_string(third.path("machines/c/c-2/new-in-2")).unwrap(),
        "two\n"
    );
}

#[test]
#[ignore = "needs root and btrfs-progs (a loop-mounted btrfs)"]
fn item_12_a_stream_that_expands_past_the_limit_fails_early_and_keeps_nothing() {
    let Some(mnt) = BtrfsMount::new() else { return };
    let farm = mnt.farm();
    let zeros = vec![0x5au8; 24 << 20];
    let big = subvolume(&farm.path("build"), "big", &[("big", &zeros)]);
    let raw = farm.path("big.btrfs");
    send(&big, None, &raw);
    let zst = farm.path("big.btrfs.zst");
    fs::write(
        &zst,
        zstd::encode_all(&fs::read(&raw).unwrap()[..], 3).unwrap(),
    )
    .unwrap();
    fs::remove_file(&raw).unwrap();
    assert!(
        fs::metadata(&zst).unwrap().len() < 1 << 20,
        "the bomb is small"
    );
    btrfs(&[
        "property",
        "set",
        "-ts",
        big.to_str().unwrap(),
        "ro",
        "false",
    ]);
    btrfs(&["subvolume", "delete", big.to_str().unwrap()]);
    let subvolumes = || {
        btrfs(&["subvolume", "list", mnt.path().to_str().unwrap()])
            .lines()
            .count()
    };
    let before = subvolumes();
    machines(
        &farm,
        &[("kit", 1, &zst, None)],
        "[settings]\nextract_limit = \"4MiB\"",
    );
    let r = farm.run(&["apply"]);
    r.expect(1);
    assert!(r.stderr.contains("expands past the limit"), "{}", r.stderr);
    assert!(!farm.path("machines/kit/kit-1").exists() && stray(&farm, "kit").is_empty());
    assert_eq!(subvolumes(), before, "a half-received subvolume was left");
    // under the limit it is taken
    machines(
        &farm,
        &[("kit", 1, &zst, None)],
        "[settings]\nextract_limit = \"64MiB\"",
    );
    farm.run(&["apply"]).expect(0);
    assert_eq!(
        fs::read(farm.path("machines/kit/kit-1/big")).unwrap().len(),
        24 << 20
    );
}

#[test]
#[ignore = "needs root and btrfs-progs (a loop-mounted btrfs)"]
fn item_13_export_never_writes_through_a_planted_symlink() {
    let Some(mnt) = BtrfsMount::new() else { return };
    let farm = mnt.farm();
    let s = subvolume(&farm.path("build"), "s", &[("f", b"1")]);
    let f = farm.path("s.btrfs");
    send(&s, None, &f);
    machines(&farm, &[("kit", 1, &f, None)], "");
    farm.run(&["apply"]).expect(0);
    let victim = farm.write("victim", "do not touch\n");
    let out = farm.path("out/kit-1.btrfs");
    fs::create_dir_all(out.parent().unwrap()).unwrap();
    symlink(&victim, &out).unwrap();
    symlink(&victim, out.with_extension("btrfs.partial")).unwrap();
    farm.run(&["export", "machine.kit@1", "-o", out.to_str().unwrap()])
        .expect(0);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "do not touch\n");
    let m = fs::symlink_metadata(&out).unwrap();
    assert!(
        m.is_file(),
        "the planted link was not replaced by the stream"
    );
    assert!(fs::read(&out).unwrap().starts_with(b"btrfs-stream\0"));
    // nothing else was left beside it
    let names: Vec<String> = fs::read_dir(out.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

// ---------- the console driver ----------

/// A stand-in `qemu-system-x86_64`: boot lines, then a shell that echoes what
/// is typed (as a terminal does) and runs reconcile's typed commands on the
/// host. A command naming OOPS_NOW gets a kernel oops printed between its
/// echo and its begin marker; with FAKE_SLOW the console arrives a byte at a time.
fn fake_qemu(farm: &Farm) -> String {
    let bin = farm.path("fake-qemu");
    fs::create_dir_all(&bin).unwrap();
    let qemu = bin.join("qemu-system-x86_64");
    fs::write(
        &qemu,
        r#"#!/bin/sh
if [ -n "$FAKE_SLOW" ]; then FAKE_SLOW= "$0" "$@" | dd bs=1 status=none; exit; fi
printf 'Linux version 6.1.0 (stand-in)\r\nkit: up\r\n'
while :; do
  printf 'kit# '
  IFS= read -r line || exit 0
  printf '%s\r\n' "$line"
  case "$line" in
    "printf '%s-B\n' "*|__rc=*) ;;
    *) continue ;;
  esac
  case "$line" in *OOPS_NOW*) printf '[    2.5] Oops: 0000 [#1] SMP NOPTI\r\n' ;; esac
  eval "$line"
done
"#,
    )
    .unwrap();
    fs::set_permissions(&qemu, fs::Permissions::from_mode(0o755)).unwrap();
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap())
}

fn qemu_farm(tests: &str, settings: &str) -> Farm {
    let farm = Farm::new();
    let disk = farm.path("kit.img");
    fs::File::create(&disk).unwrap().set_len(1 << 20).unwrap();
    farm.desired(&format!(
        r#"version = 1
[settings]
{settings}
[volume.default]
path = "machines"
backend = "dir"
[machine.kit]
revision = 1
kind = "disk"
source = {{ path = "kit.img" }}
vm = {{ accel = "tcg", memory = "64M", transport = "console" }}
console = {{ ready = 'kit: up', prompt = 'kit# ', shutdown = "exit" }}
[suite.vm]
machines = ["kit"]
executor = "qemu"
# the stand-in QEMU has no monitor to save or restore a VM with
fresh = "boot"
{tests}"#
    ));
    farm
}

/// A test's entry in the last run's report (its `output` is its folder).
fn result_of(farm: &Farm, test: &str) -> serde_json::Value {
    let rep = farm.report();
    rep["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == test)
        .unwrap_or_else(|| panic!("no {test} in {rep:#}"))
        .clone()
}

fn folder(t: &serde_json::Value) -> std::path::PathBuf {
    std::path::PathBuf::from(t["output"].as_str().unwrap())
}

#[test]
#[ignore = "needs qemu-img (qemu-utils) for the overlays"]
fn an_agent_that_cannot_start_is_an_infra_error_that_says_why_never_a_fallback() {
    if !have("qemu-img", "--version") {
        skip("needs qemu-img (qemu-utils)");
        return;
    }
    let farm = qemu_farm(
        "[suite.vm.test.hello]\nrun = [\"echo\", \"typed-on-the-console\"]\n",
        "",
    );
    // the default transport: the stand-in's "guest" has no virtio-serial port named reconcile.ctl
    let text = fs::read_to_string(farm.path("reconcile.toml")).unwrap();
    fs::write(
        farm.path("reconcile.toml"),
        text.replace(", transport = \"console\"", ""),
    )
    .unwrap();
    let path = fake_qemu(&farm);
    farm.run_env(&["apply", "--no-test"], &[("PATH", &path)])
        .expect(0);
    farm.run_env(&["test"], &[("PATH", &path)]).expect(4);
    let t = result_of(&farm, "vm.hello");
    assert_eq!(t["class"], "infra", "{t:#}");
    let reason = t["reason"].as_str().unwrap();
    assert!(
        reason.contains("agent did not start")
            && reason.contains("no virtio-serial port reconcile.ctl"),
        "{reason}"
    );
    assert!(
        reason.contains("transport = \"console\""),
        "the way out is named: {reason}"
    );
    // and the command was not typed on the console instead
    assert!(!fs::read_to_string(folder(&t).join("stdout.txt"))
        .unwrap_or_default()
        .contains("typed-on-the-console"));
}

#[test]
#[ignore = "needs qemu-img (qemu-utils) for the overlays"]
fn items_14_to_16_the_console_driver_is_bounded_checks_every_line_and_finds_split_markers() {
    if !have("qemu-img", "--version") {
        skip("needs qemu-img (qemu-utils)");
        return;
    }
    let farm = qemu_farm(
        r#"
[suite.vm.test.flood]
run = ["sh", "-c", "head -c 30000000 /dev/zero | tr '\\0' x; echo; echo 'after the flood'"]
expect = { stdout = ["after the flood"] }
[suite.vm.test.oops]
run = ["sh", "-c", "echo OOPS_NOW"]
[suite.vm.test.long-line]
run = ["sh", "-c", "head -c 65530 /dev/zero | tr '\\0' y; exit 3"]
[suite.vm.test.cap]
run = ["sh", "-c", "yes cap | head -c 9000000"]
"#,
        "log_limit = \"4 MiB\"",
    );
    let path = fake_qemu(&farm);
    farm.run_env(&["apply", "--no-test"], &[("PATH", &path)])
        .expect(0);
    let r = farm.run_env(&["test", "-j", "2"], &[("PATH", &path)]);
    r.expect(4);
    // a 30 MB line: cut in the logs (head, a note, its end), the test still ends on its status
    let flood = result_of(&farm, "vm.flood");
    assert_eq!(flood["result"], "PASS", "{flood:#}");
    let dir = folder(&flood);
    let console = fs::metadata(dir.join("console.txt")).unwrap().len();
    assert!(console < 3 << 20, "console.txt is {console} bytes");
    assert!(fs::read_to_string(dir.join("console.txt"))
        .unwrap()
        .contains("reconcile cut"));
    // an oops between the echo and the begin marker is the console's: the test fails as `check`
    let oops = result_of(&farm, "vm.oops");
    assert_eq!(oops["result"], "FAIL", "{oops:#}");
    assert_eq!(oops["class"], "check", "{oops:#}");
    let log = folder(&oops).join("console.txt");
    // and `reconcile checks` on the saved log decides the same
    let c = farm.run(&["checks", log.to_str().unwrap()]);
    c.expect(4);
    assert!(c.stdout.contains("kernel oops"), "{}", c.stdout);
    // output ending in a 65,530-byte line without newline: the marker is still found
    let long = result_of(&farm, "vm.long-line");
    assert_eq!(long["class"], "test", "{long:#}");
    assert_eq!(long["attempts"][0]["exit_status"], 3, "{long:#}");
    // past the log cap: stopped and failed as infra, saying which log
    let cap = result_of(&farm, "vm.cap");
    assert_eq!(cap["class"], "infra", "{cap:#}");
    assert!(
        cap["reason"]
            .as_str()
            .unwrap()
            .contains("reached its cap of 4 MiB"),
        "{cap:#}"
    );

    // the console a byte at a time: prompts and markers are still found
    let slow = qemu_farm(
        r#"
[suite.vm.test.slow]
run = ["sh", "-c", "echo one; printf two; exit 5"]
"#,
        "",
    );
    let path = fake_qemu(&slow);
    slow.run_env(&["apply", "--no-test"], &[("PATH", &path)])
        .expect(0);
    slow.run_env(&["test"], &[("PATH", &path), ("FAKE_SLOW", "1")])
        .expect(4);
    let r = result_of(&slow, "vm.slow");
    assert_eq!(r["attempts"][0]["exit_status"], 5, "{r:#}");
    let out = fs::read_to_string(folder(&r).join("stdout.txt")).unwrap();
    assert_eq!(out, "one\ntwo");
}

// ---------- test processes ----------

/// A copy of `sleep` under a name of its own: what a test leaves running is
/// found by that name (and nothing else on the host has it).
fn orphan_binary(farm: &Farm) -> String {
    let p = farm.path(&format!(
        "bin/orphan-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    ));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::copy("/bin/sleep", &p).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
    p.display().to_string()
}

/// Run `cmd` to its end within a minute (killed and failed past it); its
/// exit code, wall time and the CPU time it (and the children it waited
/// for) used — from its own wait4(2) rusage, whatever else runs meanwhile.
#[allow(clippy::zombie_processes)] // reaped by wait4 below, which also gives its rusage
fn bounded(mut cmd: Command) -> (Option<i32>, Duration, Duration) {
    let t0 = std::time::Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    loop {
        let mut status = 0;
        // SAFETY: wait4 fills the status and the rusage it is given.
        let mut u: nix::libc::rusage = unsafe { std::mem::zeroed() };
        let r = unsafe { nix::libc::wait4(pid, &mut status, nix::libc::WNOHANG, &mut u) };
        if r == pid {
            let t = |tv: nix::libc::timeval| {
                Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64)
            };
            let code = nix::libc::WIFEXITED(status).then(|| nix::libc::WEXITSTATUS(status));
            return (code, t0.elapsed(), t(u.ru_utime) + t(u.ru_stime));
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("{cmd:?} never ended: it waited for a process its test left behind");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn host_tests(farm: &Farm, orphan: &str) {
    farm.desired(&format!(
        r#"version = 1
[suite.s]
executor = "host"
[suite.s.test.daemon]
run = ["sh", "-c", "(setsid {orphan} 301 </dev/null >/dev/null 2>&1 &); echo started"]
[suite.s.test.holds-stdout]
run = ["sh", "-c", "setsid {orphan} 302 & echo started"]
[suite.s.test.timeout]
run = ["sh", "-c", "setsid {orphan} 303 & {orphan} 100"]
timeout = "2s"
[suite.s.test.long]
run = ["sh", "-c", "(setsid {orphan} 304 </dev/null >/dev/null 2>&1 &); echo up; {orphan} 100"]
"#
    ));
}

#[test]
fn items_18_19_no_process_of_a_host_test_outlives_it_and_a_timeout_ends_it_at_its_timeout() {
    let farm = Farm::new();
    let orphan = orphan_binary(&farm);
    host_tests(&farm, &orphan);
    let left = || processes_starting(&orphan);
    // at its end: a double-forked setsid daemon, and a grandchild holding stdout, are gone
    let (code, ..) = bounded(farm.cmd(&["test", "s.daemon", "s.holds-stdout"]));
    assert_eq!(code, Some(0));
    assert_eq!(left(), Vec::<i32>::new(), "a daemon outlived its test");
    // at its timeout: ended then, not when the pipe a grandchild holds closes, and without spinning
    let (code, wall, cpu) = bounded(farm.cmd(&["test", "s.timeout"]));
    assert_eq!(code, Some(4));
    let t = result_of(&farm, "s.timeout");
    assert_eq!(t["class"], "timeout", "{t:#}");
    assert!(cpu < wall / 2, "{cpu:?} of CPU in {wall:?}: it spun");
    assert_eq!(
        left(),
        Vec::<i32>::new(),
        "a process outlived its timed-out test"
    );
    // reconcile stopped (SIGTERM) or killed (SIGKILL) while a test runs: its processes go too
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGKILL,
    ] {
        let mut child = farm
            .cmd(&["test", "s.long"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("the test never started its daemon", LIMIT, || {
            processes_starting(&format!("{orphan} 304")).len() == 1
                && processes_starting(&format!("{orphan} 100")).len() == 1
        });
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        child.wait().unwrap();
        wait_until(
            &format!("a test's processes outlived reconcile ({sig})"),
            LIMIT,
            || left().is_empty(),
        );
    }
}

#[test]
#[ignore = "needs root (a user to run reconcile as) and util-linux's setpriv"]
fn items_18_not_root_the_host_executor_contains_its_tests_in_a_user_namespace() {
    if !nix::unistd::geteuid().is_root() || !have("setpriv", "--version") {
        skip("needs root and setpriv");
        return;
    }
    let farm = Farm::new();
    let orphan = orphan_binary(&farm);
    host_tests(&farm, &orphan);
    stdout_of(
        Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(farm.dir.path()),
    );
    let as_nobody = |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            BIN,
        ])
        .args(args)
        .current_dir(farm.dir.path())
        .env("HOME", farm.dir.path())
        .env("NO_COLOR", "1");
        c
    };
    let out = as_nobody(&["test", "s.daemon", "s.holds-stdout"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(!said.contains("no PID namespace"), "{said}");
    assert_eq!(
        processes_starting(&orphan),
        Vec::<i32>::new(),
        "a daemon outlived its test"
    );
    let mut child = as_nobody(&["test", "s.long"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the test never started its daemon", LIMIT, || {
        processes_starting(&format!("{orphan} 304")).len() == 1
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    wait_until("a test's processes outlived reconcile", LIMIT, || {
        processes_starting(&orphan).is_empty()
    });
}

#[test]
#[ignore = "needs root and busybox-static (the namespace executor on a test root filesystem)"]
fn items_18_19_no_process_of_a_namespace_test_outlives_it() {
    if !nix::unistd::geteuid().is_root() {
        skip("the namespace executor needs root");
        return;
    }
    let farm = Farm::new();
    let Some(_) = rootfs(&farm, "rootfs", "r1") else {
        return;
    };
    let n = 7000 + std::process::id() % 1000;
    farm.desired(&format!(
        r#"version = 1
[volume.default]
path = "machines"
backend = "dir"
[machine.m]
revision = 1
source = {{ dir = "rootfs" }}
[suite.ns]
machines = ["m"]
executor = "namespace"
[suite.ns.test.daemon]
run = ["/bin/sh", "-c", "(setsid sleep {n} </dev/null >/dev/null 2>&1 &); echo started"]
[suite.ns.test.timeout]
run = ["/bin/sh", "-c", "setsid sleep {} & sleep 100"]
timeout = "2s"
"#,
        n + 1
    ));
    farm.run(&["apply", "--no-test"]).expect(0);
    let (code, ..) = bounded(farm.cmd(&["test"]));
    assert_eq!(code, Some(4));
    assert_eq!(result_of(&farm, "ns.daemon")["result"], "PASS");
    assert_eq!(result_of(&farm, "ns.timeout")["class"], "timeout");
    for s in [n, n + 1] {
        assert_eq!(processes_starting(&format!("sleep {s}")), Vec::<i32>::new());
    }
}
