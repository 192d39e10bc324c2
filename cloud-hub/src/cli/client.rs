//! The CLI's connection to a hub: where it is, which token to present, which CA to
//! trust. Flags win over environment variables, which win over the context file.

use anyhow::{Context, anyhow, bail};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use shared_proto::config::CliContext;
use std::path::PathBuf;

#[derive(Debug, Clone, clap::Args)]
pub struct HubArgs {
    /// Hub API base URL, e.g. https://hub.example:7440.
    #[arg(long, global = true, env = "FLOTILLA_HUB")]
    pub hub: Option<String>,
    /// API bearer token.
    #[arg(long, global = true, env = "FLOTILLA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the fleet CA the hub's certificate chains to.
    #[arg(long, global = true, env = "FLOTILLA_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Context file written by `flotilla hub serve` or `flotilla demo`.
    #[arg(long, global = true, env = "FLOTILLA_CONTEXT")]
    pub context: Option<PathBuf>,
    /// The namespace of the apps, configs and secrets to act on (default: `default`).
    #[arg(short = 'n', long, global = true, env = "FLOTILLA_NAMESPACE")]
    pub namespace: Option<String>,
}

impl HubArgs {
    /// The query that names `-n`'s namespace for an object of `kind` (`?namespace=…`),
    /// or nothing: the fleet's kinds have none, and the hub's default is `default`.
    pub fn namespace_query(&self, kind: shared_proto::Kind) -> String {
        match &self.namespace {
            Some(ns) if kind.is_namespaced() => format!("?namespace={ns}"),
            _ => String::new(),
        }
    }
}

fn default_context_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("flotilla").join("context.json"))
}

/// A resolved hub connection.
pub struct HubClient {
    pub base: String,
    pub quic: String,
    ca: rustls_pki_types::CertificateDer<'static>,
    http: reqwest::Client,
    tls: std::sync::Arc<rustls::ClientConfig>,
    token: String,
    /// The context file in use, if any.
    context_path: Option<std::path::PathBuf>,
}

/// An error the hub answered with.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HubError {
    pub status: StatusCode,
    pub message: String,
}

impl HubClient {
    pub fn connect(args: &HubArgs) -> anyhow::Result<HubClient> {
        let path = args.context.clone().or_else(|| default_context_path().filter(|p| p.exists()));
        let ctx: Option<CliContext> = match &path {
            Some(p) => {
                let bytes =
                    std::fs::read(p).with_context(|| format!("reading context file {}", p.display()))?;
                Some(
                    serde_json::from_slice(&bytes)
                        .with_context(|| format!("parsing context file {}", p.display()))?,
                )
            }
            None => None,
        };
        let base = args.hub.clone().or_else(|| ctx.as_ref().map(|c| c.hub.clone())).ok_or_else(|| {
            anyhow!("no hub given: pass --hub, set FLOTILLA_HUB, or point FLOTILLA_CONTEXT at a context file")
        })?;
        let token = args
            .token
            .clone()
            .or_else(|| ctx.as_ref().map(|c| c.token.clone()))
            .ok_or_else(|| anyhow!("no API token: pass --token or set FLOTILLA_TOKEN"))?;
        let ca_pem = match &args.ca_cert {
            Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            None => ctx.as_ref().map(|c| c.ca_cert_pem.clone()).ok_or_else(|| {
                anyhow!("no CA certificate to check the hub with: pass --ca-cert or a context file")
            })?,
        };
        // The fleet CA first; during a CA rotation, the CAs rotating in and out too.
        let cas = provisioning::pem::decode_certs(&ca_pem).context("parsing the CA certificates")?;
        let tls = provisioning::tls::api_client_config_trusting(&cas)?;
        let ca =
            cas.into_iter().next().ok_or_else(|| anyhow!("the CA certificate file holds no certificate"))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            // Long enough for `logs -f`: a followed log may be quiet for hours.
            .tcp_keepalive(std::time::Duration::from_secs(30))
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()?;
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("https://") {
            bail!("hub URL {base:?} must start with https://");
        }
        Ok(HubClient {
            base,
            quic: ctx.map(|c| c.quic).unwrap_or_default(),
            ca,
            http,
            tls,
            token,
            context_path: path,
        })
    }

    /// Writes the CAs to trust for the hub into the context file in use, if any (after
    /// a CA rotation step, so the CLI keeps trusting the hub).
    pub fn save_trusted(&self, pem: &str) -> anyhow::Result<Option<&std::path::Path>> {
        let Some(path) = self.context_path.as_deref() else { return Ok(None) };
        let mut ctx: CliContext = serde_json::from_slice(&std::fs::read(path)?)?;
        if ctx.ca_cert_pem == pem {
            return Ok(None);
        }
        ctx.ca_cert_pem = pem.to_string();
        provisioning::files::write_private_file(path, &serde_json::to_vec_pretty(&ctx)?)?;
        Ok(Some(path))
    }

