//! Parses arbitrary text as an fw_env.config (and, through detection, as whatever format it looks
//! like): never panics, and whatever parses is a configuration abup could open.
#![no_main]

use libfuzzer_sys::fuzz_target;
use u_boot_env::{Config, Layout, MAX_ENV_SIZE};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text, None) {
        let copies = config.copies().len();
        assert!(copies == 1 || copies == 2);
        assert_eq!(config.layout() == Layout::Redundant, copies == 2);
        assert!(config.env_size() >= config.layout().min_copy_len());
        assert!(config.env_size() <= MAX_ENV_SIZE);
    }
});
