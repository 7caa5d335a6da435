//! A fake Kubernetes API server for the fast tier (`cargo test --lib`): objects in memory, served
//! over HTTP on localhost to a real `kube::Client`, every request logged. It answers what a
//! reconcile asks (get, list, create, merge and JSON patches, delete, the status subresource)
//! and honours `metadata.resourceVersion` preconditions as the real one does, so write counts and
//! conditional writes can be checked in milliseconds. The cluster tier proves the rest on a real
//! kube-apiserver.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, Mutex},
};

use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use kube::{Client, Config};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::lock::lock;

/// One request the server answered: method, path (without the query) and status code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub status: u16,
}

impl Call {
    pub fn is_write(&self) -> bool {
        self.method != Method::GET
    }
}

#[derive(Default)]
struct Store {
    /// Objects by their path (`/api/v1/namespaces/ns/secrets/name`).
    objects: BTreeMap<String, Value>,
    resource_version: u64,
    calls: Vec<Call>,
}

/// The server; stops when dropped.
pub struct FakeApiServer {
    store: Arc<Mutex<Store>>,
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApiServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let store = Arc::new(Mutex::new(Store::default()));
        let shared = store.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(store.clone(), request));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { store, url, task }
    }

    pub fn client(&self) -> Client {
        let config = Config::new(self.url.parse().expect("url"));
        Client::try_from(config).expect("client")
    }

    /// Stores `object` at `path` as if it had been created; returns it as stored.
    pub fn put(&self, path: &str, object: Value) -> Value {
        let mut store = lock(&self.store);
        let stored = store.create(path, object);
        store.objects.insert(path.to_owned(), stored.clone());
        stored
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        lock(&self.store).objects.get(path).cloned()
    }

    /// Changes an object behind the clients' backs (a new resourceVersion, as any write).
    pub fn edit(&self, path: &str, change: impl FnOnce(&mut Value)) {
        let mut store = lock(&self.store);
        let version = store.next_version();
        if let Some(object) = store.objects.get_mut(path) {
            change(object);
            object["metadata"]["resourceVersion"] = json!(version);
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        lock(&self.store).calls.clone()
    }

    pub fn forget_calls(&self) {
        lock(&self.store).calls.clear();
    }
}

async fn answer(
    store: Arc<Mutex<Store>>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut store = lock(&store);
    let (status, reply) = store.handle(&method, &path, &content_type, body);
    store.calls.push(Call {
        method,
        path,
        status,
    });
    let response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(reply.to_string())))
        .unwrap_or_default();
    Ok(response)
}

