//! The web page in a real browser, and the API behind it over HTTP: a
//! `strata serve` on the demo set, Debian's headless Chromium driven by
//! `tests/browser/inspect.mjs` (playwright-core), `/api/info`,
//! `/api/inspect`, the health probes and `WEB_DIR`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use strata_e2e::*;

fn browser_dir() -> PathBuf {
    repo_root().join("tests").join("browser")
}

/// Chromium from Debian (`CHROMIUM` overrides), or a failure saying how to
/// get it.
fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(path.is_file(), "{} is missing: run scripts/install-deps.sh (Debian package chromium)", path.display());
    path
}

/// `npm ci` in tests/browser unless playwright-core is there already.
fn node_modules() {
    let dir = browser_dir();
    if dir.join("node_modules/playwright-core/package.json").is_file() {
        return;
    }
    let npm = require_tool("npm");
    let out = run(
        Command::new(npm).args(["ci", "--no-audit", "--no-fund", "--ignore-scripts"]).current_dir(&dir),
        Duration::from_secs(600),
    );
    assert!(out.success(), "npm ci in {} failed: {out}", dir.display());
}

#[test]
fn inspector_in_chromium() {
    let node = require_tool("node");
    let chromium = chromium();
    node_modules();
    let server = Server::start();
    let out = run(
        Command::new(node)
            .arg(browser_dir().join("inspect.mjs"))
            .arg(server.url(""))
            .args(["--image", "shell/hello", "--timeout", "240"])
            .env("CHROMIUM", &chromium)
            .current_dir(browser_dir()),
        Duration::from_secs(330),
    );
    println!("{}", out.stdout);
    assert!(out.success(), "the browser test failed: {out}");
    assert!(out.stdout.contains(" 0 failed"), "no summary line: {out}");
    assert!(browser_dir().join("artifacts/inspector.png").is_file(), "no screenshot");
}

fn get_json(server: &Server, path: &str) -> (u16, Value) {
    let r = server.get(path).send().unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = r.status().as_u16();
    let ctype = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert!(ctype.starts_with("application/json"), "GET {path}: Content-Type {ctype:?}");
    let body = r.bytes().unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (status, serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}")))
}

