//! `abup env`, `abup status` and the mark commands, run as the binary, against environments
//! that the real `grub-editenv`, `fw_printenv`/`fw_setenv` also read and write.
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::Path;

use common::{abup, board_file, have, read, run_ok, Tmp};

#[test]
fn grub_pair_create_set_get_list_unset() {
    let t = Tmp::new();
    let (e0, e1) = (t.path("abupenv.0"), t.path("abupenv.1"));
    let grub = |args: &[&str]| {
        let mut a = vec![
            "env",
            "--grub",
            e0.to_str().unwrap(),
            "--grub",
            e1.to_str().unwrap(),
        ];
        a.extend_from_slice(args);
        abup(&a)
    };
    grub(&["create", "BOOT_ORDER=A B"]).success();
    assert_eq!(std::fs::metadata(&e0).unwrap().len(), 512);
    assert_eq!(read(&e0), read(&e1), "both copies start identical");

    grub(&["set", "BOOT_A_LEFT=3", "weird=a\\b\nc=d"]).success();
    assert_eq!(grub(&["get", "BOOT_A_LEFT"]).stdout_text(), "3\n");
    assert_eq!(grub(&["get", "weird"]).stdout_text(), "a\\b\nc=d\n");
    // Copy 1 was written (ABUP_SEQ 1), then copy 0 (ABUP_SEQ 2) with the same variables.
    let listed = grub(&["list"]).stdout_text();
    assert!(listed.contains("ABUP_SEQ=2\n"), "{listed}");
    let (c0, c1) = (read(&e0), read(&e1));
    assert!(String::from_utf8_lossy(&c1).contains("ABUP_SEQ=1\n"));
    assert_eq!(
        String::from_utf8_lossy(&c0).replace("ABUP_SEQ=2", "ABUP_SEQ=1"),
        String::from_utf8_lossy(&c1),
        "both copies hold the same variables"
    );

    // An absent variable: nothing on stdout, exit status 3.
    let missing = grub(&["get", "NOPE"]);
    assert_eq!(missing.code, Some(3));
    assert_eq!(missing.stdout_text(), "");

    grub(&["unset", "weird", "never-set"]).success();
    assert_eq!(grub(&["get", "weird"]).code, Some(3));
    // The next update went to copy 1, then copy 0 again.
    assert!(String::from_utf8_lossy(&read(&e0)).contains("ABUP_SEQ=4\n"));

    // create refuses to overwrite.
    let again = grub(&["create"]);
    assert_eq!(again.code, Some(1));
    assert!(
        again.stderr_text().contains("exists"),
        "{}",
        again.stderr_text()
    );
}

#[test]
fn grub_single_block_matches_grub_editenv_both_ways() {
    if !have("grub-editenv") {
        return;
    }
    let t = Tmp::new();
    let ours = t.path("ours");
    let theirs = t.path("theirs");
    run_ok("grub-editenv", &[theirs.to_str().unwrap(), "create"]);
    abup(&["env", "--grub", ours.to_str().unwrap(), "create"]).success();
    assert_eq!(read(&ours), read(&theirs));

    for step in [
        &["set", "a=1", "b=two words"][..],
        &["set", "a=longer value"],
        &["unset", "b"],
    ] {
        let mut args = vec!["env", "--grub", ours.to_str().unwrap()];
        args.extend_from_slice(step);
        abup(&args).success();
        let mut gargs = vec![theirs.to_str().unwrap()];
        gargs.extend_from_slice(step);
        run_ok("grub-editenv", &gargs);
        assert_eq!(read(&ours), read(&theirs), "after {step:?}");
    }
    // Their write, our read.
    run_ok(
        "grub-editenv",
        &[theirs.to_str().unwrap(), "set", "x=from grub-editenv"],
    );
    let got = abup(&["env", "--grub", theirs.to_str().unwrap(), "get", "x"]);
    assert_eq!(got.stdout_text(), "from grub-editenv\n");
    // Our list equals theirs.
    let listed = abup(&["env", "--grub", theirs.to_str().unwrap(), "list"]).stdout_text();
    let glisted = run_ok("grub-editenv", &[theirs.to_str().unwrap(), "list"]);
    assert_eq!(listed, glisted);
}

