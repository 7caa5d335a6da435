//! What a fault test does to the control plane: a server restarted, etcd compacted.

use std::process::Command;
use std::time::{Duration, Instant};

use super::{ControlPlane, START_TIMEOUT};
use crate::process::process_alive;

impl ControlPlane {
    /// Stops kube-apiserver (SIGTERM, SIGKILL after 5 s), keeps it down for `down_for`, then
    /// starts it again on the same port and etcd and waits until it is ready.
    pub fn restart_apiserver(&self, down_for: Duration) -> Result<(), String> {
        let old = {
            let mut servers = self.lock_servers();
            let index = servers
                .iter()
                .position(|s| s.name == "kube-apiserver")
                .ok_or("no kube-apiserver")?;
            servers.remove(index)
        };
        // SIGTERM, then SIGKILL: a terminating kube-apiserver waits up to a minute for open
        // watches to drain, which only slows the test without changing what the operator sees
        // (its connections fail, and the server is gone for `down_for`).
        crate::signal(old.pid, "-TERM");
        if !crate::wait_gone(old.pid, Duration::from_secs(5)) {
            crate::signal(old.pid, "-KILL");
            if !crate::wait_gone(old.pid, Duration::from_secs(10)) {
                return Err(format!("kube-apiserver (pid {}) did not stop", old.pid));
            }
        }
        std::thread::sleep(down_for);
        self.respawn("kube-apiserver")?;
        // kube-controller-manager exits when it loses the API server: start it again too, once
        // the API server is ready.
        let died: Vec<&'static str> = {
            let mut servers = self.lock_servers();
            let dead: Vec<&'static str> = servers
                .iter()
                .filter(|s| !process_alive(s.pid))
                .map(|s| s.name)
                .collect();
            servers.retain(|s| !dead.contains(&s.name));
            dead
        };
        self.wait_ready(Instant::now() + START_TIMEOUT)?;
        died.into_iter().try_for_each(|name| self.respawn(name))
    }

    /// Starts the server `name` again with the command it was first started with.
    fn respawn(&self, name: &'static str) -> Result<(), String> {
        let command = self
            .commands
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, command)| command.clone())
            .ok_or_else(|| format!("{name} was never started"))?;
        let (program, args) = command.split_first().ok_or("an empty command")?;
        let mut cmd = Command::new(program);
        cmd.args(args);
        self.spawn(name, cmd)
    }

    /// Compacts etcd's history up to its current revision (through etcd's JSON gateway), so that
    /// a watch resuming from an older resourceVersion gets `410 Gone` (with kube-apiserver's
    /// watch cache off, see [`ControlPlane::start_with`]). Returns the revision.
    pub async fn compact_etcd(&self) -> Result<i64, String> {
        let http = reqwest::Client::new();
        let post = |path: &str, body: serde_json::Value| {
            http.post(format!("{}/v3/kv/{path}", self.etcd_url))
                .json(&body)
                .send()
        };
        let read: serde_json::Value = post("range", serde_json::json!({"key": "AA=="}))
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| format!("reading etcd's revision: {e}"))?
            .json()
            .await
            .map_err(|e| format!("etcd's range answer: {e}"))?;
        let revision: i64 = read["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .ok_or_else(|| format!("no revision in etcd's answer {read}"))?;
        post(
            "compaction",
            serde_json::json!({"revision": revision.to_string(), "physical": true}),
        )
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("compacting etcd at revision {revision}: {e}"))?;
        Ok(revision)
    }
}
