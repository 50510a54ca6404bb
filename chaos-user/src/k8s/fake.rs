//! An in-memory Kubernetes API server for tests: kube's client over tower-test's mock
//! service, answering the calls the agent makes (listing and watching resources and pods,
//! reading and replacing a resource's status, posting Events). Conflicts on status can be
//! injected; a watch call hands out the queued events and ends, as a broken watch does.

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use kube::{Client, client::Body};
use serde_json::{Value, json};

/// The namespace the fake's resources and pods are in.
pub const NS: &str = "shop";

/// The API server's state: what the agent reads and what it wrote.
#[derive(Default)]
pub struct Server {
    pub faults: std::collections::BTreeMap<String, Value>,
    pub pods: Vec<Value>,
    /// Watch events handed out by the next watch call on faults, which then ends (a broken
    /// watch); the watcher must come back.
    pub fault_watch: Vec<Value>,
    pub events: Vec<Value>,
    pub status_writes: u32,
    /// The next this-many status writes meet a conflict: another node wrote first.
    pub conflicts: u32,
    version: u64,
    pub requests: Vec<String>,
}

pub type Shared = Arc<Mutex<Server>>;

fn answer(status: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap()))
        .unwrap()
}

fn status_error(code: StatusCode, reason: &str) -> Response<Body> {
    answer(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": reason, "reason": reason, "code": code.as_u16()}),
    )
}

impl Server {
    fn bump(&mut self) -> String {
        self.version += 1;
        self.version.to_string()
    }

    fn handle(&mut self, method: &Method, uri: &http::Uri, body: Option<Value>) -> Response<Body> {
        let path = uri.path().to_owned();
        let query = uri.query().unwrap_or_default().to_owned();
        self.requests.push(format!("{method} {path}?{query}"));
        let faults = format!("/apis/chaos.dev/v1alpha1/namespaces/{NS}/networkfaults/");
        let watch = query.contains("watch=true");
        match (method.clone(), path.as_str()) {
            (Method::GET, "/apis/chaos.dev/v1alpha1/networkfaults") if watch => {
                let lines: Vec<u8> = self
                    .fault_watch
                    .drain(..)
                    .flat_map(|e| {
                        let mut l = serde_json::to_vec(&e).unwrap();
                        l.push(b'\n');
                        l
                    })
                    .collect();
                Response::builder()
                    .status(200)
                    .body(Body::from(lines))
                    .unwrap()
            }
            (Method::GET, "/apis/chaos.dev/v1alpha1/networkfaults") => {
                let rv = self.version.to_string();
                let items: Vec<Value> = self.faults.values().cloned().collect();
                answer(
                    StatusCode::OK,
                    &json!({"apiVersion": "chaos.dev/v1alpha1", "kind": "NetworkFaultList",
                            "metadata": {"resourceVersion": rv}, "items": items}),
                )
            }
            (Method::GET, "/api/v1/pods") if watch => Response::builder()
                .status(200)
                .body(Body::from(Vec::new()))
                .unwrap(),
            (Method::GET, p)
                if p == "/api/v1/pods" || p == format!("/api/v1/namespaces/{NS}/pods") =>
            {
                let rv = self.version.to_string();
                answer(
                    StatusCode::OK,
                    &json!({"apiVersion": "v1", "kind": "PodList",
                            "metadata": {"resourceVersion": rv}, "items": self.pods}),
                )
            }
            (m, p) if p.starts_with(&faults) && p.ends_with("/status") => {
                let name = p[faults.len()..].trim_end_matches("/status").to_owned();
                let Some(current) = self.faults.get(&name).cloned() else {
                    return status_error(StatusCode::NOT_FOUND, "NotFound");
                };
                if m == Method::GET {
                    return answer(StatusCode::OK, &current);
                }
                let mut new = body.expect("a status body");
                let sent = new["metadata"]["resourceVersion"].clone();
                if self.conflicts > 0 || sent != current["metadata"]["resourceVersion"] {
                    self.conflicts = self.conflicts.saturating_sub(1);
                    // Another node's entry lands first.
                    let mut other = current.clone();
                    other["status"]["nodes"] = json!([{"node": "n9", "targets": 1,
                        "phase": "Injecting", "message": ""}]);
                    other["metadata"]["resourceVersion"] = json!(self.bump());
                    self.faults.insert(name, other);
                    return status_error(StatusCode::CONFLICT, "Conflict");
                }
                self.status_writes += 1;
                new["metadata"]["resourceVersion"] = json!(self.bump());
                let mut stored = current;
                stored["status"] = new["status"].clone();
                stored["metadata"]["resourceVersion"] = new["metadata"]["resourceVersion"].clone();
                self.faults.insert(name, stored.clone());
                answer(StatusCode::OK, &stored)
            }
            (Method::POST, p) if p.ends_with("/events") => {
                let body = body.expect("an event");
                self.events.push(body.clone());
                answer(StatusCode::CREATED, &body)
            }
            (Method::PATCH, p) if p.contains("/events/") => {
                answer(StatusCode::OK, &body.unwrap_or(json!({})))
            }
            _ => status_error(StatusCode::NOT_FOUND, "NotFound"),
        }
    }
}

/// A kube client whose every request the mock server answers.
pub fn client(server: Shared) -> Client {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let value = serde_json::from_slice::<Value>(&bytes).ok();
            let response = server
                .lock()
                .unwrap()
                .handle(&parts.method, &parts.uri, value);
            send.send_response(response);
        }
    });
    Client::new(service, NS)
}
