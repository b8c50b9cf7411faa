//! `watch --listen`: the front door a farm's monitoring talks to.
//!
//! - `/metrics`: Prometheus exposition (OpenMetrics when the scraper asks
//!   for it, as Prometheus does; text 0.0.4 otherwise, as promtool reads);
//! - `/healthz`: 200 while the loop is alive, 503 with why once it stalls;
//! - `/readyz`: 200 when the last converge succeeded, 503 with why;
//! - `/status`: the `status --json` document, observed on request;
//! - `/`: a small HTML page, and `/runs/<run>/<test>/<log>` the logs it links to.
//!
//! hyper (HTTP/1.1) on a tokio current-thread runtime of its own thread:
//! the watch loop never waits for a client, and a client never for a
//! converge. Observing (`/status`, `/`) runs on tokio's blocking threads.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::ops::monitor::Monitor;
use crate::render::page;

/// A client has this long to send its request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The server, running until dropped.
pub struct Server {
    /// Where it listens (the port chosen, when 0 was asked for).
    pub address: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `--listen`'s value: `PORT` (on 127.0.0.1), or `ADDRESS:PORT`.
pub fn parse_listen(s: &str) -> std::result::Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|_| {
        format!("`{s}` is not a port or an address with a port (127.0.0.1:9560, [::1]:9560)")
    })
}

/// Bind now (so a taken port is an error before watch starts) and serve.
pub fn start(addr: SocketAddr, monitor: Arc<Monitor>) -> Result<Server> {
    let cannot = |e: std::io::Error| Error::Usage(format!("cannot listen on {addr}: {e}"));
    let listener = std::net::TcpListener::bind(addr).map_err(cannot)?;
    listener.set_nonblocking(true).map_err(cannot)?;
    let address = listener.local_addr().map_err(cannot)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(cannot)?;
    let (stop, stopped) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("reconcile-listen".into())
        .spawn(move || runtime.block_on(serve(listener, monitor, stopped)))
        .map_err(cannot)?;
    Ok(Server {
        address,
        stop: Some(stop),
        thread: Some(thread),
    })
}

async fn serve(
    listener: std::net::TcpListener,
    monitor: Arc<Monitor>,
    mut stopped: oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // out of descriptors, say: do not spin
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let monitor = monitor.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let monitor = monitor.clone();
                async move { Ok::<_, Infallible>(route(req, monitor).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

const TEXT: &str = "text/plain; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

fn probe(r: std::result::Result<(), String>) -> Response<Full<Bytes>> {
    match r {
        Ok(()) => reply(StatusCode::OK, TEXT, "ok\n"),
        Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{why}\n")),
    }
}

/// Run `f` on a blocking thread (it observes the disk).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

async fn route(
    req: Request<hyper::body::Incoming>,
    monitor: Arc<Monitor>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET and HEAD\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/metrics" => {
            let openmetrics = req
                .headers()
                .get(ACCEPT)
                .and_then(|a| a.to_str().ok())
                .is_some_and(|a| a.contains("application/openmetrics-text"));
            let (content_type, body) = monitor.metrics(openmetrics);
            reply(StatusCode::OK, content_type, body)
        }
        "/healthz" => probe(monitor.healthy()),
        "/readyz" => probe(monitor.ready()),
        "/status" => match blocking(move || monitor.status()).await {
            Some(Ok(Some(report))) => {
                let mut body = serde_json::to_vec_pretty(&report).unwrap_or_default();
                body.push(b'\n');
                reply(StatusCode::OK, "application/json", body)
            }
            Some(Ok(None)) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                "no desired state loaded yet\n",
            ),
            Some(Err(e)) => reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("{e}\n")),
            None => reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, "status failed\n"),
        },
        "/" => {
            let page = blocking(move || {
                let runs = monitor.runs_dir();
                page::index(&monitor.view(), runs.as_deref())
            })
            .await;
            match page {
                Some(html) => reply(StatusCode::OK, HTML, html),
                None => reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, "page failed\n"),
            }
        }
        p if p.starts_with("/runs/") => {
            let rel = PathBuf::from(
                percent_encoding::percent_decode_str(&p["/runs/".len()..])
                    .decode_utf8_lossy()
                    .into_owned(),
            );
            let name = rel.display().to_string();
            match blocking(move || monitor.run_file(&rel)).await {
                Some(Ok(bytes)) => reply(
                    StatusCode::OK,
                    HTML,
                    page::log(&name, &String::from_utf8_lossy(&bytes)),
                ),
                Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    reply(StatusCode::NOT_FOUND, TEXT, format!("{name}: not found\n"))
                }
                Some(Err(e)) => reply(StatusCode::FORBIDDEN, TEXT, format!("{name}: {e}\n")),
                None => reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, "read failed\n"),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: /, /metrics, /healthz, /readyz, /status\n",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_takes_a_port_or_an_address() {
        assert_eq!(parse_listen("9560").unwrap().to_string(), "127.0.0.1:9560");
        assert_eq!(
            parse_listen("0.0.0.0:80").unwrap().to_string(),
            "0.0.0.0:80"
        );
        assert_eq!(
            parse_listen("[::1]:9560").unwrap().to_string(),
            "[::1]:9560"
        );
        let e = parse_listen("localhost").unwrap_err();
        assert!(e.contains("not a port or an address"), "{e}");
    }
}
