//! Where a bundle comes from: a file, standard input, or an http(s) URL.
//!
//! The install reads a bundle front to back once. A [`BundleReader`] can also move forward to
//! a later offset (to resume an interrupted install at a chunk boundary): a file seeks, a URL
//! asks the server for the rest with an HTTP Range request, standard input reads and discards.
//! A server that ignores Range requests sends the bundle from its start instead: the download
//! then starts over once in the run (see [`BundleReader::skip_to`]).
//!
//! Over a network, a failure that may pass (the connection, a 5xx answer, a timeout) is tried
//! again a bounded number of times with exponential backoff, resuming at the byte where it
//! broke, within the whole download's deadline; one that cannot pass (4xx, TLS, a malformed
//! answer, a bundle that changed on the server) fails at once. Every chunk is hash-checked
//! later, so a server that sends something else is caught there, not trusted.

mod http;

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::board::HttpConfig;
use http::{fatal, is_transient, transient, Client};

/// Where a bundle comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Stdin,
    Url(String),
}

/// How hard to try over a network.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Consecutive failures tolerated before giving up; progress resets the count.
    pub attempts: u32,
    /// The first wait; each further one doubles, up to [`MAX_WAIT`].
    pub first_wait: Duration,
}

/// Retries when neither the command line nor board.toml says.
pub const DEFAULT_RETRIES: u32 = 5;

/// The first wait between retries when neither the command line nor board.toml says.
pub const DEFAULT_RETRY_WAIT: Duration = Duration::from_secs(1);

/// Long enough for a flapping link to come back, short enough that an OTA agent sees a
/// failure within minutes.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Everything about fetching bundles over http(s): trust, credentials and headers (board.toml's
/// `[http]` with the command line's flags laid over it), retries, and the whole download's
/// deadline.
#[derive(Debug, Clone)]
pub struct Network {
    pub http: HttpConfig,
    pub retry: Retry,
    /// When every download of this command must be done (`--timeout`), if ever.
    pub deadline: Option<Instant>,
}

impl Network {
    /// The settings `http` describes, the deadline counted from now.
    pub fn new(http: HttpConfig) -> Network {
        Network {
            retry: Retry {
                attempts: http.retries.unwrap_or(DEFAULT_RETRIES),
                first_wait: http.retry_wait.unwrap_or(DEFAULT_RETRY_WAIT),
            },
            deadline: http.timeout.map(|t| Instant::now() + t),
            http,
        }
    }
}

impl Default for Network {
    fn default() -> Network {
        Network::new(HttpConfig::default())
    }
}

/// The most characters of a server's text (status text, a header's value, a transport
/// error) that abup repeats in a message, a log line or the recorded outcome of an install.
pub const MAX_SERVER_TEXT: usize = 200;

/// Text from a server, made safe to print and to store: every character outside printable
/// ASCII is escaped (`\u{1b}`, `\r`), so a hostile server can neither send escape sequences to
/// an operator's terminal nor forge lines in a log, and at most [`MAX_SERVER_TEXT`] characters
/// are kept.
pub fn server_text(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let escaped: String = if (' '..='~').contains(&c) {
            c.into()
        } else {
            c.escape_default().collect()
        };
        if out.len() + escaped.len() > MAX_SERVER_TEXT {
            out.push_str("...");
            break;
        }
        out.push_str(&escaped);
    }
    out
}

/// A source that failed for a reason that may pass (the network, an HTTP 5xx answer, a
/// timeout), after abup's own retries: exit status 6, so an agent knows to try again later.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

fn unavailable(text: String) -> io::Error {
    io::Error::other(Unavailable(text))
}

/// An error from the network, its text sanitised by [`server_text`].
fn server_error(text: &str) -> io::Error {
    fatal(server_text(text))
}

/// `Content-Range: bytes START-END/TOTAL` (TOTAL may be `*`): START, END and TOTAL.
fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end): (u64, u64) = (start.parse().ok()?, end.parse().ok()?);
    let total = match total {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (start <= end && total.is_none_or(|t| end < t)).then_some((start, end, total))
}

