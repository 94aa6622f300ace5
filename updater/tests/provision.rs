//! `abup provision` on image files with a shipped board's layout: the table checked by
//! `sgdisk -v` and read back by `sfdisk --json`, the slot read back, the environment read by
//! the real `grub-editenv` or `fw_printenv`, the boot script and boot files read off the FAT
//! partition with mtools (a U-Boot script checked by `dumpimage`), the slot's record found on
//! the data partition; a disk that holds something, or a board missing a file, refused; and a
//! run cut after every write finished by running it again.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use common::fixture::image;
use common::{abup, abup_with, run_ok, Output, Tmp};

const MIB: u64 = 1 << 20;

struct Factory {
    t: Tmp,
    board_name: &'static str,
    board: PathBuf,
    /// The factory's own file beside board.toml: GRUB's BOOTX64.EFI or U-Boot's
    /// u-boot-initial-env.
    built: PathBuf,
    keyring: PathBuf,
    image: Vec<u8>,
    bundle: PathBuf,
    disk: PathBuf,
}

/// U-Boot defaults as a build writes them; `bootdelay` is not one abup writes.
const INITIAL_ENV: &str = "arch=x86\nbootcmd=load nvme 0:1 ${scriptaddr} boot.scr; source\n\
                           bootdelay=2\n";

/// The shipped board-configs/ tree (the board file beside its boot script parts, which it
/// names as `../grub/...`), the file the factory builds for the board beside its board.toml
/// (a stand-in BOOTX64.EFI, or U-Boot defaults), a key pair, and a signed bundle of a 1 MiB
/// image that is not a whole number of chunks.
fn factory(board: &'static str) -> Option<Factory> {
    if !(common::is_root()
        && [
            "sgdisk",
            "sfdisk",
            "losetup",
            "mkfs.ext4",
            "mkfs.vfat",
            "mcopy",
            "debugfs",
        ]
        .iter()
        .all(|t| common::have(t))
        && common::have("grub-editenv"))
    {
        return None;
    }
    let uboot = !board.contains("grub");
    if uboot
        && !["fw_printenv", "mkimage", "dumpimage"]
            .iter()
            .all(|t| common::have(t))
    {
        return None;
    }
    let t = Tmp::new();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../board-configs");
    let configs = t.path("board-configs");
    run_ok(
        "cp",
        &["-r", shipped.to_str().unwrap(), configs.to_str().unwrap()],
    );
    let dir = configs.join(board);
    let built = if uboot {
        let path = dir.join("u-boot-initial-env");
        std::fs::write(&path, INITIAL_ENV).unwrap();
        path
    } else {
        let path = dir.join("BOOTX64.EFI");
        std::fs::write(&path, image(70_000, 9)).unwrap();
        path
    };
    let keyring = t.path("keyring");
    std::fs::create_dir(&keyring).unwrap();
    let key = t.path("key.pem");
    abup(&[
        "keygen",
        "--secret",
        key.to_str().unwrap(),
        "--public",
        keyring.join("key.pem").to_str().unwrap(),
    ])
    .success();
    let image = image(MIB as usize + 12_345, 5);
    let img = t.path("rootfs.img");
    std::fs::write(&img, &image).unwrap();
    let bundle = t.path("first.abup");
    abup(&[
        "bundle",
        "create",
        "--key",
        key.to_str().unwrap(),
        "--compatible",
        "abup-qemu-x86_64",
        "--version",
        "1.0",
        "--chunk-size",
        "65536",
        "--image",
        img.to_str().unwrap(),
        "-o",
        bundle.to_str().unwrap(),
    ])
    .success();
    Some(Factory {
        board_name: board,
        board: dir.join("board.toml"),
        built,
        disk: t.path("disk.img"),
        t,
        keyring,
        image,
        bundle,
    })
}

impl Factory {
    fn provision(&self, extra: &[&str], env: &[(&str, &OsStr)]) -> Output {
        let mut args = vec![
            "--config",
            self.board.to_str().unwrap(),
            "provision",
            "--disk",
            self.disk.to_str().unwrap(),
            "--keyring",
            self.keyring.to_str().unwrap(),
            "--progress",
            "none",
        ];
        args.extend_from_slice(extra);
        abup_with(&args, env)
    }

    /// Partition `n` (1-based) as sfdisk reads the table: its bytes.
    fn partition(&self, n: usize) -> Vec<u8> {
        let (start, size) = self.table()[n - 1];
        let disk = std::fs::read(&self.disk).unwrap();
        disk[(start * 512) as usize..((start + size) * 512) as usize].to_vec()
    }

