//! A chat-completions server on loopback that plays recorded answers (the response bodies
//! in `tests/llm/`, in the format llama-server returns) in order, and keeps every request
//! it was sent for the test to look at.

#![allow(dead_code, unreachable_pub, reason = "shared by test binaries of two crates")]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

/// One scripted reply.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A status, headers and a body.
    Http { status: u16, headers: Vec<(String, String)>, body: Vec<u8> },
    /// A reply sent only after a wait.
    Slow(Duration, Box<Self>),
}

impl Reply {
    /// The recorded answer `tests/llm/NAME.json`, with 200.
    pub fn recorded(name: &str) -> Self {
        // From either crate one level below the workspace's root (planner/, tests/).
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../planner/tests/llm");
        let path = dir.join(format!("{name}.json"));
        let body = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Self::Http { status: 200, headers: json_type(), body }
    }

    /// A 200 whose message text is `content`.
    pub fn content(content: &str) -> Self {
        let body = serde_json::json!({
            "id": "chatcmpl-test", "object": "chat.completion", "created": 1765011600,
            "model": "test", "choices": [{ "index": 0, "finish_reason": "stop",
            "message": { "role": "assistant", "content": content } }],
        });
        Self::Http { status: 200, headers: json_type(), body: body.to_string().into_bytes() }
    }

    /// An error status with an OpenAI-style error body and extra headers.
    pub fn error(status: u16, message: &str, headers: &[(&str, &str)]) -> Self {
        let body = serde_json::json!({ "error": { "code": status, "message": message, "type": "server_error" } });
        let mut h = json_type();
        h.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Self::Http { status, headers: h, body: body.to_string().into_bytes() }
    }
}

fn json_type() -> Vec<(String, String)> {
    vec![("Content-Type".into(), "application/json; charset=utf-8".into())]
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub authorization: Option<String>,
    pub body: Value,
}

impl Received {
    /// The text of the message with `role` at `index` among messages of that role.
    pub fn message(&self, role: &str, index: usize) -> String {
        self.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == role)
            .nth(index)
            .map(|m| m["content"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {role} message {index} in {}", self.body))
    }

    /// The data document of the first user message.
    pub fn data(&self) -> Value {
        let text = self.message("user", 0);
        let json =
            text.strip_prefix("DATA (JSON):\n").expect("the data message's fixed first line");
        serde_json::from_str(json).unwrap()
    }
}

/// The server; it stops when dropped.
pub struct LlmServer {
    server: Arc<tiny_http::Server>,
    received: Arc<Mutex<Vec<Received>>>,
    thread: Option<JoinHandle<()>>,
    port: u16,
}

impl LlmServer {
    /// Starts a server that answers the n-th request with `script[n]`, and any past the end
    /// with a 500 naming that.
    pub fn start(script: Vec<Reply>) -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let port = server.server_addr().to_ip().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (server.clone(), received.clone());
        let thread = std::thread::spawn(move || {
            let mut script = script.into_iter();
            for mut req in s.incoming_requests() {
                let mut body = Vec::new();
                let _ = req.as_reader().read_to_end(&mut body);
                let authorization = req
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv("Authorization"))
                    .map(|h| h.value.to_string());
                let path = req.url().to_string();
                let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                r.lock().unwrap().push(Received { path: path.clone(), authorization, body });
                let reply =
                    if path == "/v1/chat/completions" && *req.method() == tiny_http::Method::Post {
                        script.next().unwrap_or_else(|| {
                            Reply::error(500, "the script has no more replies", &[])
                        })
                    } else {
                        Reply::error(404, "not found", &[])
                    };
                // A slow reply is written from its own thread, so a client that gave up
                // and tried again is still answered.
                std::thread::spawn(move || respond(req, reply));
            }
        });
        Self { server, received, thread: Some(thread), port }
    }

    /// The base URL, as AGX_LLM_URL takes it.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn respond(req: tiny_http::Request, reply: Reply) {
    match reply {
        Reply::Slow(wait, reply) => {
            std::thread::sleep(wait);
            respond(req, *reply);
        }
        Reply::Http { status, headers, body } => {
            let mut resp = tiny_http::Response::from_data(body).with_status_code(status);
            for (k, v) in headers {
                resp.add_header(tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap());
            }
            let _ = req.respond(resp);
        }
    }
}

impl Drop for LlmServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
