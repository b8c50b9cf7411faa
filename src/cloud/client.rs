//! Signed requests to one cloud: SigV4 with the official signer, sent with
//! the HTTP client the rest of reconcile uses, retried with jittered
//! exponential backoff on throttling, 5xx and transport errors, bounded by
//! connect and read timeouts. Errors carry the service's code, message and
//! request id, and name the cloud and endpoint.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;

use super::creds::Credentials;

/// How hard to try: attempts and the backoff between them (full jitter).
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 6,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
        }
    }
}

/// A failed call, as the service (or the network) reported it.
#[derive(Debug, Clone)]
pub struct CallError {
    /// `InvalidAMIID.NotFound`, `Throttling`, `HTTP 500`, `unreachable`…
    pub code: String,
    pub message: String,
    pub request_id: Option<String>,
    pub status: Option<u16>,
    pub attempts: u32,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(id) = &self.request_id {
            write!(f, " (request id {id})")?;
        }
        if self.attempts > 1 {
            write!(f, " after {} attempts", self.attempts)?;
        }
        Ok(())
    }
}

/// A response with a 2xx status.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a request carries.
pub enum Body<'a> {
    Empty,
    /// EC2 Query parameters, form-encoded.
    Form(String),
    Json(String),
    /// Raw bytes with their SHA-256 (hex), which the signature covers.
    Bytes(&'a [u8], String),
}

/// One cloud's endpoint, region and credentials.
pub struct Api {
    /// The cloud's name in the desired-state file, for messages.
    pub cloud: String,
    pub region: String,
    endpoint: Option<String>,
    agent: ureq::Agent,
    creds: Credentials,
    pub retry: Retry,
    /// Requests sent (each attempt), for tests and benchmarks.
    pub sent: AtomicU64,
}

impl Api {
    pub fn new(
        cloud: &str,
        region: &str,
        endpoint: Option<&str>,
        creds: Credentials,
        timeouts: (Duration, Duration),
    ) -> Api {
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(timeouts.0))
            .timeout_recv_response(Some(timeouts.1))
            .timeout_recv_body(Some(timeouts.1))
            .timeout_send_body(Some(timeouts.1))
            .http_status_as_error(false)
            .build()
            .into();
        Api {
            cloud: cloud.to_string(),
            region: region.to_string(),
            endpoint: endpoint.map(|e| e.trim_end_matches('/').to_string()),
            agent,
            creds,
            retry: Retry::default(),
            sent: AtomicU64::new(0),
        }
    }

    /// Where `service` answers: the cloud's endpoint, or AWS's regional one.
    pub fn endpoint(&self, service: &str) -> String {
        match &self.endpoint {
            Some(e) => e.clone(),
            None => format!("https://{service}.{}.amazonaws.com", self.region),
        }
    }

    /// Where the credentials came from (never the credentials themselves).
    pub fn credential_source(&self) -> &str {
        &self.creds.source
    }

    /// Send a signed request, retrying what is worth retrying.
    pub fn send(
        &self,
        service: &str,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Body,
    ) -> Result<Response, CallError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let err = match self.send_once(service, method, path, headers, &body) {
                Ok(r) => return Ok(r),
                Err(e) => e,
            };
            let retryable = matches!(err.status, Some(429 | 500 | 502 | 503 | 504) | None)
                || THROTTLING.contains(&err.code.as_str());
            let refused = err.status.is_none() && err.code == "unreachable";
            if !retryable || attempt >= self.retry.attempts {
                return Err(CallError {
                    attempts: attempt,
                    ..err
                });
            }
            // a refused connection is retried too, but briefly: an endpoint that is down stays down
            let exp = self.retry.base.saturating_mul(1 << (attempt - 1).min(16));
            let wait = jitter(exp.min(if refused {
                self.retry.base * 4
            } else {
                self.retry.cap
            }));
            std::thread::sleep(wait);
        }
    }

    fn send_once(
        &self,
        service: &str,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &Body,
    ) -> Result<Response, CallError> {
        let url = format!("{}{path}", self.endpoint(service));
        let (content_type, bytes, signable): (Option<&str>, &[u8], SignableBody) = match body {
            Body::Empty => (None, &[], SignableBody::Bytes(&[])),
            Body::Form(f) => (
                Some("application/x-www-form-urlencoded; charset=utf-8"),
                f.as_bytes(),
                SignableBody::Bytes(f.as_bytes()),
            ),
            Body::Json(j) => (
                Some("application/json"),
                j.as_bytes(),
                SignableBody::Bytes(j.as_bytes()),
            ),
            Body::Bytes(b, sha) => (
                Some("application/octet-stream"),
                b,
                SignableBody::Precomputed(sha.clone()),
            ),
        };
        let mut all: Vec<(&str, String)> = headers.to_vec();
        if let Some(ct) = content_type {
            all.push(("content-type", ct.to_string()));
        }
        let signed = self
            .sign(service, method, &url, &all, signable)
            .map_err(|e| CallError {
                code: "signing".into(),
                message: e,
                request_id: None,
                status: Some(0),
                attempts: 1,
            })?;
        self.sent.fetch_add(1, Ordering::Relaxed);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        for (k, v) in all
            .iter()
            .map(|(k, v)| (*k, v))
            .chain(signed.iter().map(|(k, v)| (*k, v)))
        {
            req = req.header(k, v.as_str());
        }
        let req = req.body(bytes.to_vec()).map_err(|e| CallError {
            code: "request".into(),
            message: e.to_string(),
            request_id: None,
            status: Some(0),
            attempts: 1,
        })?;
        let resp = self.agent.run(req).map_err(|e| CallError {
            code: "unreachable".into(),
            message: format!("{} did not answer: {e}", self.endpoint(service)),
            request_id: None,
            status: None,
            attempts: 1,
        })?;
        let status = resp.status().as_u16();
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = resp
            .into_body()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .map_err(|e| CallError {
                code: "unreachable".into(),
                message: format!("{} broke off its answer: {e}", self.endpoint(service)),
                request_id: None,
                status: None,
                attempts: 1,
            })?;
        let r = Response {
            status,
            headers,
            body,
        };
        if (200..300).contains(&status) {
            return Ok(r);
        }
        Err(error_of(&r))
    }

    /// The SigV4 headers for a request (authorization, date, token, payload hash).
    fn sign(
        &self,
        service: &str,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
        body: SignableBody,
    ) -> Result<Vec<(&'static str, String)>, String> {
        let identity = aws_credential_types::Credentials::new(
            self.creds.access_key_id.clone(),
            self.creds.secret_access_key.clone(),
            self.creds.session_token.clone(),
            None,
            "reconcile",
        )
        .into();
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(service)
            .time(SystemTime::now())
            .settings(settings)
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let request = SignableRequest::new(
            method,
            url,
            headers.iter().map(|(k, v)| (*k, v.as_str())),
            body,
        )
        .map_err(|e| e.to_string())?;
        let (instructions, _) = sign(request, &params)
            .map_err(|e| e.to_string())?
            .into_parts();
        let out = instructions
            .headers()
            .map(|(k, v)| (static_name(k), v.to_string()))
            .collect();
        Ok(out)
    }
}

