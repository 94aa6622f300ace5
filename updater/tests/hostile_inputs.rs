//! Inputs are bounded and sanitised (issue 12, point 5), each attack played against the real
//! binary: hooks that read standard input and write to standard output, a keyring holding a
//! FIFO, a symbolic link, a hidden key or open to everyone, files with no end where a board
//! configuration or a kernel command line should be, a server whose status text and headers
//! carry terminal escape sequences, and a bundle whose chunk size would blow the install's
//! memory budget.
//!
//! Anything that could hang runs under a time limit, and anything that could allocate without
//! bound under a memory limit, so that a regression fails the test instead of the machine.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use abup::bundle::{self, CreateOptions, ImageSource, SecretKey, MAX_INSTALL_CHUNK_SIZE};
use common::fixture::{image, Fixture};
use common::Output;

const SLOT: u64 = 3 << 20;

/// Long enough for a debug build on a loaded two-core machine; an install that waits for
/// input that never comes is killed at the limit and fails.
const LIMIT: Duration = Duration::from_secs(60);

/// What abup gets on standard input.
enum Input {
    Null,
    /// These bytes, then the end.
    Bytes(Vec<u8>),
    /// These bytes, then nothing, with the pipe held open until abup exits: what a terminal
    /// or an idle OTA agent looks like to a process that reads it.
    HeldOpen(Vec<u8>),
}

/// `abup args` for the fixture's device (`env` added), killed and failed after `limit`.
fn run(
    f: &Fixture,
    args: &[&str],
    env: &[(&str, &OsStr)],
    input: Input,
    limit: Duration,
) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_abup"));
    cmd.args(args)
        .env("ABUP_CONFIG", &f.board)
        .env("ABUP_PROC_CMDLINE", &f.cmdline);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_cmd(cmd, input, limit)
}