#[test]
fn api_probes_and_page() {
    let server = Server::start();

    let r = server.get("/healthz").send().unwrap();
    assert_eq!((r.status().as_u16(), r.text().unwrap().trim().to_string()), (200, "ok".to_string()));
    assert_eq!(server.get("/readyz").send().unwrap().status().as_u16(), 200);

    // The embedded page and its assets, nothing from elsewhere.
    let r = server.get("/").send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let csp = r.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert!(csp.contains("default-src 'self'"), "CSP {csp:?}");
    let html = r.text().unwrap();
    assert!(html.contains("Image inspector") && html.contains("app.js"), "{html}");
    assert!(!html.contains("http://") && !html.contains("https://"), "the page loads nothing from another origin");
    for (path, ctype) in [("/app.js", "text/javascript"), ("/style.css", "text/css")] {
        let r = server.get(path).send().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let got = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        assert!(got.starts_with(ctype), "{path}: {got}");
    }
    for path in ["/../Cargo.toml", "/%2e%2e/Cargo.toml", "/..%2fCargo.toml", "/nope.js"] {
        assert_eq!(raw_request(server.addr, "GET", path).status, 404, "{path}");
    }

    // /api/info
    let (status, info) = get_json(&server, "/api/info");
    assert_eq!(status, 200);
    assert!(info["version"].is_string(), "{info}");
    assert_eq!(info["source"]["plugin"], "nixpkgs-source", "{info}");
    // No server path: the package set's directory and the storage's are
    // not shown, anywhere in the document.
    assert_eq!(info["source"]["config"]["path"], "(server path)", "{info}");
    assert_eq!(info["storage"], "file", "{info}");
    let demo = repo_root().join("examples/demo-pkgs").canonicalize().unwrap();
    for path in [demo.to_string_lossy().into_owned(), server.storage.display().to_string()] {
        assert!(!info.to_string().contains(&path), "{path} in {info}");
    }
    assert_eq!(info["layers"]["budget"], 94, "{info}");
    let plugins = info["plugins"].as_array().expect("plugins");
    for (name, role) in [("bundles", "expand"), ("size", "group"), ("nixpkgs-source", "source")] {
        let p = plugins.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("{name} not listed: {info}"));
        assert!(p["version"].as_str().is_some_and(|v| !v.is_empty()), "{p}");
        assert!(p["digest"].as_str().is_some_and(|d| d.starts_with("sha256:") && d.len() == 71), "{p}");
        assert!(p["hooks"].as_array().is_some_and(|h| !h.is_empty()), "{p}");
        assert!(p["roles"].as_array().unwrap().iter().any(|r| r["role"] == role), "{p}");
    }

    // /api/inspect: the image as the registry would build it.
    let (status, i) = get_json(&server, "/api/inspect/shell/hello");
    assert_eq!(status, 200, "{i}");
    assert_eq!((i["name"].as_str(), i["tag"].as_str()), (Some("shell/hello"), Some("latest")));
    let packages: Vec<&str> = i["packages"].as_array().unwrap().iter().filter_map(|p| p.as_str()).collect();
    assert!(packages.contains(&"hello") && packages.contains(&"coreutils"), "{packages:?}");
    let closure = i["closure"].as_array().unwrap();
    let layers = i["layers"].as_array().unwrap();
    assert!(!layers.is_empty() && layers.len() < 94, "{i}");
    // Every closure path is in exactly one layer, and the sizes add up.
    let mut in_layers: Vec<&str> =
        layers.iter().flat_map(|l| l["paths"].as_array().unwrap().iter().filter_map(|p| p.as_str())).collect();
    in_layers.sort_unstable();
    let mut paths: Vec<&str> = closure.iter().filter_map(|p| p["path"].as_str()).collect();
    paths.sort_unstable();
    assert_eq!(in_layers, paths);
    let total = |xs: &[Value]| xs.iter().map(|x| x["nar_size"].as_u64().unwrap()).sum::<u64>();
    assert_eq!(total(layers), total(closure));
    let (status, tagged) = get_json(&server, "/api/inspect/shell/hello?tag=latest");
    assert_eq!((status, &tagged["layers"]), (200, &i["layers"]));

    // Errors in the registry's shape.
    for (path, want_status, want_code) in [
        ("/api/inspect/Shell", 400, "NAME_INVALID"),
        ("/api/inspect/shell/%2e%2e", 400, "NAME_INVALID"),
        ("/api/inspect/shell?tag=..x", 404, "MANIFEST_UNKNOWN"),
        ("/api/inspect/hello/nope1", 404, "MANIFEST_UNKNOWN"),
        ("/api/nothing", 404, "NAME_UNKNOWN"),
    ] {
        let r = raw_request(server.addr, "GET", path);
        let (code, message, _) = spec_error(&r.body);
        assert_eq!((r.status, code.as_str()), (want_status, want_code), "{path}: {message}");
        assert!(!message.is_empty(), "{path}");
    }
}

#[test]
fn web_dir_replaces_the_page() {
    let site = tempfile::tempdir().unwrap();
    let root = site.path().join("site");
    std::fs::create_dir_all(root.join("img")).unwrap();
    std::fs::write(root.join("index.html"), "<h1>our registry</h1>").unwrap();
    std::fs::write(root.join("img/logo.svg"), "<svg xmlns='http://www.w3.org/2000/svg'/>").unwrap();
    std::fs::write(site.path().join("private.txt"), "PRIVATE").unwrap();
    std::os::unix::fs::symlink(site.path().join("private.txt"), root.join("escape.txt")).unwrap();
    let server = Server::start_with(ServerOptions {
        extra_toml: format!("web_dir = {:?}", root.display().to_string()),
        ..Default::default()
    });

    let r = server.get("/").send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().unwrap(), "<h1>our registry</h1>");
    let r = server.get("/img/logo.svg").send().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "image/svg+xml");
    assert_eq!(server.get("/app.js").send().unwrap().status().as_u16(), 404, "the embedded page is replaced");
    for path in [
        "/../private.txt",
        "/%2e%2e/private.txt",
        "/..%2fprivate.txt",
        "/img/..%2f..%2fprivate.txt",
        "/%2fetc%2fpasswd",
        "//etc/passwd",
        "/escape.txt",
    ] {
        let r = raw_request(server.addr, "GET", path);
        let body = String::from_utf8_lossy(&r.body);
        assert!(!body.contains("PRIVATE") && !body.contains("root:"), "{path} leaked: {body}");
        assert!(matches!(r.status, 400 | 404), "{path}: {}", r.status);
    }
    // The API and probes are not shadowed by files.
    assert_eq!(server.get("/healthz").send().unwrap().status().as_u16(), 200);
    assert_eq!(get_json(&server, "/api/info").0, 200);
}