    /// The fleet CA the hub's certificate chains to.
    pub fn ca_cert(&self) -> &rustls_pki_types::CertificateDer<'static> {
        &self.ca
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<reqwest::Body>,
        content_type: &str,
    ) -> anyhow::Result<(StatusCode, Value)> {
        self.request_with_headers(method, path, body, content_type).await.map(|(s, _, v)| (s, v))
    }

    pub async fn request_with_headers(
        &self,
        method: Method,
        path: &str,
        body: Option<reqwest::Body>,
        content_type: &str,
    ) -> anyhow::Result<(StatusCode, reqwest::header::HeaderMap, Value)> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.header(reqwest::header::CONTENT_TYPE, content_type).body(b);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach the hub at {}", self.base))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?;
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        if !status.is_success() {
            return Err(HubError { status, message: error_text(&value) }.into());
        }
        Ok((status, headers, value))
    }

    /// A GET whose body is read as it comes (a followed log).
    pub async fn get_stream(&self, path: &str) -> anyhow::Result<reqwest::Response> {
        self.get_stream_with(path, &[]).await
    }

    /// [`HubClient::get_stream`] with extra request headers (a watch's `Last-Event-ID`).
    pub async fn get_stream_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.get(&url).bearer_auth(&self.token);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach the hub at {}", self.base))?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.unwrap_or_default();
            let value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
            return Err(HubError { status, message: error_text(&value) }.into());
        }
        Ok(resp)
    }

    /// A WebSocket to `path` (with its query), over the same TLS trust as every call.
    pub async fn websocket(
        &self,
        path: &str,
    ) -> anyhow::Result<
        tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    > {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let authority = self.base.trim_start_matches("https://");
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        let addr = if authority.contains(':') { authority.to_string() } else { format!("{authority}:443") };
        let tcp =
            tokio::time::timeout(std::time::Duration::from_secs(10), tokio::net::TcpStream::connect(&addr))
                .await
                .map_err(|_| anyhow!("connecting to {addr} timed out"))?
                .with_context(|| format!("cannot reach the hub at {}", self.base))?;
        let name = rustls_pki_types::ServerName::try_from(
            host.trim_start_matches('[').trim_end_matches(']').to_string(),
        )
        .with_context(|| format!("{host:?} is not a server name"))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, tcp).await?;
        let mut req = format!("wss://{authority}{path}").into_client_request()?;
        req.headers_mut().insert("authorization", format!("Bearer {}", self.token).parse()?);
        match tokio_tungstenite::client_async(req, tls).await {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
                let body = resp.body().clone().unwrap_or_default();
                let value = serde_json::from_slice(&body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
                Err(HubError { status, message: error_text(&value) }.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.request(Method::GET, path, None, "").await?.1)
    }

    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<(StatusCode, Value)> {
        self.request(method, path, Some(serde_json::to_vec(body)?.into()), "application/json").await
    }
}

/// The hub's error body (RFC 9457 problem details: `detail`, and `errors` naming the
/// fields) as one readable message. Hubs before problem details sent `message` and
/// `fields`; those are read too.
fn error_text(v: &Value) -> String {
    let text = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    let mut out = text("detail").or_else(|| text("message")).unwrap_or_else(|| v.to_string());
    if let Some(fields) = v.get("errors").or_else(|| v.get("fields")).and_then(Value::as_array)
        && fields.len() > 1
    {
        for f in fields {
            out.push_str(&format!(
                "\n  {}: {}",
                f.get("field").and_then(Value::as_str).unwrap_or("?"),
                f.get("message").and_then(Value::as_str).unwrap_or("?")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::error_text;
    use serde_json::json;

    #[test]
    fn problem_details_read_as_one_message_with_each_field() {
        let problem = json!({ "type": "urn:flotilla:problem:invalid", "title": "Unprocessable Entity",
            "status": 422, "detail": "invalid object: a: bad; b: worse", "instance": "/api/v1/apps/web",
            "errors": [{ "field": "a", "message": "bad" }, { "field": "b", "message": "worse" }] });
        assert_eq!(error_text(&problem), "invalid object: a: bad; b: worse\n  a: bad\n  b: worse");
        let one = json!({ "type": "urn:flotilla:problem:not_found", "status": 404, "detail": "App \"x\" not found" });
        assert_eq!(error_text(&one), "App \"x\" not found");
        // A hub from before problem details.
        let old = json!({ "error": "invalid", "message": "m", "fields": [{ "field": "a", "message": "x" },
            { "field": "b", "message": "y" }] });
        assert_eq!(error_text(&old), "m\n  a: x\n  b: y");
    }
}