/// `grub-editenv FILE set` on a missing FILE creates it, and scripts rely on that: abup does
/// the same, byte for byte, and each reads what the other made. The options of `env` work
/// after the operation too. Reads create nothing, nor does a write to a pair: both name
/// `create`.
#[test]
fn grub_set_on_a_missing_file_creates_it_as_grub_editenv_does() {
    if !have("grub-editenv") {
        return;
    }
    let t = Tmp::new();
    let p = |name: &str| t.path(name).to_str().unwrap().to_owned();
    for step in [&["set", "a=1", "b=two words"][..], &["unset", "a"]] {
        let (ours, theirs) = (
            p(&format!("ours-{}", step[0])),
            p(&format!("theirs-{}", step[0])),
        );
        let mut args = vec!["env", "--grub", &ours];
        args.extend_from_slice(step);
        abup(&args).success();
        let mut gargs = vec![theirs.as_str()];
        gargs.extend_from_slice(step);
        run_ok("grub-editenv", &gargs);
        assert_eq!(read(Path::new(&ours)), read(Path::new(&theirs)), "{step:?}");
    }
    // Each reads and extends what the other created.
    let (ours, theirs) = (p("ours-set"), p("theirs-set"));
    run_ok("grub-editenv", &[&ours, "set", "c=3"]);
    abup(&["env", "--grub", &theirs, "set", "c=3"]).success();
    assert_eq!(read(Path::new(&ours)), read(Path::new(&theirs)));
    assert_eq!(
        run_ok("grub-editenv", &[&ours, "list"]),
        "a=1\nb=two words\nc=3\n"
    );
    assert_eq!(
        abup(&["env", "--grub", &theirs, "list"]).stdout_text(),
        "a=1\nb=two words\nc=3\n"
    );

    // --grub after the operation, for a write that creates and for a read.
    let after = p("after");
    abup(&["env", "set", "--grub", &after, "K=V"]).success();
    assert_eq!(
        abup(&["env", "get", "K", "--grub", &after]).stdout_text(),
        "V\n"
    );
    run_ok("grub-editenv", &[&theirs, "set", "K=V"]);
    run_ok("grub-editenv", &[&theirs, "unset", "a", "b", "c"]);
    assert_eq!(read(Path::new(&after)), read(Path::new(&theirs)));

    // A read of a missing block, and a write to a missing pair, create nothing.
    let missing = p("missing");
    for op in [&["get", "K"][..], &["list"]] {
        let mut args = vec!["env", "--grub", &missing];
        args.extend_from_slice(op);
        abup(&args).assert_refused(&["does not exist", "--grub", "create"]);
        assert!(!Path::new(&missing).exists(), "{op:?} created {missing}");
    }
    let (m0, m1) = (p("pair.0"), p("pair.1"));
    let r = abup(&["env", "--grub", &m0, "set", "--grub", &m1, "K=V"]);
    r.assert_refused(&[&format!("--grub {m0} --grub {m1} create"), "pair"]);
    assert!(!Path::new(&m0).exists() && !Path::new(&m1).exists());
    // Options before and after that do not fit together are a wrong command line.
    for args in [
        &[
            "env", "--grub", &m0, "--grub", &m1, "list", "--grub", &after,
        ][..],
        &["env", "--uboot-config", &m0, "list", "--grub", &after],
        &["env", "list", "--lock-file", &m0],
    ] {
        let r = abup(args);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr_text());
    }
}

#[test]
fn grub_write_to_invalid_environment_fails_and_changes_nothing() {
    let t = Tmp::new();
    let (e0, e1) = (t.path("abupenv.0"), t.path("abupenv.1"));
    let p = |p: &Path| p.to_str().unwrap().to_owned();
    abup(&["env", "--grub", &p(&e0), "--grub", &p(&e1), "create"]).success();
    // Both copies damaged: no signature.
    std::fs::write(&e0, vec![b'x'; 512]).unwrap();
    std::fs::write(&e1, vec![0; 512]).unwrap();
    let before = (read(&e0), read(&e1));
    let r = abup(&["env", "--grub", &p(&e0), "--grub", &p(&e1), "set", "a=1"]);
    assert_eq!(r.code, Some(1));
    let err = r.stderr_text();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("abupenv.0"), "names the file: {err}");
    assert_eq!((read(&e0), read(&e1)), before);

    // Single block that is too full: refused, untouched.
    let single = t.path("grubenv");
    abup(&["env", "--grub", &p(&single), "create", "--size", "100"]).success();
    let before = read(&single);
    let r = abup(&[
        "env",
        "--grub",
        &p(&single),
        "set",
        &format!("k={}", "v".repeat(200)),
    ]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr_text().contains("too small"), "{}", r.stderr_text());
    assert_eq!(read(&single), before);
}

