//! The Redfish HTTP layer: authentication, requests, ETags and task monitors.
//!
//! A thin client of cairn's own on reqwest + serde (CRATES.md: the published Redfish crates
//! each failed somewhere against sushy-tools). Authentication follows the specification's
//! preference: a session (`POST` to the service root's `Links.Sessions`, then
//! `X-Auth-Token`), falling back to HTTP Basic when the BMC has no SessionService. An
//! expired session is renewed once; a refused password is never sent again by this client.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::address::{BmcAddress, Credentials, Scheme};
use crate::bmc::{BmcError, BmcResult};
use crate::redfish::model;
use crate::tls::{self, Trust};

/// The largest response body read from a BMC. Real Redfish resources are kilobytes; a
/// larger answer is a broken or hostile BMC, refused before it fills memory.
pub const MAX_BODY_BYTES: usize = 16 << 20;

/// Connection options for a Redfish BMC.
#[derive(Debug, Clone)]
pub struct RedfishOptions {
    /// Certificate trust.
    pub trust: Trust,
    /// Limit for one HTTP request.
    pub request_timeout: Duration,
    /// Limit for a task monitor to finish.
    pub task_timeout: Duration,
    /// Whether to try a session before Basic authentication.
    pub sessions: bool,
}

impl Default for RedfishOptions {
    fn default() -> Self {
        RedfishOptions {
            trust: Trust::System,
            request_timeout: Duration::from_secs(30),
            task_timeout: Duration::from_secs(600),
            sessions: true,
        }
    }
}

#[derive(Debug, Clone)]
enum Auth {
    NotYet,
    Session {
        token: String,
        location: Option<String>,
    },
    Basic,
    /// Credentials were refused; the message is repeated without sending them again.
    Refused(String),
}

/// One answer from the BMC.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// `Location` header (task monitors, created sessions).
    pub location: Option<String>,
    /// `ETag` header.
    pub etag: Option<String>,
    /// Parsed body (`Null` when empty).
    pub body: Value,
}

/// What a request carries.
#[derive(Clone, Copy)]
enum Payload<'a> {
    Empty,
    Json(&'a Value),
    Upload(&'a Upload<'a>),
}

/// A file sent as `multipart/form-data` with a JSON part before it, as DSP0266 describes
/// for `MultipartHttpPushUri`: a part `UpdateParameters` (JSON) and a part `UpdateFile`.
#[derive(Debug, Clone, Copy)]
pub struct Upload<'a> {
    /// Name of the JSON part (`UpdateParameters`).
    pub parameters_name: &'a str,
    /// Its content.
    pub parameters: &'a Value,
    /// Name of the file part (`UpdateFile`).
    pub file_name: &'a str,
    /// The file sent.
    pub file: &'a Path,
}

/// Bytes of the file read at a time while uploading.
const UPLOAD_CHUNK: usize = 256 << 10;

type UploadStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = std::io::Result<Vec<u8>>> + Send + Sync + 'static>,
>;

impl Upload<'_> {
    /// The content type, the exact length and the body as a stream: the head, the file in
    /// chunks, the tail.
    async fn body(&self) -> std::io::Result<(String, u64, UploadStream)> {
        use futures::StreamExt;
        use tokio::io::AsyncReadExt;

        let mut nonce = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| std::io::Error::other("no system randomness for the boundary"))?;
        let boundary = format!("cairn-{}", hex::encode(nonce));
        let filename = self
            .file
            .file_name()
            .map(|n| n.to_string_lossy().replace(['"', '\\', '\r', '\n'], "_"))
            .unwrap_or_else(|| "image.bin".into());
        let head = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"\r\nContent-Type: application/json\r\n\r\n{}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n",
            self.parameters_name, self.parameters, self.file_name
        )
        .into_bytes();
        let tail = format!("\r\n--{boundary}--\r\n").into_bytes();
        let file = tokio::fs::File::open(self.file).await?;
        let size = file.metadata().await?.len();
        let length = head.len() as u64 + size + tail.len() as u64;
        let chunks = futures::stream::unfold(Some(file), |file| async move {
            let mut file = file?;
            let mut buf = vec![0u8; UPLOAD_CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(buf), Some(file)))
                }
                Err(e) => Some((Err(e), None)),
            }
        });
        let stream = futures::stream::iter([Ok(head)])
            .chain(chunks)
            .chain(futures::stream::iter([Ok(tail)]));
        Ok((
            format!("multipart/form-data; boundary={boundary}"),
            length,
            Box::pin(stream),
        ))
    }
}

