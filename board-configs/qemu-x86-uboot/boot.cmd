# qemu-x86-uboot: start the slot chosen above (abup_slot).
# Disk (GPT, NVMe): p1 "boot" FAT (boot.scr, uboot.env, uboot-redund.env), p2 "rootfs-a",
# p3 "rootfs-b" (ext4, kernel at /boot/vmlinuz). x86 U-Boot has no poweroff; QEMU runs with
# -no-reboot when a test wants a reset to end it.
if test "${abup_slot}" = B; then
  abup_part=3
  abup_label=rootfs-b
else
  abup_part=2
  abup_label=rootfs-a
fi
echo "abup: booting slot ${abup_slot}"
setenv bootargs "console=ttyS0,115200 root=PARTLABEL=${abup_label} rootwait ro quiet panic=1 abup.slot=${abup_slot}"
# A slot without a loadable kernel resets, so the try it used counts.
if load nvme 0:${abup_part} ${kernel_addr_r} /boot/vmlinuz; then
  zboot ${kernel_addr_r} ${filesize}
fi
echo "abup: slot ${abup_slot} has no usable kernel; resetting"
reset