/// `bundle info` reads a URL's front in Range requests of this many bytes at first, doubling
/// each time: the header, manifest and signature of a bundle with a few thousand chunks fit
/// in one or two.
const FRONT_WINDOW: u64 = 64 * 1024;

impl Source {
    pub fn parse(arg: &str) -> Source {
        if arg == "-" {
            Source::Stdin
        } else if arg.starts_with("http://") || arg.starts_with("https://") {
            Source::Url(arg.to_owned())
        } else {
            Source::File(PathBuf::from(arg))
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Stdin => "standard input".to_owned(),
            Source::Url(u) => crate::state::redact(u),
        }
    }

    /// Opens the bundle at its start, to be read through.
    pub fn open(&self, net: &Network) -> Result<BundleReader> {
        self.open_with(net, None)
    }

    /// Opens the bundle to read its front only: a URL is asked for its first bytes with a
    /// Range request, and for more only as they are read, so that `bundle info` downloads
    /// the header, manifest and signature and not the payload behind them.
    pub fn open_front(&self, net: &Network) -> Result<BundleReader> {
        self.open_with(net, Some(FRONT_WINDOW))
    }

    fn open_with(&self, net: &Network, window: Option<u64>) -> Result<BundleReader> {
        let inner = match self {
            Source::File(p) => Inner::File(
                File::open(p).with_context(|| format!("opening bundle {}", p.display()))?,
            ),
            Source::Stdin => Inner::Stdin(io::stdin()),
            Source::Url(url) => {
                let mut h = Http {
                    client: Client::new(url, net)?,
                    retry: net.retry,
                    body: None,
                    len: None,
                    version: None,
                    restarted: false,
                    window,
                };
                // Connect now, so a wrong URL fails before anything else happens.
                h.start(0)
                    .with_context(|| format!("downloading {}", self.describe()))?;
                Inner::Http(Box::new(h))
            }
        };
        Ok(BundleReader { inner, pos: 0 })
    }
}

/// A bundle being read, front to back, with the position known.
pub struct BundleReader {
    inner: Inner,
    pos: u64,
}

impl std::fmt::Debug for BundleReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleReader")
            .field("pos", &self.pos)
            .finish()
    }
}

enum Inner {
    File(File),
    Stdin(io::Stdin),
    Http(Box<Http>),
}

/// A bundle at a URL, read through successive GET requests.
struct Http {
    client: Client,
    retry: Retry,
    /// The answer being read, if a request is open.
    body: Option<Body>,
    /// The bundle's length, from the first answer that says.
    len: Option<u64>,
    /// The bundle's `ETag` or `Last-Modified`, from the first answer: a later answer with
    /// another one is another bundle.
    version: Option<String>,
    /// The server ignored a Range request and the download started over: it does once in a
    /// run, never again, so a link that keeps breaking cannot keep abup downloading the same
    /// bytes.
    restarted: bool,
    /// Ask for this many bytes at a time (the next window twice as many), for a reader of
    /// the front only; `None` asks for everything from the position on.
    window: Option<u64>,
}

struct Body {
    reader: ureq::BodyReader<'static>,
    /// Where this answer's bytes end in the bundle, when it says.
    end: Option<u64>,
}

/// Where an answer's body starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Where it was asked to.
    Asked,
    /// At byte 0: the server ignored the Range request.
    Over,
}

impl BundleReader {
    /// Bytes read (or skipped) from the start of the bundle.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The bundle's length when the source tells it: a file's size, an HTTP server's
    /// Content-Length; standard input never does.
    pub fn total_len(&self) -> Option<u64> {
        match &self.inner {
            Inner::File(f) => f.metadata().ok().map(|m| m.len()),
            Inner::Stdin(_) => None,
            Inner::Http(h) => h.len,
        }
    }

