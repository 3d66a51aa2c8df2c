//! The planner's one way to a language model: `POST {AGX_LLM_URL}/chat/completions` in the
//! OpenAI-compatible wire format that llama.cpp's `llama-server`, Ollama, vLLM and hosted
//! services speak.
//!
//! Everything that comes back is untrusted: the body is read up to [`MAX_ANSWER_BYTES`] and
//! no further, error messages are made safe for a terminal and shortened, and a redirect is
//! refused (it would carry the key elsewhere). The key is read from `AGX_LLM_API_KEY` or the
//! file `AGX_LLM_API_KEY_FILE` names, sent only in the `Authorization` header, never printed
//! or logged, and never sent in clear text off this machine.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use agenix_proto::text::clean;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use zeroize::Zeroizing;

/// Most bytes of a chat-completions response read: a plan is at most 1 MiB, and a JSON
/// string may escape it to twice that.
pub(crate) const MAX_ANSWER_BYTES: u64 = 3 << 20;
/// Most bytes of a key file.
const MAX_KEY_BYTES: u64 = 16 * 1024;
/// Requests sent for one answer when the server says it is busy (429, 502, 503, 504).
const TRIES: u32 = 4;
/// The wait before the second try; doubled for each next one.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest `Retry-After` honoured; a server asking for more is an error naming it.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Where the model is and how to reach it, from the environment.
#[derive(Clone)]
pub(crate) struct LlmConfig {
    /// The base URL, ending in `/v1` (no trailing slash).
    pub(crate) url: String,
    /// The model name the server knows.
    pub(crate) model: String,
    key: Option<Zeroizing<String>>,
    /// How long one request may take, from connecting to the last byte of the answer.
    pub(crate) timeout: Duration,
}

impl fmt::Debug for LlmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmConfig")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("key", &self.key.as_ref().map(|_| "(set)"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl LlmConfig {
    /// Reads `AGX_LLM_URL`, `AGX_LLM_MODEL` and the key (`AGX_LLM_API_KEY`, or the file
    /// `AGX_LLM_API_KEY_FILE` names; neither is needed by a local server).
    pub(crate) fn from_env(timeout: Duration) -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let url = var("AGX_LLM_URL").context(
            "AGX_LLM_URL is not set: point it at an OpenAI-compatible server's base URL, such \
             as http://127.0.0.1:8080/v1 (llama-server) or http://127.0.0.1:11434/v1 (Ollama)",
        )?;
        let url = url.trim().trim_end_matches('/').to_string();
        let model = var("AGX_LLM_MODEL")
            .context("AGX_LLM_MODEL is not set: name the model the server should use")?;
        if model.len() > 256 || model.chars().any(char::is_control) {
            bail!("AGX_LLM_MODEL must be a model's name: one line, at most 256 bytes");
        }
        let key = match (var("AGX_LLM_API_KEY"), std::env::var_os("AGX_LLM_API_KEY_FILE")) {
            (Some(_), Some(_)) => {
                bail!("both AGX_LLM_API_KEY and AGX_LLM_API_KEY_FILE are set: keep one")
            }
            (Some(k), None) => Some(Zeroizing::new(k.trim().to_string())),
            (None, Some(path)) if !path.is_empty() => Some(read_key(&PathBuf::from(path))?),
            _ => None,
        };
        if key.as_ref().is_some_and(|k| !k.bytes().all(|b| b.is_ascii_graphic())) {
            bail!("the API key holds characters an HTTP header cannot carry (spaces, non-ASCII)");
        }
        let cfg = Self { url, model, key, timeout };
        cfg.check_url()?;
        Ok(cfg)
    }

    /// Refuses a URL that is not http(s), and a key sent in clear text off this machine.
    fn check_url(&self) -> Result<()> {
        let uri: ureq::http::Uri = self
            .url
            .parse()
            .with_context(|| format!("AGX_LLM_URL {:?} is not a URL", clean(&self.url)))?;
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            bail!(
                "AGX_LLM_URL carries credentials: put the key in AGX_LLM_API_KEY_FILE (or \
                 AGX_LLM_API_KEY), never in the URL"
            );
        }
        if self.url.ends_with("/chat/completions") {
            bail!("AGX_LLM_URL is the base URL (ending in /v1): agx adds /chat/completions itself");
        }
        if uri.query().is_some() || self.url.contains('#') {
            bail!("AGX_LLM_URL must be a base URL ending in /v1, without a query or a fragment");
        }
        let host = self.host();
        match uri.scheme_str() {
            Some("https") => Ok(()),
            Some("http") if self.key.is_none() || is_loopback(&host) => Ok(()),
            Some("http") => bail!(
                "AGX_LLM_URL is http:// to {host}, off this machine: the API key would cross \
                 the network in clear text; use https://"
            ),
            _ => bail!("AGX_LLM_URL {:?} must start with http:// or https://", clean(&self.url)),
        }
    }
}

