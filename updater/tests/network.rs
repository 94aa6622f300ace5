//! Bundles over the network as fleets serve them, against real servers (python's http.server
//! over TLS with a CA made by openssl for the test, a CONNECT proxy): private CAs, client
//! certificates, required headers, board.toml's `[http]`, redirects, proxies; resuming from a
//! server that ignores Range; which failures are retried; `bundle info` and `bundle verify`
//! on URLs.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};

use common::fixture::{image, Fixture};
use common::net::{Pki, PyServer};

const SLOT: u64 = 3 << 20;
const TOKEN: &str = "TargetToken 5ecr3t-d3v1ce-t0ken";

fn assert_installed(f: &Fixture, img: &[u8], version: &str) {
    let s = f.status();
    assert_eq!(s["next_boot"], "B", "{s}");
    assert_eq!(s["slots"][1]["bundle"]["version"], version);
    assert_eq!(&f.slot("B")[..img.len()], img, "slot B holds the image");
}

/// A device, and a bundle for it in a directory of its own: what the server serves.
fn device() -> (Fixture, Vec<u8>, PathBuf) {
    let f = Fixture::new(SLOT, "");
    let (img, www) = serve_dir(&f);
    (f, img, www)
}

/// A bundle for `f` in `f`'s directory `www`, b.abup, and its image.
fn serve_dir(f: &Fixture) -> (Vec<u8>, PathBuf) {
    let img = image(2_900_000, 5);
    let b = f.bundle("b.abup", &img, "2.0", 0);
    let www = f.t.path("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::copy(&b, www.join("b.abup")).unwrap();
    (img, www)
}

/// [`device`], and a PKI.
fn setup() -> (Fixture, Vec<u8>, PathBuf, Pki) {
    let (f, img, www) = device();
    let pki_dir = f.t.path("pki");
    std::fs::create_dir(&pki_dir).unwrap();
    let pki = Pki::new(&pki_dir);
    (f, img, www, pki)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `server.py files` over `www`, logging to `log` in `f`'s directory; https with `pki`'s
/// server certificate when given.
fn serve(f: &Fixture, www: &Path, log: &str, tls: Option<&Pki>, args: &[&str]) -> PyServer {
    let mut all: Vec<&str> = Vec::new();
    if let Some(pki) = tls {
        all.extend(["--tls", s(&pki.server_cert), s(&pki.server_key)]);
    }
    all.extend(args);
    PyServer::start(Some(www), &f.t.path(log), &all)
}

/// `abup install URL ARGS...`, retrying without waiting.
fn install(f: &Fixture, url: &str, args: &[&str]) -> common::Output {
    install_env(f, url, args, &[])
}

/// [`install`] with more in its environment.
fn install_env(f: &Fixture, url: &str, args: &[&str], env: &[(&str, &str)]) -> common::Output {
    f.abup_env(
        &[&["install", url, "--retry-wait", "0"][..], args].concat(),
        env,
    )
}

/// Neither standard output nor standard error holds `secret`.
fn assert_not_shown(out: &common::Output, secret: &str) {
    let all = out.stdout_text() + &out.stderr_text();
    assert!(!all.contains(secret), "{all}");
}

/// Neither the output, the recorded outcome, nor any state file holds `secret`.
fn assert_never_shown(f: &Fixture, out: &common::Output, secret: &str) {
    assert_not_shown(out, secret);
    assert!(!f.abup(&["status", "--json"]).stdout_text().contains(secret));
    for e in std::fs::read_dir(&f.state).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            let text = String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned();
            assert!(!text.contains(secret), "{}: {text}", p.display());
        }
    }
}

#[test]
fn https_with_a_private_ca_and_a_required_header() {
    let (f, img, www, pki) = setup();
    let header = format!("Authorization: {TOKEN}");
    let server = serve(&f, &www, "server.log", Some(&pki), &["--header", &header]);
    let url = server.url("https", "b.abup");

    // The system's store does not know the test's CA: refused at the handshake, not retried.
    let out = install(&f, &url, &[]);
    out.assert_refused(&["not signed by a CA abup trusts", "--ca"]);
    assert!(server.requests().is_empty());

    // Trusted, but without the header: 401, which no retry changes.
    let out = install(&f, &url, &["--ca", s(&pki.ca)]);
    out.assert_refused(&["the server answered 401 Unauthorized"]);
    assert_eq!(server.requests().len(), 1, "a 4xx is not retried");
    assert_eq!(f.status()["next_boot"], "A");

    let out = install(&f, &url, &["-vv", "--ca", s(&pki.ca), "--header", &header]);
    out.success();
    assert_installed(&f, &img, "2.0");
    let asked = server.requests();
    assert!(asked[1..].iter().all(|r| r["header"] == true), "{asked:?}");
    assert_never_shown(&f, &out, "5ecr3t");

    // A bad header is named, its value never repeated.
    let out = install(&f, &url, &["--header", "Authorization 5ecr3t"]);
    out.assert_refused(&["--header"]);
    assert_not_shown(&out, "5ecr3t");
}

