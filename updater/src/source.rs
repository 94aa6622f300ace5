//! Where a bundle comes from: a file, standard input, or an http(s) URL.
//!
//! The install reads a bundle front to back once. A [`BundleReader`] can also move forward to
//! a later offset (to resume an interrupted install at a chunk boundary): a file seeks, a URL
//! asks the server for the rest with an HTTP Range request, standard input reads and discards.
//! Network errors are retried a bounded number of times with exponential backoff, resuming at
//! the byte where the connection broke; every chunk is hash-checked later, so a server that
//! sends something else is caught there, not trusted.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

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

/// Long enough for a flapping link to come back, short enough that an OTA agent sees a
/// failure within minutes.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

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

/// An error from the network, its text sanitised by [`server_text`].
fn server_error(text: &str) -> io::Error {
    io::Error::other(server_text(text))
}

/// A ureq error as one sanitised line. The URL is left out: the caller names the source, and
/// a URL may carry credentials.
fn http_error(e: ureq::Error) -> io::Error {
    match e {
        ureq::Error::Status(code, r) => {
            let text = server_text(&format!("the server answered {code} {}", r.status_text()));
            if code >= 500 {
                io::Error::other(Unavailable(text))
            } else {
                io::Error::other(text)
            }
        }
        ureq::Error::Transport(t) => {
            let mut text = t.kind().to_string();
            if let Some(m) = t.message() {
                text = format!("{text}: {m}");
            }
            if let Some(source) = std::error::Error::source(&t) {
                text = format!("{text}: {source}");
            }
            io::Error::other(Unavailable(server_text(&text)))
        }
    }
}

/// `Content-Range: bytes START-END/TOTAL` (TOTAL may be `*`): START and TOTAL.
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let (range, total) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end): (u64, u64) = (start.parse().ok()?, end.parse().ok()?);
    let total = match total {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (start <= end && total.is_none_or(|t| end < t)).then_some((start, total))
}

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

    /// Opens the bundle at its start.
    pub fn open(&self, retry: Retry) -> Result<BundleReader> {
        let inner = match self {
            Source::File(p) => Inner::File(
                File::open(p).with_context(|| format!("opening bundle {}", p.display()))?,
            ),
            Source::Stdin => Inner::Stdin(io::stdin()),
            Source::Url(url) => Inner::Http(Http {
                agent: ureq::AgentBuilder::new()
                    .timeout_connect(Duration::from_secs(30))
                    .timeout_read(Duration::from_secs(60))
                    .build(),
                url: url.clone(),
                body: None,
                len: None,
            }),
        };
        let mut reader = BundleReader {
            inner,
            pos: 0,
            retry,
        };
        if let Inner::Http(_) = reader.inner {
            // Connect now, so a wrong URL fails before anything else happens.
            reader
                .http_connect()
                .with_context(|| format!("downloading {}", self.describe()))?;
        }
        Ok(reader)
    }
}

/// A bundle being read, front to back, with the position known.
pub struct BundleReader {
    inner: Inner,
    pos: u64,
    retry: Retry,
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
    Http(Http),
}

struct Http {
    agent: ureq::Agent,
    url: String,
    body: Option<Box<dyn Read + Send + Sync>>,
    /// The bundle's length, from the first response.
    len: Option<u64>,
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