impl LlmConfig {
    /// The URL's host, without brackets.
    fn host(&self) -> String {
        self.url
            .parse::<ureq::http::Uri>()
            .ok()
            .and_then(|u| u.host().map(|h| h.trim_matches(['[', ']']).to_string()))
            .unwrap_or_default()
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Reads a key file, refusing one that others can read (as for signer keys).
fn read_key(path: &std::path::Path) -> Result<Zeroizing<String>> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read AGX_LLM_API_KEY_FILE {}", path.display()))?;
    if !meta.is_file() {
        bail!(
            "AGX_LLM_API_KEY_FILE {} is not a regular file (a key file holds the key on one line)",
            path.display()
        );
    }
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "AGX_LLM_API_KEY_FILE {} is accessible by others (mode {:o}); run chmod 600 on it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let bytes = Zeroizing::new(crate::files::read_capped(path, MAX_KEY_BYTES)?);
    let text = std::str::from_utf8(&bytes)
        .with_context(|| format!("AGX_LLM_API_KEY_FILE {} is not text", path.display()))?;
    let key = text.trim();
    if key.is_empty() || key.contains(['\r', '\n']) {
        bail!("AGX_LLM_API_KEY_FILE {} must hold the key on one line", path.display());
    }
    Ok(Zeroizing::new(key.to_string()))
}

/// How the answer's shape is asked for. Servers that do not take one are asked with the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// `response_format: {"type": "json_schema", ...}`: the server constrains the output.
    JsonSchema,
    /// `response_format: {"type": "json_object"}`: any JSON object.
    JsonObject,
    /// Nothing asked: the instructions alone ask for the JSON.
    Plain,
}

