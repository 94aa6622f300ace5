//! The one mapping from errors to abup's documented exit statuses (`abup --help`, README,
//! docs/exit-status.md): an OTA agent branches on them, so each status means one thing
//! everywhere.

/// Success.
pub const OK: u8 = 0;
/// The operation failed; the one-line message says what and what was left unchanged.
pub const FAILED: u8 = 1;
/// The command line is wrong (clap's own errors, and [`crate::cli::Usage`]).
pub const USAGE: u8 = 2;
/// `env get` of a variable that is not set.
pub const NOT_SET: u8 = 3;
/// The bundle is refused or damaged, and trying the same bundle again will not help: its
/// signature, board, security version or size, or a chunk that does not match its hash (found
/// by `install` or `bundle verify` alike). Also a disk `provision` will not overwrite or a board
/// file it lacks, a root `split-root` cannot split.
pub const REFUSED: u8 = 4;
/// Another install is running: try again later.
pub const BUSY: u8 = 5;
/// The bundle's source could not be read for a reason that may pass (the network, an HTTP 5xx
/// answer, a timeout) after abup's own retries: the same command later resumes.
pub const UNAVAILABLE: u8 = 6;
/// A pre- or post-install hook failed; the new slot was not activated.
pub const HOOK_FAILED: u8 = 7;
/// The running slot is not confirmed (`abup mark-good`), so abup will not install over the
/// only other system.
pub const NOT_CONFIRMED: u8 = 8;

/// The error and its causes on one line: what `abup` prints after `abup: error: `, and the
/// `message` of a failed install's `result` line and history entry. Some library errors
/// already name their cause in their message; it is not repeated.
pub fn message(e: &anyhow::Error) -> String {
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

/// The status for an error, from the typed errors in its chain. An `io::Error` hides the error
/// it wraps from the chain, so each one is opened as well.
pub fn status(e: &anyhow::Error) -> u8 {
    let mut kinds = e.chain().flat_map(|c| {
        let inner = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        std::iter::once(c).chain(inner)
    });
    kinds
        .find_map(|c| {
            if c.is::<crate::source::Unavailable>() {
                Some(UNAVAILABLE)
            } else if c.is::<crate::cli::Usage>() {
                Some(USAGE)
            } else if c.is::<crate::state::Busy>() {
                Some(BUSY)
            } else if c.is::<crate::install::HookFailed>() {
                Some(HOOK_FAILED)
            } else if c.is::<crate::install::NotConfirmed>() {
                Some(NOT_CONFIRMED)
            } else if c.is::<crate::install::Refused>() {
                Some(REFUSED)
            } else {
                // A failed read is the source's business: its own error decides.
                c.downcast_ref::<crate::bundle::Error>()
                    .is_some_and(crate::bundle::Error::is_bundle_fault)
                    .then_some(REFUSED)
            }
        })
        .unwrap_or(FAILED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn typed_errors_keep_their_status_under_context() {
        let unavailable: anyhow::Error =
            std::io::Error::other(crate::source::Unavailable("the server answered 503".into()))
                .into();
        assert_eq!(status(&unavailable.context("downloading")), UNAVAILABLE);
        let damaged = crate::bundle::Error::Truncated {
            region: crate::bundle::Region::Payload,
            offset: 9,
        };
        assert_eq!(
            status(&anyhow::Error::from(damaged).context("installing")),
            REFUSED
        );
        let read_failed = crate::bundle::Error::Read {
            offset: 9,
            source: std::io::Error::other(crate::source::Unavailable("timed out".into())),
        };
        assert_eq!(status(&read_failed.into()), UNAVAILABLE);
        let hook: anyhow::Error = crate::install::HookFailed("post-install".into()).into();
        assert_eq!(status(&hook.context("x")), HOOK_FAILED);
        let plain = Err::<(), _>(std::io::Error::other("disk full")).context("writing");
        assert_eq!(status(&plain.unwrap_err()), FAILED);
    }
}
