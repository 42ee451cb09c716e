//! One kept-alive HTTP/1.1 connection, as one virtual user or one closed-loop worker holds.
//! No pool and no retries: a request that fails is reported as failed.

use std::net::SocketAddr;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Where the server is: `http://host:port` (plain HTTP; put a TLS terminator's backend here).
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub authority: String,
}

impl Target {
    pub async fn parse(host: &str) -> Result<Target> {
        let base = host.trim_end_matches('/').to_string();
        let Some(authority) = base.strip_prefix("http://") else {
            bail!("--host must be http://host:port (got {host}); https is not supported");
        };
        if authority.contains('/') {
            bail!("--host takes no path (got {host})");
        }
        let with_port = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(&with_port)
            .await
            .with_context(|| format!("resolving {with_port}"))?
            .next()
            .ok_or_else(|| anyhow!("{with_port} resolves to no address"))?;
        Ok(Target {
            addr,
            authority: authority.to_string(),
        })
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.authority, path_and_query)
    }
}

/// A response: status and the whole body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("response body is not JSON")
    }
}

pub struct Conn {
    target: Target,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub fn new(target: &Target) -> Conn {
        Conn {
            target: target.clone(),
            sender: None,
        }
    }

    async fn ready(&mut self) -> Result<&mut SendRequest<Full<Bytes>>> {
        // A kept-alive connection the server has closed is replaced before sending (not
        // counted as a failure); one that breaks during a request is.
        if let Some(s) = self.sender.as_mut()
            && s.ready().await.is_err()
        {
            self.sender = None;
        }
        if self.sender.is_none() {
            let stream = TcpStream::connect(self.target.addr)
                .await
                .with_context(|| format!("connecting to {}", self.target.addr))?;
            stream.set_nodelay(true)?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .context("HTTP handshake")?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.sender = Some(sender);
        }
        self.sender.as_mut().ok_or_else(|| anyhow!("no connection"))
    }

    /// Sends one request and reads the whole response.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Bytes>,
    ) -> Result<Reply> {
        let authority = self.target.authority.clone();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, authority)
            .header(header::ACCEPT, "application/json");
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(body.unwrap_or_default()))?;
        let sender = self.ready().await?;
        let result = async {
            let response = sender.send_request(req).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>(Reply { status, body })
        }
        .await;
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                self.sender = None;
                Err(anyhow!("{e}"))
            }
        }
    }

    pub async fn get(&mut self, path: &str, token: Option<&str>) -> Result<Reply> {
        self.send(Method::GET, path, token, None).await
    }

    pub async fn post_json(
        &mut self,
        path: &str,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<Reply> {
        let bytes = Bytes::from(serde_json::to_vec(body)?);
        self.send(Method::POST, path, token, Some(bytes)).await
    }
}
