//! One QEMU run: one power-on of a board, driven over its serial console.
//!
//! Every guest reboot ends QEMU (`-no-reboot`), so a test sees each boot as its own `Vm` and
//! decides what happens between power-ons, as a device's power supply would. Killing the
//! process is a power cut: what the guest had not flushed to the disk image is lost.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// What the console has printed so far, and whether QEMU is still running.
#[derive(Debug, Default)]
struct Console {
    text: String,
    exited: bool,
}

/// A running QEMU whose serial console is on its stdin and stdout.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    stdin: Option<ChildStdin>,
    console: Arc<(Mutex<Console>, Condvar)>,
    /// Where the next `expect` starts looking.
    cursor: usize,
    started: Instant,
    log: PathBuf,
}

impl Vm {
    /// Starts `qemu`, appending everything its console prints to `log` (tail it to watch).
    pub fn start(mut qemu: Command, log: &Path, title: &str) -> Result<Vm> {
        let mut log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening console log {}", log.display()))?;
        writeln!(log_file, "\n===== {title} =====")?;
        let mut child = qemu
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting QEMU (is qemu-system installed? scripts/install-deps)")?;
        let console = Arc::new((Mutex::new(Console::default()), Condvar::new()));
        let mut stdout = child.stdout.take().context("QEMU stdout")?;
        let mut stderr = child.stderr.take().context("QEMU stderr")?;
        let shared = Arc::clone(&console);
        let mut err_log = log_file.try_clone()?;
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let _ = log_file.write_all(&buf[..n]);
                let text = String::from_utf8_lossy(&buf[..n]).replace('\r', "");
                let (lock, cvar) = &*shared;
                if let Ok(mut c) = lock.lock() {
                    c.text.push_str(&text);
                }
                cvar.notify_all();
            }
            let (lock, cvar) = &*shared;
            if let Ok(mut c) = lock.lock() {
                c.exited = true;
            }
            cvar.notify_all();
        });
        thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            if !text.is_empty() {
                let _ = writeln!(err_log, "\n[qemu stderr] {text}");
            }
        });
        let stdin = child.stdin.take();
        Ok(Vm {
            child,
            stdin,
            console,
            cursor: 0,
            started: Instant::now(),
            log: log.to_path_buf(),
        })
    }

    /// Time since QEMU started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until the console prints `needle` after the cursor and returns the text up to
    /// and including it. Fails if QEMU exits first or `timeout` passes, so a hung boot fails
    /// its test instead of hanging CI.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.expect_any(&[needle], timeout).map(|(_, text)| text)
    }

    /// Like `expect` for the first of several needles; returns which one matched.
    pub fn expect_any(&mut self, needles: &[&str], timeout: Duration) -> Result<(usize, String)> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.console;
        let mut console = lock.lock().map_err(|_| anyhow!("console lock poisoned"))?;
        loop {
            let rest = &console.text[self.cursor.min(console.text.len())..];
            let hit = needles
                .iter()
                .enumerate()
                .filter_map(|(i, n)| rest.find(n).map(|at| (at + n.len(), i)))
                .min();
            if let Some((end, i)) = hit {
                let text = rest[..end].to_string();
                self.cursor += end;
                return Ok((i, text));
            }
            let what = needles.join("\" or \"");
            if console.exited {
                bail!(
                    "QEMU exited before the console printed \"{what}\" (see {}); it ended with:\n{}",
                    self.log.display(),
                    last_lines(&console.text)
                );
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "no \"{what}\" on the console within {timeout:?} (see {}); it ended with:\n{}",
                    self.log.display(),
                    last_lines(&console.text)
                );
            }
            console = cvar
                .wait_timeout(console, deadline - now)
                .map_err(|_| anyhow!("console lock poisoned"))?
                .0;
        }
    }

    /// After a power cut: what the console printed after the cursor until QEMU died, read to
    /// the end of its output, so a test can tell where the guest was when the power went.
    pub fn rest(&mut self) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let (lock, cvar) = &*self.console;
        let mut console = lock.lock().map_err(|_| anyhow!("console lock poisoned"))?;
        while !console.exited {
            let now = Instant::now();
            if now >= deadline {
                bail!("QEMU's console did not end after the power cut");
            }
            console = cvar
                .wait_timeout(console, deadline - now)
                .map_err(|_| anyhow!("console lock poisoned"))?
                .0;
        }
        let rest = console.text[self.cursor.min(console.text.len())..].to_string();
        self.cursor = console.text.len();
        Ok(rest)
    }

    /// Types `line` at the guest's shell.
    pub fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self.stdin.as_mut().context("QEMU stdin closed")?;
        stdin.write_all(line.as_bytes())?;
        stdin.write_all(b"\n")?;
        stdin.flush()?;
        Ok(())
    }

    /// Runs `command` in the guest's shell and returns its output and exit status.
    pub fn shell(&mut self, command: &str, timeout: Duration) -> Result<(String, i32)> {
        // The marker is split in the typed line, so the shell's echo of it never matches.
        self.send(&format!("{command}; echo \"ABUP-RC\"=$?"))?;
        let text = self.expect("ABUP-RC=", timeout)?;
        let status_line = self.expect("\n", Duration::from_secs(10))?;
        let status = status_line
            .trim()
            .parse()
            .with_context(|| format!("exit status {status_line:?} of `{command}`"))?;
        // Drop the echoed command line; keep what the command printed.
        let output = text
            .split_once('\n')
            .map(|(_, rest)| rest)
            .unwrap_or("")
            .trim_end_matches("ABUP-RC=")
            .to_string();
        Ok((output, status))
    }

    /// Like `shell`, failing unless the command exits 0.
    pub fn shell_ok(&mut self, command: &str, timeout: Duration) -> Result<String> {
        let (output, status) = self.shell(command, timeout)?;
        if status != 0 {
            bail!("`{command}` in the guest exited {status}:\n{output}");
        }
        Ok(output)
    }

    /// Waits for QEMU to end by itself (the guest rebooted or powered off).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        bail!(
            "QEMU still running after {timeout:?} (see {})",
            self.log.display()
        )
    }

    /// Whether QEMU is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Cuts the power: SIGKILL, no flush, no shutdown.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = append_line(
            &self.log,
            &format!("\n[power cut after {:?}]", self.elapsed()),
        );
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = append_line(
            &self.log,
            &format!("\n[QEMU ran {:.1} s]", self.elapsed().as_secs_f64()),
        );
    }
}

