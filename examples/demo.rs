//! The local demo (`make demo`, or `make demo-once` to exit after showing the result).
//!
//! Starts the same local control plane as the tests (etcd + kube-apiserver 1.20 +
//! kube-controller-manager), installs the CRD, starts the IBM Cloud simulator with
//! `examples/seed.yaml`, runs the operator binary against both, applies `examples/api-key-secret.yaml`
//! and `examples/ingestionkeyrequest.yaml` with kubectl, waits for `Ready`, and shows
//! `kubectl get ikr -A` and the resulting Secret with the key masked. Then it keeps everything
//! running until Ctrl-C (or, with `--once`, stops at once) and stops every process it started.
//!
//! ```text
//! cargo build && cargo run --example demo [-- --once]
//! ```

// The harness is the tests' own (crates/test-support); it finds the operator binary next to this
// example in target/, so `cargo build` first.
use test_support as support;

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use ibm_cloud_sim::{Seed, Simulator};
use ingestion_key_operator::{crd::IngestionKeyRequest, redact::SecretString};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{Api, ResourceExt};

const NAMESPACE: &str = "ibm-observe";
const REQUEST: &str = "activity-tracker";
const SECRET: &str = "logdna-agent-key";
const SECRET_KEY: &str = "logdna-agent-key";
const CRD_NAME: &str = "ingestionkeyrequests.keysync.dev";
const READY_TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::main]
async fn main() -> ExitCode {
    let mut once = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--once" => once = true,
            "-h" | "--help" => {
                println!(
                    "usage: demo [--once]\n\n  --once  exit after showing the result instead of waiting for Ctrl-C"
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("demo: unknown argument {other:?} (try --help)");
                return ExitCode::from(2);
            }
        }
    }
    let started = Instant::now();
    let mut demo = Demo::default();
    let result = demo.run(once).await;
    if let Err(error) = &result {
        eprintln!("\ndemo failed: {error}");
        demo.print_operator_log_tail();
    }
    demo.cleanup();
    println!("demo finished in {:.1}s", started.elapsed().as_secs_f64());
    if result.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[derive(Default)]
struct Demo {
    kubeconfig: PathBuf,
    /// (name, pid) of every process started, in start order.
    processes: Vec<(String, u32)>,
    operator_log: Option<PathBuf>,
    simulator: Option<Simulator>,
}

type Result<T> = std::result::Result<T, String>;

impl Demo {
    async fn run(&mut self, once: bool) -> Result<()> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let operator = operator_binary()?;
        if !operator.is_file() {
            return Err(format!(
                "{} is missing: run `cargo build` first (make demo does)",
                operator.display()
            ));
        }