impl Format {
    fn next(self) -> Option<Self> {
        match self {
            Self::JsonSchema => Some(Self::JsonObject),
            Self::JsonObject => Some(Self::Plain),
            Self::Plain => None,
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Message {
    pub(crate) role: &'static str,
    pub(crate) content: String,
}

/// What the model said.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    /// The message's text.
    pub(crate) content: String,
    /// The server stopped it at its length limit: it is cut off.
    pub(crate) truncated: bool,
}

/// A chat-completions client.
pub(crate) struct Llm {
    cfg: LlmConfig,
    agent: ureq::Agent,
    format: Format,
}

impl Llm {
    pub(crate) fn new(cfg: LlmConfig) -> Self {
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::PlatformVerifier)
            .build();
        // A proxy is for reaching other hosts; one asked to reach "loopback" would reach its
        // own, and would see a key sent in clear text to this machine.
        let proxy = if is_loopback(&cfg.host()) { None } else { ureq::Proxy::try_from_env() };
        let agent = ureq::Agent::config_builder()
            .proxy(proxy)
            .timeout_global(Some(cfg.timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .tls_config(tls)
            .user_agent(concat!("agx/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Self { cfg, agent, format: Format::JsonSchema }
    }

    /// Which model answers.
    pub(crate) fn model(&self) -> &str {
        &self.cfg.model
    }

    /// Where the model is: to make another client like this one.
    pub(crate) fn config(&self) -> &LlmConfig {
        &self.cfg
    }

    /// Asks for the next message of `messages`, shaped by `schema` where the server takes
    /// one. A server that refuses the shape (400 or 422) is asked again with the next
    /// [`Format`], and keeps that one for later calls; a busy one (429, 502 to 504) is asked
    /// again after a backoff, [`TRIES`] times at most.
    pub(crate) fn complete(&mut self, messages: &[Message], schema: &Value) -> Result<Answer> {
        loop {
            match self.send(messages, schema)? {
                Sent::Answer(a) => return Ok(a),
                Sent::Unsupported(why) => match self.format.next() {
                    Some(next) => {
                        tracing::info!(from = ?self.format, to = ?next, "the server refused the response format: {why}");
                        self.format = next;
                    }
                    None => bail!("the language model server refused the request: {why}"),
                },
            }
        }
    }

    fn body(&self, messages: &[Message], schema: &Value) -> Value {
        let mut body = json!({
            "model": self.cfg.model,
            "messages": messages,
            "temperature": 0,
            "stream": false,
        });
        let format = match self.format {
            Format::JsonSchema => Some(json!({
                "type": "json_schema",
                "json_schema": { "name": "agenix_plan", "schema": schema },
            })),
            Format::JsonObject => Some(json!({ "type": "json_object" })),
            Format::Plain => None,
        };
        if let (Some(f), Some(obj)) = (format, body.as_object_mut()) {
            obj.insert("response_format".into(), f);
        }
        body
    }

    fn send(&self, messages: &[Message], schema: &Value) -> Result<Sent> {
        let url = format!("{}/chat/completions", self.cfg.url);
        let body = serde_json::to_vec(&self.body(messages, schema))?;
        let mut backoff = FIRST_BACKOFF;
        // --llm-timeout bounds the whole answer, the waits between tries included.
        let deadline = Instant::now() + self.cfg.timeout;
        for attempt in 1..=TRIES {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut req = self
                .agent
                .post(&url)
                .config()
                .timeout_global(Some(left))
                .build()
                .header("content-type", "application/json");
            if let Some(key) = &self.cfg.key {
                req = req.header("authorization", format!("Bearer {}", key.as_str()));
            }
            let mut resp = req.send(&body[..]).map_err(|e| self.link_error(e))?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(retry_after);
            let bytes = resp
                .body_mut()
                .with_config()
                .limit(MAX_ANSWER_BYTES)
                .read_to_vec()
                .map_err(|e| self.link_error(e))?;
            let said = || self.redact(&server_message(&bytes));
            match status {
                200 => return parse_answer(&bytes).map(Sent::Answer),
                400 | 422 => return Ok(Sent::Unsupported(format!("{status}: {}", said()))),
                429 | 502..=504 if attempt < TRIES => {
                    let wait = retry_after.unwrap_or(backoff);
                    if wait > MAX_RETRY_AFTER {
                        bail!(
                            "the language model server is busy ({status}) and asks to wait {} s, \
                             over the {} s agx waits",
                            wait.as_secs(),
                            MAX_RETRY_AFTER.as_secs()
                        );
                    }
                    if Instant::now() + wait >= deadline {
                        bail!(
                            "the language model server is busy ({status}: {}), and waiting {:?} \
                             more would pass --llm-timeout ({:?})",
                            said(),
                            wait,
                            self.cfg.timeout
                        );
                    }
                    tracing::warn!(
                        status,
                        attempt,
                        "the language model server is busy; trying again in {wait:?}"
                    );
                    std::thread::sleep(wait);
                    backoff *= 2;
                }
                429 | 502..=504 => {
                    bail!("the language model server answered {status} {TRIES} times: {}", said())
                }
                401 | 403 => bail!(
                    "the language model server refused the key ({status}: {}); check \
                     AGX_LLM_API_KEY or AGX_LLM_API_KEY_FILE",
                    said()
                ),
                _ => bail!("the language model server answered {status}: {}", said()),
            }
        }
        bail!("the language model server stayed busy after {TRIES} tries")
    }

    /// `text` with the key, should a server repeat it, replaced.
    fn redact(&self, text: &str) -> String {
        match &self.cfg.key {
            Some(key) if key.len() >= 4 => text.replace(key.as_str(), "[the API key]"),
            _ => text.to_string(),
        }
    }

    fn link_error(&self, e: ureq::Error) -> anyhow::Error {
        match e {
            ureq::Error::Timeout(_) => anyhow::anyhow!(
                "no complete answer from the language model at {} within {:?}",
                self.cfg.url,
                self.cfg.timeout
            ),
            ureq::Error::BodyExceedsLimit(_) => anyhow::anyhow!(
                "the language model's answer is over {MAX_ANSWER_BYTES} bytes: refused unread"
            ),
            e => anyhow::anyhow!("cannot reach the language model at {}: {e}", self.cfg.url),
        }
    }
}

enum Sent {
    Answer(Answer),
    Unsupported(String),
}

/// How long `Retry-After` asks to wait: seconds, or an HTTP date (RFC 9110).
fn retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    match v.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => httpdate::parse_http_date(v)
            .ok()
            .map(|at| at.duration_since(std::time::SystemTime::now()).unwrap_or_default()),
    }
}

/// Parses a chat-completions response, strictly enough: no duplicate keys; the choice with
/// `index` 0 (else the first); its message text (a string, or text parts joined); how it
/// ended (`stop`, or `length`: cut off). A refusal or any other ending is an error.
fn parse_answer(bytes: &[u8]) -> Result<Answer> {
    agenix_proto::json::check_duplicate_keys(bytes).map_err(|e| {
        anyhow::anyhow!("the language model server's response is not clean JSON: {e}")
    })?;
    let v: Value = serde_json::from_slice(bytes)
        .context("the language model server's response is not JSON")?;
    let choices = v
        .get("choices")
        .and_then(Value::as_array)
        .context("the language model server's response has no choices")?;
    let choice = choices
        .iter()
        .find(|c| c.get("index").and_then(Value::as_u64) == Some(0))
        .or_else(|| choices.first())
        .context("the language model server's response has no choices")?;
    let message = choice.get("message").context("the language model's choice has no message")?;
    if let Some(why) = message.get("refusal").and_then(Value::as_str).filter(|r| !r.is_empty()) {
        bail!("the language model refused: {}", crate::show::one_line(why));
    }
    let content = match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => bail!("the language model's message has no text"),
    };
    let truncated = match choice.get("finish_reason") {
        None | Some(Value::Null) => false,
        Some(Value::String(r)) if r == "stop" => false,
        Some(Value::String(r)) if r == "length" => true,
        Some(other) => bail!(
            "the language model's answer ended with finish_reason {}, not with a plan",
            clean(&other.to_string())
        ),
    };
    Ok(Answer { content, truncated })
}

/// What an error response says, safe to print: `error.message`, `error` or the body's start.
fn server_message(bytes: &[u8]) -> String {
    let v: Option<Value> = serde_json::from_slice(bytes).ok();
    let text = v
        .as_ref()
        .and_then(|v| {
            let e = v.get("error")?;
            e.get("message").and_then(Value::as_str).or_else(|| e.as_str()).map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).into_owned());
    // One line: a server's text must not pose as agx's own lines.
    let text = crate::show::one_line(&text);
    let mut short: String = text.chars().take(300).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    if short.trim().is_empty() { "(no message)".into() } else { short }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_and_say_when_cut_off() {
        let a = parse_answer(
            br#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"{}"},"finish_reason":"length"}],"usage":{}}"#,
        )
        .unwrap();
        assert_eq!(a.content, "{}");
        assert!(a.truncated);
        assert!(parse_answer(br#"{"choices":[]}"#).is_err());
        assert!(parse_answer(b"<html>").is_err());
        // The choice with index 0, wherever it is; text parts joined.
        let a = parse_answer(
            br#"{"choices":[{"index":1,"message":{"content":"no"}},{"index":0,"message":{"content":[{"type":"text","text":"{"},{"type":"image_url"},{"type":"text","text":"}"}]}}]}"#,
        )
        .unwrap();
        assert_eq!((a.content.as_str(), a.truncated), ("{}", false));
        for body in [
            &br#"{"choices":[{"message":{"content":"{}"},"finish_reason":"content_filter"}]}"#[..],
            br#"{"choices":[{"message":{"content":"{}","refusal":"I cannot"}}]}"#,
            br#"{"choices":[{"message":{"content":"{}","content":"{}"}}]}"#,
            br#"{"choices":[{"message":{"content":null}}]}"#,
        ] {
            assert!(parse_answer(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        assert_eq!(retry_after(" 7 "), Some(Duration::from_secs(7)));
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        let wait = retry_after(&soon).unwrap();
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30), "{wait:?}");
        assert_eq!(retry_after("Thu, 01 Jan 1970 00:00:00 GMT"), Some(Duration::ZERO));
        assert_eq!(retry_after("-1"), None);
        assert_eq!(retry_after("soon"), None);
    }

    #[test]
    fn server_messages_are_short_and_clean() {
        assert_eq!(
            server_message(br#"{"error":{"message":"no \u001b[2Jsuch model"}}"#),
            "no such model"
        );
        assert_eq!(server_message(br#"{"error":"busy"}"#), "busy");
        assert_eq!(server_message(&[b'a'; 1000]).chars().count(), 301);
        assert_eq!(server_message(b""), "(no message)");
        assert_eq!(server_message(br#"{"error":"a\nwrote x\r\n"}"#), r"a\nwrote x\n");
    }

    #[test]
    fn keys_stay_on_this_machine_or_go_over_tls() {
        let cfg = |url: &str, key: bool| LlmConfig {
            url: url.into(),
            model: "m".into(),
            key: key.then(|| Zeroizing::new("secret".into())),
            timeout: Duration::from_secs(1),
        };
        assert!(cfg("http://127.0.0.1:8080/v1", true).check_url().is_ok());
        assert!(cfg("http://[::1]:8080/v1", true).check_url().is_ok());
        assert!(cfg("http://localhost:11434/v1", true).check_url().is_ok());
        assert!(cfg("https://api.example.com/v1", true).check_url().is_ok());
        assert!(cfg("http://10.0.0.5:8080/v1", false).check_url().is_ok());
        let e = cfg("http://10.0.0.5:8080/v1", true).check_url().unwrap_err();
        assert!(e.to_string().contains("clear text"), "{e}");
        assert!(cfg("ftp://x/v1", false).check_url().is_err());
        let e = cfg("http://user:pw@127.0.0.1/v1", false).check_url().unwrap_err();
        assert!(e.to_string().contains("never in the URL"), "{e}");
        assert!(cfg("http://127.0.0.1/v1?x=1", false).check_url().is_err());
        assert!(cfg("http://127.0.0.1/v1#x", false).check_url().is_err());
        let e = cfg("http://127.0.0.1/v1/chat/completions", false).check_url().unwrap_err();
        assert!(e.to_string().contains("adds /chat/completions itself"), "{e}");
        assert!(!format!("{:?}", cfg("https://a/v1", true)).contains("secret"));
    }
}