#[test]
fn a_url_user_and_password_are_sent_as_basic_authorization() {
    let (f, img, www) = device();
    // base64("agent:s3cret pw")
    let basic = ["--header", "Authorization: Basic YWdlbnQ6czNjcmV0IHB3"];
    let server = serve(&f, &www, "basic.log", None, &basic);
    let url = server.url("http", "b.abup");
    let url = url.replacen("http://", "http://agent:s3cret%20pw@", 1);
    let out = install(&f, &url, &[]);
    out.success();
    assert_installed(&f, &img, "2.0");
    assert_never_shown(&f, &out, "s3cret");
}

#[test]
fn a_client_certificate_is_presented_when_given() {
    let (f, img, www, pki) = setup();
    let client_ca = ["--client-ca", s(&pki.client_ca)];
    let server = serve(&f, &www, "server.log", Some(&pki), &client_ca);
    let url = server.url("https", "b.abup");

    let out = install(&f, &url, &["--ca", s(&pki.ca)]);
    out.assert_refused(&["TLS", "client certificate"]);
    assert!(server.requests().is_empty());

    // A key that is not the certificate's is caught before anything is sent.
    let with_key = |key: &Path| {
        let cert = ["--cert", s(&pki.client_cert), "--key", s(key)];
        install(&f, &url, &[&["--ca", s(&pki.ca)][..], &cert].concat())
    };
    with_key(&pki.other_key).assert_refused(&["cannot be used together"]);
    with_key(&pki.client_key).success();
    assert_installed(&f, &img, "2.0");
}

#[test]
fn board_toml_http_section_is_used_and_flags_override_it() {
    let pki_dir = common::Tmp::new();
    let pki = Pki::new(&pki_dir.path(""));
    let header = format!("Authorization: {TOKEN}");
    // The board file trusts the CA, presents the client certificate and sends the header.
    let extra = format!(
        "[http]\nca = {:?}\ncert = {:?}\nkey = {:?}\nheaders = [{header:?}]\nretries = 0\n",
        pki.ca, pki.client_cert, pki.client_key
    );
    let f = Fixture::new(SLOT, &extra);
    let (img, www) = serve_dir(&f);
    let args = ["--client-ca", s(&pki.client_ca), "--header", &header];
    let server = serve(&f, &www, "server.log", Some(&pki), &args);
    let url = server.url("https", "b.abup");
    // A header given on the command line replaces the board's of the same name.
    install(&f, &url, &["--header", "authorization: wrong"]).assert_refused(&["401"]);
    let out = install(&f, &url, &[]);
    out.success();
    assert_installed(&f, &img, "2.0");
    assert_never_shown(&f, &out, "5ecr3t");

    // Mistakes in [http] are named when the board file is read.
    for (bad, says) in [
        (
            "ca = \"ca.pem\"",
            "[http] ca ca.pem must be an absolute path",
        ),
        (
            "cert = \"/c.pem\"",
            "[http] cert needs the certificate's private key",
        ),
        (
            "headers = [\"X-Token 5ecr3t\"]",
            "with a colon after the name",
        ),
        ("headers = [\"Range: bytes=0-\"]", "abup sets itself"),
        ("timeout = 0", "[http] timeout must be a number of seconds"),
        ("retries = 1000", "at most 100"),
        ("proxy = \"http://p\"", "unknown field `proxy`"),
    ] {
        let f = Fixture::new(SLOT, &format!("[http]\n{bad}\n"));
        let out = f.abup(&["status"]);
        out.assert_refused(&[says]);
        assert_not_shown(&out, "5ecr3t");
    }
}

