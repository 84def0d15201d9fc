//! Resource limits against a running server: slow and oversized request
//! heads, announced bodies, packages per image, the cap on concurrent
//! builds, and SIGTERM finishing the responses under way. After each, the
//! server still serves a normal request.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};
use strata_e2e::*;

fn fixture_pkgs() -> PathBuf {
    repo_root().join("tests/fixtures/faulty-pkgs")
}

fn with(extra_toml: &str, env: &[(&str, &str)]) -> ServerOptions {
    let mut all = vec![("NIXERY_PKGS_PATH".to_string(), fixture_pkgs().display().to_string())];
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    ServerOptions { extra_toml: extra_toml.to_string(), env: all, ..Default::default() }
}

fn manifest(server: &Server, name: &str) -> (u16, Vec<u8>, Option<String>) {
    let r = server
        .get(&format!("/v2/{name}/manifests/latest"))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .expect("GET manifest");
    let retry = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    (r.status().as_u16(), r.bytes().expect("body").to_vec(), retry)
}

fn assert_serves(server: &Server) {
    let (status, body, _) = manifest(server, "hello");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

/// Sends `head` as is and reads what comes back until the server closes
/// (or 30 s pass): (response bytes, time to close).
fn exchange(server: &Server, head: &[u8]) -> (String, Duration) {
    let mut s = TcpStream::connect_timeout(&server.addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = Instant::now();
    let _ = s.write_all(head);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    (String::from_utf8_lossy(&buf).into_owned(), started.elapsed())
}

fn status_of(response: &str) -> u16 {
    response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status line in {response:?}"))
}

#[test]
fn slow_heads_big_heads_and_announced_bodies_are_cut_off() {
    let server = Server::start_with(with("[limits]\nheader_read_secs = 2\nmax_header_bytes = 8192\nmax_headers = 32\nmax_body_bytes = 1024\n", &[]));

    // Slowloris: a head trickled one header a second is cut off at the
    // header timeout, while other clients are served.
    let mut slow = TcpStream::connect_timeout(&server.addr, Duration::from_secs(5)).expect("connect");
    slow.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let started = Instant::now();
    slow.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut closed_after = None;
    for i in 0..20 {
        let mut b = [0u8; 256];
        match slow.read(&mut b) {
            Ok(0) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed_after = Some(started.elapsed());
                break;
            }
        }
        if slow.write_all(format!("X-Slow-{i}: y\r\n").as_bytes()).is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        if i == 2 {
            assert_serves(&server);
        }
        thread::sleep(Duration::from_millis(800));
    }
    let closed_after = closed_after.expect("a trickled head was never cut off");
    assert!(closed_after >= Duration::from_millis(1900) && closed_after < Duration::from_secs(5), "cut off after {closed_after:?}");

    // An idle keep-alive connection is closed after the same time.
    let (resp, took) = exchange(&server, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&resp), 200);
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(5), "idle connection kept {took:?}");

    // A head over max_header_bytes, or with more fields than max_headers.
    let big = format!("GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n", "a".repeat(12_000));
    assert_eq!(status_of(&exchange(&server, big.as_bytes()).0), 431);
    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n");
    assert_eq!(status_of(&exchange(&server, many.as_bytes()).0), 431);
    let fits: String = (0..20).map(|i| format!("X-H{i}: v\r\n")).collect();
    let fits = format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n{fits}Connection: close\r\n\r\n");
    assert_eq!(status_of(&exchange(&server, fits.as_bytes()).0), 200);

    // A body announced over max_body_bytes: refused at once, unread, in
    // the spec's JSON.
    let (resp, took) = exchange(&server, b"PUT /v2/x/manifests/latest HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n");
    assert_eq!(status_of(&resp), 413, "{resp}");
    assert!(resp.contains("SIZE_INVALID"), "{resp}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let r = server.http().get(server.url("/v2/")).body(vec![b'x'; 2048]).send().unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let r = server.http().get(server.url("/v2/")).body(vec![b'x'; 512]).send().unwrap();
    assert_eq!(r.status().as_u16(), 200);

    assert_serves(&server);
}

