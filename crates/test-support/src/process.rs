//! Processes the harness starts and waits for: supervised servers that die with the test
//! process, polling, signals, free ports, temporary directories.

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Polling interval of [`wait_for`].
pub(crate) const POLL: Duration = Duration::from_millis(100);

/// Runs `"$@"` in the background with its output appended to `$2`, prints its pid, then polls the
/// parent process (`$1`): once it is gone (or the child exited by itself), the child gets SIGTERM,
/// then SIGKILL after 5 s, and is reaped.
const WATCHDOG: &str = r#"
alive() { kill -0 "$1" 2>/dev/null && ! grep -qs '^State:[[:space:]]*Z' "/proc/$1/status"; }
trap '' INT HUP QUIT
parent=$1; log=$2; shift 2
"$@" >>"$log" 2>&1 </dev/null &
child=$!
echo "$child"
exec >/dev/null 2>&1
trap 'kill -KILL "$child"; exit 1' TERM
while alive "$parent" && alive "$child"; do sleep 0.2; done
kill -TERM "$child"
i=0
while [ "$i" -lt 50 ] && alive "$child"; do sleep 0.1; i=$((i+1)); done
kill -KILL "$child"
wait "$child"
"#;

/// Once the test process (`$1`) is gone and the servers (`$3...`) have exited (at most 15 s), removes
/// the temporary directory `$2`.
pub(crate) const JANITOR: &str = r#"
alive() { kill -0 "$1" 2>/dev/null && ! grep -qs '^State:[[:space:]]*Z' "/proc/$1/status"; }
trap '' INT HUP QUIT
parent=$1; dir=$2; shift 2
exec </dev/null >/dev/null 2>&1
while alive "$parent"; do sleep 0.5; done
for pid in "$@"; do
  i=0
  while [ "$i" -lt 150 ] && alive "$pid"; do sleep 0.1; i=$((i+1)); done
done
rm -rf "$dir"
"#;

/// Starts `cmd` (program, arguments, environment) under a [`WATCHDOG`] that stops it as soon as
/// this process is gone, whether it returned, panicked or was killed with SIGKILL, and returns the
/// pid of the started program. Its output goes to `log`.
pub fn spawn_supervised(name: &str, cmd: &Command, log: &Path) -> Result<u32, String> {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(WATCHDOG)
        .arg("watchdog")
        .arg(std::process::id().to_string())
        .arg(log)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Out of this process group: a signal to the group (Ctrl-C, a CI timeout) ends this
        // process, and the watchdog then cleans up after it.
        .process_group(0);
    for (key, value) in cmd.get_envs() {
        match value {
            Some(value) => sh.env(key, value),
            None => sh.env_remove(key),
        };
    }
    let mut child = sh
        .spawn()
        .map_err(|e| format!("starting {name} under sh: {e}"))?;
    let mut line = String::new();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| format!("{name}: no stdout pipe"))?;
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| format!("reading the pid of {name}: {e}"))?;
    line.trim()
        .parse()
        .map_err(|_| format!("{name}: the watchdog printed {line:?}, not a pid"))
}

/// Polls `condition` every 100 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether `pid` runs (a zombie counts as gone).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

pub(crate) fn free_ports<const N: usize>() -> Result<[u16; N], String> {
    // Hold all listeners at once so the ports differ.
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("picking free ports: {e}"))?;
    let mut ports = [0; N];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l.local_addr().map_err(|e| e.to_string())?.port();
    }
    Ok(ports)
}

pub(crate) fn unique_suffix() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

pub(crate) fn unique_temp_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("iko-envtest-{}", unique_suffix()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

pub(crate) fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

pub(crate) fn run(cmd: &mut Command) -> Result<(), String> {
    output(cmd, None).map(drop)
}

/// Runs `cmd` to the end with `input` on its stdin (or none) and returns its stdout; a failure
/// names the command and carries what it printed.
pub fn output(cmd: &mut Command, input: Option<&str>) -> Result<String, String> {
    use std::io::Write;
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("writing to {cmd:?}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("running {cmd:?}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

pub fn signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status();
}

/// Polls until `pid` has exited (a zombie counts as gone); false after `timeout`.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while process_alive(pid) {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

pub fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}
