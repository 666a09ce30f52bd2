//! DynamoDB on loopback for the tests: dynalite (a DynamoDB implementation on Node.js, in
//! memory) started per test, and a fault proxy in front of it that controls every byte of the
//! answers DynamoDB gives under load (throttling, 500s, partially applied batches), which
//! dynalite never gives by itself.
//!
//! Included by the tests that need it with `#[path = "common/dynamo.rs"] mod dynamo_harness;`
//! (not from `common/mod.rs`, so the other test binaries do not build it).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use rc_audit_hec::config::DynamoDbConfig;
use rc_audit_hec::dynamodb::{Dynamo, connect_with};
use serde_json::{Value, json};

/// Where dynalite is: `DYNALITE_DIR` (set by `.ci/run`), else `.ci/node/node_modules/dynalite`.
pub fn dynalite_dir() -> PathBuf {
    std::env::var_os("DYNALITE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".ci/node/node_modules/dynalite")
        })
}

/// A dynalite process on 127.0.0.1, in memory; killed on drop.
pub struct Dynalite {
    child: Child,
    port: u16,
}

impl Dynalite {
    /// Starts dynalite and waits until it answers. `None` (after saying why on stderr) when
    /// Node.js or dynalite is missing on a developer's machine; under `CI` that panics instead,
    /// so CI never skips these tests.
    pub async fn start() -> Option<Dynalite> {
        let cli = dynalite_dir().join("cli.js");
        let node = Command::new("node").arg("--version").output();
        let missing = match (&node, cli.exists()) {
            (Ok(o), true) if o.status.success() => None,
            (Ok(o), _) if o.status.success() => Some(format!(
                "dynalite is not at {} (run .ci/run, or `npm ci --prefix .ci/node`, or set DYNALITE_DIR)",
                cli.display()
            )),
            _ => Some("Node.js (`node`) is not on PATH (apt-get install nodejs npm)".to_owned()),
        };
        if let Some(why) = missing {
            if std::env::var_os("CI").is_some() {
                panic!("CI is set and the DynamoDB tests cannot run: {why}");
            }
            eprintln!("SKIPPED: DynamoDB test needs dynalite: {why}");
            return None;
        }
        // A free port, then dynalite on it; another process may take it between the two, so
        // a dynalite that exits at once is started again on another.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let child = Command::new("node")
                .arg(&cli)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start node");
            let mut db = Dynalite { child, port };
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if matches!(db.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return Some(db);
                }
                assert!(Instant::now() < deadline, "dynalite did not listen in 30 s");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("dynalite exited at start five times");
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Dynalite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `[dynamodb]` for a table at `url`.
pub fn dynamo_config(url: &str, table: &str) -> DynamoDbConfig {
    DynamoDbConfig {
        table: table.to_owned(),
        region: "us-east-1".to_owned(),
        endpoint_url: Some(url.to_owned()),
        ttl: None,
        create_table: true,
    }
}

/// A client for `cfg` with fake credentials (a local DynamoDB takes any; never real ones).
pub async fn dynamo(cfg: &DynamoDbConfig) -> Dynamo {
    let creds = aws_sdk_dynamodb::config::Credentials::new(
        "AKIDTESTTESTTESTTEST",
        "test-secret-not-a-real-one",
        None,
        None,
        "tests",
    );
    connect_with(cfg, Some(creds)).await.expect("client")
}

/// What the proxy does to the next request for one operation.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with DynamoDB's error shape: `status`, `x-amzn-ErrorType: <code>`, body
    /// `{"__type":"com.amazonaws.dynamodb.v20120810#<code>","message":...}`.
    Error {
        /// HTTP status.
        status: u16,
        /// The error code.
        code: &'static str,
        /// The message.
        message: &'static str,
    },
    /// `BatchWriteItem`: forward only the write requests at these indexes, and answer 200 with
    /// the others in `UnprocessedItems`, verbatim.
    Partial {
        /// Indexes (into the request's list) applied.
        apply: Vec<usize>,
    },
}

impl Fault {
    /// `ProvisionedThroughputExceededException`, as DynamoDB sends it.
    pub fn throttle() -> Fault {
        Fault::Error {
            status: 400,
            code: "ProvisionedThroughputExceededException",
            message: "The level of configured provisioned throughput for the table was exceeded. Consider increasing your provisioning level with the UpdateTable API.",
        }
    }