#[test]
fn packages_per_image_are_capped_by_name_and_by_expansion() {
    let server = Server::start_with(with("max_packages = 3\n", &[]));
    let (status, body, _) = manifest(&server, "hello/busybox/coreutils/nano");
    assert_eq!(status, 400);
    assert_eq!(spec_error(&body).0, "NAME_INVALID");
    // One name, but the `shell` bundle expands to six packages.
    let (status, body, _) = manifest(&server, "shell");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (code, message, _) = spec_error(&body);
    assert_eq!(code, "NAME_INVALID");
    assert!(message.contains("at most 3"), "{message}");
    let (status, body, _) = manifest(&server, "hello/busybox/coreutils");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn builds_past_the_cap_are_told_to_retry_later() {
    let nonce = unique_suffix();
    let marker = fault_marker("sleepy", &nonce);
    let server = Server::start_with(with("[builds]\nmax_concurrent = 1\nqueue_limit = 0\n", &[("NIX_TIMEOUT", "4"), ("STRATA_FAULT_NONCE", &nonce)]));
    let url = server.url("/v2/sleepy/manifests/latest");
    let first = thread::spawn(move || http_client().get(url).send().map(|r| r.status().as_u16()).unwrap());
    wait_until(Duration::from_secs(60), "the first build to start", || !processes_with(&marker).is_empty());
    let (status, body, retry) = manifest(&server, "hello");
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert_eq!(spec_error(&body).0, "TOOMANYREQUESTS");
    assert!(retry.is_some_and(|r| r.parse::<u64>().is_ok_and(|s| s > 0)), "no Retry-After");
    assert_eq!(first.join().unwrap(), 504);
    // The slot is free again.
    assert_serves(&server);
}

#[test]
fn sigterm_finishes_the_response_under_way_and_refuses_new_connections() {
    let nonce = unique_suffix();
    let marker = fault_marker("slow", &nonce);
    let mut server = Server::start_with(with("", &[("STRATA_FAULT_NONCE", &nonce)]));
    let url = server.url("/v2/slow/manifests/latest");
    let pending = thread::spawn(move || {
        let r = http_client()
            .get(url)
            .header("Accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .expect("the response under way is finished");
        (r.status().as_u16(), r.bytes().unwrap().to_vec())
    });
    wait_until(Duration::from_secs(60), "the slow build to start", || !processes_with(&marker).is_empty());
    server.signal(libc::SIGTERM);
    // New connections are refused while the build goes on.
    wait_until(Duration::from_secs(5), "new connections to be refused", || TcpStream::connect_timeout(&server.addr, Duration::from_secs(1)).is_err());
    assert!(!processes_with(&marker).is_empty() || !pending.is_finished(), "nothing was under way when the server stopped accepting");
    let (status, body) = pending.join().unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let m: Value = serde_json::from_slice(&body).unwrap();
    assert!(m["layers"].as_array().is_some_and(|l| l.len() >= 2), "{m}");
    let exit = server.wait_exit(Duration::from_secs(30)).expect("the server exits once the response is sent");
    assert!(exit.success(), "{exit:?}");
    assert!(server.log().contains("finishing responses under way"), "{}", server.log());
}

#[test]
fn a_client_that_stops_reading_is_disconnected_after_the_write_stall_limit() {
    let server = Server::start_with(with("[limits]\nwrite_stall_secs = 2\n", &[]));
    let (status, body, _) = manifest(&server, "big");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let m: Value = serde_json::from_slice(&body).unwrap();
    let largest = m["layers"].as_array().unwrap().iter().max_by_key(|l| l["size"].as_u64().unwrap()).unwrap().clone();
    let size = largest["size"].as_u64().unwrap();
    // Larger than what the loopback socket buffers hold on both sides.
    assert!(size > 24 << 20, "a 32 MiB layer: {largest}");

    let mut s = TcpStream::connect_timeout(&server.addr, Duration::from_secs(5)).expect("connect");
    let head = format!("GET /v2/big/blobs/{} HTTP/1.1\r\nHost: {}\r\n\r\n", largest["digest"].as_str().unwrap(), server.host());
    s.write_all(head.as_bytes()).unwrap();
    // Read nothing while the server's writes stall, well past the limit.
    thread::sleep(Duration::from_secs(6));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    let started = Instant::now();
    let _ = s.read_to_end(&mut got);
    assert!(started.elapsed() < Duration::from_secs(25), "the connection was not closed");
    assert!(
        (got.len() as u64) < size,
        "the server kept the stalled response open: {} of {size} bytes arrived",
        got.len()
    );
    assert!(String::from_utf8_lossy(&got[..got.len().min(12)]).starts_with("HTTP/1.1 200"), "a response had started");
    assert_serves(&server);
}