    /// Moves forward to `offset`, without reading what lies between when the source allows,
    /// and returns the position reached: `offset`, or 0 when the source is a server that
    /// ignores Range requests: it sent the bundle from its start, and the caller reads (and
    /// checks) it from there. That happens once in a run; a URL is asked at once, so a
    /// failure to reach it shows here.
    pub fn skip_to(&mut self, offset: u64) -> io::Result<u64> {
        if offset < self.pos {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a bundle is read front to back",
            ));
        }
        if offset == self.pos {
            return Ok(offset);
        }
        match &mut self.inner {
            Inner::File(f) => {
                f.seek(SeekFrom::Start(offset))?;
                self.pos = offset;
            }
            Inner::Http(h) => {
                h.body = None;
                self.pos = match h.start(offset)? {
                    Start::Asked => offset,
                    Start::Over => {
                        h.begin_again(
                            offset,
                            ", and what earlier runs wrote is checked, not written again",
                        )?;
                        0
                    }
                };
            }
            Inner::Stdin(s) => {
                let n = io::copy(&mut s.take(offset - self.pos), &mut io::sink())?;
                self.pos += n;
                if self.pos < offset {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
        Ok(self.pos)
    }

    /// Reads exactly `buf.len()` bytes at `offset`, anywhere in the bundle, leaving the stream
    /// position alone: a file is read in place, a URL with one `Range` request for just those
    /// bytes (retried like the stream). What a fallback bundle needs, whose chunks an install
    /// fetches out of order. Standard input cannot go back, so it fails.
    pub fn read_range(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        match &mut self.inner {
            Inner::File(f) => std::os::unix::fs::FileExt::read_exact_at(f, buf, offset),
            Inner::Stdin(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "standard input cannot be read out of order",
            )),
            Inner::Http(h) => {
                let len = buf.len();
                h.retrying(
                    || format!("fetching bytes {offset}+{len}"),
                    |h| h.range(offset, buf),
                )
            }
        }
    }
}

impl Http {
    /// Runs `op` until it succeeds or fails for good: a [`http::Transient`] failure is tried
    /// again after a wait (doubling each time) while the retries and the deadline last, then
    /// becomes [`Unavailable`]; any other fails at once.
    fn retrying<T>(
        &mut self,
        what: impl Fn() -> String,
        mut op: impl FnMut(&mut Http) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut failures = 0u32;
        let mut wait = self.retry.first_wait;
        loop {
            let e = match op(self) {
                Ok(v) => return Ok(v),
                Err(e) if !is_transient(&e) => return Err(e),
                Err(e) => e,
            };
            self.body = None;
            let left = self.client.time_left();
            if left.is_some_and(|l| l.is_zero()) {
                return Err(unavailable(format!(
                    "{} did not finish within the download's timeout (--timeout, [http] \
                     timeout): {e}",
                    what()
                )));
            }
            if failures >= self.retry.attempts {
                return Err(unavailable(format!(
                    "{} failed after {failures} retries: {e}",
                    what()
                )));
            }
            failures += 1;
            log::warn!(
                "{} failed ({e}); retrying in {:.1} s ({failures}/{})",
                what(),
                wait.as_secs_f64(),
                self.retry.attempts
            );
            std::thread::sleep(left.map_or(wait, |l| wait.min(l)));
            wait = (wait * 2).min(MAX_WAIT);
        }
    }

    /// A request for the bundle from `at` on (retried), its answer left open to read.
    fn start(&mut self, at: u64) -> io::Result<Start> {
        self.retrying(|| format!("connecting at byte {at}"), |h| h.connect(at))
    }

    /// One request for the bundle from `at` on (or for the next window).
    fn connect(&mut self, at: u64) -> io::Result<Start> {
        let range = match (self.window, at) {
            (Some(w), _) => Some(format!("bytes={at}-{}", at + w - 1)),
            (None, 0) => None,
            (None, _) => Some(format!("bytes={at}-")),
        };
        let resp = self.client.get(range.as_deref())?;
        let (start, end) = self.answer(&resp, at)?;
        if let Some(w) = &mut self.window {
            *w = w.saturating_mul(2);
        }
        self.body = Some(Body {
            reader: resp.into_body().into_reader(),
            end,
        });
        Ok(start)
    }

