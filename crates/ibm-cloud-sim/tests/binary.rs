//! The `ibm-cloud-sim` binary: prints its address, serves the demo seed, stops on SIGTERM.
#![cfg(unix)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn post_token(addr: &str, api_key: &str) -> String {
    let body = format!(
        "grant_type=urn%3Aibm%3Aparams%3Aoauth%3Agrant-type%3Aapikey&apikey={api_key}&response_type=cloud_iam"
    );
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "POST /identity/token HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn serves_the_demo_seed_and_stops_on_sigterm() {
    let seed = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/seed.yaml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ibm-cloud-sim"))
        .args(["--listen", "127.0.0.1:0", "--seed", seed])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ibm-cloud-sim");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("ibm-cloud-sim listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();

    let ok = post_token(&url, "FAKE-simulator-only-apikey-manager");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let body: serde_json::Value =
        serde_json::from_str(ok.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let claims = ibm_cloud_sim::jwt::decode_claims(body["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(claims["account"]["bss"], "4329073d16d2f3663f74bfa955259139");
    assert_eq!(claims["exp"], body["expiration"]);
    let bad = post_token(&url, "not-a-key");
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    assert!(bad.contains("BXNIM0415E"));

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "exit status after SIGTERM: {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
