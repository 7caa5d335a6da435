//! The image `make image` builds (buildah, no registry, no base image): a static binary, the CA
//! bundle and nothing else, and the operator running from it as the chart's ServiceAccount.

use crate::harness::*;

/// The cargo profile of the image the tests build: dev by default (the release build takes
/// minutes on 2 cores with LTO); `IKO_IMAGE_PROFILE=release` tests what `make image` ships.
fn image_profile() -> String {
    std::env::var("IKO_IMAGE_PROFILE").unwrap_or_else(|_| "dev".into())
}

struct Image {
    archive: PathBuf,
    /// buildah's private storage (hack/build-image.sh's, under IMAGE_DIR).
    dir: PathBuf,
}

impl Image {
    fn buildah(&self) -> Command {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["--storage-driver", "vfs"])
            .stdin(Stdio::null());
        cmd
    }

    fn buildah_ok(&self, args: &[&str]) -> String {
        let out = self.buildah().args(args).output().expect("running buildah");
        assert!(
            out.status.success(),
            "buildah {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A working container from the archive; removed on drop.
    fn container(&self) -> Container<'_> {
        let archive = format!("oci-archive:{}", self.archive.display());
        let name = self
            .buildah_ok(&["from", "--quiet", &archive])
            .trim()
            .to_string();
        Container { image: self, name }
    }
}

struct Container<'a> {
    image: &'a Image,
    name: String,
}

impl Container<'_> {
    /// `buildah run` of the image's binary with `args`, as the image's user, host network.
    fn run(&self, args: &[&str]) -> std::process::Output {
        self.image
            .buildah()
            .args([
                "run",
                "--isolation",
                "chroot",
                "--network",
                "host",
                &self.name,
                "--",
            ])
            .arg("/ingestion-key-operator")
            .args(args)
            .output()
            .expect("buildah run")
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self.image.buildah().args(["rm", &self.name]).output();
    }
}

/// The image of this build, built once per test binary; `None` (with the reason printed) where
/// buildah cannot run: it needs root here (vfs storage, chroot isolation).
fn image() -> Option<&'static Image> {
    static IMAGE: OnceLock<Option<Image>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let root_user = Command::new("id")
                .arg("-u")
                .output()
                .map(|o| o.stdout == b"0\n");
            if root_user.ok() != Some(true) {
                eprintln!(
                    "SKIPPED: the image tests need root for buildah (vfs storage, chroot isolation)"
                );
                return None;
            }
            let has = |program: &str| {
                Command::new("sh")
                    .args(["-c", &format!("command -v {program}")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !has("buildah") && !has("apt-get") {
                eprintln!("SKIPPED: no buildah, and no apt-get to install it");
                return None;
            }
            let dir = root().join("target/image-test");
            let started = std::time::Instant::now();
            let mut build = Command::new(root().join("hack/build-image.sh"));
            let out = as_make_runs_cargo(&mut build)
                .env("PROFILE", image_profile())
                .env("IMAGE_DIR", &dir)
                .env("IMAGE_NAME", "ingestion-key-operator:test")
                .current_dir(root())
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()
                .expect("hack/build-image.sh");
            assert!(out.status.success(), "hack/build-image.sh failed");
            let archive = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            eprintln!(
                "image ({} profile) built in {:.1}s: {} ({} bytes)",
                image_profile(),
                started.elapsed().as_secs_f64(),
                archive.display(),
                std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0)
            );
            Some(Image { archive, dir })
        })
        .as_ref()
}

/// Whether an ELF64 little-endian executable names a program interpreter (is dynamically linked).
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "an ELF file");
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap()) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (entry_size, entries) = (u16_at(0x36), u16_at(0x38));
    (0..entries).any(|i| {
        let at = phoff + i * entry_size;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == 3 // PT_INTERP
    })
}