    /// Checks an answer to a request for the bundle from `at` on: its status, that it is the
    /// same bundle as before, where its bytes start and end.
    fn answer(
        &mut self,
        resp: &ureq::http::Response<ureq::Body>,
        at: u64,
    ) -> io::Result<(Start, Option<u64>)> {
        let status = resp.status();
        // Header values are the server's text: they reach a message only through server_text.
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let (start, end, total) = match status.as_u16() {
            206 => {
                let value = header("content-range").unwrap_or_default();
                let (first, last, total) = parse_content_range(&value).ok_or_else(|| {
                    server_error(&format!(
                        "the server's Content-Range \"{value}\" is not \"bytes START-END/TOTAL\""
                    ))
                })?;
                if first != at {
                    return Err(fatal(format!(
                        "the server sent bytes from {first} when asked for bytes from {at}"
                    )));
                }
                (Start::Asked, Some(last + 1), total)
            }
            200 => {
                let total = match header("content-length") {
                    Some(v) => Some(v.trim().parse::<u64>().map_err(|_| {
                        server_error(&format!(
                            "the server's Content-Length \"{v}\" is not a number"
                        ))
                    })?),
                    None => None,
                };
                let start = if at > 0 { Start::Over } else { Start::Asked };
                (start, total, total)
            }
            code => {
                let text = format!(
                    "the server answered {code} {}",
                    status.canonical_reason().unwrap_or("")
                );
                // 408 and 429 ask the client to come back; other 4xx answers will not change.
                return Err(if code >= 500 || code == 408 || code == 429 {
                    transient(text)
                } else {
                    fatal(text)
                });
            }
        };
        if let Some(encoding) = header("content-encoding").filter(|e| e != "identity") {
            return Err(server_error(&format!(
                "the server sent the bundle encoded ({encoding}) though abup asked for it as it \
                 is; turn compression off for bundles on the server"
            )));
        }
        let version = header("etag").or_else(|| header("last-modified"));
        if let (Some(known), Some(now)) = (&self.version, &version) {
            if known != now {
                return Err(server_error(&format!(
                    "the bundle changed on the server (it was \"{known}\", now \"{now}\"); \
                     start the install again"
                )));
            }
        }
        if let (Some(known), Some(now)) = (self.len, total) {
            if known != now {
                return Err(fatal(format!(
                    "the bundle changed on the server ({known} bytes, now {now}); start the \
                     install again"
                )));
            }
        }
        self.version = self.version.take().or(version);
        self.len = self.len.or(total);
        Ok((start, end))
    }

    /// Up to `buf.len()` bytes at `at`, the stream's position, over as many requests as it
    /// takes (retried).
    fn read(&mut self, at: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.retrying(
            || format!("the download at byte {at}"),
            |h| h.read_once(at, buf),
        )
    }

    fn read_once(&mut self, at: u64, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.len == Some(at) {
                return Ok(0);
            }
            if self.body.is_none() {
                // A server known to ignore Range would send the bundle from its start again.
                if self.restarted && at > 0 && self.window.is_none() {
                    return Err(broke_again(at));
                }
                if self.connect(at)? == Start::Over {
                    self.skip_restarted(at)?;
                }
            }
            let Some(body) = self.body.as_mut() else {
                unreachable!("connected above")
            };
            match body.reader.read(buf) {
                Ok(0) => match body.end {
                    Some(end) if at < end => {
                        return Err(transient(format!(
                            "the connection ended at byte {at}, before byte {end}"
                        )))
                    }
                    // The end of a window, not of the bundle: ask for the next.
                    Some(_) if self.len.is_some_and(|len| at < len) => self.body = None,
                    _ => return Ok(0),
                },
                Ok(n) => return Ok(n),
                Err(e) => return Err(http::io_failure(&e)),
            }
        }
    }

    /// The server answered a Range request for the bundle from `at` on with the bundle from
    /// its start, `at` bytes too early: they were read already, so they are skipped, once in
    /// a run.
    fn skip_restarted(&mut self, at: u64) -> io::Result<()> {
        self.begin_again(at, &format!(", skipping the {at} bytes read already"))?;
        let Some(body) = self.body.as_mut() else {
            return Ok(());
        };
        let skipped = io::copy(&mut (&mut body.reader).take(at), &mut io::sink())
            .map_err(|e| http::io_failure(&e))?;
        if skipped < at {
            return Err(transient(format!(
                "the connection ended at byte {skipped}, before byte {at}"
            )));
        }
        Ok(())
    }

    /// The download starts over from byte 0, because the server ignored a Range request for
    /// byte `at`: once in a run. A second time the link broke again, and the run gives up
    /// (exit status 6) rather than download the same bytes over and over; the next run
    /// continues from the journal's last checkpoint.
    fn begin_again(&mut self, at: u64, how: &str) -> io::Result<()> {
        if self.restarted {
            self.body = None;
            return Err(broke_again(at));
        }
        self.restarted = true;
        log::warn!("the server ignores Range requests: the download starts over{how}");
        Ok(())
    }

    /// One `Range: bytes=A-B` request for exactly `buf`: the answer must be a 206 for exactly
    /// those bytes.
    fn range(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let last = offset + buf.len() as u64 - 1;
        let resp = self.client.get(Some(&format!("bytes={offset}-{last}")))?;
        if resp.status() == 200 {
            return Err(fatal(
                "the server ignored the Range request, so single chunks cannot be fetched from it"
                    .into(),
            ));
        }
        self.answer(&resp, offset)?;
        resp.into_body()
            .into_reader()
            .read_exact(buf)
            .map_err(|e| http::io_failure(&e))
    }
}