#[test]
fn uboot_env_against_fw_printenv_and_fw_setenv() {
    if !have("fw_printenv") || !have("mkenvimage") {
        return;
    }
    let t = Tmp::new();
    let (c0, c1) = (t.path("uboot.env"), t.path("uboot-redund.env"));
    let cfg = t.path("fw_env.config");
    let lock = t.path("lock");
    std::fs::write(
        &cfg,
        format!("{} 0x0 0x4000\n{} 0x0 0x4000\n", c0.display(), c1.display()),
    )
    .unwrap();
    // Start from mkenvimage's redundant images.
    let src = t.path("env.txt");
    std::fs::write(&src, "bootcmd=run abup\nbootdelay=0\n").unwrap();
    for c in [&c0, &c1] {
        run_ok(
            "mkenvimage",
            &[
                "-r",
                "-s",
                "0x4000",
                "-o",
                c.to_str().unwrap(),
                src.to_str().unwrap(),
            ],
        );
    }
    let u = |args: &[&str]| {
        let mut a = vec![
            "env",
            "--uboot-config",
            cfg.to_str().unwrap(),
            "--lock-file",
            lock.to_str().unwrap(),
        ];
        a.extend_from_slice(args);
        abup(&a)
    };
    assert_eq!(u(&["get", "bootcmd"]).stdout_text(), "run abup\n");
    u(&["set", "BOOT_ORDER=A B", "BOOT_A_LEFT=3"]).success();
    // fw_printenv sees our write.
    let printed = run_ok("fw_printenv", &["-c", cfg.to_str().unwrap()]);
    assert!(printed.contains("BOOT_ORDER=A B\n"), "{printed}");
    assert!(printed.contains("bootcmd=run abup\n"), "{printed}");
    // Our listing equals fw_printenv's.
    assert_eq!(u(&["list"]).stdout_text(), printed);
    // fw_setenv's write, our read; several times, so copies alternate.
    for i in 0..5 {
        run_ok(
            "fw_setenv",
            &["-c", cfg.to_str().unwrap(), "BOOT_B_LEFT", &i.to_string()],
        );
        assert_eq!(u(&["get", "BOOT_B_LEFT"]).stdout_text(), format!("{i}\n"));
        u(&["set", &format!("ours={i}")]).success();
        let p = run_ok("fw_printenv", &["-c", cfg.to_str().unwrap(), "-n", "ours"]);
        assert_eq!(p, format!("{i}\n"));
    }
    // Empty value removes the variable (what U-Boot itself does with `k=`).
    u(&["set", "ours="]).success();
    assert_eq!(u(&["get", "ours"]).code, Some(3));
}