    /// Moves forward to `offset`, without reading what lies between when the source allows.
    pub fn skip_to(&mut self, offset: u64) -> io::Result<()> {
        if offset < self.pos {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a bundle is read front to back",
            ));
        }
        if offset == self.pos {
            return Ok(());
        }
        match &mut self.inner {
            Inner::File(f) => {
                f.seek(SeekFrom::Start(offset))?;
                self.pos = offset;
            }
            Inner::Http(h) => {
                // The next read asks for the rest from `offset`.
                h.body = None;
                self.pos = offset;
            }
            Inner::Stdin(s) => {
                let n = io::copy(&mut s.take(offset - self.pos), &mut io::sink())?;
                self.pos += n;
                if self.pos < offset {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
        Ok(())
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
                let mut failures = 0u32;
                let mut wait = self.retry.first_wait;
                loop {
                    match http_range(h, offset, buf) {
                        Ok(()) => return Ok(()),
                        Err(e) if failures < self.retry.attempts => {
                            failures += 1;
                            log::warn!(
                                "fetching bytes {offset}+{} failed ({e}); retrying in {wait:?} ({failures}/{})",
                                buf.len(),
                                self.retry.attempts
                            );
                            std::thread::sleep(wait);
                            wait = (wait * 2).min(MAX_WAIT);
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    fn http_connect(&mut self) -> io::Result<()> {
        let Inner::Http(h) = &mut self.inner else {
            return Ok(());
        };
        let mut req = h.agent.get(&h.url);
        if self.pos > 0 {
            req = req.set("Range", &format!("bytes={}-", self.pos));
        }
        let resp = req.call().map_err(http_error)?;
        let ranged = resp.status() == 206;
        if self.pos > 0 && !ranged {
            return Err(io::Error::other(
                "the server ignored the Range request, so the download cannot resume",
            ));
        }
        // Header values are the server's text: they reach a message only through server_text.
        let total = if ranged {
            let value = resp.header("Content-Range").unwrap_or_default();
            let (start, total) = parse_content_range(value).ok_or_else(|| {
                server_error(&format!(
                    "the server's Content-Range \"{value}\" is not \"bytes START-END/TOTAL\""
                ))
            })?;
            if start != self.pos {
                return Err(io::Error::other(format!(
                    "the server sent bytes from {start} when asked for bytes from {}",
                    self.pos
                )));
            }
            total
        } else {
            match resp.header("Content-Length") {
                Some(v) => Some(v.parse().map_err(|_| {
                    server_error(&format!(
                        "the server's Content-Length \"{v}\" is not a number"
                    ))
                })?),
                None => None,
            }
        };
        if let (Some(known), Some(now)) = (h.len, total) {
            if known != now {
                return Err(io::Error::other(format!(
                    "the bundle changed on the server ({known} bytes, now {now})"
                )));
            }
        }
        h.len = h.len.or(total);
        h.body = Some(Box::new(resp.into_reader()));
        Ok(())
    }

    fn read_http(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut failures = 0u32;
        let mut wait = self.retry.first_wait;
        loop {
            let result = match &mut self.inner {
                Inner::Http(h) if h.body.is_none() => self.http_connect().map(|()| None),
                Inner::Http(h) => {
                    let Some(body) = h.body.as_mut() else {
                        unreachable!("checked above")
                    };
                    match body.read(buf) {
                        // A clean end before the announced length is a dropped connection.
                        Ok(0) if h.len.is_some_and(|len| self.pos < len) => {
                            Err(io::Error::from(io::ErrorKind::UnexpectedEof))
                        }
                        Ok(n) => Ok(Some(n)),
                        Err(e) => Err(io::Error::new(e.kind(), server_text(&e.to_string()))),
                    }
                }
                _ => unreachable!("only called for URLs"),
            };
            match result {
                Ok(Some(n)) => return Ok(n),
                Ok(None) => continue,
                Err(e) if failures < self.retry.attempts => {
                    failures += 1;
                    log::warn!(
                        "download interrupted at byte {} ({e}); retrying in {:?} ({failures}/{})",
                        self.pos,
                        wait,
                        self.retry.attempts
                    );
                    if let Inner::Http(h) = &mut self.inner {
                        h.body = None;
                    }
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(MAX_WAIT);
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!(
                            "download failed at byte {} after {failures} retries: {e}",
                            self.pos
                        ),
                    ))
                }
            }
        }
    }
}

/// One `Range: bytes=A-B` request for exactly `buf`: the answer must be a 206 for exactly
/// those bytes.
fn http_range(h: &Http, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let last = offset + buf.len() as u64 - 1;
    let resp = h
        .agent
        .get(&h.url)
        .set("Range", &format!("bytes={offset}-{last}"))
        .call()
        .map_err(http_error)?;
    if resp.status() != 206 {
        return Err(io::Error::other(
            "the server ignored the Range request, so single chunks cannot be fetched from it",
        ));
    }
    let value = resp.header("Content-Range").unwrap_or_default().to_owned();
    match parse_content_range(&value) {
        Some((start, _)) if start == offset => {}
        _ => {
            return Err(server_error(&format!(
                "the server's Content-Range \"{value}\" does not start at byte {offset}"
            )))
        }
    }
    resp.into_reader()
        .read_exact(buf)
        .map_err(|e| io::Error::new(e.kind(), server_text(&e.to_string())))
}

impl Read for BundleReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.inner {
            Inner::File(f) => f.read(buf)?,
            Inner::Stdin(s) => s.read(buf)?,
            Inner::Http(_) => self.read_http(buf)?,
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
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, None)));
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
        let retry = Retry {
            attempts: 0,
            first_wait: Duration::ZERO,
        };
        let mut r = Source::File(p).open(retry).unwrap();
        let mut b = [0; 2];
        r.read_exact(&mut b).unwrap();
        r.skip_to(6).unwrap();
        r.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"67");
        assert_eq!(r.position(), 8);
        assert!(r.skip_to(1).is_err());
    }
}