#[test]
fn the_image_holds_a_static_binary_the_ca_bundle_and_nothing_else() {
    let Some(image) = image() else { return };
    let ctr = image.container();

    // The configuration: non-root, the binary as entrypoint, `run` by default, OCI labels.
    let inspect: Value =
        serde_json::from_str(&image.buildah_ok(&["inspect", "--type", "container", &ctr.name]))
            .expect("buildah inspect JSON");
    let config = &inspect["OCIv1"]["config"];
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(config["Entrypoint"], json!(["/ingestion-key-operator"]));
    assert_eq!(config["Cmd"], json!(["run"]));
    assert!(config["ExposedPorts"]["8080/tcp"].is_object(), "{config}");
    assert_eq!(
        config["Labels"]["org.opencontainers.image.title"],
        "ingestion-key-operator"
    );
    assert_eq!(
        config["Labels"]["org.opencontainers.image.licenses"],
        "Apache-2.0"
    );
    assert_eq!(
        config["Labels"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION")
    );

    // The root filesystem: exactly the binary, the CA bundle and nsswitch.conf.
    let mount = PathBuf::from(image.buildah_ok(&["mount", &ctr.name]).trim());
    let mut files = Vec::new();
    let mut stack = vec![mount.clone()];
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            files.push(path.strip_prefix(&mount).unwrap().display().to_string());
        }
    }
    files.sort();
    assert_eq!(
        files,
        [
            "etc/nsswitch.conf",
            "etc/ssl/certs/ca-certificates.crt",
            "ingestion-key-operator"
        ]
    );
    let bundle = std::fs::read_to_string(mount.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(
        bundle.matches("-----BEGIN CERTIFICATE-----").count() >= 100,
        "the CA bundle holds the public roots"
    );
    assert_eq!(
        std::fs::read_to_string(mount.join("etc/nsswitch.conf")).unwrap(),
        "hosts: files dns\n"
    );
    let binary = std::fs::read(mount.join("ingestion-key-operator")).unwrap();
    assert!(
        !has_interpreter(&binary),
        "the binary is static (no PT_INTERP)"
    );
    image.buildah_ok(&["umount", &ctr.name]);

    // It runs from the image: --version and the CRD.
    let version = ctr.run(&["--version"]);
    assert!(version.status.success(), "{version:?}");
    assert!(
        String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")),
        "{version:?}"
    );
    let crd = ctr.run(&["crd"]);
    assert!(crd.status.success(), "{crd:?}");
    assert_eq!(
        String::from_utf8_lossy(&crd.stdout),
        std::fs::read_to_string(root().join("crds").join(CRD_FILE)).unwrap(),
        "`crd` from the image: the committed CRD"
    );
}

/// The operator, run from its image (`buildah run`: the image's root filesystem, user and
/// environment) with only the chart's ServiceAccount token, serves a request until it is Ready.
/// It trusts the API server through the image's CA bundle (the test server's CA is added to the
/// image's `/etc/ssl/certs/ca-certificates.crt`; the kubeconfig names no CA), and reaches the
/// simulator as `http://localhost:PORT` (the static glibc binary resolves names through the
/// image's nsswitch.conf and the /etc/hosts the runtime provides, as the kubelet does): name
/// resolution and the CA bundle work in the image as they will in a cluster.
#[tokio::test]
async fn the_operator_runs_from_its_image_as_the_chart_service_account() {
    let Some(image) = image() else { return };
    let cp = support::control_plane();
    let ChartRun {
        operator_ns,
        watched,
        token,
        ..
    } = ChartRun::install(cp, "image").await;

    // The container: the image, plus the test API server's CA in the image's bundle.
    let ctr = image.container();
    let mount = PathBuf::from(image.buildah_ok(&["mount", &ctr.name]).trim());
    let bundle_path = mount.join("etc/ssl/certs/ca-certificates.crt");
    let mut bundle = std::fs::read_to_string(&bundle_path).expect("the image's CA bundle");
    bundle.push_str(&std::fs::read_to_string(cp.ca_file()).expect("the test CA"));
    std::fs::write(&bundle_path, bundle).unwrap();
    image.buildah_ok(&["umount", &ctr.name]);

    // A kubeconfig for the ServiceAccount that names no CA: the API server's certificate must be
    // trusted through the image's bundle. (By address: the test server's self-signed certificate
    // names 127.0.0.1, not localhost.)
    let config_dir = tempdir("image-config");
    std::fs::write(
        config_dir.join("kubeconfig"),
        cp.kubeconfig_text(&token, None),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(
            config_dir.join("kubeconfig"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }

    let storage = image.dir.clone();
    let name = ctr.name.clone();
    let volume = format!("{}:/config:ro", config_dir.display());
    let launcher: fixtures::Launcher = std::sync::Arc::new(move |args: &[String]| {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(storage.join("storage"))
            .arg("--runroot")
            .arg(storage.join("run"))
            .args([
                "--storage-driver",
                "vfs",
                "run",
                "--isolation",
                "chroot",
                "--network",
                "host",
            ])
            .args(["--volume", &volume])
            .args(["--env", "KUBECONFIG=/config/kubeconfig"])
            .args([
                "--env",
                "RUST_LOG=debug,hyper=info,kube=info,tower=info,rustls=info,h2=info",
            ])
            .args([name.as_str(), "--", "/ingestion-key-operator"])
            // The simulator by name: localhost must resolve inside the image.
            .args(
                args.iter()
                    .map(|a| a.replace("http://127.0.0.1:", "http://localhost:")),
            );
        cmd
    });
    let lease_args = [
        "--leader-elect",
        "--leader-election-namespace",
        operator_ns.as_str(),
    ];
    let env = fixtures::Env::in_namespace_launched(
        watched,
        &config_dir.join("kubeconfig"),
        &lease_args,
        Some(launcher),
    )
    .await;
    env.keep_secret(&token);
    env.serve_first_request("from-the-image").await;
    env.finish().await;
    let _ = std::fs::remove_dir_all(&config_dir);
}
