//! etcd + kube-apiserver (+ kube-controller-manager) on loopback ports, started once per test
//! binary.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::assets::assets_dir;
use crate::process::{
    JANITOR, POLL, free_ports, process_alive, run, spawn_supervised, unique_suffix,
    unique_temp_dir, wait_for, write,
};

/// How long the control plane may take to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The control plane of this test binary, started on first use.
///
/// Panics (in every caller) when it cannot be started.
pub fn control_plane() -> &'static ControlPlane {
    static CONTROL_PLANE: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
    match CONTROL_PLANE.get_or_init(|| ControlPlane::start_with_retries(3)) {
        Ok(cp) => cp,
        Err(e) => panic!("the test control plane did not start: {e}"),
    }
}

/// A server process started by the harness.
#[derive(Debug, Clone)]
pub struct Server {
    pub name: &'static str,
    pub pid: u32,
    pub log: PathBuf,
}

/// etcd + kube-apiserver (+ kube-controller-manager) on loopback ports, with an admin token in
/// `system:masters` and RBAC authorization.
#[derive(Debug)]
pub struct ControlPlane {
    dir: PathBuf,
    assets: PathBuf,
    kubeconfig: PathBuf,
    ca_file: PathBuf,
    server_url: String,
    admin_token: String,
    /// Behind a lock: a fault test restarts a server through a shared reference.
    servers: std::sync::Mutex<Vec<Server>>,
    namespaces: AtomicUsize,
    /// How each server was started (program, then arguments), to start it again.
    commands: std::sync::Mutex<Vec<(&'static str, Vec<std::ffi::OsString>)>>,
}

impl ControlPlane {
    fn start_with_retries(attempts: usize) -> Result<Self, String> {
        let assets = assets_dir()?;
        let mut errors = String::new();
        for attempt in 1..=attempts {
            let started = Instant::now();
            // A free port picked by binding :0 may be taken before the server binds it: retry.
            match Self::start(&assets) {
                Ok(cp) => {
                    eprintln!(
                        "test control plane ready in {:.1}s at {} (kubeconfig {}, logs in {})",
                        started.elapsed().as_secs_f64(),
                        cp.server_url,
                        cp.kubeconfig.display(),
                        cp.dir.display()
                    );
                    return Ok(cp);
                }
                Err(e) => {
                    eprintln!("test control plane, attempt {attempt} failed: {e}");
                    let _ = write!(errors, "\n--- attempt {attempt}: {e}");
                }
            }
        }
        Err(errors)
    }

    /// Starts a control plane from the binaries in `assets`.
    pub fn start(assets: &Path) -> Result<Self, String> {
        let dir = unique_temp_dir()?;
        let mut cp = ControlPlane {
            assets: assets.to_path_buf(),
            kubeconfig: dir.join("kubeconfig"),
            ca_file: dir.join("certs").join("apiserver.crt"),
            server_url: String::new(),
            admin_token: format!("admin-{}", unique_suffix()),
            servers: std::sync::Mutex::default(),
            namespaces: AtomicUsize::new(0),
            commands: std::sync::Mutex::default(),
            dir,
        };
        match cp.boot() {
            Ok(()) => {
                cp.spawn_janitor()?;
                Ok(cp)
            }
            Err(e) => {
                let logs = cp.log_tails();
                cp.kill_now();
                let _ = std::fs::remove_dir_all(&cp.dir);
                Err(format!("{e}{logs}"))
            }
        }
    }

    fn boot(&mut self) -> Result<(), String> {
        let dir = self.dir.clone();
        for sub in ["certs", "etcd"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|e| format!("creating {sub}: {e}"))?;
        }

        // Service-account signing key.
        let sa_key = dir.join("sa.key");
        let sa_pub = dir.join("sa.pub");
        run(Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&sa_key)
            .arg("2048"))?;
        run(Command::new("openssl")
            .args(["rsa", "-pubout", "-in"])
            .arg(&sa_key)
            .arg("-out")
            .arg(&sa_pub))?;

        // Token authentication: the admin is in system:masters.
        let tokens = dir.join("tokens.csv");
        write(
            &tokens,
            &format!("{},admin,admin,\"system:masters\"\n", self.admin_token),
        )?;

        let [etcd_port, peer_port, api_port] = free_ports::<3>()?;
        self.server_url = format!("https://127.0.0.1:{api_port}");
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");

        let mut etcd = Command::new(self.assets.join("etcd"));
        etcd.arg("--name=default")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=default={peer_url}"))
            .arg("--initial-cluster-state=new");
        self.spawn("etcd", etcd)?;

        let mut apiserver = Command::new(self.assets.join("kube-apiserver"));
        apiserver
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg(format!("--cert-dir={}", dir.join("certs").display()))
            .arg(format!("--secure-port={api_port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg("--insecure-port=0")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-account-key-file={}", sa_pub.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                sa_key.display()
            ))
            .arg("--authorization-mode=RBAC")
            .arg(format!("--token-auth-file={}", tokens.display()))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--allow-privileged=true");
        self.spawn("kube-apiserver", apiserver)?;