/// An authenticated Redfish connection.
pub struct RedfishClient {
    http: reqwest::Client,
    /// `scheme://host:port/` of the BMC: the only origin credentials are sent to.
    base: Url,
    credentials: Credentials,
    auth: Mutex<Auth>,
    options: RedfishOptions,
}

impl std::fmt::Debug for RedfishClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedfishClient")
            .field("base", &self.base.as_str())
            .field("user", &self.credentials.username)
            .finish()
    }
}

fn transport(doing: String, e: reqwest::Error, timeout: Duration) -> BmcError {
    if e.is_timeout() {
        return BmcError::Timeout {
            doing,
            seconds: timeout.as_secs_f64(),
        };
    }
    // reqwest's Display hides the cause ("error sending request"); keep the chain.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    BmcError::Transport {
        doing,
        source: text.into(),
    }
}

impl RedfishClient {
    /// Prepares a client; nothing is sent until the first request.
    pub fn new(
        address: &BmcAddress,
        credentials: Credentials,
        options: RedfishOptions,
    ) -> BmcResult<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .connect_timeout(options.request_timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")));
        let scheme = match address.scheme {
            Scheme::Redfish => {
                let config = tls::client_config(&options.trust, &address.authority())
                    .map_err(|e| BmcError::Invalid(format!("{e}")))?;
                builder = builder.use_preconfigured_tls(config);
                "https"
            }
            Scheme::RedfishHttp => {
                let config = tls::trust_nothing().map_err(|e| BmcError::Invalid(format!("{e}")))?;
                builder = builder.use_preconfigured_tls(config);
                "http"
            }
            Scheme::Ipmi => return Err(BmcError::Invalid("not a Redfish address".into())),
        };
        let http = builder.build().map_err(|e| BmcError::Transport {
            doing: "building HTTP client".into(),
            source: Box::new(e),
        })?;
        let base = Url::parse(&format!("{scheme}://{}/", address.authority()))
            .map_err(|e| BmcError::Invalid(format!("BMC address {}: {e}", address.authority())))?;
        Ok(RedfishClient {
            http,
            base,
            credentials,
            auth: Mutex::new(Auth::NotYet),
            options,
        })
    }

    /// Resolves a path or a link from the BMC (`@odata.id`, `Location`) against the BMC's
    /// base URL. A link to any other origin is refused: the request would carry this BMC's
    /// password or session token to a host that is not the BMC.
    fn url(&self, path: &str) -> BmcResult<Url> {
        let url = self.base.join(path).map_err(|e| BmcError::Malformed {
            doing: format!("resolving link {path:?}"),
            detail: e.to_string(),
        })?;
        if url.origin() != self.base.origin() {
            return Err(BmcError::Malformed {
                doing: format!("following link {path:?}"),
                detail: format!(
                    "it points outside the BMC {}; credentials are only sent to the BMC itself",
                    self.base.origin().ascii_serialization()
                ),
            });
        }
        Ok(url)
    }