    /// `ThrottlingException` (on-demand tables over their limits).
    pub fn throttling() -> Fault {
        Fault::Error {
            status: 400,
            code: "ThrottlingException",
            message: "Throughput exceeds the current capacity of your table or index.",
        }
    }

    /// A 500 `InternalServerError`.
    pub fn internal() -> Fault {
        Fault::Error {
            status: 500,
            code: "InternalServerError",
            message: "Internal server error",
        }
    }
}

struct ProxyState {
    upstream: String,
    http: reqwest::Client,
    faults: Mutex<VecDeque<(String, Fault)>>,
    seen: Mutex<Vec<(String, Value)>>,
    /// `Some` once [`FaultProxy::emulate_ttl`] is called: each table's TTL attribute, once
    /// turned on (dynalite has no `UpdateTimeToLive`, and always says DISABLED).
    ttl: Mutex<Option<std::collections::HashMap<String, String>>>,
}

/// An HTTP proxy in front of DynamoDB that injects [`Fault`]s, one per request, in order.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy on 127.0.0.1 forwarding to `upstream` (e.g. [`Dynalite::url`]).
    pub async fn start(upstream: &str) -> FaultProxy {
        let state = Arc::new(ProxyState {
            upstream: upstream.to_owned(),
            http: reqwest::Client::new(),
            faults: Mutex::new(VecDeque::new()),
            seen: Mutex::new(Vec::new()),
            ttl: Mutex::new(None),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FaultProxy { addr, state, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next request for `operation` (e.g. `"BatchWriteItem"`) gets `fault`. Faults for the
    /// same operation apply in the order pushed.
    pub fn push(&self, operation: &str, fault: Fault) {
        self.state
            .faults
            .lock()
            .unwrap()
            .push_back((operation.to_owned(), fault));
    }

    /// Answers `UpdateTimeToLive` and `DescribeTimeToLive` as DynamoDB does (dynalite has no
    /// TTL): a table's TTL is on once turned on, for the attribute given.
    pub fn emulate_ttl(&self) {
        self.state
            .ttl
            .lock()
            .unwrap()
            .get_or_insert_with(Default::default);
    }

    /// The operations and request bodies seen so far, in order.
    pub fn seen(&self) -> Vec<(String, Value)> {
        self.state.seen.lock().unwrap().clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn operation(headers: &HeaderMap) -> String {
    headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("")
        .to_owned()
}

async fn handle(
    axum::extract::State(state): axum::extract::State<Arc<ProxyState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let op = operation(&headers);
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state
        .seen
        .lock()
        .unwrap()
        .push((op.clone(), request.clone()));
    let fault = {
        let mut faults = state.faults.lock().unwrap();
        let at = faults.iter().position(|(o, _)| *o == op);
        at.and_then(|i| faults.remove(i)).map(|(_, f)| f)
    };
    let emulate_ttl = state.ttl.lock().unwrap().is_some();
    match fault {
        None if emulate_ttl && matches!(op.as_str(), "UpdateTimeToLive" | "DescribeTimeToLive") => {
            // The table must exist: dynalite's DescribeTimeToLive says so (or answers
            // ResourceNotFoundException, passed on).
            let mut check = headers.clone();
            check.insert(
                "x-amz-target",
                HeaderValue::from_static("DynamoDB_20120810.DescribeTimeToLive"),
            );
            let table = request["TableName"].as_str().unwrap_or_default().to_owned();
            let described = forward(
                &state,
                &check,
                Bytes::from(json!({ "TableName": table }).to_string()),
            )
            .await;
            if described.status() != StatusCode::OK {
                return described;
            }
            let answer = {
                let mut ttl = state.ttl.lock().unwrap();
                let ttl = ttl.as_mut().unwrap();
                if op == "UpdateTimeToLive" {
                    let spec = &request["TimeToLiveSpecification"];
                    let attribute = spec["AttributeName"].as_str().unwrap_or_default();
                    if spec["Enabled"] == json!(true) {
                        ttl.insert(table, attribute.to_owned());
                    } else {
                        ttl.remove(&table);
                    }
                    json!({ "TimeToLiveSpecification": spec })
                } else {
                    match ttl.get(&table) {
                        Some(a) => json!({ "TimeToLiveDescription": {
                            "TimeToLiveStatus": "ENABLED", "AttributeName": a } }),
                        None => {
                            json!({ "TimeToLiveDescription": { "TimeToLiveStatus": "DISABLED" } })
                        }
                    }
                }
            };
            let mut r = answer.to_string().into_response();
            r.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("application/x-amz-json-1.0"),
            );
            r
        }
        None => forward(&state, &headers, body).await,
        Some(Fault::Error {
            status,
            code,
            message,
        }) => {
            let body = json!({
                "__type": format!("com.amazonaws.dynamodb.v20120810#{code}"),
                "message": message,
            });
            let mut r = (StatusCode::from_u16(status).unwrap(), body.to_string()).into_response();
            let h = r.headers_mut();
            h.insert(
                "content-type",
                HeaderValue::from_static("application/x-amz-json-1.0"),
            );
            h.insert("x-amzn-errortype", HeaderValue::from_static(code));
            h.insert(
                "x-amzn-requestid",
                HeaderValue::from_static("FAULTPROXY0000000000000000000000000000000000000000000"),
            );
            r
        }
        Some(Fault::Partial { apply }) => {
            let mut applied = request.clone();
            let mut unprocessed = serde_json::Map::new();
            let tables = request["RequestItems"]
                .as_object()
                .cloned()
                .unwrap_or_default();
            for (table, writes) in tables {
                let writes = writes.as_array().cloned().unwrap_or_default();
                let (keep, rest): (Vec<_>, Vec<_>) = writes
                    .into_iter()
                    .enumerate()
                    .partition(|(i, _)| apply.contains(i));
                let keep: Vec<Value> = keep.into_iter().map(|(_, w)| w).collect();
                let rest: Vec<Value> = rest.into_iter().map(|(_, w)| w).collect();
                if keep.is_empty() {
                    applied["RequestItems"]
                        .as_object_mut()
                        .unwrap()
                        .remove(&table);
                } else {
                    applied["RequestItems"][&table] = Value::Array(keep);
                }
                if !rest.is_empty() {
                    unprocessed.insert(table, Value::Array(rest));
                }
            }
            if applied["RequestItems"]
                .as_object()
                .is_some_and(|m| !m.is_empty())
            {
                let r = forward(&state, &headers, Bytes::from(applied.to_string())).await;
                if r.status() != StatusCode::OK {
                    return r;
                }
            }
            let mut r = json!({ "UnprocessedItems": unprocessed })
                .to_string()
                .into_response();
            r.headers_mut().insert(
                "content-type",
                HeaderValue::from_static("application/x-amz-json-1.0"),
            );
            r
        }
    }
}

/// The request to the upstream as it came (dynalite checks the signature's form, not its
/// value, so a rewritten body passes), and its answer as it came.
async fn forward(state: &ProxyState, headers: &HeaderMap, body: Bytes) -> Response {
    let mut req = state.http.post(&state.upstream).body(body);
    for (name, value) in headers {
        if !matches!(name.as_str(), "host" | "content-length") {
            req = req.header(name.as_str(), value.as_bytes());
        }
    }
    let Ok(answer) = req.send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
    let mut out = HeaderMap::new();
    for (name, value) in answer.headers() {
        if matches!(
            name.as_str(),
            "content-type" | "x-amzn-requestid" | "x-amz-crc32" | "x-amzn-errortype"
        ) && let Ok(v) = HeaderValue::from_bytes(value.as_bytes())
        {
            out.insert(
                axum::http::HeaderName::from_bytes(name.as_str().as_bytes()).unwrap(),
                v,
            );
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    (status, out, bytes).into_response()
}