    /// (start, size) in sectors of each partition, after checking names and types against the
    /// board's layout.
    fn table(&self) -> Vec<(u64, u64)> {
        let json: serde_json::Value =
            serde_json::from_str(&run_ok("sfdisk", &["--json", self.disk.to_str().unwrap()]))
                .unwrap();
        let parts = json["partitiontable"]["partitions"]
            .as_array()
            .unwrap()
            .clone();
        let names: Vec<&str> = parts.iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert_eq!(names[..4], ["boot", "rootfs-a", "rootfs-b", "data"]);
        assert_eq!(parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        if self.board_name == "qemu-x86_64-grub" {
            assert_eq!(names[4], "bios-grub");
            assert_eq!(parts[4]["type"], "21686148-6449-6E6F-744E-656564454649");
        }
        parts
            .iter()
            .map(|p| (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap()))
            .collect()
    }

    /// A file of the FAT boot partition, copied out with mtools straight from the disk.
    fn fat_file(&self, name: &str) -> PathBuf {
        let out = self.t.path(name.rsplit('/').next().unwrap());
        let fat = format!("{}@@{}", self.disk.display(), self.table()[0].0 * 512);
        run_ok(
            "mcopy",
            &[
                "-o",
                "-n",
                "-i",
                &fat,
                &format!("::/{name}"),
                out.to_str().unwrap(),
            ],
        );
        out
    }

    /// The board's script parts, concatenated.
    fn script(&self) -> Vec<u8> {
        let board = abup::board::Board::load(&self.board).unwrap();
        let dir = self.board.parent().unwrap();
        board
            .script
            .iter()
            .flat_map(|part| common::read(&dir.join(part)))
            .collect()
    }

    /// The boot script and the factory's file where the board's config puts them on the
    /// FAT partition: GRUB's grub.cfg exactly the script and BOOTX64.EFI for UEFI firmware;
    /// U-Boot's boot.scr a script image (as dumpimage lists it) holding the script.
    fn assert_boot_files(&self) {
        if self.board_name.contains("grub") {
            assert!(
                common::read(&self.fat_file("grub/grub.cfg")) == self.script(),
                "grub.cfg is not the script"
            );
            assert!(
                common::read(&self.fat_file("EFI/BOOT/BOOTX64.EFI")) == common::read(&self.built),
                "BOOTX64.EFI differs from the factory's"
            );
        } else {
            let scr = self.fat_file("boot.scr");
            let listed = run_ok("dumpimage", &["-l", scr.to_str().unwrap()]);
            assert!(
                listed.contains("Intel x86 Linux Script (uncompressed)"),
                "{listed}"
            );
            assert!(
                common::read(&scr).ends_with(&self.script()),
                "boot.scr is not the script"
            );
        }
    }

    /// The environment on the boot partition, listed by the bootloader's own tools: both
    /// GRUB blocks by grub-editenv, or the redundant U-Boot pair by fw_printenv.
    fn env(&self) -> Vec<String> {
        if self.board_name.contains("grub") {
            ["grub/abupenv.0", "grub/abupenv.1"]
                .map(|n| {
                    run_ok(
                        "grub-editenv",
                        &[self.fat_file(n).to_str().unwrap(), "list"],
                    )
                })
                .to_vec()
        } else {
            let (a, b) = (
                self.fat_file("uboot.env"),
                self.fat_file("uboot-redund.env"),
            );
            let config = self.t.path("fw_env.config");
            std::fs::write(
                &config,
                format!("{} 0x0 0x4000\n{} 0x0 0x4000\n", a.display(), b.display()),
            )
            .unwrap();
            vec![run_ok("fw_printenv", &["-c", config.to_str().unwrap()])]
        }
    }

    /// A file of the state directory (/data/abup, on the data partition).
    fn state_file(&self, name: &str) -> String {
        let data = self.t.path("data.ext4");
        std::fs::write(&data, self.partition(4)).unwrap();
        run_ok(
            "debugfs",
            &["-R", &format!("cat /abup/{name}"), data.to_str().unwrap()],
        )
    }

    fn assert_provisioned(&self) {
        let verify = run_ok("sgdisk", &["-v", self.disk.to_str().unwrap()]);
        assert!(verify.contains("No problems found"), "{verify}");
        let table = self.table();
        assert_eq!(table[0].0, 2048, "the first partition starts at 1 MiB");
        assert_eq!(table[1].1 * 512, 64 * MIB);
        let a = self.partition(2);
        assert_eq!(
            &a[..self.image.len()],
            &self.image[..],
            "slot A holds the image"
        );
        let defaults: &[&str] = if self.board_name.contains("grub") {
            &[]
        } else {
            &["bootdelay=2", "arch=x86"]
        };
        for copy in self.env() {
            for line in [
                "BOOT_ORDER=A B",
                "BOOT_A_LEFT=3",
                "BOOT_B_LEFT=0",
                "BOOT_GOOD=A",
            ]
            .iter()
            .chain(defaults)
            {
                assert!(copy.lines().any(|l| l == *line), "{line} missing: {copy}");
            }
        }
        self.assert_boot_files();
        let slots: serde_json::Value =
            serde_json::from_str(&self.state_file("slots.json")).unwrap();
        assert_eq!(slots["slots"]["A"]["version"], "1.0", "{slots}");
        // A recorded bundle makes abup expect a security floor: the factory's is the lowest.
        let floor: serde_json::Value =
            serde_json::from_str(&self.state_file("security.json")).unwrap();
        assert_eq!(floor["floor"], 0, "{floor}");
    }
}

#[test]
fn a_blank_image_gets_the_boards_layout_the_image_and_a_confirmed_environment() {
    let Some(f) = factory("qemu-x86_64-grub") else {
        return;
    };
    let out = f.provision(&["--json", f.bundle.to_str().unwrap()], &[]);
    out.success();
    let summary: serde_json::Value = serde_json::from_str(&out.stdout_text()).unwrap();
    assert_eq!(summary["version"], 1);
    assert_eq!(summary["partitions"], 5);
    assert_eq!(summary["slots"]["A"], "1.0");
    assert_eq!(summary["boots"], "A");
    assert_eq!(summary["already_done"], false);
    f.assert_provisioned();
    // The layout has no "rest" partition: the file was made exactly as large as it needs.
    let size = std::fs::metadata(&f.disk).unwrap().len();
    assert_eq!(size, 226 * MIB + 33 * 512);

    // Run again on the finished disk: nothing changes, and it says so.
    let before = common::read(&f.disk);
    let again = f.provision(&[f.bundle.to_str().unwrap()], &[]);
    again.success();
    assert!(
        again.stdout_text().starts_with("already provisioned"),
        "{}",
        again.stdout_text()
    );
    assert!(
        common::read(&f.disk) == before,
        "a finished disk was written"
    );
}

#[test]
fn a_disk_that_holds_something_is_refused_unless_forced() {
    let Some(f) = factory("qemu-x86_64-grub") else {
        return;
    };
    std::fs::write(&f.disk, vec![0u8; 300 * MIB as usize]).unwrap();
    run_ok("mkfs.ext4", &["-q", "-F", f.disk.to_str().unwrap()]);
    let before = common::read(&f.disk);
    let out = f.provision(&[f.bundle.to_str().unwrap()], &[]);
    out.assert_refused_with(4, &["holds a filesystem (ext4)", "--force"]);
    assert!(
        common::read(&f.disk) == before,
        "a refused disk was written"
    );

    f.provision(&["--force", f.bundle.to_str().unwrap()], &[])
        .success();
    f.assert_provisioned();
}

/// A cut after each write in turn (the unsynced ones lost), then the same command again:
/// every time the disk ends exactly provisioned.
#[test]
fn a_cut_after_any_write_is_finished_by_running_provision_again() {
    common::require_fault_injection();
    let Some(f) = factory("qemu-x86_64-grub") else {
        return;
    };
    let bundle = f.bundle.to_str().unwrap();
    let full = f.provision(&["-vv", bundle], &[]);
    full.success();
    let writes = common::durable_writes(&full).len();
    assert!(writes > 10, "only {writes} writes");
    for n in 1..=writes {
        std::fs::remove_file(&f.disk).unwrap();
        let cut = f.provision(
            &[bundle],
            &[("ABUP_CUT_AFTER_WRITES", OsStr::new(&n.to_string()))],
        );
        common::reboot(&f.disk);
        assert_eq!(cut.code, None, "run {n} was not cut: {}", cut.stderr_text());
        let again = f.provision(&[bundle], &[]);
        again.success();
        f.assert_provisioned();
    }
}

/// A U-Boot board: its redundant environment is created where the fw_env.config beside its
/// board.toml puts it, on the FAT boot partition, with U-Boot's defaults from initial-env
/// and the slot variables, and fw_printenv reads it; boot.scr is compiled from the script.
/// Without the defaults file, provisioning is refused before it writes anything.
#[test]
fn a_u_boot_board_gets_its_environment_with_defaults_and_its_boot_script() {
    let Some(f) = factory("qemu-x86-uboot") else {
        return;
    };
    let defaults = std::fs::read(&f.built).unwrap();
    std::fs::remove_file(&f.built).unwrap();
    f.provision(&[f.bundle.to_str().unwrap()], &[])
        .assert_refused_with(
            4,
            &["u-boot-initial-env", "is missing", "nothing was written"],
        );
    assert!(!f.disk.exists(), "a refused run created the disk");

    std::fs::write(&f.built, defaults).unwrap();
    f.provision(&[f.bundle.to_str().unwrap()], &[]).success();
    f.assert_provisioned();
}

/// A boot file the board names that the factory did not put beside board.toml: refused, exit
/// status 4, naming it, and the disk not touched.
#[test]
fn a_missing_boot_file_is_refused_before_anything_is_written() {
    let Some(f) = factory("qemu-x86_64-grub") else {
        return;
    };
    std::fs::remove_file(&f.built).unwrap();
    std::fs::write(&f.disk, vec![0u8; 300 * MIB as usize]).unwrap();
    let out = f.provision(&[f.bundle.to_str().unwrap()], &[]);
    out.assert_refused_with(4, &["boot-file source", "BOOTX64.EFI", "is missing"]);
    assert!(
        common::read(&f.disk).iter().all(|&b| b == 0),
        "a refused run wrote to the disk"
    );
}