    fn refused(&self, detail: String) -> BmcError {
        BmcError::Auth {
            user: self.credentials.username.clone(),
            detail,
        }
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Payload<'_>,
        auth: &Auth,
        if_match: Option<&str>,
    ) -> BmcResult<Answer> {
        let doing = format!("{method} {path}");
        let url = self.url(path)?;
        let mut req = self
            .http
            .request(method, url)
            .header("Accept", "application/json")
            .header("OData-Version", "4.0");
        match auth {
            Auth::Session { token, .. } => req = req.header("X-Auth-Token", token),
            Auth::Basic => {
                req = req.basic_auth(
                    &self.credentials.username,
                    Some(self.credentials.password()),
                )
            }
            Auth::NotYet | Auth::Refused(_) => {}
        }
        if let Some(tag) = if_match {
            req = req.header("If-Match", tag);
        }
        // An upload may take far longer than a request for a resource.
        let mut limit = self.options.request_timeout;
        match body {
            Payload::Empty => {}
            Payload::Json(body) => req = req.json(body),
            Payload::Upload(upload) => {
                let (content_type, length, stream) =
                    upload.body().await.map_err(|e| BmcError::Transport {
                        doing: format!("{doing}: reading {}", upload.file.display()),
                        source: Box::new(e),
                    })?;
                limit = self.options.task_timeout;
                // A declared length, not chunked encoding: BMCs' embedded servers refuse
                // chunked uploads or buffer them without limit.
                req = req
                    .timeout(limit)
                    .header("Content-Type", content_type)
                    .header("Content-Length", length)
                    .body(reqwest::Body::wrap_stream(stream));
            }
        }
        let mut resp = req
            .send()
            .await
            .map_err(|e| transport(doing.clone(), e, limit))?;
        let status = resp.status();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let location = header("Location");
        let etag = header("ETag");
        let token = header("X-Auth-Token");
        let bytes = self.read_body(&doing, &mut resp).await?;
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(_) if !status.is_success() => Value::Null,
                Err(e) => {
                    return Err(BmcError::Malformed {
                        doing,
                        detail: format!("not JSON ({e}) in {} bytes", bytes.len()),
                    });
                }
            }
        };
        // The token travels only in the session answer; keep it where `login` looks.
        let body = match (token, body) {
            (Some(t), Value::Object(mut m)) => {
                m.insert("X-Auth-Token".into(), t.into());
                Value::Object(m)
            }
            (Some(t), Value::Null) => serde_json::json!({ "X-Auth-Token": t }),
            (_, b) => b,
        };
        Ok(Answer {
            status,
            location,
            etag: etag.or_else(|| model::string(&body, "@odata.etag")),
            body,
        })
    }

    /// Reads a body of at most [`MAX_BODY_BYTES`], chunk by chunk, so an endless or huge
    /// answer is cut off rather than buffered.
    async fn read_body(&self, doing: &str, resp: &mut reqwest::Response) -> BmcResult<Vec<u8>> {
        let too_big = || BmcError::Malformed {
            doing: doing.to_owned(),
            detail: format!("body larger than {} MiB", MAX_BODY_BYTES >> 20),
        };
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_BODY_BYTES as u64)
        {
            return Err(too_big());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| transport(doing.to_owned(), e, self.options.request_timeout))?
        {
            if bytes.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(too_big());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }

    /// Logs in: a session when the BMC offers one, else Basic.
    async fn login(&self) -> BmcResult<Auth> {
        if !self.options.sessions {
            return Ok(Auth::Basic);
        }
        let root = self
            .raw(
                Method::GET,
                "/redfish/v1/",
                Payload::Empty,
                &Auth::NotYet,
                None,
            )
            .await?;
        if !root.status.is_success() {
            return Err(status_error("GET /redfish/v1/", &root));
        }
        let sessions = model::link(root.body.get("Links").unwrap_or(&Value::Null), "Sessions")
            .map(str::to_owned);
        let Some(sessions) = sessions else {
            tracing::debug!(bmc = %self.base.as_str(), "no SessionService; using Basic authentication");
            return Ok(Auth::Basic);
        };
        let body = serde_json::json!({
            "UserName": self.credentials.username,
            "Password": self.credentials.password(),
        });
        let answer = self
            .raw(
                Method::POST,
                &sessions,
                Payload::Json(&body),
                &Auth::NotYet,
                None,
            )
            .await?;
        match answer.status {
            s if s.is_success() => match model::string(&answer.body, "X-Auth-Token") {
                Some(token) => Ok(Auth::Session {
                    token,
                    location: answer.location,
                }),
                None => Ok(Auth::Basic),
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(self.refused(
                model::error_message(&answer.body).unwrap_or_else(|| answer.status.to_string()),
            )),
            // No usable SessionService (405, 404, 501, ...): Basic is the fallback.
            _ => Ok(Auth::Basic),
        }
    }

    async fn current_auth(&self, renew: bool) -> BmcResult<Auth> {
        let mut auth = self.auth.lock().await;
        if let Auth::Refused(detail) = &*auth {
            return Err(self.refused(detail.clone()));
        }
        if matches!(*auth, Auth::NotYet) || (renew && matches!(*auth, Auth::Session { .. })) {
            match self.login().await {
                Ok(a) => *auth = a,
                Err(e @ BmcError::Auth { .. }) => {
                    *auth = Auth::Refused(match &e {
                        BmcError::Auth { detail, .. } => detail.clone(),
                        _ => String::new(),
                    });
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(auth.clone())
    }

    /// Sends one request, logging in first and renewing an expired session once.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> BmcResult<Answer> {
        let body = body.map_or(Payload::Empty, Payload::Json);
        self.send_payload(method, path, body, if_match).await
    }

    async fn send_payload(
        &self,
        method: Method,
        path: &str,
        body: Payload<'_>,
        if_match: Option<&str>,
    ) -> BmcResult<Answer> {
        let auth = self.current_auth(false).await?;
        let answer = self
            .raw(method.clone(), path, body, &auth, if_match)
            .await?;
        if answer.status != StatusCode::UNAUTHORIZED {
            return Ok(answer);
        }
        if let Auth::Session { .. } = auth {
            tracing::info!(bmc = %self.base.as_str(), "session expired; logging in again");
            let auth = self.current_auth(true).await?;
            let answer = self.raw(method, path, body, &auth, if_match).await?;
            if answer.status != StatusCode::UNAUTHORIZED {
                return Ok(answer);
            }
        }
        let detail =
            model::error_message(&answer.body).unwrap_or_else(|| "401 Unauthorized".into());
        *self.auth.lock().await = Auth::Refused(detail.clone());
        Err(self.refused(detail))
    }

    /// GET a resource; a non-2xx answer is an error.
    pub async fn get(&self, path: &str) -> BmcResult<Answer> {
        let answer = self.send(Method::GET, path, None, None).await?;
        if answer.status.is_success() {
            Ok(answer)
        } else {
            Err(status_error(&format!("GET {path}"), &answer))
        }
    }

    /// GET a resource's body.
    pub async fn get_json(&self, path: &str) -> BmcResult<Value> {
        Ok(self.get(path).await?.body)
    }

    /// PATCH with `If-Match` when the resource had an ETag; retries once on 412 with the
    /// fresh ETag. Waits for a task when the BMC answers 202.
    pub async fn patch(&self, path: &str, body: &Value, etag: Option<&str>) -> BmcResult<Answer> {
        let mut answer = self.send(Method::PATCH, path, Some(body), etag).await?;
        if answer.status == StatusCode::PRECONDITION_FAILED {
            let fresh = self.get(path).await?.etag;
            answer = self
                .send(Method::PATCH, path, Some(body), fresh.as_deref())
                .await?;
        }
        self.finish(&format!("PATCH {path}"), answer).await
    }

    /// POST (actions); waits for a task when the BMC answers 202.
    pub async fn post(&self, path: &str, body: &Value) -> BmcResult<Answer> {
        let answer = self.send(Method::POST, path, Some(body), None).await?;
        self.finish(&format!("POST {path}"), answer).await
    }

    /// POSTs a file as `multipart/form-data` (a Redfish `MultipartHttpPushUri`); waits for
    /// a task when the BMC answers 202. The file is streamed, not buffered, and read again
    /// if an expired session makes the request go twice.
    pub async fn post_upload(&self, path: &str, upload: &Upload<'_>) -> BmcResult<Answer> {
        let answer = self
            .send_payload(Method::POST, path, Payload::Upload(upload), None)
            .await?;
        self.finish(&format!("POST {path}"), answer).await
    }

    async fn finish(&self, doing: &str, answer: Answer) -> BmcResult<Answer> {
        if answer.status == StatusCode::ACCEPTED
            && let Some(monitor) = answer.location.clone()
        {
            return self.wait_task(doing, &monitor).await;
        }
        if answer.status.is_success() {
            Ok(answer)
        } else {
            Err(status_error(doing, &answer))
        }
    }

    /// Polls a task monitor until the task finishes, fails or the task timeout passes.
    pub async fn wait_task(&self, doing: &str, monitor: &str) -> BmcResult<Answer> {
        let start = Instant::now();
        let mut interval = Duration::from_millis(200);
        loop {
            let answer = self.send(Method::GET, monitor, None, None).await?;
            let state = if answer.status == StatusCode::ACCEPTED || answer.status.is_success() {
                model::task_done(&answer.body).map_err(|detail| BmcError::Status {
                    doing: doing.to_owned(),
                    status: "task failed".into(),
                    message: Some(detail),
                })?
            } else if answer.status == StatusCode::NOT_FOUND {
                // Monitors vanish once the task is done on some BMCs.
                true
            } else {
                return Err(status_error(
                    &format!("{doing}: task monitor {monitor}"),
                    &answer,
                ));
            };
            if state && answer.status != StatusCode::ACCEPTED {
                return Ok(answer);
            }
            if start.elapsed() > self.options.task_timeout {
                return Err(BmcError::Timeout {
                    doing: format!("{doing}: waiting for task {monitor}"),
                    seconds: start.elapsed().as_secs_f64(),
                });
            }
            tokio::time::sleep(interval).await;
            interval = (interval * 2).min(Duration::from_secs(5));
        }
    }

    /// Deletes the session, if one was made. Best effort: an error is only logged.
    pub async fn logout(&self) {
        let auth = std::mem::replace(&mut *self.auth.lock().await, Auth::NotYet);
        if let Auth::Session {
            location: Some(location),
            ..
        } = &auth
            && let Err(e) = self
                .raw(Method::DELETE, location, Payload::Empty, &auth, None)
                .await
        {
            tracing::debug!(bmc = %self.base.as_str(), error = %e, "deleting session failed");
        }
    }
}

/// The error for a non-success answer, with the BMC's own message.
pub fn status_error(doing: &str, answer: &Answer) -> BmcError {
    BmcError::Status {
        doing: doing.to_owned(),
        status: answer.status.to_string(),
        message: model::error_message(&answer.body),
    }
}
