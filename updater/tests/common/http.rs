//! A small HTTP/1.1 file server for tests: serves one file, honours `Range: bytes=N-` and
//! `bytes=N-M`, and
//! can drop the connection after a number of bytes to play a flaky network.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub struct Server {
    pub url: String,
    /// Every request's Range header ("" when none), in order.
    pub ranges: Arc<Mutex<Vec<String>>>,
}

/// `drops`: for the first requests, how many body bytes to send before closing.
pub fn serve(file: PathBuf, drops: Vec<u64>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/bundle", listener.local_addr().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = ranges.clone();
    std::thread::spawn(move || {
        let mut drops = drops.into_iter();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let cut = drops.next();
            let _ = handle(stream, &file, cut, &seen);
        }
    });
    Server { url, ranges }
}

fn handle(
    mut stream: TcpStream,
    file: &PathBuf,
    cut: Option<u64>,
    seen: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut range = String::new();
    let mut first = String::new();
    reader.read_line(&mut first)?;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line
            .strip_prefix("Range: ")
            .or(line.strip_prefix("range: "))
        {
            range = v.trim().to_owned();
        }
    }
    seen.lock().unwrap().push(range.clone());
    let data = std::fs::read(file)?;
    // A query (a download token) is the client's business; the path must match.
    if !(first.starts_with("GET /bundle ") || first.starts_with("GET /bundle?")) {
        return stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    let (start, last): (u64, Option<u64>) = range
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .map(|(a, b)| (a.parse().unwrap_or(0), b.parse().ok()))
        .unwrap_or((0, None));
    let end = last.map_or(data.len(), |l| (l as usize + 1).min(data.len()));
    let body = &data[start as usize..end];
    let head = if range.is_empty() {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
    } else {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {}-{}/{}\r\nConnection: close\r\n\r\n",
            body.len(),
            start,
            end.saturating_sub(1),
            data.len()
        )
    };
    stream.write_all(head.as_bytes())?;
    let n = cut.map_or(body.len(), |c| (c as usize).min(body.len()));
    stream.write_all(&body[..n])?;
    stream.flush()?;
    if cut.is_some() {
        // An abrupt end, as a dropped link looks to the client.
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    Ok(())
}