        // The apiserver writes its self-signed certificate (with the CA in the bundle) on start.
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.ca_file.exists() {
            self.check_alive()?;
            if Instant::now() > deadline {
                return Err("kube-apiserver wrote no serving certificate".into());
            }
            std::thread::sleep(POLL);
        }
        self.write_kubeconfig_to(&self.kubeconfig, &self.admin_token)?;
        self.wait_ready(deadline)?;

        let kcm = self.assets.join("kube-controller-manager");
        if kcm.exists() {
            let mut cmd = Command::new(kcm);
            cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
                .arg("--controllers=garbagecollector,namespace,serviceaccount-token")
                .arg("--leader-elect=false")
                .arg(format!(
                    "--service-account-private-key-file={}",
                    sa_key.display()
                ))
                .arg(format!("--root-ca-file={}", self.ca_file.display()))
                .arg("--secure-port=0")
                .arg("--port=0");
            self.spawn("kube-controller-manager", cmd)?;
        }
        Ok(())
    }

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

    /// The pid of the server `name` (`etcd`, `kube-apiserver`).
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.lock_servers()
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.pid)
    }

    /// Starts `cmd` under a watchdog (see [`spawn_supervised`]) and records the server's pid.
    fn lock_servers(&self) -> std::sync::MutexGuard<'_, Vec<Server>> {
        self.servers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn spawn(&self, name: &'static str, cmd: Command) -> Result<(), String> {
        let command = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(ToOwned::to_owned)
            .collect();
        let mut commands = self
            .commands
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !commands.iter().any(|(n, _)| *n == name) {
            commands.push((name, command));
        }
        drop(commands);
        let log = self.dir.join(format!("{name}.log"));
        let pid = spawn_supervised(name, &cmd, &log)?;
        self.lock_servers().push(Server { name, pid, log });
        Ok(())
    }

    fn spawn_janitor(&self) -> Result<(), String> {
        Command::new("sh")
            .arg("-c")
            .arg(JANITOR)
            .arg("janitor")
            .arg(std::process::id().to_string())
            .arg(&self.dir)
            .args(self.lock_servers().iter().map(|s| s.pid.to_string()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting the janitor: {e}"))?;
        Ok(())
    }

    fn check_alive(&self) -> Result<(), String> {
        match self.lock_servers().iter().find(|s| !process_alive(s.pid)) {
            Some(s) => Err(format!("{} (pid {}) exited during start-up", s.name, s.pid)),
            None => Ok(()),
        }
    }

    /// Polls `/readyz` with the admin token until it answers 200.
    fn wait_ready(&self, deadline: Instant) -> Result<(), String> {
        let url = format!("{}/readyz", self.server_url);
        let ca = std::fs::read(&self.ca_file).map_err(|e| format!("reading the CA: {e}"))?;
        let token = self.admin_token.clone();
        // A runtime of our own, on a thread of our own: the caller may be inside a tokio runtime.
        let check = move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let mut builder = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .tls_built_in_root_certs(false);
                for cert in reqwest::Certificate::from_pem_bundle(&ca).map_err(|e| e.to_string())? {
                    builder = builder.add_root_certificate(cert);
                }
                let http = builder.build().map_err(|e| e.to_string())?;
                let mut last = String::from("no answer");
                while Instant::now() < deadline {
                    match http.get(&url).bearer_auth(&token).send().await {
                        Ok(r) if r.status().is_success() => return Ok(()),
                        Ok(r) => {
                            last = format!("{}: {}", r.status(), r.text().await.unwrap_or_default())
                        }
                        Err(e) => last = e.to_string(),
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(format!(
                    "kube-apiserver not ready in time; last /readyz answer: {last}"
                ))
            })
        };
        let handle = std::thread::spawn(check);
        loop {
            if handle.is_finished() {
                return handle
                    .join()
                    .map_err(|_| "readiness check panicked".to_string())?;
            }
            self.check_alive()?;
            std::thread::sleep(POLL);
        }
    }

    fn log_tails(&self) -> String {
        let mut out = String::new();
        for s in self.lock_servers().iter() {
            let text = std::fs::read_to_string(&s.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            let _ = write!(out, "\n--- last lines of {}:\n{tail}", s.log.display());
        }
        out
    }

    fn kill_now(&self) {
        for s in self.lock_servers().iter() {
            let _ = Command::new("kill")
                .args(["-KILL", &s.pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// The kubeconfig of the admin (token in `system:masters`), for `kubectl` and the operator.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The apiserver's self-signed certificate bundle, the CA of the kubeconfigs.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The temporary directory of this control plane (logs, certificates, etcd data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory the binaries come from.
    pub fn assets_dir(&self) -> &Path {
        &self.assets
    }

    /// The server processes (etcd, kube-apiserver, kube-controller-manager when present).
    pub fn servers(&self) -> Vec<Server> {
        self.lock_servers().clone()
    }

    /// Whether kube-controller-manager runs (garbage collection, namespace deletion).
    pub fn has_controller_manager(&self) -> bool {
        self.pid_of("kube-controller-manager").is_some()
    }

    /// A kubeconfig for a bearer token (e.g. a service account's) that trusts the API server
    /// through `ca` (a file), or, with `None`, through the system's CA bundle.
    pub fn kubeconfig_text(&self, token: &str, ca: Option<&Path>) -> String {
        let ca = ca
            .map(|ca| format!("\n    certificate-authority: {}", ca.display()))
            .unwrap_or_default();
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: envtest
  cluster:
    server: {server}{ca}
users:
- name: user
  user:
    token: {token}
contexts:
- name: envtest
  context:
    cluster: envtest
    user: user
    namespace: default
current-context: envtest
",
            server = self.server_url,
        )
    }

    /// Writes a kubeconfig for another bearer token (e.g. a service account's) to `path`.
    pub fn write_kubeconfig_to(&self, path: &Path, token: &str) -> Result<(), String> {
        write(path, &self.kubeconfig_text(token, Some(&self.ca_file)))
    }

    /// Writes a kubeconfig for `token` into the control plane's directory and returns its path.
    pub fn kubeconfig_for_token(&self, name: &str, token: &str) -> PathBuf {
        let path = self.dir.join(format!("kubeconfig-{name}"));
        self.write_kubeconfig_to(&path, token)
            .unwrap_or_else(|e| panic!("{e}"));
        path
    }

    /// A new admin client. Make one per test: a client belongs to the runtime it was made in.
    pub async fn client(&self) -> kube::Client {
        self.client_for(&self.kubeconfig).await
    }

    /// A new client from the kubeconfig at `path`.
    pub async fn client_for(&self, path: &Path) -> kube::Client {
        let kubeconfig = Kubeconfig::read_from(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", path.display()));
        kube::Client::try_from(config).unwrap_or_else(|e| panic!("building a client: {e}"))
    }

    /// `kubectl --kubeconfig <admin kubeconfig>`.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// The operator binary with `KUBECONFIG` pointing at the admin kubeconfig.
    pub fn operator_command(&self) -> Command {
        let mut cmd = Command::new(crate::operator_binary());
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// Installs (creates or replaces) `crd` and waits until it is Established. Idempotent, and
    /// safe when several tests install the same CRD at once.
    pub async fn install_crd(&self, crd: CustomResourceDefinition) {
        let name = crd
            .metadata
            .name
            .clone()
            .expect("the CRD has a metadata.name");
        let api: Api<CustomResourceDefinition> = Api::all(self.client().await);
        let mut crd = crd;
        crd.metadata.managed_fields = None;
        crd.metadata.resource_version = None;
        crd.status = None;
        // Create, or replace what is there: server-side apply is not an option, because a 1.20
        // API server refuses to apply a CRD carrying x-kubernetes-validations ("field not declared
        // in schema"), while create and update accept it and drop the rules.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match api.get_opt(&name).await {
                Ok(None) => api.create(&PostParams::default(), &crd).await.map(|_| ()),
                Ok(Some(existing)) => {
                    let mut replacement = crd.clone();
                    replacement.metadata.resource_version = existing.metadata.resource_version;
                    api.replace(&name, &PostParams::default(), &replacement)
                        .await
                        .map(|_| ())
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => break,
                // Concurrent installs conflict (409): look again.
                Err(e) if attempt < 10 => {
                    eprintln!("installing CRD {name} (attempt {attempt}): {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("installing CRD {name}: {e}"),
            }
        }
        wait_for(
            &format!("CRD {name} to be Established"),
            Duration::from_secs(30),
            || async {
                api.get(&name)
                    .await
                    .ok()
                    .and_then(|crd| crd.status)
                    .and_then(|s| s.conditions)
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    })
            },
        )
        .await;
    }

    /// Creates a fresh namespace `<prefix>-<n>-<pid>` and returns its name.
    pub async fn namespace(&self, prefix: &str) -> String {
        let n = self.namespaces.fetch_add(1, Ordering::SeqCst);
        let suffix = format!("-{n}-{}", std::process::id());
        let mut prefix: String = prefix
            .chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        prefix.truncate(63 - suffix.len());
        let prefix = prefix.trim_matches('-');
        let name = format!(
            "{}{suffix}",
            if prefix.is_empty() { "test" } else { prefix }
        );
        let api: Api<Namespace> = Api::all(self.client().await);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "test-harness": "true" } }
        }))
        .expect("namespace JSON");
        api.create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        name
    }
}