#[test]
fn redirects_never_leave_https_and_headers_stay_with_their_host() {
    let (f, img, www, pki) = setup();
    let header = format!("Authorization: {TOKEN}");
    let args = ["--ca", s(&pki.ca), "--header", &header];
    let plain = serve(&f, &www, "plain.log", None, &[]);
    let to_plain = format!("http://127.0.0.1:{}", plain.port);
    let redirect = serve(&f, &www, "a.log", Some(&pki), &["--redirect", &to_plain]);
    let out = install(&f, &redirect.url("https", "b.abup"), &args);
    out.assert_refused(&["redirected from https to http://127.0.0.1"]);
    assert!(plain.requests().is_empty(), "nothing was asked over http");
    assert_never_shown(&f, &out, "5ecr3t");

    // To another host over https (localhost is not 127.0.0.1): followed, without headers.
    let other = serve(&f, &www, "other.log", Some(&pki), &[]);
    let to_other = format!("https://localhost:{}", other.port);
    let redirect = serve(&f, &www, "b.log", Some(&pki), &["--redirect", &to_other]);
    install(&f, &redirect.url("https", "b.abup"), &args).success();
    assert_installed(&f, &img, "2.0");
    let asked = other.requests();
    assert!(!asked.is_empty());
    assert!(
        asked.iter().all(|r| r["authorization"] == false),
        "{asked:?}"
    );
    let first = redirect.requests();
    assert!(
        first.iter().all(|r| r["authorization"] == true),
        "{first:?}"
    );
}

/// A plain http URL makes its https agent only on a redirect to https: that agent trusts
/// what an https URL's would, the system's store and `--ca`, and nothing less.
#[test]
fn a_plain_http_url_may_redirect_to_https() {
    let (f, img, www, pki) = setup();
    let secure = serve(&f, &www, "secure.log", Some(&pki), &[]);
    let to_secure = format!("https://127.0.0.1:{}", secure.port);
    let plain = serve(&f, &www, "plain.log", None, &["--redirect", &to_secure]);
    let url = plain.url("http", "b.abup");
    install(&f, &url, &[]).assert_refused(&["not signed by a CA abup trusts"]);
    // The CA files are read whatever the URL: a mistake in them is the first error.
    let missing = f.t.path("missing-ca.pem");
    install(&f, &url, &["--ca", s(&missing)]).assert_refused(&["reading the CA file"]);
    // With an empty trust store, the https URL and the redirect to it are refused alike,
    // before anything is asked over https.
    let (empty, empty_dir) = (f.t.path("no-cas.pem"), f.t.path("no-cas"));
    std::fs::write(&empty, "").unwrap();
    std::fs::create_dir(&empty_dir).unwrap();
    let no_store = [
        ("SSL_CERT_FILE", s(&empty)),
        ("SSL_CERT_DIR", s(&empty_dir)),
    ];
    for to in [&secure.url("https", "b.abup"), &url] {
        install_env(&f, to, &[], &no_store)
            .assert_refused(&["no CA certificate to check https://127.0.0.1", "--ca"]);
    }
    assert!(
        secure.requests().is_empty(),
        "nothing was asked over https yet"
    );
    install(&f, &url, &["--ca", s(&pki.ca)]).success();
    assert_installed(&f, &img, "2.0");
    assert!(!secure.requests().is_empty(), "the bundle came over https");
}

#[test]
fn https_proxy_is_used_and_no_proxy_bypasses_it() {
    let (f, img, www, pki) = setup();
    let server = serve(&f, &www, "server.log", Some(&pki), &[]);
    let proxy = PyServer::start(None, &f.t.path("proxy.log"), &[]);
    let url = server.url("https", "b.abup");
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port);
    let saved = f.save();
    let install = |env: &[(&str, &str)]| {
        f.restore(&saved);
        f.abup_env(&["install", &url, "--ca", s(&pki.ca)], env)
            .success();
        assert_installed(&f, &img, "2.0");
    };
    install(&[("https_proxy", &proxy_url)]);
    let tunnels = proxy.requests();
    assert!(!tunnels.is_empty());
    let target = format!("127.0.0.1:{}", server.port);
    assert!(
        tunnels.iter().all(|t| t["target"] == target.as_str()),
        "{tunnels:?}"
    );

    let before = proxy.requests().len();
    install(&[
        ("HTTPS_PROXY", &proxy_url),
        ("no_proxy", "localhost,127.0.0.0/8"),
    ]);
    assert_eq!(
        proxy.requests().len(),
        before,
        "no_proxy bypasses the proxy"
    );
    // http_proxy is for http URLs only.
    install(&[("http_proxy", &proxy_url)]);
    assert_eq!(proxy.requests().len(), before);

    // An https proxy is reached over TLS whatever the URL, trusting what an https URL would.
    let tls = ["--tls", s(&pki.server_cert), s(&pki.server_key)];
    let tls_proxy = PyServer::start(None, &f.t.path("tls-proxy.log"), &tls);
    let plain = serve(&f, &www, "plain.log", None, &[]);
    f.restore(&saved);
    let via = format!("https://127.0.0.1:{}", tls_proxy.port);
    f.abup_env(
        &["install", &plain.url("http", "b.abup"), "--ca", s(&pki.ca)],
        &[("http_proxy", &via)],
    )
    .success();
    assert_installed(&f, &img, "2.0");
    assert!(
        !tls_proxy.requests().is_empty(),
        "the download went through it"
    );
}

