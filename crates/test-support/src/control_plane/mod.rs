//! etcd + kube-apiserver (+ kube-controller-manager) on loopback ports, started once per test
//! binary.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

mod access;
mod faults;

use crate::assets::assets_dir;
use crate::process::{
    JANITOR, POLL, free_ports, process_alive, run, spawn_supervised, unique_suffix,
    unique_temp_dir, write,
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
    /// `http://127.0.0.1:<port>` of etcd's client API.
    etcd_url: String,
    /// Flags added to kube-apiserver's (a fault test's own control plane).
    apiserver_flags: Vec<String>,
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
        Self::start_with(assets, &[])
    }

    /// Starts a control plane whose kube-apiserver also gets `apiserver_flags` (for example
    /// `--watch-cache=false`, so that watches read etcd and a compaction expires them).
    pub fn start_with(assets: &Path, apiserver_flags: &[&str]) -> Result<Self, String> {
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
            etcd_url: String::new(),
            apiserver_flags: apiserver_flags.iter().map(|f| (*f).to_owned()).collect(),
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
        self.etcd_url.clone_from(&etcd_url);
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
            .arg("--allow-privileged=true")
            .args(&self.apiserver_flags);
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

    /// The pid of the server `name` (`etcd`, `kube-apiserver`).
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.lock_servers()
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.pid)
    }

    fn lock_servers(&self) -> std::sync::MutexGuard<'_, Vec<Server>> {
        self.servers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts `cmd` under a watchdog (see [`spawn_supervised`]) and records the server's pid.
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
}
