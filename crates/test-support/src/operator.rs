//! The operator binary as a subprocess: started under the harness's watchdog, watched through
//! its admin port, stopped, killed and restarted by PID.

use std::{net::SocketAddr, path::PathBuf, sync::atomic::AtomicUsize, time::Duration};

use crate::WAIT;
use crate::{ControlPlane, free_port, signal, wait_for, wait_gone};

/// Makes the command that runs the operator with the given arguments (instead of the binary of
/// this build); `KUBECONFIG` and `RUST_LOG` are set on it as on the binary.
/// Operators started by this test process, for unique log names.
static OPERATORS: AtomicUsize = AtomicUsize::new(0);

pub type Launcher = std::sync::Arc<dyn Fn(&[String]) -> std::process::Command + Send + Sync>;

/// The operator binary, watching one namespace, logging to a file.
pub struct Operator {
    pid: Option<u32>,
    launcher: Option<Launcher>,
    pub log: PathBuf,
    pub admin: SocketAddr,
    args: Vec<String>,
    kubeconfig: PathBuf,
    starts: u32,
}

impl Operator {
    /// Starts the operator on `cp` watching `ns` (more with `extra`), IBM Cloud at `sim_url`;
    /// with `launcher`, through the command it makes (from the image, say).
    pub fn start(
        cp: &ControlPlane,
        kubeconfig: &std::path::Path,
        ns: &str,
        sim_url: &str,
        extra: &[&str],
        launcher: Option<Launcher>,
    ) -> Operator {
        let admin = free_port();
        let mut args: Vec<String> = vec![
            "run".into(),
            "--namespace".into(),
            ns.into(),
            "--iam-endpoint".into(),
            sim_url.into(),
            "--resource-controller-endpoint".into(),
            sim_url.into(),
            "--admin-addr".into(),
            admin.to_string(),
            "--key-creation-grace".into(),
            "3s".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut operator = Operator {
            pid: None,
            launcher,
            // Several operators may share a namespace (leader election): one log each.
            log: cp.dir().join(format!(
                "operator-{ns}-{}.log",
                OPERATORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            )),
            admin,
            args,
            kubeconfig: kubeconfig.to_owned(),
            starts: 0,
        };
        operator.spawn();
        operator
    }

    /// Starts the binary under the harness's watchdog, so that it goes with the test process
    /// even when that is killed.
    fn spawn(&mut self) {
        self.starts += 1;
        let mut cmd = match &self.launcher {
            Some(launch) => launch(&self.args),
            None => {
                let mut cmd = std::process::Command::new(crate::operator_binary());
                cmd.args(&self.args);
                cmd
            }
        };
        cmd.env("KUBECONFIG", &self.kubeconfig).env(
            "RUST_LOG",
            "debug,hyper=info,kube=info,tower=info,rustls=info,h2=info",
        );
        let pid = crate::spawn_supervised("ingestion-key-operator", &cmd, &self.log)
            .unwrap_or_else(|e| panic!("starting the operator: {e}"));
        self.pid = Some(pid);
    }

    pub async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.admin);
        let http = reqwest::Client::new();
        wait_for("the operator to be ready", WAIT, || async {
            http.get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://{}/metrics", self.admin))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The value of one sample (`name{labels}`) on the metrics page, 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let page = self.metrics().await;
        page.lines()
            .find_map(|line| {
                line.strip_prefix(sample)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill9(&mut self) {
        if let Some(pid) = self.pid.take() {
            signal(pid, "-KILL");
            wait_gone(pid, Duration::from_secs(10));
        }
    }

    /// SIGTERM, then wait for a graceful exit.
    pub fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            signal(pid, "-TERM");
            if !wait_gone(pid, Duration::from_secs(20)) {
                signal(pid, "-KILL");
                let logs = self.logs();
                let tail: Vec<&str> = logs
                    .lines()
                    .rev()
                    .take(40)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                panic!(
                    "the operator did not stop within 20s of SIGTERM; its last log lines:\n{}",
                    tail.join("\n")
                );
            }
        }
    }

    /// Starts the operator again after [`Operator::kill9`] or [`Operator::stop`].
    pub fn start_again(&mut self) {
        assert!(self.pid.is_none(), "the operator is still running");
        self.spawn();
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Whether this operator reports itself the leader (`ingestion_key_operator_leader 1`).
    /// Whether the process ended by itself (it was started and is gone).
    pub fn exited(&self) -> bool {
        self.pid.is_some_and(|pid| !crate::process_alive(pid))
    }

    pub async fn is_leader(&self) -> bool {
        self.metric("ingestion_key_operator_leader").await == 1.0
    }

    /// IBM Cloud requests this operator made, all endpoints and statuses.
    pub async fn ibm_requests(&self) -> f64 {
        let page = self.metrics().await;
        page.lines()
            .filter(|l| l.starts_with("ingestion_key_operator_ibm_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// IBM Cloud responses with `status` this operator received.
    pub async fn ibm_responses_with_status(&self, status: &str) -> f64 {
        let page = self.metrics().await;
        let label = format!("status=\"{status}\"");
        page.lines()
            .filter(|l| {
                l.starts_with("ingestion_key_operator_ibm_requests_total{") && l.contains(&label)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill9();
    }
}