/// The console's last lines, for a failure's message: CI keeps the test's output, not the
/// console log it names.
fn last_lines(text: &str) -> String {
    const LINES: usize = 25;
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(LINES)..]
        .iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Creates (truncates) a console log.
pub fn new_log(path: &Path) -> Result<()> {
    File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(())
}

/// Adds `line` to the log at `path`, in one write: scenarios run in parallel, and some logs
/// are shared.
pub fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    log.write_all(format!("{line}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::{append_line, last_lines};

    #[test]
    fn a_failure_quotes_the_consoles_last_lines() {
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let quoted = last_lines(&text);
        assert_eq!(quoted.lines().count(), 25);
        assert_eq!(quoted.lines().next(), Some("  | line 6"));
        assert_eq!(quoted.lines().last(), Some("  | line 30"));
        assert_eq!(last_lines("only\n"), "  | only");
    }

    /// Scenarios that run at once each add their line; none replaces another's.
    #[test]
    fn lines_appended_at_once_all_stay() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("watchdog.log");
        std::thread::scope(|s| {
            for n in 0..8 {
                let log = &log;
                s.spawn(move || append_line(log, &format!("scenario {n}: spoiled")));
            }
        });
        let text = std::fs::read_to_string(&log).expect("the log");
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        let expected: Vec<String> = (0..8).map(|n| format!("scenario {n}: spoiled")).collect();
        assert_eq!(lines, expected);
    }
}