        step(
            "starting the local control plane (etcd, kube-apiserver 1.20.2, kube-controller-manager)",
        );
        let t = Instant::now();
        let cp = tokio::task::spawn_blocking(|| {
            std::panic::catch_unwind(support::control_plane)
                .map_err(|_| "the control plane did not start".to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        self.kubeconfig = cp.kubeconfig_path().to_owned();
        for server in cp.servers() {
            self.processes.push((server.name.to_string(), server.pid));
            println!(
                "  {} (pid {}), log {}",
                server.name,
                server.pid,
                server.log.display()
            );
        }
        println!(
            "  ready in {:.1}s at {}",
            t.elapsed().as_secs_f64(),
            cp.server_url()
        );

        // --validate=false: API servers older than 1.25 (this one is 1.20) know no CEL rules
        // (x-kubernetes-validations); they drop them, and the operator checks the same rules itself.
        step(
            "installing the CRD: ingestion-key-operator crd | kubectl apply --validate=false -f -",
        );
        let crd = output(Command::new(&operator).arg("crd"))?;
        self.kubectl_stdin(&["apply", "--validate=false", "-f", "-"], &crd)?;
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &format!("crd/{CRD_NAME}"),
        ])?;

        step("starting the IBM Cloud simulator with examples/seed.yaml");
        let seed_path = root.join("examples/seed.yaml");
        let seed = Seed::from_file(&seed_path)
            .map_err(|e| format!("reading {}: {e}", seed_path.display()))?;
        let simulator = Simulator::start("127.0.0.1:0".parse().expect("address"), seed)
            .await
            .map_err(|e| format!("starting the simulator: {e}"))?;
        let sim_url = simulator.base_url();
        self.simulator = Some(simulator);
        println!(
            "  IAM and Resource Controller at {sim_url} (same as `cargo run -p ibm-cloud-sim -- --seed examples/seed.yaml`)"
        );

        step(&format!("creating namespace {NAMESPACE}"));
        self.kubectl(&["create", "namespace", NAMESPACE])?;

        step(&format!(
            "starting the operator, watching namespace {NAMESPACE}"
        ));
        let admin = free_port()?;
        let log = cp.dir().join("operator.log");
        let args: Vec<String> = vec![
            "run".into(),
            "--namespace".into(),
            NAMESPACE.into(),
            "--iam-endpoint".into(),
            sim_url.clone(),
            "--resource-controller-endpoint".into(),
            sim_url.clone(),
            "--admin-addr".into(),
            admin.to_string(),
            "--log-format".into(),
            "text".into(),
        ];
        println!("  {} {}", operator.display(), args.join(" "));
        let pid = self.spawn_watched(&operator, &args, &log)?;
        self.processes.push(("ingestion-key-operator".into(), pid));
        self.operator_log = Some(log.clone());
        println!("  pid {pid}, log {}", log.display());
        wait_ready(admin, pid).await?;
        println!("  ready: http://{admin}/metrics");

        step("applying examples/api-key-secret.yaml and examples/ingestionkeyrequest.yaml");
        let secret_file = root.join("examples/api-key-secret.yaml");
        let request_file = root.join("examples/ingestionkeyrequest.yaml");
        self.kubectl(&[
            "apply",
            "-f",
            path_str(&secret_file)?,
            "-f",
            path_str(&request_file)?,
        ])?;

        step(&format!("waiting for {NAMESPACE}/{REQUEST} to be Ready"));
        let t = Instant::now();
        let client = cp.client().await;
        let requests: Api<IngestionKeyRequest> = Api::namespaced(client.clone(), NAMESPACE);
        let request = loop {
            let request = requests
                .get(REQUEST)
                .await
                .map_err(|e| format!("reading the request: {e}"))?;
            let ready = ready_condition(&request);
            if ready
                .as_ref()
                .is_some_and(|(status, _, _)| status == "True")
            {
                break request;
            }
            if t.elapsed() > READY_TIMEOUT {
                let (status, reason, message) = ready.unwrap_or_default();
                return Err(format!(
                    "not Ready after {READY_TIMEOUT:?}: Ready={status} {reason}: {message}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        println!("  Ready after {:.1}s", t.elapsed().as_secs_f64());

        step("kubectl get ikr -A");
        print!("{}", self.kubectl(&["get", "ikr", "-A"])?);

        step(&format!("the Secret {NAMESPACE}/{SECRET} (key masked)"));
        print!(
            "{}",
            self.kubectl(&["-n", NAMESPACE, "get", "secret", SECRET])?
        );
        let secrets: Api<Secret> = Api::namespaced(client, NAMESPACE);
        let secret = secrets
            .get(SECRET)
            .await
            .map_err(|e| format!("reading the Secret: {e}"))?;
        self.show_secret(&secret, &request)?;

        let kubeconfig = self.kubeconfig.display();
        println!("\nTry it yourself, from another terminal:");
        println!("  export KUBECONFIG={kubeconfig}");
        println!("  kubectl get ikr -A");
        println!("  kubectl -n {NAMESPACE} describe ikr {REQUEST}");
        println!(
            "  kubectl -n {NAMESPACE} delete secret {SECRET}      # the operator restores it at once"
        );
        println!(
            "  kubectl -n {NAMESPACE} delete ikr {REQUEST}        # deletes the resource key; the Secret goes with it"
        );
        println!("  curl -s http://{admin}/metrics | grep ingestion_key_operator_");
        if let Some(log) = &self.operator_log {
            println!("  tail -f {}", log.display());
        }
        if once {
            println!("\n--once: stopping now");
        } else {
            println!("\nRunning until Ctrl-C.");
            wait_for_signal().await;
            println!();
        }
        Ok(())
    }

    fn show_secret(&self, secret: &Secret, request: &IngestionKeyRequest) -> Result<()> {
        let labels = secret
            .labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        println!("  labels: {labels}");
        for owner in secret.owner_references() {
            println!(
                "  owner: {}/{} (controller: {})",
                owner.kind,
                owner.name,
                owner.controller.unwrap_or(false)
            );
        }
        let value = secret
            .data
            .as_ref()
            .and_then(|data| data.get(SECRET_KEY))
            .map(|ByteString(bytes)| String::from_utf8_lossy(bytes).into_owned())
            .filter(|value| !value.is_empty())
            .ok_or_else(|| format!("the Secret has no data under {SECRET_KEY}"))?;
        let fingerprint = SecretString::new(value.clone()).fingerprint();
        let status_fingerprint = request
            .status
            .as_ref()
            .and_then(|s| s.key_fingerprint.clone())
            .unwrap_or_default();
        println!("  data:");
        println!(
            "    {SECRET_KEY}: {} ({} bytes, masked; {fingerprint}{})",
            "*".repeat(16),
            value.len(),
            if fingerprint == status_fingerprint {
                ", matches status.keyFingerprint"
            } else {
                ""
            }
        );
        Ok(())
    }

    /// Starts `program args` under the harness's watchdog (it stops the program once the demo is
    /// gone, whatever ended it) and returns its pid.
    fn spawn_watched(&self, program: &Path, args: &[String], log: &Path) -> Result<u32> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info")
            .env("POD_NAME", "demo");
        support::spawn_supervised(&program.display().to_string(), &cmd, log)
    }

    fn kubectl(&self, args: &[&str]) -> Result<String> {
        output(
            Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(args),
        )
        .inspect(|out| {
            if !args.contains(&"get") {
                for line in out.lines() {
                    println!("  {line}");
                }
            }
        })
    }

    fn kubectl_stdin(&self, args: &[&str], input: &str) -> Result<()> {
        let out = support::output(
            Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(args),
            Some(input),
        )?;
        for line in out.lines() {
            println!("  {line}");
        }
        Ok(())
    }

    fn print_operator_log_tail(&self) {
        if let Some(log) = &self.operator_log {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("--- last lines of {}:", log.display());
            for line in &lines[lines.len().saturating_sub(20)..] {
                eprintln!("{line}");
            }
        }
    }

    /// Stops every process started (the operator first, then the control plane in reverse
    /// order) and waits until they are gone. The harness's watchdogs would do it as well once
    /// this process exits; doing it here means nothing outlives the demo.
    fn cleanup(&mut self) {
        drop(self.simulator.take());
        if self.processes.is_empty() {
            return;
        }
        step("cleaning up");
        for (name, pid) in self.processes.iter().rev() {
            if !support::process_alive(*pid) {
                continue;
            }
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while support::process_alive(*pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if support::process_alive(*pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
            println!("  stopped {name} (pid {pid})");
        }
        println!(
            "  the temporary directory {} goes once the demo has exited",
            self.kubeconfig.parent().unwrap_or(Path::new("")).display()
        );
    }
}

/// The operator binary of the same build: target/<profile>/examples/demo ->
/// target/<profile>/ingestion-key-operator.
fn operator_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| format!("locating the demo binary: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("the demo binary is not in target/<profile>/examples")?;
    Ok(profile_dir.join("ingestion-key-operator"))
}

fn step(what: &str) {
    println!("\n==> {what}");
}

fn ready_condition(request: &IngestionKeyRequest) -> Option<(String, String, String)> {
    let status = request.status.as_ref()?;
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some((
        ready.status.clone(),
        ready.reason.clone(),
        ready.message.clone(),
    ))
}

async fn wait_ready(admin: SocketAddr, pid: u32) -> Result<()> {
    let url = format!("http://{admin}/readyz");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        if !support::process_alive(pid) {
            return Err("the operator exited during start-up".into());
        }
        if Instant::now() > deadline {
            return Err("the operator was not ready within 60s".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

fn output(cmd: &mut Command) -> Result<String> {
    support::output(cmd, None)
}

fn free_port() -> Result<SocketAddr> {
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| format!("picking a free port: {e}"))?;
    listener.local_addr().map_err(|e| e.to_string())
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| format!("{} is not UTF-8", path.display()))
}