/// The signer's header names, as 'static (it only ever adds these).
fn static_name(k: &str) -> &'static str {
    match k.to_ascii_lowercase().as_str() {
        "authorization" => "authorization",
        "x-amz-date" => "x-amz-date",
        "x-amz-security-token" => "x-amz-security-token",
        "x-amz-content-sha256" => "x-amz-content-sha256",
        _ => "x-amz-unknown",
    }
}

const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "SlowDown",
    "TooManyRequestsException",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
];

/// The code, message and request id of an error answer (EC2 XML or EBS JSON).
fn error_of(r: &Response) -> CallError {
    let text = String::from_utf8_lossy(&r.body);
    let mut code = None;
    let mut message = None;
    let mut request_id = r
        .header("x-amzn-requestid")
        .or_else(|| r.header("x-amz-request-id"))
        .map(str::to_string);
    if let Ok(doc) = roxmltree::Document::parse(&text) {
        code = super::xml::text(doc.root(), "Code");
        message = super::xml::text(doc.root(), "Message");
        request_id = request_id
            .or_else(|| super::xml::text(doc.root(), "RequestID"))
            .or_else(|| super::xml::text(doc.root(), "RequestId"));
    } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
        message = v
            .get("Message")
            .or_else(|| v.get("message"))
            .and_then(|m| m.as_str())
            .map(str::to_string);
        code = v.get("Reason").and_then(|m| m.as_str()).map(str::to_string);
    }
    let code = code
        .or_else(|| {
            r.header("x-amzn-errortype")
                .map(|t| t.split(':').next().unwrap_or(t).to_string())
        })
        .unwrap_or_else(|| format!("HTTP {}", r.status));
    let message = message.unwrap_or_else(|| {
        let t: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
        if t.trim().is_empty() {
            "no message".into()
        } else {
            crate::output::escape(t.trim()).into_owned()
        }
    });
    CallError {
        code,
        message,
        request_id,
        status: Some(r.status),
        attempts: 1,
    }
}

/// A random duration in [0, d] (full jitter), from the std hasher's random keys.
fn jitter(d: Duration) -> Duration {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    let r = h.finish() as f64 / u64::MAX as f64;
    d.mul_f64(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_of_both_protocols_keep_code_message_and_request_id() {
        let xml = Response {
            status: 400,
            headers: vec![],
            body: b"<Response><Errors><Error><Code>InvalidAMIID.NotFound</Code><Message>no ami-1</Message></Error></Errors><RequestID>req-1</RequestID></Response>".to_vec(),
        };
        let e = error_of(&xml);
        assert_eq!(
            e.to_string(),
            "InvalidAMIID.NotFound: no ami-1 (request id req-1)"
        );
        let json = Response {
            status: 400,
            headers: vec![
                ("x-amzn-RequestId".into(), "req-2".into()),
                (
                    "x-amzn-ErrorType".into(),
                    "ValidationException:http://x".into(),
                ),
            ],
            body: br#"{"Message":"bad block","Reason":"INVALID_BLOCK"}"#.to_vec(),
        };
        let e = error_of(&json);
        assert_eq!(e.to_string(), "INVALID_BLOCK: bad block (request id req-2)");
        let html = Response {
            status: 500,
            headers: vec![],
            body: b"<!DOCTYPE html><html><title>500</title>".to_vec(),
        };
        assert_eq!(error_of(&html).code, "HTTP 500");
    }

    #[test]
    fn jitter_stays_within_its_bound() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_millis(50)) <= Duration::from_millis(50));
        }
    }
}
