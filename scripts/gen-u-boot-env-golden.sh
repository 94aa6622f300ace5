#!/usr/bin/env bash
# Regenerates u-boot-env/tests/data/: U-Boot environment images made by the reference tools,
# which the tests decode and (for mkenvimage) re-encode byte for byte.
#
#   scripts/gen-u-boot-env-golden.sh        # needs mkenvimage (u-boot-tools) and fw_setenv
#                                            # (libubootenv-tool); Debian: apt-get install both
#
# manifest.tsv has one row per image:
#   image  tool  layout  endianness  fill  size  input
# tool is mkenvimage (input: its key=value text) or fw_setenv (input: fw_printenv's listing of the
# result). mkenvimage output is deterministic. fw_setenv leaves uninitialised heap memory in the
# unused tail of what it writes, so its images differ from run to run in those bytes: tests
# compare decoded variables for them, never whole images.
set -euo pipefail

for tool in mkenvimage fw_setenv fw_printenv; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install u-boot-tools libubootenv-tool)" >&2; exit 1; }
done

top=$(cd "$(dirname "$0")/.." && pwd)
out="$top/u-boot-env/tests/data"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf "$out"
mkdir -p "$out"
export LC_ALL=C

# Inputs. basic and special are sorted bytewise without duplicates, so abup's encoder must
# reproduce mkenvimage's bytes; unsorted keeps mkenvimage's input order and a duplicate.
printf '%s\n' \
  'arch=arm' \
  'baudrate=115200' \
  'board=abup-test' \
  'bootcmd=run distro_bootcmd' \
  'bootdelay=2' \
  'fdtfile=vendor/board.dtb' \
  'loadaddr=0x82000000' \
  > "$out/basic.txt"
printf '%s\n' \
  '# comment lines and empty lines are skipped by mkenvimage' \
  '' \
  '.flags=BOOT_ORDER:sw,BOOT_A_LEFT:dw' \
  'BOOT_A_LEFT=3' \
  'BOOT_ORDER=A B' \
  'eq=a=b==c' \
  'hash=value # not a comment' \
  'script=echo one\' \
  'echo two' \
  'tab=a	b' \
  'utf8=grüße ✓' \
  'win=C:\boot\x' \
  > "$out/special.txt"
printf '%s\n' 'zeta=1' 'alpha=2' 'zeta=3' 'mid=4' > "$out/unsorted.txt"
# Exactly fills the 60-byte data area of a 0x40 single image: "k=" + 56 bytes + NUL + final NUL.
printf 'k=%s\n' "$(printf 'v%.0s' $(seq 56))" > "$out/full.txt"

manifest="$out/manifest.tsv"
: > "$manifest"
mk() { # image layout endianness fill size input [mkenvimage options...]
  local image=$1 layout=$2 endian=$3 fill=$4 size=$5 input=$6
  shift 6
  mkenvimage "$@" -s "$size" -o "$out/$image" "$out/$input"
  printf '%s\tmkenvimage\t%s\t%s\t%s\t%s\t%s\n' "$image" "$layout" "$endian" "$fill" "$size" "$input" >> "$manifest"
}
mk mk-basic-0x100.bin            single    little 0xff 0x100  basic.txt
mk mk-basic-0x2000.bin           single    little 0xff 0x2000 basic.txt
mk mk-basic-fill00-0x400.bin     single    little 0x00 0x400  basic.txt -p 0
mk mk-basic-fill5a-0x400.bin     single    little 0x5a 0x400  basic.txt -p 0x5a
mk mk-basic-be-0x400.bin         single    big    0xff 0x400  basic.txt -b
mk mk-basic-redund-0x100.bin     redundant little 0xff 0x100  basic.txt -r
mk mk-basic-redund-be-0x400.bin  redundant big    0x00 0x400  basic.txt -r -b -p 0
mk mk-special-0x200.bin          single    little 0xff 0x200  special.txt
mk mk-special-redund-0x200.bin   redundant little 0xff 0x200  special.txt -r
mk mk-unsorted-0x40.bin          single    little 0xff 0x40   unsorted.txt
mk mk-full-0x40.bin              single    little 0xff 0x40   full.txt

# fw_setenv on files. Sequences include a long value later shortened, so the tail holds stale
# bytes, and a deletion.
fw() { # image layout size printenv-listing config
  local image=$1 layout=$2 size=$3 listing=$4 config=$5
  fw_printenv -c "$config" > "$out/$listing"
  printf '%s\tfw_setenv\t%s\tlittle\t-\t%s\t%s\n' "$image" "$layout" "$size" "$listing" >> "$manifest"
}
head -c 1024 /dev/zero > "$work/single.env"
printf '%s 0x0 0x400\n' "$work/single.env" > "$work/single.config"
fw_setenv -c "$work/single.config" -f /dev/null bootcmd 'run distro_bootcmd' 2>/dev/null
fw_setenv -c "$work/single.config" long "$(printf 'x%.0s' $(seq 300))"
fw_setenv -c "$work/single.config" long short
fw_setenv -c "$work/single.config" gone 1
fw_setenv -c "$work/single.config" gone
fw_setenv -c "$work/single.config" BOOT_ORDER 'A B'
fw_setenv -c "$work/single.config" empty ''
# Deleting the last variable leaves its bytes behind the new end of the list (stale heap memory;
# libubootenv has turned its '=' into a NUL by then).
fw_setenv -c "$work/single.config" zzz_ghost 1
fw_setenv -c "$work/single.config" zzz_ghost
cp "$work/single.env" "$out/fw-single-0x400.bin"
fw fw-single-0x400.bin single 0x400 fw-single-0x400.printenv "$work/single.config"

head -c 1024 /dev/zero > "$work/redund.env"
printf '%s 0x0 0x200\n%s 0x200 0x200\n' "$work/redund.env" "$work/redund.env" > "$work/redund.config"
fw_setenv -c "$work/redund.config" -f /dev/null bootcmd 'run distro_bootcmd' 2>/dev/null
fw_setenv -c "$work/redund.config" long "$(printf 'y%.0s' $(seq 200))"
for i in 1 2 3 4 5; do
  fw_setenv -c "$work/redund.config" BOOT_A_LEFT "$i"
done
fw_setenv -c "$work/redund.config" long short
cp "$work/redund.env" "$out/fw-redund-2x0x200.bin"
fw fw-redund-2x0x200.bin redundant 0x200 fw-redund-2x0x200.printenv "$work/redund.config"

echo "wrote $(wc -l < "$manifest") images to ${out#"$top"/}"