fn run_cmd(mut cmd: Command, input: Input, limit: Duration) -> Output {
    cmd.stdin(match input {
        Input::Null => Stdio::null(),
        _ => Stdio::piped(),
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut held = None;
    match input {
        Input::Null => {}
        Input::Bytes(bytes) => {
            let mut stdin = child.stdin.take().unwrap();
            // A thread: a bundle does not fit in a pipe's buffer.
            std::thread::spawn(move || {
                let _ = stdin.write_all(&bytes);
            });
        }
        Input::HeldOpen(bytes) => {
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(&bytes).unwrap();
            held = Some(stdin);
        }
    }
    let collect = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let stdout = collect(Box::new(child.stdout.take().unwrap()));
    let stderr = collect(Box::new(child.stderr.take().unwrap()));
    let status = wait(&mut child, limit);
    drop(held);
    let Some(status) = status else {
        // Its hooks may still hold the output pipes; they are not waited for.
        panic!("{cmd:?} did not finish within {limit:?}: it waits for something that never comes");
    };
    Output {
        code: status.code(),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// The exit status, or `None` (and the child killed) after `limit`.
fn wait(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts that abup failed with `code` and exactly one line on standard error, its error,
/// which contains every one of `parts`.
fn assert_one_line_error(out: &Output, code: i32, parts: &[&str]) {
    let err = out.stderr_text();
    assert_eq!(out.code, Some(code), "stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    assert!(lines[0].starts_with("abup: error: "), "{err}");
    for part in parts {
        assert!(lines[0].contains(part), "{part:?} missing in: {err}");
    }
}

/// Asserts that nothing was written: slot B and the environment are as they were.
fn assert_untouched(f: &Fixture, slot_b: &[u8], env: &[Vec<u8>; 2]) {
    assert!(f.slot("B") == slot_b, "slot B was written");
    assert_eq!(&f.env(), env, "the environment was written");
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mkfifo(path: &Path) {
    common::run_ok("mkfifo", &[path.to_str().unwrap()]);
}

/// A second signing key, outside the keyring: (secret, public).
fn evil_key(f: &Fixture) -> (PathBuf, PathBuf) {
    let (secret, public) = (f.t.path("evil-secret.pem"), f.t.path("evil-public.pem"));
    f.abup(&[
        "keygen",
        "--secret",
        secret.to_str().unwrap(),
        "--public",
        public.to_str().unwrap(),
    ])
    .success();
    (secret, public)
}

/// A bundle of `img` for the fixture's board, signed with `key`.
fn bundle_signed_by(f: &Fixture, key: &Path, name: &str, img: &[u8]) -> PathBuf {
    let path = f.t.path(&format!("{name}.img"));
    std::fs::write(&path, img).unwrap();
    let out = f.t.path(name);
    f.abup(&[
        "bundle",
        "create",
        "--key",
        key.to_str().unwrap(),
        "--compatible",
        "abup-test",
        "--version",
        "2.0",
        "--created",
        "1790000000",
        "--chunk-size",
        "65536",
        "--image",
        path.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ])
    .success();
    out
}

// ---- hooks ----

/// A pre- and post-install hook (written in `t`) that says hello on standard output, then
/// reads standard input to its end and says what it got.
fn chatty_hooks(t: &common::Tmp) -> String {
    let hook = t.path("hook");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho \"hook $ABUP_HOOK says hello\"\necho \"hook $ABUP_HOOK read [$(cat)]\"\n",
    )
    .unwrap();
    chmod(&hook, 0o755);
    format!("pre-install = {hook:?}\npost-install = {hook:?}")
}

/// Every line of standard output is a progress object, and the last one the result.
fn assert_json_progress_only(out: &Output) {
    let text = out.stdout_text();
    let lines: Vec<&str> = text.lines().collect();
    assert!(!lines.is_empty(), "no progress reported");
    for (i, line) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a progress object ({e}): {line:?} in:\n{text}"));
        assert_eq!(v["version"], 2, "{line}");
        assert!(v["phase"].is_string(), "{line}");
        let last = i + 1 == lines.len();
        assert_eq!(
            v["event"],
            if last { "result" } else { "progress" },
            "{line}"
        );
    }
}

#[test]
fn hooks_read_nothing_and_write_to_stderr_not_the_progress_stream() {
    // abup's standard input stays open (an OTA agent, a terminal): a hook that inherited it
    // would wait forever, and read what was meant for abup.
    let t = common::Tmp::new();
    let extra = chatty_hooks(&t);
    let f = Fixture::new(SLOT, &extra);
    let img = image(600_000, 1);
    let b = f.bundle("b.abup", &img, "2.0", 0);
    let out = run(
        &f,
        &["install", b.to_str().unwrap(), "--progress", "json"],
        &[],
        Input::HeldOpen(b"STDIN-SECRET\n".to_vec()),
        LIMIT,
    );
    out.success();
    assert_json_progress_only(&out);
    let err = out.stderr_text();
    for said in [
        "hook pre-install says hello",
        "hook post-install says hello",
        "hook pre-install read []",
        "hook post-install read []",
    ] {
        assert!(err.contains(said), "{said:?} missing on stderr: {err}");
    }
    assert!(!out.stdout_text().contains("hello"));
    assert_eq!(f.status()["next_boot"], "B");

    // The bundle itself on standard input: a hook that inherited it would eat the payload.
    let f = Fixture::new(SLOT, &extra);
    let b = f.bundle("b.abup", &img, "2.0", 0);
    let out = run(
        &f,
        &["install", "-", "--progress", "json"],
        &[],
        Input::Bytes(common::read(&b)),
        LIMIT,
    );
    out.success();
    assert_json_progress_only(&out);
    assert!(out.stderr_text().contains("hook post-install read []"));
    assert_eq!(&f.slot("B")[..img.len()], &img[..]);
}

// ---- the keyring ----

#[test]
fn a_fifo_in_the_keyring_is_refused_at_once() {
    let f = Fixture::new(SLOT, "");
    let b = f.bundle("b.abup", &image(600_000, 2), "2.0", 0);
    mkfifo(&f.keyring.join("x.pem"));
    let (slot_b, env) = (f.slot("B"), f.env());
    // Each would wait for a writer forever if it opened the FIFO blocking.
    let out = run(
        &f,
        &["install", b.to_str().unwrap()],
        &[],
        Input::Null,
        LIMIT,
    );
    assert_one_line_error(&out, 1, &["x.pem", "FIFO", "not a regular file"]);
    assert_untouched(&f, &slot_b, &env);
    let keyring = f.keyring.to_str().unwrap();
    for args in [
        [
            "bundle",
            "verify",
            b.to_str().unwrap(),
            "--keyring",
            keyring,
        ],
        ["bundle", "info", b.to_str().unwrap(), "--keyring", keyring],
    ] {
        let out = run(&f, &args, &[], Input::Null, LIMIT);
        assert_one_line_error(&out, 1, &["x.pem", "FIFO"]);
    }
    // Once it is gone, the keyring works.
    std::fs::remove_file(f.keyring.join("x.pem")).unwrap();
    f.abup(&["install", b.to_str().unwrap()]).success();
}

#[test]
fn a_symbolic_link_in_the_keyring_is_not_followed() {
    let f = Fixture::new(SLOT, "");
    let (evil_secret, evil_public) = evil_key(&f);
    std::os::unix::fs::symlink(&evil_public, f.keyring.join("evil.pem")).unwrap();
    let b = bundle_signed_by(&f, &evil_secret, "evil.abup", &image(600_000, 3));
    let (slot_b, env) = (f.slot("B"), f.env());
    let out = run(
        &f,
        &["install", b.to_str().unwrap()],
        &[],
        Input::Null,
        LIMIT,
    );
    assert_one_line_error(&out, 1, &["evil.pem", "symbolic link"]);
    assert_untouched(&f, &slot_b, &env);
}

#[test]
fn hidden_files_in_the_keyring_are_ignored() {
    let f = Fixture::new(SLOT, "");
    let (evil_secret, evil_public) = evil_key(&f);
    std::fs::copy(&evil_public, f.keyring.join(".hidden.pem")).unwrap();
    let evil = bundle_signed_by(&f, &evil_secret, "evil.abup", &image(600_000, 4));
    let (slot_b, env) = (f.slot("B"), f.env());
    let out = run(
        &f,
        &["install", evil.to_str().unwrap()],
        &[],
        Input::Null,
        LIMIT,
    );
    assert_one_line_error(&out, 4, &["not in the keyring"]);
    assert_untouched(&f, &slot_b, &env);
    // The keys that are not hidden still count.
    let good = f.bundle("good.abup", &image(600_000, 5), "2.0", 0);
    f.abup(&["install", good.to_str().unwrap()]).success();
}

#[test]
fn a_keyring_others_can_write_is_refused() {
    let f = Fixture::new(SLOT, "");
    let b = f.bundle("b.abup", &image(600_000, 6), "2.0", 0);
    let (slot_b, env) = (f.slot("B"), f.env());
    let dir = f.keyring.to_str().unwrap();
    for mode in [0o777, 0o775, 0o1777] {
        chmod(&f.keyring, mode);
        let out = run(
            &f,
            &["install", b.to_str().unwrap()],
            &[],
            Input::Null,
            LIMIT,
        );
        assert_one_line_error(&out, 1, &[dir, "writable by group or others", "chmod go-w"]);
        assert_untouched(&f, &slot_b, &env);
        let out = f.abup(&["bundle", "verify", b.to_str().unwrap(), "--keyring", dir]);
        assert_one_line_error(&out, 1, &[dir, "chmod go-w"]);
    }
    // A key file others can write, in a keyring they cannot.
    chmod(&f.keyring, 0o755);
    chmod(&f.keyring.join("release.pem"), 0o666);
    let out = f.abup(&["install", b.to_str().unwrap()]);
    assert_one_line_error(&out, 1, &["release.pem", "chmod go-w"]);
    assert_untouched(&f, &slot_b, &env);
    // chmod go-w, as the error says, and it installs.
    chmod(&f.keyring.join("release.pem"), 0o644);
    f.abup(&["install", b.to_str().unwrap()]).success();
}

// ---- files with no end ----

/// `abup args` under a 2 GiB address-space limit, so that a read without a bound fails fast
/// (the allocation fails) instead of eating the machine's memory.
fn run_bounded(f: &Fixture, args: &[&str], env: &[(&str, &OsStr)]) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -v 2097152 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_abup"))
        .args(args)
        .env("ABUP_CONFIG", &f.board)
        .env("ABUP_PROC_CMDLINE", &f.cmdline);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_cmd(cmd, Input::Null, Duration::from_secs(20))
}

#[test]
fn a_board_configuration_with_no_end_is_refused_while_reading() {
    let f = Fixture::new(SLOT, "");
    let zero = OsStr::new("/dev/zero");
    // Refused at the limit, not when memory runs out.
    let parts = ["/dev/zero", "too large", "65536 bytes"];
    let out = run_bounded(&f, &["status"], &[("ABUP_CONFIG", zero)]);
    assert_one_line_error(&out, 1, &parts);
    let out = run_bounded(&f, &["--config", "/dev/zero", "status"], &[]);
    assert_one_line_error(&out, 1, &parts);
}

#[test]
fn a_kernel_command_line_with_no_end_is_refused_while_reading() {
    let f = Fixture::new(SLOT, "");
    let zero = OsStr::new("/dev/zero");
    // Refused at the limit, not when memory runs out.
    let parts = [
        "/dev/zero",
        "kernel command line",
        "larger than 65536 bytes",
    ];
    let out = run_bounded(&f, &["status"], &[("ABUP_PROC_CMDLINE", zero)]);
    assert_one_line_error(&out, 1, &parts);
    let out = run_bounded(&f, &["mark-good", "booted"], &[("ABUP_PROC_CMDLINE", zero)]);
    assert_one_line_error(&out, 1, &parts);
    let b = f.bundle("b.abup", &image(600_000, 7), "2.0", 0);
    let (slot_b, env) = (f.slot("B"), f.env());
    let out = run_bounded(
        &f,
        &["install", b.to_str().unwrap()],
        &[("ABUP_PROC_CMDLINE", zero)],
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("larger than 65536 bytes"),
        "{}",
        out.stderr_text()
    );
    assert_untouched(&f, &slot_b, &env);

    // Bytes that are not UTF-8 around the parameters abup reads do not stop it.
    std::fs::write(&f.cmdline, b"quiet x=\xff\xfe abup.slot=A \xc3\n").unwrap();
    let s = f.status();
    assert_eq!(s["booted"], "A", "{s}");
    assert_eq!(s["booted_from"], "abup.slot", "{s}");
}

// ---- text from a server ----

/// A server that answers every request with `response`, byte for byte, then hangs up.
fn serve_raw(response: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/bundle", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            let _ = stream.write_all(&response);
        }
    });
    url
}

/// Whether `text` holds a control character other than the newlines between lines.
fn has_control(text: &str) -> bool {
    text.chars().any(|c| c != '\n' && c.is_control())
}

#[test]
fn server_text_reaches_no_terminal_and_no_state_file_unsanitised() {
    let junk = "X".repeat(5000);
    // A 5xx answer may pass (exit status 6); a malformed answer will not (1). The status
    // text is never repeated: abup names the status by its number and standard reason, and a
    // status line with control characters in it is malformed.
    let cases: [(&str, String, &str, i32); 4] = [
        (
            "escape sequences in the status text",
            "HTTP/1.1 500 \x1b[31mEVIL\x1b]0;owned\x07\rFAKE LINE\x7f\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
                .to_owned(),
            "invalid response status",
            1,
        ),
        (
            "a status text of 5000 characters",
            format!("HTTP/1.1 503 {junk}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            "503 Service Unavailable",
            6,
        ),
        (
            "a Content-Length that is not a number",
            format!("HTTP/1.1 200 OK\r\nContent-Length: 12\t{junk}\r\nConnection: close\r\n\r\n"),
            "content-length header not a number",
            1,
        ),
        (
            "a Content-Range that is not one",
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes\t0-1/2\t{junk}\r\n\
                 Content-Length: 2\r\nConnection: close\r\n\r\nAB"
            ),
            "Content-Range",
            1,
        ),
    ];
    for (what, response, marker, expected) in cases {
        let f = Fixture::new(SLOT, "");
        let url = serve_raw(response.into_bytes());
        let out = run(
            &f,
            &["install", &url, "--retries", "0"],
            &[],
            Input::Null,
            LIMIT,
        );
        let err = out.stderr_text();
        assert_eq!(out.code, Some(expected), "{what}: {err}");
        assert!(
            !has_control(&err),
            "{what}: control characters on stderr: {err:?}"
        );
        assert!(
            err.contains(marker),
            "{what}: the server's text is not named: {err}"
        );
        assert!(
            err.len() < 600,
            "{what}: {} bytes of error: {err}",
            err.len()
        );

        let s = f.status();
        let recorded = s["last_install"]["error"].as_str().unwrap();
        assert!(!has_control(recorded), "{what}: recorded {recorded:?}");
        assert!(recorded.contains(marker), "{what}: recorded {recorded:?}");
        assert!(recorded.len() < 600, "{what}: recorded {recorded:?}");
        let human = f.abup(&["status"]).success().stdout_text();
        assert!(!has_control(&human), "{what}: abup status shows {human:?}");
    }
}

// ---- the chunk size ----

#[test]
fn bundle_create_refuses_chunks_no_device_installs() {
    let f = Fixture::new(SLOT, "");
    let img = f.t.path("img");
    std::fs::write(&img, image(3_000_000, 8)).unwrap();
    let create = |chunk_size: u32, out: &Path| {
        f.abup(&[
            "bundle",
            "create",
            "--key",
            f.key.to_str().unwrap(),
            "--compatible",
            "abup-test",
            "--version",
            "2.0",
            "--chunk-size",
            &chunk_size.to_string(),
            "--image",
            img.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
    };
    let too_big = f.t.path("too-big.abup");
    let out = create(MAX_INSTALL_CHUNK_SIZE * 2, &too_big);
    assert_one_line_error(
        &out,
        1,
        &[
            &(MAX_INSTALL_CHUNK_SIZE * 2).to_string(),
            &MAX_INSTALL_CHUNK_SIZE.to_string(),
        ],
    );
    assert!(!too_big.exists());
    create(MAX_INSTALL_CHUNK_SIZE, &f.t.path("ok.abup")).success();
}

/// A bundle of `img` with `chunk_size`, built with the library: `abup bundle create` no longer
/// makes one a device refuses, but a signer with other tools can.
fn bundle_with_chunk_size(f: &Fixture, img: &[u8], chunk_size: u32) -> PathBuf {
    let key = SecretKey::from_pem(&String::from_utf8(common::read(&f.key)).unwrap()).unwrap();
    let opts = CreateOptions {
        compatible: "abup-test".into(),
        version: "2.0".into(),
        chunk_size,
        ..CreateOptions::default()
    };
    let mut reader = img;
    let mut sources = [ImageSource {
        slot_class: "rootfs".into(),
        reader: &mut reader,
        base: None,
    }];
    let path = f.t.path(&format!("chunks-{chunk_size}.abup"));
    let mut out = std::fs::File::create(&path).unwrap();
    let mut scratch = tempfile::tempfile().unwrap();
    bundle::create(&opts, &mut sources, &key, &mut scratch, &mut out).unwrap();
    path
}

#[test]
fn install_refuses_chunks_larger_than_its_memory_budget_before_writing() {
    let f = Fixture::new(SLOT, "");
    let img = image(SLOT as usize - 100_000, 9);
    let b = bundle_with_chunk_size(&f, &img, MAX_INSTALL_CHUNK_SIZE * 2);
    let (slot_b, env) = (f.slot("B"), f.env());
    let out = f.abup(&["install", b.to_str().unwrap()]);
    assert_one_line_error(
        &out,
        4,
        &[
            &(MAX_INSTALL_CHUNK_SIZE * 2).to_string(),
            &MAX_INSTALL_CHUNK_SIZE.to_string(),
        ],
    );
    assert_untouched(&f, &slot_b, &env);
    // What a device refuses to install, it can still look at.
    let keyring = f.keyring.to_str().unwrap();
    f.abup(&[
        "bundle",
        "verify",
        b.to_str().unwrap(),
        "--keyring",
        keyring,
    ])
    .success();
    // At the limit, it installs.
    let b = bundle_with_chunk_size(&f, &img, MAX_INSTALL_CHUNK_SIZE);
    f.abup(&["install", b.to_str().unwrap()]).success();
    assert_eq!(&f.slot("B")[..img.len()], &img[..]);
}

/// Peak resident memory, in bytes, of installing `img` in chunks of `chunk_size` on a fresh
/// device, as `/usr/bin/time` measures it.
fn install_peak_rss(img: &[u8], chunk_size: u32) -> u64 {
    let f = Fixture::new(img.len() as u64, "");
    let b = bundle_with_chunk_size(&f, img, chunk_size);
    let (out, peak) = f.install_peak_rss(&b);
    out.success();
    assert!(f.slot("B") == img, "slot B holds the image");
    peak
}

/// Chunks an install holds in memory with `decoders` decoding threads (`install/pipeline.rs`):
/// stored ones (2 queued, one per decoder) and decoded ones (2 queued, one per decoder, one
/// being written).
fn chunk_buffers(decoders: u64) -> u64 {
    (2 + decoders) + (2 + decoders + 1)
}

/// The budget itself: an install in chunks of the largest size it accepts peaks at or under
/// 32 MiB. An install starts a decoder per core, at most four; a machine with fewer cores
/// holds fewer chunks, so what it measures is projected to four decoders, each chunk buffer
/// full. The budget is for the release build; the unoptimised test build is itself larger
/// (measured: 7 MiB more, whatever the chunk size) and is allowed 8 MiB more. Half the image
/// is random, so half the stored chunks are full size.
#[test]
fn an_install_at_the_largest_chunk_size_stays_within_32_mib() {
    if !common::have("/usr/bin/time") {
        return;
    }
    let peak = install_peak_rss(&image(64 << 20, 10), MAX_INSTALL_CHUNK_SIZE);
    let decoders = std::thread::available_parallelism().map_or(1, |n| n.get().min(4)) as u64;
    let missing = chunk_buffers(4) - chunk_buffers(decoders);
    let projected = peak + missing * u64::from(MAX_INSTALL_CHUNK_SIZE);
    let budget: u64 = if cfg!(debug_assertions) {
        40 << 20
    } else {
        32 << 20
    };
    eprintln!(
        "peak RSS of an install in chunks of {MAX_INSTALL_CHUNK_SIZE} bytes with {decoders} \
         decoder(s): {} KiB; with four: {} KiB; budget {} KiB",
        peak >> 10,
        projected >> 10,
        budget >> 10
    );
    assert!(
        projected <= budget,
        "an install would peak at {} KiB with four decoders, over its budget of {} KiB",
        projected >> 10,
        budget >> 10
    );
}