/// Where a run wrote slot B, from its `-vv` durable writes: the offsets.
fn slot_b_writes(out: &common::Output) -> Vec<u64> {
    common::durable_writes(out)
        .iter()
        .filter_map(|w| {
            let (_, at) = w.split_once("slot-b ")?;
            let at = at.strip_prefix("zeroed ").unwrap_or(at);
            at.strip_prefix("at ")?.split(' ').next()?.parse().ok()
        })
        .collect()
}

#[test]
fn a_cut_install_resumes_from_a_server_that_ignores_range_without_rewriting() {
    common::require_fault_injection();
    let (f, img, www) = device();
    let writes = f.install_writes(&www.join("b.abup"));
    let checkpoints: Vec<usize> = (0..writes.len())
        .filter(|&i| writes[i].ends_with("install.json"))
        .collect();
    // Cut right after a checkpoint half way through the payload.
    let cut = checkpoints[checkpoints.len() / 2] + 1;
    // python's http.server answers every Range request with the whole file.
    let server = serve(&f, &www, "server.log", None, &[]);
    let url = server.url("http", "b.abup");
    let out = f.abup_env(
        &["install", &url],
        &[("ABUP_CUT_AFTER_WRITES", &cut.to_string())],
    );
    assert_eq!(out.code, None, "cut: {}", out.stderr_text());
    let journal: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.state.join("install.json")).unwrap()).unwrap();
    let next_chunk = journal["phase"]["write"]["next_chunk"].as_u64().unwrap();
    assert!(next_chunk > 0, "{journal}");
    // The fixture's bundles have 64 KiB chunks.
    let written = next_chunk * 65536;

    // What is read again is checked: the same bundle with its first chunk damaged on the
    // server is refused, though that chunk is not written again.
    let cut_state = f.save();
    let info = f.abup(&["bundle", "info", "--json", s(&www.join("b.abup"))]);
    let info: serde_json::Value = serde_json::from_str(&info.success().stdout_text()).unwrap();
    let mut bytes = std::fs::read(www.join("b.abup")).unwrap();
    bytes[info["payload_offset"].as_u64().unwrap() as usize + 10] ^= 1;
    std::fs::write(www.join("damaged.abup"), bytes).unwrap();
    let out = f.abup(&["install", &server.url("http", "damaged.abup")]);
    assert_eq!(out.code, Some(4), "{}", out.stderr_text());
    assert!(out
        .stderr_text()
        .contains("reading chunk 0 of the rootfs image again"));
    f.restore(&cut_state);

    let asked = server.requests().len();
    let out = f.abup(&["-vv", "install", &url]);
    out.success();
    assert_installed(&f, &img, "2.0");
    assert!(out.stderr_text().contains("ignores Range requests"));
    let again = &server.requests()[asked..];
    assert_eq!(again.len(), 2, "the front, then the rest: {again:?}");
    assert!(again[0]["range"].is_null(), "{again:?}");
    assert!(
        again[1]["range"].as_str().unwrap().starts_with("bytes="),
        "{again:?}"
    );
    // Every chunk before the journal's checkpoint was read again and checked, not written:
    // only the first block (held back until the end) goes below it.
    let offsets = slot_b_writes(&out);
    assert!(offsets.iter().any(|&o| o >= written), "{offsets:?}");
    assert!(
        offsets.iter().all(|&o| o == 0 || o >= written),
        "chunks below byte {written} written again: {offsets:?}"
    );
}

#[test]
fn a_download_that_breaks_twice_against_a_range_ignoring_server_stops_with_status_6() {
    let (f, img, www) = device();
    let len = std::fs::metadata(www.join("b.abup")).unwrap().len();
    let (third, half) = ((len / 3).to_string(), (len / 2).to_string());
    // The first answer breaks at a third: the download starts over once and completes.
    let server = serve(&f, &www, "once.log", None, &["--drop", &third]);
    let out = install(&f, &server.url("http", "b.abup"), &[]);
    out.success();
    assert!(
        out.stderr_text().contains("starts over"),
        "{}",
        out.stderr_text()
    );
    assert_installed(&f, &img, "2.0");

    let (f, img, www) = device();
    let server = serve(
        &f,
        &www,
        "twice.log",
        None,
        &["--drop", &third, "--drop", &half],
    );
    let url = server.url("http", "b.abup");
    let out = install(&f, &url, &[]);
    assert_eq!(out.code, Some(6), "{}", out.stderr_text());
    assert!(out.stderr_text().contains("after it had started over once"));
    assert_eq!(
        server.requests().len(),
        2,
        "no third download from the start"
    );
    // The next run continues from the journal's checkpoint.
    install(&f, &url, &[]).success();
    assert_installed(&f, &img, "2.0");
}

