//! The README's first command, non-interactive: `cargo run --example demo -- --once` must end with
//! a Ready request and a populated (masked) Secret, and leave no process behind.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const TIMEOUT: Duration = Duration::from_secs(300);

/// Builds the demo example (a no-op when `cargo test` already did) and returns its path.
fn demo_binary() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    // target/<profile>/deps/demo-<hash> -> target/<profile>/examples/demo
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "--example", "demo"])
        .current_dir(root);
    // Without the variables `cargo test` sets for this test: ring's fingerprint includes
    // CARGO_MANIFEST_DIR, and a different value recompiles the world (twice: now, and again on the
    // next `cargo test`).
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("CARGO_")
            && key_text != "CARGO_HOME"
            && key_text != "CARGO_TARGET_DIR"
        {
            build.env_remove(&key);
        }
    }
    // The profile `cargo test` itself built with: then this build is a no-op instead of a
    // second compilation of the crate with the `dev` profile.
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    } else {
        build.args(["--profile", "test"]);
    }
    let status = build.status().expect("cargo build --example demo");
    assert!(status.success(), "cargo build --example demo failed");
    let demo = profile_dir.join("examples").join("demo");
    assert!(demo.is_file(), "{} missing", demo.display());
    demo
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_owned))
        })
        .is_some_and(|state| state != "Z" && state != "X")
}

#[test]
fn demo_once_ends_with_a_ready_request_and_a_masked_secret_and_cleans_up() {
    let demo = demo_binary();
    let started = Instant::now();
    let mut child = Command::new(&demo)
        .arg("--once")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the demo");
    let mut stdout_pipe = child.stdout.take().unwrap();
    let mut stderr_pipe = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout_pipe.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the demo") {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the demo did not finish within {TIMEOUT:?}:\n{}",
                out_reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let elapsed = started.elapsed();
    let stdout = out_reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    eprintln!("demo --once took {:.1}s", elapsed.as_secs_f64());
    assert!(
        status.success(),
        "the demo failed ({status}):\n{stdout}\n--- stderr:\n{stderr}"
    );

    // `kubectl get ikr -A` shows the request Ready with reason KeySynced.
    let row = stdout
        .lines()
        .find(|l| l.starts_with("ibm-observe") && l.contains("activity-tracker"))
        .unwrap_or_else(|| panic!("no `kubectl get ikr -A` row:\n{stdout}"));
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &columns[2..6],
        [
            "my-activity-tracker",
            "logdna-agent-key",
            "True",
            "KeySynced"
        ],
        "{row}"
    );
    // The Secret is populated, shown masked, and its fingerprint is the one in the status.
    let data = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("logdna-agent-key: "))
        .unwrap_or_else(|| panic!("no Secret data:\n{stdout}"));
    assert!(
        data.contains("****************")
            && data.contains("masked")
            && data.contains("matches status.keyFingerprint"),
        "{data}"
    );
    assert!(
        stdout.contains("app.kubernetes.io/managed-by=ingestion-key-operator"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("FAKE-simulator-only-apikey-manager")
            && !stderr.contains("FAKE-simulator-only-apikey-manager"),
        "the API key was printed"
    );
    let kubeconfig = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("export KUBECONFIG="))
        .unwrap_or_else(|| panic!("no KUBECONFIG line:\n{stdout}"));

    // Every process it started is gone, and the temporary directory follows.
    let pids: Vec<u32> = stdout
        .lines()
        .filter_map(|l| {
            l.split_once("(pid ")
                .and_then(|(_, rest)| rest.split(')').next())
                .and_then(|p| p.trim().parse().ok())
        })
        .collect();
    assert!(
        pids.len() >= 3,
        "the demo names the pids it started:\n{stdout}"
    );
    for pid in &pids {
        assert!(
            !alive(*pid),
            "pid {pid} started by the demo is still running"
        );
    }
    let dir = Path::new(kubeconfig).parent().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!dir.exists(), "{} was not removed", dir.display());
}
