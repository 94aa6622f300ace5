//! Live cross-checks with libubootenv's fw_printenv/fw_setenv and mkenvimage, both directions:
//! what abup writes they read, what they write abup reads, copy selection included.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions fail loudly on purpose

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{env, fw_printenv, fw_setenv, noise, pairs, run};
use u_boot_env::{Config, CopyFault, CopyId, Device, Env, Error, OpenOptions};

const FW: &[&str] = &["fw_printenv", "fw_setenv"];

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Dir(tempfile::tempdir().unwrap())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    /// Writes an fw_env.config and returns its path.
    fn config(&self, lines: &[(&Path, u64, usize)]) -> PathBuf {
        let text: String = lines
            .iter()
            .map(|(path, offset, size)| format!("{} 0x{offset:x} 0x{size:x}\n", path.display()))
            .collect();
        let path = self.path("fw_env.config");
        fs::write(&path, text).unwrap();
        path
    }

    /// Opens the configuration with a private lock, so tests do not wait for each other.
    fn device(&self, config: &Path) -> Device {
        let config = Config::load(config, None).unwrap();
        Device::open(&config, &OpenOptions::new().lockfile(self.path("lock"))).unwrap()
    }
}

/// Asserts that only `[offset, offset + len)` ranges differ between `before` and the file now.
fn assert_only_windows_changed(path: &Path, before: &[u8], windows: &[(u64, usize)]) {
    let after = fs::read(path).unwrap();
    assert_eq!(after.len(), before.len(), "the file changed size");
    for (i, (a, b)) in after.iter().zip(before).enumerate() {
        let inside = windows
            .iter()
            .any(|&(off, len)| (off as usize..off as usize + len).contains(&i));
        if !inside {
            assert_eq!(a, b, "byte {i:#x} outside the windows changed");
        }
    }
}

#[test]
fn fw_printenv_reads_our_single_env_inside_a_larger_file() {
    if !common::tools(FW, "fw_printenv_reads_our_single_env_inside_a_larger_file") {
        return;
    }
    let dir = Dir::new();
    let disk = dir.path("disk.img");
    let original = noise(0x10000);
    fs::write(&disk, &original).unwrap();
    let config = dir.config(&[(&disk, 0x6000, 0x1000)]);
    let device = dir.device(&config);
    device
        .initialize(&env(&[("bootcmd", "run distro_bootcmd")]))
        .unwrap();
    let ours = env(&[
        ("bootcmd", "run distro_bootcmd"),
        ("BOOT_ORDER", "A B"),
        ("BOOT_A_LEFT", "3"),
        ("odd", "a=b c\t#d ü"),
    ]);
    assert_eq!(device.write(&ours).unwrap(), CopyId::First);
    assert_eq!(fw_printenv(&config), pairs(&ours));
    assert_only_windows_changed(&disk, &original, &[(0x6000, 0x1000)]);
}

#[test]
fn fw_printenv_reads_our_redundant_writes_in_one_file() {
    if !common::tools(FW, "fw_printenv_reads_our_redundant_writes_in_one_file") {
        return;
    }
    let dir = Dir::new();
    let disk = dir.path("disk.img");
    let original = noise(0x8000);
    fs::write(&disk, &original).unwrap();
    let config = dir.config(&[(&disk, 0x1000, 0x2000), (&disk, 0x5000, 0x2000)]);
    let device = dir.device(&config);
    device.initialize(&env(&[("n", "0")])).unwrap();
    for i in 1..=6 {
        let ours = env(&[("n", &i.to_string()), ("bootcmd", "boot")]);
        let copy = device.write(&ours).unwrap();
        assert_eq!(
            copy,
            if i % 2 == 1 {
                CopyId::Second
            } else {
                CopyId::First
            }
        );
        assert_eq!(fw_printenv(&config), pairs(&ours), "after write {i}");
    }
    assert_only_windows_changed(&disk, &original, &[(0x1000, 0x2000), (0x5000, 0x2000)]);
}

