//! Block devices: negative offsets resolved with BLKGETSIZE64 on a loop device, agreeing with
//! libubootenv on the same fw_env.config. Needs root and losetup; the loop device is detached
//! even when an assertion fails.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions fail loudly on purpose

mod common;

use std::fs;

use common::{env, fw_printenv, fw_setenv, noise, LoopDevice};
use u_boot_env::{Config, CopyConfig, CopyId, Device, Error, OpenOptions};

/// An odd size, so that an offset computed from anything but the device size shows.
const DISK: usize = 0x100000 + 3 * 512;
const SIZE: usize = 0x2000;

#[test]
fn negative_offsets_on_a_block_device_agree_with_libubootenv() {
    let test = "negative_offsets_on_a_block_device_agree_with_libubootenv";
    if !(common::root(test) && common::tools(&["losetup", "fw_printenv", "fw_setenv"], test)) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("disk.img");
    let original = noise(DISK);
    fs::write(&backing, &original).unwrap();
    let device_path = {
        let lo = LoopDevice::attach(&backing);
        let config_path = dir.path().join("fw_env.config");
        fs::write(
            &config_path,
            format!(
                "{d} -0x4000 0x2000\n{d} -0x2000 2000\n",
                d = lo.path.display()
            ),
        )
        .unwrap();
        let config = Config::load(&config_path, None).unwrap();
        let options = OpenOptions::new().lockfile(dir.path().join("lock"));
        let device = Device::open(&config, &options).unwrap();
        let windows: Vec<u64> = device.windows().iter().map(|w| w.offset).collect();
        assert_eq!(
            windows,
            [(DISK - 2 * SIZE) as u64, (DISK - SIZE) as u64],
            "offsets from the end of the device"
        );

        device.initialize(&env(&[("BOOT_ORDER", "A B")])).unwrap();
        assert_eq!(
            device.write(&env(&[("BOOT_ORDER", "B A")])).unwrap(),
            CopyId::Second
        );
        assert_eq!(
            fw_printenv(&config_path),
            [("BOOT_ORDER".to_string(), "B A".to_string())]
        );
        fw_setenv(&config_path, "BOOT_B_LEFT", "3");
        let snapshot = device.read().unwrap();
        assert_eq!(snapshot.current, CopyId::First);
        assert_eq!(
            snapshot.env,
            env(&[("BOOT_ORDER", "B A"), ("BOOT_B_LEFT", "3")])
        );
        lo.path.clone()
    };
    assert!(
        !String::from_utf8_lossy(&common::run(
            std::process::Command::new("losetup").arg("-a")
        ))
        .contains(&format!("{}:", device_path.display())),
        "the loop device is still attached"
    );

    let after = fs::read(&backing).unwrap();
    assert_eq!(after.len(), DISK);
    assert_eq!(after[..DISK - 2 * SIZE], original[..DISK - 2 * SIZE]);
    assert_eq!(
        after[DISK - 2 * SIZE + 4],
        3,
        "copy 0 written last, by fw_setenv"
    );
    assert_eq!(after[DISK - SIZE + 4], 2, "copy 1 written by abup");
}

#[test]
fn a_negative_offset_before_the_start_of_the_device_is_refused() {
    let test = "a_negative_offset_before_the_start_of_the_device_is_refused";
    if !(common::root(test) && common::tools(&["losetup"], test)) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("small.img");
    fs::write(&backing, vec![0u8; 0x10000]).unwrap();
    let lo = LoopDevice::attach(&backing);
    let config = Config::new(vec![CopyConfig::new(&lo.path, -0x20000)], 0x1000).unwrap();
    let options = OpenOptions::new().lockfile(dir.path().join("lock"));
    match Device::open(&config, &options) {
        Err(Error::OffsetBeforeStart { device_size, .. }) => assert_eq!(device_size, 0x10000),
        other => panic!("expected OffsetBeforeStart, got {other:?}"),
    }
}