/// The download broke at byte `at` after it had started over once (the server ignores Range).
fn broke_again(at: u64) -> io::Error {
    unavailable(format!(
        "the server ignores Range requests, and the download broke again at byte {at} after it \
         had started over once: run the same command again, which continues from the last \
         checkpoint (or serve bundles from a server that honours Range)"
    ))
}

impl Read for BundleReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.inner {
            Inner::File(f) => f.read(buf)?,
            Inner::Stdin(s) => s.read(buf)?,
            Inner::Http(h) => h.read(self.pos, buf)?,
        };
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!(Source::parse("-"), Source::Stdin);
        assert_eq!(
            Source::parse("https://updates.example/b.abup"),
            Source::Url("https://updates.example/b.abup".into())
        );
        assert_eq!(Source::parse("./b"), Source::File("./b".into()));
    }

    #[test]
    fn server_text_is_printable_and_bounded() {
        assert_eq!(server_text("Not Found"), "Not Found");
        assert_eq!(
            server_text("\u{1b}[31mEVIL\r\nX: y\u{7}\u{7f}\t\u{9b}\u{202e}"),
            "\\u{1b}[31mEVIL\\r\\nX: y\\u{7}\\u{7f}\\t\\u{9b}\\u{202e}"
        );
        let long = server_text(&"A".repeat(10_000));
        assert_eq!(long.len(), MAX_SERVER_TEXT + 3);
        assert!(long.ends_with("..."));
        // An escape is kept whole or not at all.
        let edge = server_text(&("A".repeat(MAX_SERVER_TEXT - 3) + "\u{1b}"));
        assert_eq!(edge, "A".repeat(MAX_SERVER_TEXT - 3) + "...");
        for text in ["\u{1b}]0;owned\u{7}", &"\u{1b}".repeat(1000), "a\u{0}b"] {
            let t = server_text(text);
            assert!(t.chars().all(|c| (' '..='~').contains(&c)), "{t:?}");
            assert!(t.len() <= MAX_SERVER_TEXT + 3);
        }
    }

    #[test]
    fn content_range_is_parsed_strictly() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, 199, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, 0, None)));
        for bad in [
            "",
            "bytes 100-199",
            "bytes=100-199/200",
            "bytes 100-99/200",
            "bytes 100-200/200",
            "bytes -1-5/9",
            "bytes 1-5/x",
            "items 1-5/9",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn file_reader_skips_forward_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b");
        std::fs::write(&p, b"0123456789").unwrap();
        let mut r = Source::File(p).open(&Network::default()).unwrap();
        let mut b = [0; 2];
        r.read_exact(&mut b).unwrap();
        r.skip_to(6).unwrap();
        r.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"67");
        assert_eq!(r.position(), 8);
        assert!(r.skip_to(1).is_err());
    }
}
