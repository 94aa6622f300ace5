//! Parses the command line, runs the command, and turns the result into one line on standard
//! error and a documented exit status (see `abup --help`).

use std::io::Write;
use std::process::ExitCode;

use abup::cli::Cli;
use abup::commands::{self, Outcome};
use abup::exit;
use clap::Parser;

/// Log lines on standard error: `abup: warning: ...` for people, or, when standard error is
/// the systemd journal, `<4>warning: ...`, the syslog priority the journal files the line
/// under (it strips the prefix and names the program itself).
struct StderrLogger {
    level: log::LevelFilter,
    journal: bool,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let (level, priority) = match record.level() {
                log::Level::Error => ("error", 3),
                log::Level::Warn => ("warning", 4),
                log::Level::Info => ("info", 6),
                log::Level::Debug | log::Level::Trace => ("debug", 7),
            };
            line(self.journal, priority, level, &record.args().to_string());
        }
    }

    fn flush(&self) {}
}

/// One line on standard error. A write that fails (nobody reads standard error any more) is
/// not a reason to stop what abup is doing, least of all an install half way through.
fn line(journal: bool, priority: u8, level: &str, text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = if journal {
        writeln!(err, "<{priority}>{level}: {text}")
    } else {
        writeln!(err, "abup: {level}: {text}")
    };
}

/// Whether standard error is the journal: systemd sets `JOURNAL_STREAM` to the device and
/// inode of the stream it connects (systemd.exec(5)), and a child whose standard error was
/// redirected elsewhere inherits the variable, so both must match.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    dev.parse() == Ok(stat.st_dev) && ino.parse() == Ok(stat.st_ino)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    let journal = stderr_is_journal();
    let logger = Box::leak(Box::new(StderrLogger { level, journal }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
    match commands::run(cli) {
        Ok(Outcome::Done) => ExitCode::from(exit::OK),
        Ok(Outcome::NotSet) => ExitCode::from(exit::NOT_SET),
        Err(e) => {
            line(journal, 3, "error", &exit::message(&e));
            ExitCode::from(exit::status(&e))
        }
    }
}
