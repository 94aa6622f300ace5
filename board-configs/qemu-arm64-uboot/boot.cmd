# qemu-arm64-uboot: start the slot chosen above (abup_slot).
# Disk (GPT, NVMe): p1 "boot" FAT (boot.scr, uboot.env, uboot-redund.env), p2 "rootfs-a",
# p3 "rootfs-b" (ext4, kernel at /boot/vmlinuz, Debian's uncompressed arm64 Image). A saved
# environment replaces U-Boot's built-in one, so provisioning saves U-Boot's defaults
# (u-boot-initial-env: kernel_addr_r, fdt_addr) along with abup's variables. The device tree
# is QEMU's at fdt_addr: fdtcontroladdr is set at run time and gone after `env load`.
if test "${abup_slot}" = B; then
  abup_part=3
  abup_label=rootfs-b
else
  abup_part=2
  abup_label=rootfs-a
fi
echo "abup: booting slot ${abup_slot}"
setenv bootargs "console=ttyAMA0 root=PARTLABEL=${abup_label} rootwait ro quiet panic=1 abup.slot=${abup_slot}"
# A slot without a loadable kernel resets, so the try it used counts.
if load nvme 0:${abup_part} ${kernel_addr_r} /boot/vmlinuz; then
  booti ${kernel_addr_r} - ${fdt_addr}
fi
echo "abup: slot ${abup_slot} has no usable kernel; resetting"
reset