impl Store {
    fn next_version(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    fn create(&mut self, path: &str, mut object: Value) -> Value {
        let version = self.next_version();
        let metadata = &mut object["metadata"];
        metadata["resourceVersion"] = json!(version);
        metadata["uid"] = json!(format!("uid-{}", path.replace('/', "-")));
        metadata["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        if metadata.get("generation").is_none() && object.get("spec").is_some() {
            object["metadata"]["generation"] = json!(1);
        }
        object
    }

    fn handle(
        &mut self,
        method: &Method,
        path: &str,
        content_type: &str,
        body: Value,
    ) -> (u16, Value) {
        let (object_path, subresource) = split_subresource(path);
        match *method {
            Method::GET => match self.objects.get(path) {
                Some(object) => (200, object.clone()),
                None => self.list(path),
            },
            Method::POST => {
                let name = body["metadata"]["name"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| {
                        let prefix = body["metadata"]["generateName"].as_str().unwrap_or("x-");
                        format!("{prefix}{}", self.resource_version + 1)
                    });
                let object_path = format!("{path}/{name}");
                if self.objects.contains_key(&object_path) {
                    return failure(409, "AlreadyExists", &object_path);
                }
                let mut object = body;
                object["metadata"]["name"] = json!(name);
                let created = self.create(&object_path, object);
                self.objects.insert(object_path, created.clone());
                (201, created)
            }
            Method::PATCH => self.patch(object_path, subresource, content_type, body),
            Method::DELETE => match self.objects.get_mut(path) {
                None => failure(404, "NotFound", path),
                Some(object) if has_finalizers(object) => {
                    object["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
                    (200, object.clone())
                }
                Some(_) => (200, self.objects.remove(path).unwrap_or_default()),
            },
            _ => failure(405, "MethodNotAllowed", path),
        }
    }

    fn patch(
        &mut self,
        path: &str,
        subresource: Option<&str>,
        content_type: &str,
        body: Value,
    ) -> (u16, Value) {
        let Some(current) = self.objects.get(path).cloned() else {
            return failure(404, "NotFound", path);
        };
        let expected = body["metadata"]["resourceVersion"].as_str();
        if expected.is_some_and(|v| current["metadata"]["resourceVersion"].as_str() != Some(v)) {
            return failure(409, "Conflict", path);
        }
        let mut patched = current.clone();
        if content_type.contains("json-patch") {
            if json_patch(&mut patched, &body).is_err() {
                return failure(422, "Invalid", path);
            }
        } else if subresource == Some("status") {
            merge(&mut patched["status"], &body["status"]);
        } else {
            let mut body = body;
            if let Some(b) = body.as_object_mut() {
                b.remove("status");
            }
            merge(&mut patched, &body);
        }
        if patched != current {
            patched["metadata"]["resourceVersion"] = json!(self.next_version());
            if patched.get("spec") != current.get("spec") {
                let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
                patched["metadata"]["generation"] = json!(generation + 1);
            }
        }
        let gone =
            patched["metadata"]["deletionTimestamp"].is_string() && !has_finalizers(&patched);
        if gone {
            self.objects.remove(path);
        } else {
            self.objects.insert(path.to_owned(), patched.clone());
        }
        (200, patched)
    }

    fn list(&self, path: &str) -> (u16, Value) {
        let prefix = format!("{path}/");
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|(p, _)| {
                p.strip_prefix(&prefix)
                    .is_some_and(|rest| !rest.contains('/'))
            })
            .map(|(_, o)| o.clone())
            .collect();
        if items.is_empty() && !is_collection(path) {
            return failure(404, "NotFound", path);
        }
        let version = self.resource_version.to_string();
        (
            200,
            json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": version}, "items": items}),
        )
    }
}

/// `.../namespaces/NS/RESOURCE` has an even number of segments after the group and version.
fn is_collection(path: &str) -> bool {
    path.split("/namespaces/")
        .nth(1)
        .is_some_and(|rest| rest.split('/').count() == 2)
}

fn split_subresource(path: &str) -> (&str, Option<&str>) {
    match path.rsplit_once('/') {
        Some((object, "status")) => (object, Some("status")),
        _ => (path, None),
    }
}

fn has_finalizers(object: &Value) -> bool {
    object["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

fn failure(code: u16, reason: &str, path: &str) -> (u16, Value) {
    let status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "reason": reason, "code": code, "message": format!("{reason}: {path}"),
    });
    (code, status)
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (key, value) in patch {
        if value.is_null() {
            if let Some(t) = target.as_object_mut() {
                t.remove(key);
            }
        } else {
            merge(&mut target[key.as_str()], value);
        }
    }
}

/// RFC 6902 JSON patch: the operations kube-runtime's finalizer helper sends.
fn json_patch(target: &mut Value, operations: &Value) -> Result<(), ()> {
    for op in operations.as_array().ok_or(())? {
        let path = op["path"].as_str().ok_or(())?;
        let (parent, last) = path.rsplit_once('/').ok_or(())?;
        match op["op"].as_str().ok_or(())? {
            "test" => {
                let found = target.pointer(path).cloned().unwrap_or(Value::Null);
                if found != op["value"] {
                    return Err(());
                }
            }
            "add" | "replace" => {
                let value = op["value"].clone();
                let container = target.pointer_mut(parent).ok_or(())?;
                match container {
                    Value::Array(items) if last == "-" => items.push(value),
                    Value::Array(items) => {
                        let index: usize = last.parse().map_err(|_| ())?;
                        match op["op"].as_str() {
                            Some("replace") => *items.get_mut(index).ok_or(())? = value,
                            _ if index <= items.len() => items.insert(index, value),
                            _ => return Err(()),
                        }
                    }
                    Value::Object(map) => {
                        map.insert(last.to_owned(), value);
                    }
                    _ => return Err(()),
                }
            }
            "remove" => match target.pointer_mut(parent).ok_or(())? {
                Value::Array(items) => {
                    let index: usize = last.parse().map_err(|_| ())?;
                    if index >= items.len() {
                        return Err(());
                    }
                    items.remove(index);
                }
                Value::Object(map) => {
                    map.remove(last).ok_or(())?;
                }
                _ => return Err(()),
            },
            _ => return Err(()),
        }
    }
    Ok(())
}