#[test]
fn uboot_invalid_environment_is_never_reset() {
    let t = Tmp::new();
    let c0 = t.path("env");
    let cfg = t.path("fw_env.config");
    let lock = t.path("lock");
    std::fs::write(&cfg, format!("{} 0x0 0x1000\n", c0.display())).unwrap();
    std::fs::write(&c0, vec![0xa5; 0x1000]).unwrap();
    let before = read(&c0);
    let args = |op: &[&str]| {
        let mut a = vec![
            "env",
            "--uboot-config",
            cfg.to_str().unwrap(),
            "--lock-file",
            lock.to_str().unwrap(),
        ];
        a.extend_from_slice(op);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let r = abup(
        &args(&["set", "a=1"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(r.code, Some(1));
    assert_eq!(r.stderr_text().lines().count(), 1, "{}", r.stderr_text());
    assert_eq!(read(&c0), before, "nothing written");
    // Explicit create initialises it.
    abup(
        &args(&["create", "a=1"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
    .success();
    let r = abup(
        &args(&["get", "a"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(r.stdout_text(), "1\n");
    // And refuses to replace a valid one without --force.
    let r = abup(
        &args(&["create", "b=2"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(r.code, Some(1));
    assert!(r.stderr_text().contains("--force"));
}

#[test]
fn status_and_marks_on_a_grub_pair() {
    let t = Tmp::new();
    let board = board_file(&t, "grub-pair");
    let cmdline = t.path("cmdline");
    std::fs::write(&cmdline, "console=ttyS0 abup.slot=A quiet\n").unwrap();
    let run = |args: &[&str]| {
        common::abup_with(
            args,
            &[
                ("ABUP_CONFIG", board.as_os_str()),
                ("ABUP_PROC_CMDLINE", cmdline.as_os_str()),
            ],
        )
    };

    let json: serde_json::Value =
        serde_json::from_str(&run(&["status", "--json"]).stdout_text()).unwrap();
    assert_eq!(json["version"], 2);
    assert_eq!(json["booted"], "A");
    assert_eq!(json["booted_from"], "abup.slot");
    assert_eq!(json["next_boot"], "A");
    assert_eq!(json["slots"][0]["confirmed"], true);
    assert_eq!(json["slots"][1]["good"], false);

    // Switch to B, boot nothing, mark B bad again: each one write.
    assert!(run(&["mark-active", "other"])
        .stdout_text()
        .contains("next boot: B"));
    let json: serde_json::Value =
        serde_json::from_str(&run(&["status", "--json"]).stdout_text()).unwrap();
    assert_eq!(json["next_boot"], "B");
    assert_eq!(json["slots"][1]["priority"], 1);
    run(&["mark-bad", "B"]).success();
    let human = run(&["status"]).stdout_text();
    assert!(human.contains("next boot:   A"), "{human}");
    // mark-good of an already good slot writes nothing.
    let e1 = t.path("abupenv.1");
    let before = read(&e1);
    let e0 = t.path("abupenv.0");
    let before0 = read(&e0);
    assert!(run(&["mark-good"]).stdout_text().contains("no change"));
    assert_eq!((read(&e0), read(&e1)), (before0, before));

    // Unknown slots and ambiguous words are one-line errors.
    let r = run(&["mark-good", "C"]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr_text().contains("no slot named \"C\""));
    std::fs::write(&cmdline, "abup.slot=Z").unwrap();
    let r = run(&["mark-good"]);
    assert!(
        r.stderr_text().contains("abup.slot=Z"),
        "{}",
        r.stderr_text()
    );
}

/// One logical change is never split across writes: every mark command on a redundant U-Boot
/// environment issues exactly one write system call to the environment files; on a GRUB pair
/// exactly two, each of a whole copy with the whole new state: first the copy that is not
/// current, then the current one (the order `power_cut.rs` assumes). Seen with strace.
#[test]
fn every_mark_writes_the_whole_state_in_order() {
    if !have("strace") {
        return;
    }
    let t = Tmp::new();
    let board = board_file(&t, "grub-pair");
    let cmdline = t.path("cmdline");
    std::fs::write(&cmdline, "abup.slot=A").unwrap();
    let abup_bin = env!("CARGO_BIN_EXE_abup");
    // The environment files written, in order.
    let writes = |args: &[&str], files: &[&str]| -> Vec<String> {
        let log = t.path("strace.log");
        let out = std::process::Command::new("strace")
            .args([
                "-f",
                "-y",
                "-e",
                "trace=write,pwrite64,pwritev,pwritev2,writev",
                "-o",
            ])
            .arg(&log)
            .arg(abup_bin)
            .args(args)
            .env("ABUP_CONFIG", &board)
            .env("ABUP_PROC_CMDLINE", &cmdline)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = std::fs::read_to_string(&log).unwrap();
        log.lines()
            .filter_map(|l| {
                files
                    .iter()
                    .find(|f| l.contains(&format!("{f}>")))
                    .map(|f| f.to_string())
            })
            .collect()
    };
    // B boots for its mark-good: abup confirms no slot but the booted one that it never
    // installed.
    let boot_for = |cmd: &[&str]| {
        let booted = if cmd[0] == "mark-good" { "B" } else { "A" };
        std::fs::write(&cmdline, format!("abup.slot={booted}")).unwrap();
    };
    let grub = [t.path("abupenv.0"), t.path("abupenv.1")];
    let grub: Vec<&str> = grub.iter().map(|p| p.to_str().unwrap()).collect();
    for cmd in [
        ["mark-active", "B"],
        ["mark-bad", "B"],
        ["mark-active", "B"],
        ["mark-good", "B"],
    ] {
        boot_for(&cmd);
        // abup's writes leave copy 0 current: it is written last.
        assert_eq!(writes(&cmd, &grub), [grub[1], grub[0]], "{cmd:?}");
    }
    // Nothing to change, nothing written.
    assert!(writes(&["mark-good", "B"], &grub).is_empty());
    // U-Boot: the same commands against a redundant environment.
    let (c0, c1) = (t.path("u0"), t.path("u1"));
    let cfg = t.path("fw_env.config");
    std::fs::write(
        &cfg,
        format!("{} 0 0x4000\n{} 0 0x4000\n", c0.display(), c1.display()),
    )
    .unwrap();
    for c in [&c0, &c1] {
        std::fs::write(c, vec![0u8; 0x4000]).unwrap();
    }
    common::factory_env_at(&["--uboot-config", cfg.to_str().unwrap()]);
    std::fs::write(
        &board,
        std::fs::read_to_string(&board).unwrap().replace(
            &format!("type = \"grub\"\ngrubenv = [{:?}, {:?}]", grub[0], grub[1]),
            &format!("type = \"u-boot\"\nfw-env-config = {:?}", cfg),
        ),
    )
    .unwrap();
    let uboot = [c0.to_str().unwrap(), c1.to_str().unwrap()];
    for cmd in [
        ["mark-active", "B"],
        ["mark-bad", "B"],
        ["mark-active", "B"],
        ["mark-good", "B"],
    ] {
        boot_for(&cmd);
        assert_eq!(writes(&cmd, &uboot).len(), 1, "{cmd:?}");
    }
    assert!(writes(&["mark-good", "B"], &uboot).is_empty());
}
