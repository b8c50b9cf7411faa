//! Credentials from the standard chain, in the standard order: the
//! environment, the shared config and credentials files (a named profile),
//! a web identity token (a CI's OIDC role, through STS
//! `AssumeRoleWithWebIdentity`), the instance metadata service (IMDSv2).
//! Never from the desired-state file; never printed (the `Debug` form
//! redacts the secret and the session token).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::xml;

/// Why the chain gave no credentials, in words that say what to set.
#[derive(Debug, thiserror::Error)]
pub enum CredsError {
    #[error("{}", NONE_FOUND)]
    NoneFound,
    #[error("{}; instance metadata at {endpoint}: {why}", NONE_FOUND)]
    NoInstanceRole { endpoint: String, why: String },
    #[error("profile {name} has neither aws_access_key_id/aws_secret_access_key nor role_arn/web_identity_token_file")]
    EmptyProfile { name: String },
    #[error("profile {name} is in neither {} nor {}", .credentials.display(), .config.display())]
    NoProfile {
        name: String,
        credentials: PathBuf,
        config: PathBuf,
    },
    #[error("profile {name}: {source}")]
    InProfile {
        name: String,
        source: Box<CredsError>,
    },
    #[error("web identity token {}: {source}", .path.display())]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The token is a credential: only to STS over https, or to loopback.
    #[error("refusing to send the web identity token to {endpoint}: {why}")]
    InsecureSts { endpoint: String, why: String },
    #[error("STS at {endpoint}: {why}")]
    Sts { endpoint: String, why: String },
    #[error("STS at {endpoint} refused AssumeRoleWithWebIdentity for {role}: {message}")]
    StsRefused {
        endpoint: String,
        role: String,
        message: String,
    },
}

const NONE_FOUND: &str =
    "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, name a profile of \
     ~/.aws/credentials or ~/.aws/config (`profile` in the cloud, or AWS_PROFILE), set \
     AWS_WEB_IDENTITY_TOKEN_FILE with AWS_ROLE_ARN, or run on an instance with a role";

/// One set of credentials and where it came from (`environment`, `profile farm`,
/// `web identity`, `instance metadata`).
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("source", &self.source)
            .finish()
    }
}

/// What the chain reads: the process environment (a map, so tests can give
/// their own) and the home directory.
pub struct Env {
    pub vars: BTreeMap<String, String>,
    pub home: Option<PathBuf>,
}

