//! Parses the command line, runs the command, and turns the result into one line on standard
//! error and a documented exit status (see `abup --help`).

use std::process::ExitCode;

use abup::cli::Cli;
use abup::commands::{self, Outcome};
use abup::exit;
use clap::Parser;

struct StderrLogger(log::LevelFilter);

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.0
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let level = match record.level() {
                log::Level::Error => "error",
                log::Level::Warn => "warning",
                log::Level::Info => "info",
                log::Level::Debug | log::Level::Trace => "debug",
            };
            eprintln!("abup: {level}: {}", record.args());
        }
    }

    fn flush(&self) {}
}

/// The error and its causes on one line. Some library errors already name their cause in
/// their message; it is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    let logger = Box::leak(Box::new(StderrLogger(level)));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
    match commands::run(cli) {
        Ok(Outcome::Done) => ExitCode::from(exit::OK),
        Ok(Outcome::NotSet) => ExitCode::from(exit::NOT_SET),
        Err(e) => {
            eprintln!("abup: error: {}", one_line(&e));
            ExitCode::from(exit::status(&e))
        }
    }
}
