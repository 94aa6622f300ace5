//! Parses arbitrary text as libubootenv's YAML configuration, by default namespace and by name:
//! never panics, and whatever parses is a configuration abup could open.
#![no_main]

use libfuzzer_sys::fuzz_target;
use u_boot_env::{detect_format, Config, ConfigFormat, MAX_ENV_SIZE};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let format = detect_format(text);
    for namespace in [None, Some("uboot")] {
        if let Ok(config) = Config::parse(text, namespace) {
            assert_eq!(config.namespace().is_some(), format == ConfigFormat::Yaml);
            assert!((1..=2).contains(&config.copies().len()));
            assert!(config.env_size() <= MAX_ENV_SIZE);
            if let Some(name) = namespace {
                assert_eq!(config.namespace(), Some(name));
            }
        }
    }
});