#[test]
fn two_files_interleaving_our_writes_and_fw_setenv() {
    if !common::tools(FW, "two_files_interleaving_our_writes_and_fw_setenv") {
        return;
    }
    let dir = Dir::new();
    let (a, b) = (dir.path("env-a"), dir.path("env-b"));
    let (noise_a, noise_b) = (noise(0x1000), noise(0x1001));
    fs::write(&a, &noise_a).unwrap();
    fs::write(&b, &noise_b).unwrap();
    let config = dir.config(&[(&a, 0x200, 0x400), (&b, 0x200, 0x400)]);
    let device = dir.device(&config);
    device.initialize(&env(&[("step", "0")])).unwrap();
    let mut expected_copy = CopyId::Second;
    for step in 1..=10 {
        if step % 2 == 0 {
            fw_setenv(&config, "step", &step.to_string());
        } else {
            let mut next = device.read().unwrap().env;
            next.set("step", step.to_string()).unwrap();
            assert_eq!(device.write(&next).unwrap(), expected_copy);
        }
        let snapshot = device.read().unwrap();
        assert_eq!(snapshot.current, expected_copy, "step {step}");
        assert_eq!(snapshot.env.get("step"), Some(step.to_string().as_bytes()));
        assert_eq!(fw_printenv(&config), pairs(&snapshot.env), "step {step}");
        let flags = fs::read(if expected_copy == CopyId::First {
            &a
        } else {
            &b
        })
        .unwrap()[0x204];
        assert_eq!(flags, 1 + step as u8, "step {step}: the counter");
        expected_copy = expected_copy.other();
    }
    assert_only_windows_changed(&a, &noise_a, &[(0x200, 0x400)]);
    assert_only_windows_changed(&b, &noise_b, &[(0x200, 0x400)]);
}

#[test]
fn fw_setenv_wraps_the_counter_and_we_follow_every_step() {
    if !common::tools(FW, "fw_setenv_wraps_the_counter_and_we_follow_every_step") {
        return;
    }
    let dir = Dir::new();
    let file = dir.path("uboot.env");
    fs::write(&file, vec![0u8; 0x400]).unwrap();
    let config = dir.config(&[(&file, 0, 0x200), (&file, 0x200, 0x200)]);
    let device = dir.device(&config);
    device.initialize(&env(&[("k", "0")])).unwrap();
    let mut wrapped = false;
    for k in 1..=260u32 {
        fw_setenv(&config, "k", &k.to_string());
        let expected = if k % 2 == 1 {
            CopyId::Second
        } else {
            CopyId::First
        };
        let counter = ((1 + k) % 256) as u8;
        wrapped |= counter == 0;
        let snapshot = device.read().unwrap();
        assert_eq!(snapshot.current, expected, "after fw_setenv #{k}");
        assert_eq!(snapshot.env.get("k"), Some(k.to_string().as_bytes()));
        let bytes = fs::read(&file).unwrap();
        assert_eq!(bytes[expected.index() * 0x200 + 4], counter, "#{k}");
    }
    assert!(wrapped);
    // Our write continues the sequence where fw_setenv left it, and fw_printenv follows.
    let copy = device.write(&env(&[("k", "ours")])).unwrap();
    assert_eq!(copy, CopyId::Second);
    assert_eq!(fs::read(&file).unwrap()[0x204], (262 % 256) as u8);
    assert_eq!(
        fw_printenv(&config),
        [("k".to_string(), "ours".to_string())]
    );
}