impl Env {
    pub fn process() -> Env {
        Env {
            vars: std::env::vars().collect(),
            home: std::env::var_os("HOME").map(PathBuf::from),
        }
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.vars
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// Resolve credentials for `profile` (the cloud's `profile`, else
/// `AWS_PROFILE`, else `default`). `sts_endpoint` (never the EC2 endpoint)
/// serves `AssumeRoleWithWebIdentity` (`AWS_ENDPOINT_URL_STS` wins over it).
pub fn resolve(
    profile: Option<&str>,
    region: &str,
    sts_endpoint: Option<&str>,
    env: &Env,
) -> Result<Credentials, CredsError> {
    // 1. the environment
    if let (Some(id), Some(secret)) = (
        env.get("AWS_ACCESS_KEY_ID"),
        env.get("AWS_SECRET_ACCESS_KEY"),
    ) {
        return Ok(Credentials {
            access_key_id: id.into(),
            secret_access_key: secret.into(),
            session_token: env.get("AWS_SESSION_TOKEN").map(str::to_string),
            source: "environment".into(),
        });
    }
    // 2. the shared files
    let named = profile.or_else(|| env.get("AWS_PROFILE"));
    let name = named.unwrap_or("default");
    let files = ProfileFiles::read(env);
    match files.profile(name) {
        Some(p) => {
            if let (Some(id), Some(secret)) =
                (p.get("aws_access_key_id"), p.get("aws_secret_access_key"))
            {
                return Ok(Credentials {
                    access_key_id: id.clone(),
                    secret_access_key: secret.clone(),
                    session_token: p.get("aws_session_token").cloned(),
                    source: format!("profile {name}"),
                });
            }
            if let (Some(role), Some(token_file)) =
                (p.get("role_arn"), p.get("web_identity_token_file"))
            {
                return web_identity(
                    role,
                    Path::new(token_file),
                    p.get("role_session_name").map(String::as_str),
                    region,
                    sts_endpoint,
                    env,
                )
                .map_err(|e| CredsError::InProfile {
                    name: name.to_string(),
                    source: Box::new(e),
                });
            }
            if named.is_some() {
                return Err(CredsError::EmptyProfile {
                    name: name.to_string(),
                });
            }
        }
        None if named.is_some() => {
            return Err(CredsError::NoProfile {
                name: name.to_string(),
                credentials: files.credentials_path.clone(),
                config: files.config_path.clone(),
            })
        }
        None => {}
    }
    // 3. a web identity token
    if let (Some(token_file), Some(role)) = (
        env.get("AWS_WEB_IDENTITY_TOKEN_FILE"),
        env.get("AWS_ROLE_ARN"),
    ) {
        return web_identity(
            role,
            Path::new(token_file),
            env.get("AWS_ROLE_SESSION_NAME"),
            region,
            sts_endpoint,
            env,
        );
    }
    // 4. instance metadata
    if env
        .get("AWS_EC2_METADATA_DISABLED")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return Err(CredsError::NoneFound);
    }
    let imds = env
        .get("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .unwrap_or("http://169.254.169.254")
        .trim_end_matches('/')
        .to_string();
    instance_metadata(&imds).map_err(|why| CredsError::NoInstanceRole {
        endpoint: imds.clone(),
        why,
    })
}

/// The shared config and credentials files, parsed (INI: `[name]` in
/// credentials, `[profile name]` or `[default]` in config; `key = value`).
struct ProfileFiles {
    credentials_path: PathBuf,
    config_path: PathBuf,
    credentials: BTreeMap<String, BTreeMap<String, String>>,
    config: BTreeMap<String, BTreeMap<String, String>>,
}

impl ProfileFiles {
    fn read(env: &Env) -> ProfileFiles {
        let home = env.home.clone().unwrap_or_default();
        let credentials_path = env
            .get("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".aws/credentials"));
        let config_path = env
            .get("AWS_CONFIG_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".aws/config"));
        let load = |p: &Path, config: bool| {
            std::fs::read_to_string(p)
                .map(|t| parse_ini(&t, config))
                .unwrap_or_default()
        };
        ProfileFiles {
            credentials: load(&credentials_path, false),
            config: load(&config_path, true),
            credentials_path,
            config_path,
        }
    }

    /// The profile's keys: the credentials file wins over the config file, key by key.
    fn profile(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let a = self.config.get(name);
        let b = self.credentials.get(name);
        if a.is_none() && b.is_none() {
            return None;
        }
        let mut out = a.cloned().unwrap_or_default();
        out.extend(b.cloned().unwrap_or_default());
        Some(out)
    }
}

fn parse_ini(text: &str, config: bool) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let section = section.trim();
            current = if config {
                match section.strip_prefix("profile ") {
                    Some(n) => Some(n.trim().to_string()),
                    None if section == "default" => Some("default".into()),
                    // sso-session and services sections are not profiles
                    None => None,
                }
            } else {
                Some(section.to_string())
            };
            continue;
        }
        if let (Some(section), Some((k, v))) = (&current, line.split_once('=')) {
            out.entry(section.clone())
                .or_default()
                .insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

fn short_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(timeout))
        .timeout_global(Some(timeout * 3))
        .http_status_as_error(false)
        .build()
        .into()
}

/// STS `AssumeRoleWithWebIdentity` (an unsigned call: the token is the proof).
fn web_identity(
    role: &str,
    token_file: &Path,
    session: Option<&str>,
    region: &str,
    sts_endpoint: Option<&str>,
    env: &Env,
) -> Result<Credentials, CredsError> {
    let token = std::fs::read_to_string(token_file).map_err(|source| CredsError::TokenFile {
        path: token_file.to_path_buf(),
        source,
    })?;
    let endpoint = env
        .get("AWS_ENDPOINT_URL_STS")
        .map(str::to_string)
        .or_else(|| sts_endpoint.map(str::to_string))
        .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
    // the token is a credential: to STS over https, or to a loopback address
    crate::config::check::sts_endpoint(&endpoint).map_err(|why| CredsError::InsecureSts {
        endpoint: endpoint.clone(),
        why,
    })?;
    let sts = |why: String| CredsError::Sts {
        endpoint: endpoint.clone(),
        why,
    };
    // the session name the caller gave, else one naming this process
    let session = session
        .map(str::to_string)
        .unwrap_or_else(|| format!("reconcile-{}", std::process::id()));
    let body = super::query::form(&[
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", role),
        ("RoleSessionName", &session),
        ("WebIdentityToken", token.trim()),
    ]);
    let resp = short_agent(Duration::from_secs(10))
        .post(endpoint.trim_end_matches('/').to_string() + "/")
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .send(body.as_bytes())
        .map_err(|e| sts(e.to_string()))?;
    let status = resp.status().as_u16();
    let text = resp
        .into_body()
        .read_to_string()
        .map_err(|e| sts(e.to_string()))?;
    let doc = roxmltree::Document::parse(&text)
        .map_err(|e| sts(format!("answered {status} with no XML: {e}")))?;
    if status != 200 {
        return Err(CredsError::StsRefused {
            endpoint: endpoint.clone(),
            role: role.to_string(),
            message: xml::text(doc.root(), "Message").unwrap_or_else(|| format!("HTTP {status}")),
        });
    }
    let creds = xml::child(doc.root(), "Credentials")
        .ok_or_else(|| sts("answered without Credentials".into()))?;
    Ok(Credentials {
        access_key_id: xml::text(creds, "AccessKeyId").unwrap_or_default(),
        secret_access_key: xml::text(creds, "SecretAccessKey").unwrap_or_default(),
        session_token: xml::text(creds, "SessionToken"),
        source: format!("web identity ({role})"),
    })
}

/// IMDSv2: a session token first (PUT), then the role's credentials.
fn instance_metadata(endpoint: &str) -> Result<Credentials, String> {
    let agent = short_agent(Duration::from_secs(1));
    let token = agent
        .put(format!("{endpoint}/latest/api/token"))
        .header("x-aws-ec2-metadata-token-ttl-seconds", "21600")
        .send(&[][..])
        .map_err(|e| e.to_string())?;
    if token.status() != 200 {
        return Err(format!("token request answered {}", token.status()));
    }
    let token = token
        .into_body()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    let get = |path: &str| -> Result<String, String> {
        let r = agent
            .get(format!("{endpoint}{path}"))
            .header("x-aws-ec2-metadata-token", token.trim())
            .call()
            .map_err(|e| e.to_string())?;
        if r.status() != 200 {
            return Err(format!("{path} answered {}", r.status()));
        }
        r.into_body().read_to_string().map_err(|e| e.to_string())
    };
    let base = "/latest/meta-data/iam/security-credentials/";
    let role = get(base)?;
    let role = role.lines().next().unwrap_or("").trim().to_string();
    if role.is_empty() {
        return Err("the instance has no role".into());
    }
    let doc: serde_json::Value =
        serde_json::from_str(&get(&format!("{base}{role}"))?).map_err(|e| e.to_string())?;
    let field = |k: &str| doc.get(k).and_then(|v| v.as_str()).map(str::to_string);
    Ok(Credentials {
        access_key_id: field("AccessKeyId").ok_or("no AccessKeyId")?,
        secret_access_key: field("SecretAccessKey").ok_or("no SecretAccessKey")?,
        session_token: field("Token"),
        source: format!("instance metadata (role {role})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)], home: &Path) -> Env {
        Env {
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            home: Some(home.to_path_buf()),
        }
    }

    #[test]
    fn the_environment_comes_first_then_the_named_profile() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join(".aws")).unwrap();
        std::fs::write(
            d.path().join(".aws/credentials"),
            "[default]\naws_access_key_id = AKDEFAULT\naws_secret_access_key = s1\n\n[farm]\naws_access_key_id=AKFARM\naws_secret_access_key=s2\naws_session_token = tok\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join(".aws/config"),
            "[profile cfgonly]\naws_access_key_id = AKCFG\naws_secret_access_key = s3\n[sso-session x]\nsso_region = eu\n",
        )
        .unwrap();
        let e = env(
            &[
                ("AWS_ACCESS_KEY_ID", "AKENV"),
                ("AWS_SECRET_ACCESS_KEY", "s0"),
            ],
            d.path(),
        );
        let c = resolve(Some("farm"), "us-east-1", None, &e).unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.source.as_str()),
            ("AKENV", "environment")
        );

        let e = env(&[], d.path());
        let c = resolve(Some("farm"), "us-east-1", None, &e).unwrap();
        assert_eq!(c.access_key_id, "AKFARM");
        assert_eq!(c.session_token.as_deref(), Some("tok"));
        assert_eq!(c.source, "profile farm");
        assert_eq!(
            resolve(None, "us-east-1", None, &e).unwrap().access_key_id,
            "AKDEFAULT"
        );
        let e = env(&[("AWS_PROFILE", "cfgonly")], d.path());
        assert_eq!(
            resolve(None, "us-east-1", None, &e).unwrap().access_key_id,
            "AKCFG"
        );

        let err = resolve(Some("nope"), "us-east-1", None, &env(&[], d.path())).unwrap_err();
        assert!(matches!(err, CredsError::NoProfile { .. }), "{err}");
        assert!(
            err.to_string().contains("profile nope is in neither"),
            "{err}"
        );
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let c = Credentials {
            access_key_id: "AKID".into(),
            secret_access_key: "very-secret".into(),
            session_token: Some("also-secret".into()),
            source: "environment".into(),
        };
        let shown = format!("{c:?}");
        assert!(
            shown.contains("AKID") && !shown.contains("secret\""),
            "{shown}"
        );
        assert!(!shown.contains("very-secret") && !shown.contains("also-secret"));
    }

    #[test]
    fn no_source_at_all_says_where_it_looked() {
        let d = tempfile::tempdir().unwrap();
        let e = env(&[("AWS_EC2_METADATA_DISABLED", "true")], d.path());
        let err = resolve(None, "us-east-1", None, &e).unwrap_err();
        assert!(matches!(err, CredsError::NoneFound), "{err}");
        let err = err.to_string();
        assert!(
            err.contains("AWS_ACCESS_KEY_ID") && err.contains("AWS_WEB_IDENTITY_TOKEN_FILE"),
            "{err}"
        );
    }
}
