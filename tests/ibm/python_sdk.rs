//! The IBM Cloud simulator driven by IBM's own Python SDK (`ibm-platform-services`, which pulls
//! `ibm-cloud-sdk-core`): if IBM's SDK accepts the simulator's IAM tokens (JWTs), pages, keys and
//! errors, the simulator answers as IBM Cloud does where the operator relies on it.
//!
//! The SDK is installed once into a cached virtualenv
//! (`$XDG_CACHE_HOME` or `~/.cache`, then `ingestion-key-operator/py-sdk-venv`) with `python3 -m venv`
//! and pip, and reused afterwards. The test is skipped, with a message, only when `python3` is absent.
//! The checks themselves are in `tests/python/ibm_sdk_check.py`.

use std::path::{Path, PathBuf};
use std::process::Command;

use ibm_cloud_sim::{Seed, Simulator};

/// Pinned so that a run is reproducible; the marker file records it, so a change reinstalls.
const REQUIREMENTS: &[&str] = &[
    "ibm-platform-services==0.77.1",
    "ibm-cloud-sdk-core==3.28.0",
];

const API_KEY: &str = "sdk-check-api-key-manager";
const SHARED_NAME: &str = "sdk-shared-name";
const GUIDS: [&str; 2] = [
    "0b7c6c02-5e3a-4c36-8f0e-6b1b1d0a9a01",
    "7d2f1e8a-3c4b-4f5d-9e6a-1b2c3d4e5f02",
];

fn seed() -> String {
    format!(
        r#"
token_ttl_seconds: 3600
accounts:
  - id: 4329073d16d2f3663f74bfa955259139
    api_keys:
      - key: {API_KEY}
        name: sdk-check
        platform_role: Editor
        service_role: Manager
    instances:
      - name: {SHARED_NAME}
        guid: {g0}
        service: logdnaat
        region: us-south
      - name: {SHARED_NAME}
        guid: {g1}
        service: logdna
        region: eu-de
      - name: another-instance
        service: logdna
"#,
        g0 = GUIDS[0],
        g1 = GUIDS[1]
    )
}

fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("ingestion-key-operator")
}

fn python3_present() -> bool {
    Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) {
    let output = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The virtualenv's python with the SDK installed: created and filled on first use.
fn sdk_python() -> PathBuf {
    let venv = cache_dir().join("py-sdk-venv");
    let python = venv.join("bin").join("python");
    let marker = venv.join(".installed");
    let wanted = REQUIREMENTS.join("\n");
    if std::fs::read_to_string(&marker).is_ok_and(|m| m == wanted) && python.exists() {
        return python;
    }
    eprintln!(
        "installing {} into {} (once)",
        REQUIREMENTS.join(" "),
        venv.display()
    );
    if venv.exists() {
        std::fs::remove_dir_all(&venv).expect("remove a stale SDK virtualenv");
    }
    std::fs::create_dir_all(cache_dir()).expect("cache directory");
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(REQUIREMENTS));
    std::fs::write(&marker, wanted).expect("write the install marker");
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ibm_python_sdk_works_against_the_simulator() {
    if !python3_present() {
        println!("SKIPPED ibm_python_sdk_works_against_the_simulator: python3 is not installed");
        return;
    }
    let python = tokio::task::spawn_blocking(sdk_python)
        .await
        .expect("SDK install task");
    let seed = Seed::from_yaml(&seed()).expect("seed parses");
    let sim = Simulator::start("127.0.0.1:0".parse().unwrap(), seed)
        .await
        .expect("simulator starts");
    let url = sim.base_url();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/ibm_sdk_check.py");

    let output = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&url)
        .arg(&url)
        .env("SIM_API_KEY", API_KEY)
        .env("SIM_INSTANCE_NAME", SHARED_NAME)
        .env("SIM_INSTANCE_GUIDS", GUIDS.join(","))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the SDK script failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    let checks: u32 = last
        .strip_prefix("OK ")
        .and_then(|rest| rest.strip_suffix(" checks"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("last line is not `OK <n> checks`: {last:?}"));
    assert!(checks >= 28, "only {checks} checks ran");

    // The SDK really went through the simulator's IAM and Resource Controller endpoints.
    assert!(
        sim.call_count("POST /identity/token") >= 3,
        "{:?}",
        sim.calls()
    );
    assert!(sim.call_count("GET /v2/resource_instances") >= 3);
    assert_eq!(sim.call_count("POST /v2/resource_keys"), 3);
    assert!(sim.call_count("DELETE /v2/resource_keys/{id}") >= 3);
}