#[test]
fn a_corrupted_copy_falls_back_in_both_and_is_rewritten() {
    if !common::tools(FW, "a_corrupted_copy_falls_back_in_both_and_is_rewritten") {
        return;
    }
    let dir = Dir::new();
    let file = dir.path("uboot.env");
    fs::write(&file, vec![0u8; 0x800]).unwrap();
    let config = dir.config(&[(&file, 0, 0x400), (&file, 0x400, 0x400)]);
    let device = dir.device(&config);
    device.initialize(&env(&[("v", "1")])).unwrap();
    assert_eq!(device.write(&env(&[("v", "2")])).unwrap(), CopyId::Second);

    // Flip a byte in the unused tail of the current copy: still CRC-covered.
    let mut bytes = fs::read(&file).unwrap();
    bytes[0x7F0] ^= 0x01;
    fs::write(&file, &bytes).unwrap();
    assert_eq!(fw_printenv(&config), [("v".to_string(), "1".to_string())]);
    let snapshot = device.read().unwrap();
    assert_eq!(snapshot.current, CopyId::First);
    assert_eq!(snapshot.env, env(&[("v", "1")]));
    assert!(matches!(
        &snapshot.faults[..],
        [CopyFault::BadCrc {
            copy: CopyId::Second,
            ..
        }]
    ));
    assert_eq!(device.write(&env(&[("v", "3")])).unwrap(), CopyId::Second);
    assert_eq!(
        fs::read(&file).unwrap()[0x404],
        2,
        "copy 0's counter 1, plus one"
    );
    assert_eq!(fw_printenv(&config), [("v".to_string(), "3".to_string())]);

    // Both copies bad: fw_printenv fails without a default file, and so do we, writing nothing.
    let mut bytes = fs::read(&file).unwrap();
    bytes[0x10] ^= 0x01;
    bytes[0x410] ^= 0x01;
    fs::write(&file, &bytes).unwrap();
    let status = Command::new("fw_printenv")
        .arg("-c")
        .arg(&config)
        .arg("-f")
        .arg(dir.path("no-default-env"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
    assert!(
        matches!(device.read(), Err(Error::NoValidEnvironment { faults }) if faults.len() == 2)
    );
    assert!(matches!(
        device.write(&env(&[("v", "4")])),
        Err(Error::NoValidEnvironment { .. })
    ));
    assert_eq!(fs::read(&file).unwrap(), bytes);
}

#[test]
fn capacity_is_strict_where_libubootenv_is_off_by_one() {
    let test = "capacity_is_strict_where_libubootenv_is_off_by_one";
    if !common::tools(&["fw_printenv", "fw_setenv", "mkenvimage"], test) {
        return;
    }
    let dir = Dir::new();
    let file = dir.path("uboot.env");
    fs::write(&file, vec![0u8; 0x100]).unwrap();
    let config = dir.config(&[(&file, 0, 0x100)]);
    let device = dir.device(&config);
    let mkenvimage = |value: &str| {
        let input = dir.path("input.txt");
        fs::write(&input, format!("k={value}\n")).unwrap();
        let output = dir.path("mkenvimage.bin");
        let ok = Command::new("mkenvimage")
            .args(["-p", "0", "-s", "0x100", "-o"])
            .arg(&output)
            .arg(&input)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        ok.then(|| fs::read(&output).unwrap())
    };

    // 252 bytes of data area: "k=" + 248 + NUL + final NUL fits everywhere, byte for byte.
    let fits = "x".repeat(248);
    device.initialize(&env(&[("k", &fits)])).unwrap();
    assert_eq!(Some(fs::read(&file).unwrap()), mkenvimage(&fits));
    assert_eq!(fw_printenv(&config), [("k".to_string(), fits.clone())]);

    // One byte more: libubootenv stores it (its final NUL falls outside the CRC'd area),
    // mkenvimage and abup refuse it. abup still reads what libubootenv wrote.
    let over = "x".repeat(249);
    fw_setenv(&config, "k", &over);
    assert_eq!(mkenvimage(&over), None);
    let snapshot = device.read().unwrap();
    assert_eq!(snapshot.env.get("k"), Some(over.as_bytes()));
    let before = fs::read(&file).unwrap();
    assert!(matches!(
        device.write(&snapshot.env),
        Err(Error::TooLarge {
            needed: 253,
            available: 252
        })
    ));
    assert_eq!(fs::read(&file).unwrap(), before);
}

#[test]
fn fw_env_config_columns_are_read_as_libubootenv_reads_them() {
    if !common::tools(
        FW,
        "fw_env_config_columns_are_read_as_libubootenv_reads_them",
    ) {
        return;
    }
    let dir = Dir::new();
    let disk = dir.path("disk.img");
    let original = noise(0x6000);
    fs::write(&disk, &original).unwrap();
    // Offset 010000 is octal (4096); sizes 1000 are hexadecimal without 0x (4096); a comment,
    // a short line and trailing columns are ignored.
    let text = format!(
        "# device offset size\n{d}\n{d}\t010000\t1000\n  {d} 0x3000 1000 1000 1 0\n",
        d = disk.display()
    );
    let config = dir.path("fw_env.config");
    fs::write(&config, text).unwrap();
    let parsed = Config::load(&config, None).unwrap();
    assert_eq!(parsed.env_size(), 0x1000);
    assert_eq!(parsed.copies()[0].offset, 4096);
    assert_eq!(parsed.copies()[1].offset, 0x3000);
    let device = dir.device(&config);
    device.initialize(&env(&[("where", "octal")])).unwrap();
    assert_eq!(
        fw_printenv(&config),
        [("where".to_string(), "octal".to_string())]
    );
    fw_setenv(&config, "where", "libubootenv");
    assert_eq!(device.read().unwrap().env, env(&[("where", "libubootenv")]));
    assert_only_windows_changed(&disk, &original, &[(0x1000, 0x1000), (0x3000, 0x1000)]);
}

#[test]
fn we_take_the_lock_fw_printenv_takes() {
    if !common::tools(FW, "we_take_the_lock_fw_printenv_takes") {
        return;
    }
    let dir = Dir::new();
    let file = dir.path("uboot.env");
    fs::write(
        &file,
        Env::new()
            .encode(u_boot_env::Header::Single, 0x100, 0, Default::default())
            .unwrap(),
    )
    .unwrap();
    let config_path = dir.config(&[(&file, 0, 0x100)]);
    let config = Config::load(&config_path, None).unwrap();
    assert_eq!(config.lockfile(), Path::new(u_boot_env::DEFAULT_LOCKFILE));
    let device = Device::open(&config, &OpenOptions::new()).unwrap();
    let mut child = Command::new("fw_printenv")
        .arg("-c")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "fw_printenv ran while abup held the lock"
    );
    drop(device);
    assert!(child.wait().unwrap().success());
}

#[test]
fn mkenvimage_redundant_image_flashed_to_both_copies() {
    if !common::tools(
        &["fw_printenv", "mkenvimage"],
        "mkenvimage_redundant_image_flashed_to_both_copies",
    ) {
        return;
    }
    let dir = Dir::new();
    let input = dir.path("env.txt");
    fs::write(&input, "bootcmd=run x\nfoo=bar\n").unwrap();
    let image = dir.path("env.bin");
    run(Command::new("mkenvimage")
        .args(["-r", "-s", "0x400", "-o"])
        .arg(&image)
        .arg(&input));
    let one = fs::read(&image).unwrap();
    let file = dir.path("uboot.env");
    fs::write(&file, [one.clone(), one].concat()).unwrap();
    let config = dir.config(&[(&file, 0, 0x400), (&file, 0x400, 0x400)]);
    let device = dir.device(&config);
    let snapshot = device.read().unwrap();
    assert_eq!(
        snapshot.current,
        CopyId::First,
        "equal counters pick copy 0"
    );
    assert_eq!(pairs(&snapshot.env), fw_printenv(&config));
    assert_eq!(
        device.write(&env(&[("foo", "baz")])).unwrap(),
        CopyId::Second
    );
    assert_eq!(
        fw_printenv(&config),
        [("foo".to_string(), "baz".to_string())]
    );
}
