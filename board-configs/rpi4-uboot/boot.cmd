# rpi4-uboot: start the slot chosen above (abup_slot).
# SD card (MBR or GPT): p1 boot FAT (firmware, config.txt with kernel=u-boot.bin, DTBs,
# boot.scr, uboot.env, uboot-redund.env), p2 rootfs A, p3 rootfs B (ext4, uncompressed arm64
# kernel at /boot/Image), p4 data. The firmware hands U-Boot the device tree at ${fdt_addr}.
if test "${abup_slot}" = B; then
  abup_part=3
else
  abup_part=2
fi
echo "abup: booting slot ${abup_slot}"
setenv bootargs "console=serial0,115200 console=tty1 root=/dev/mmcblk0p${abup_part} rootfstype=ext4 rootwait ro panic=10 abup.slot=${abup_slot}"
# A slot without a loadable kernel resets, so the try it used counts.
if load mmc 0:${abup_part} ${kernel_addr_r} /boot/Image; then
  booti ${kernel_addr_r} - ${fdt_addr}
fi
echo "abup: slot ${abup_slot} has no usable kernel; resetting"
reset