#[test]
fn a_404_is_not_retried_a_503_is_and_retries_end_in_status_6() {
    let (f, img, www) = device();
    let server = serve(&f, &www, "404.log", None, &[]);
    let out = install(&f, &server.url("http", "missing.abup"), &["--retries", "5"]);
    out.assert_refused(&["the server answered 404 Not Found"]);
    assert_eq!(server.requests().len(), 1, "a 404 is asked once");

    let server = serve(&f, &www, "503.log", None, &["--fail", "2", "503"]);
    let out = install(&f, &server.url("http", "b.abup"), &[]);
    out.success();
    assert!(out.stderr_text().contains("503 Service Unavailable"));
    assert_eq!(server.requests().len(), 3, "two 503s, then the bundle");
    assert_installed(&f, &img, "2.0");

    let f = Fixture::new(SLOT, "");
    let server = serve(&f, &www, "down.log", None, &["--fail", "9", "503"]);
    let out = install(&f, &server.url("http", "b.abup"), &["--retries", "2"]);
    assert_eq!(out.code, Some(6), "{}", out.stderr_text());
    assert!(out.stderr_text().contains("after 2 retries"));
    assert_eq!(server.requests().len(), 3);
}

#[test]
fn the_whole_download_gives_up_at_its_timeout_with_status_6() {
    let (f, _, www) = device();
    let server = serve(&f, &www, "slow.log", None, &["--stall", "30"]);
    let out = install(&f, &server.url("http", "b.abup"), &["--timeout", "1"]);
    assert_eq!(out.code, Some(6), "{}", out.stderr_text());
    assert!(out.stderr_text().contains("within the download's timeout"));
}

#[test]
fn bundle_info_reads_only_the_front_of_a_url() {
    let (f, _, www) = device();
    let len = std::fs::metadata(www.join("b.abup")).unwrap().len();
    let server = serve(&f, &www, "info.log", None, &["--ranges"]);
    let out = f.abup(&["bundle", "info", &server.url("http", "b.abup"), "--json"]);
    let info: serde_json::Value = serde_json::from_str(&out.success().stdout_text()).unwrap();
    let front = info["payload_offset"].as_u64().unwrap();
    let asked = server.requests();
    assert!(asked.iter().all(|r| r["range"].is_string()), "{asked:?}");
    let sent: u64 = server
        .answers()
        .iter()
        .map(|a| a["sent"].as_u64().unwrap())
        .sum();
    assert!(
        sent >= front && sent <= front.max(64 * 1024),
        "{sent} bytes for {front}"
    );
    assert!(sent * 10 < len, "{sent} of {len} bytes");
}

#[test]
fn bundle_verify_of_a_url_uses_the_board_keyring_and_agrees_with_install() {
    let (f, _, www) = device();
    let server = serve(&f, &www, "verify.log", None, &[]);
    let out = f.abup(&["bundle", "verify", &server.url("http", "b.abup")]);
    assert!(out.success().stdout_text().contains("is valid"));

    // A damaged payload: 4, as install says.
    let mut bytes = std::fs::read(www.join("b.abup")).unwrap();
    let at = bytes.len() - 1000;
    bytes[at] ^= 0x55;
    std::fs::write(www.join("bad.abup"), &bytes).unwrap();
    let bad = server.url("http", "bad.abup");
    let verify = f.abup(&["bundle", "verify", &bad]);
    assert_eq!(verify.code, Some(4), "{}", verify.stderr_text());
    let installed = install(&f, &bad, &[]);
    assert_eq!(installed.code, Some(4), "{}", installed.stderr_text());

    // No board and no --keyring: say what to give.
    let out = common::abup(&["-c", "/nonexistent", "bundle", "verify", &bad]);
    out.assert_refused(&["give --keyring DIR"]);

    // A source that stays unavailable: 6, not 4.
    let down = serve(&f, &www, "down.log", None, &["--fail", "9", "503"]);
    let url = down.url("http", "b.abup");
    let out = f.abup(&[
        "bundle",
        "verify",
        &url,
        "--retries",
        "1",
        "--retry-wait",
        "0",
    ]);
    assert_eq!(out.code, Some(6), "{}", out.stderr_text());
}
