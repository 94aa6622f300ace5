//! Board configuration files are outside data (written by integrators, shipped in images):
//! parsing any bytes must give a board or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(board) = abup::board::Board::parse(text, std::path::Path::new("fuzz")) {
            // A parsed board is usable: every slot has a device and a name that the boot
            // scripts' variable names can carry.
            assert_eq!(board.devices.len(), board.slots.len());
            for name in board.slots.names() {
                assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
            }
        }
    }
});
