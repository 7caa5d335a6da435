//! How tests reach the control plane: kubeconfigs, clients, kubectl, the CRD, namespaces.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::{ControlPlane, Server};
use crate::process::{wait_for, write};

impl ControlPlane {
    /// The kubeconfig of the admin (token in `system:masters`), for `kubectl` and the operator.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The API server's `127.0.0.1:<port>`, for a proxy in front of it.
    pub fn api_server_addr(&self) -> std::net::SocketAddr {
        self.server_url
            .trim_start_matches("https://")
            .parse()
            .unwrap_or_else(|e| panic!("the API server's address {}: {e}", self.server_url))
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

    /// Writes an admin kubeconfig whose server is `addr` (a proxy in front of the API server,
    /// which it reaches as `https://<addr>`) and returns its path.
    pub fn kubeconfig_through(&self, name: &str, addr: std::net::SocketAddr) -> PathBuf {
        let path = self.dir.join(format!("kubeconfig-{name}"));
        let text = self
            .kubeconfig_text(&self.admin_token, Some(&self.ca_file))
            .replace(&self.server_url, &format!("https://{addr}"));
        write(&path, &text).unwrap_or_else(|e| panic!("{e}"));
        path
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

    /// Gives `user` exactly `rules` in namespace `ns`: a Role and a RoleBinding named `role`.
    pub async fn grant_user(&self, ns: &str, user: &str, role: &str, rules: serde_json::Value) {
        use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
        let client = self.client().await;
        let role_object: Role =
            serde_json::from_value(serde_json::json!({"metadata": {"name": role}, "rules": rules}))
                .expect("Role JSON");
        let binding: RoleBinding = serde_json::from_value(serde_json::json!({
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }))
        .expect("RoleBinding JSON");
        let post = PostParams::default();
        Api::<Role>::namespaced(client.clone(), ns)
            .create(&post, &role_object)
            .await
            .expect("Role");
        Api::<RoleBinding>::namespaced(client, ns)
            .create(&post, &binding)
            .await
            .expect("RoleBinding");
    }

    /// The admin's kubeconfig, impersonating `user` (whose rights are only what RBAC grants them).
    pub fn kubeconfig_as(&self, user: &str) -> Kubeconfig {
        let mut kubeconfig = Kubeconfig::read_from(self.kubeconfig_path()).expect("kubeconfig");
        for entry in &mut kubeconfig.auth_infos {
            if let Some(auth) = entry.auth_info.as_mut() {
                auth.impersonate = Some(user.into());
            }
        }
        kubeconfig
    }
}
