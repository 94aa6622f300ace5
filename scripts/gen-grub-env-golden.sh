#!/usr/bin/env bash
# Regenerates grub-env/tests/data/: GRUB environment blocks made by the real grub-editenv
# (GRUB 2.06), which grub-env/tests/golden.rs compares byte for byte with the crate's output.
# Each *.env fixture has a *.list next to it holding `grub-editenv FILE list`.
# Deterministic and idempotent: rerunning it rewrites identical files.
set -euo pipefail

command -v grub-editenv >/dev/null || { echo "grub-editenv not found (apt install grub-common)" >&2; exit 1; }

out="$(cd "$(dirname "$0")/.." && pwd)/grub-env/tests/data"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"
rm -f "$out"/*.env "$out"/*.list

ed() { grub-editenv "$work/$1" "${@:2}"; }
fresh() { ed "$1" create; }
# Fixture the same way EnvBlock::new(size) does it: the create header, '#' to the size.
sized() {
    fresh "$1.tmp"
    { head -c "$2" "$work/$1.tmp"; if (($2 > 1024)); then printf '%*s' $(($2 - 1024)) '' | tr ' ' '#'; fi; } >"$work/$1"
    rm -f "$work/$1.tmp"
}
# A hand-made block: the signature, the given body, '#' to the size.
handmade() {
    { printf '# GRUB Environment Block\n'; printf '%b' "$2"; } >"$work/$1"
    local used; used=$(stat -c %s "$work/$1")
    printf '%*s' $(($3 - used)) '' | tr ' ' '#' >>"$work/$1"
}
copy() { cp "$work/$1" "$work/$2"; }
repeat() { printf "%$2s" '' | tr ' ' "$1"; }

fresh create-1024.env

fresh specials.env
ed specials.env set 'bs=C:\dir\' $'lf=line1\nline2' 'eq=a=b=c' 'hash=#not a comment'
ed specials.env set 'sp=  two  spaces ' $'tab=a\tb' $'cr=a\rb\r' 'utf8=grüße ☃'
ed specials.env set $'high=\x80\xff\xfe\x01' 'empty=' $'bslf=\\\n' $'nl=\n\n'

copy specials.env replace-shorter.env
ed replace-shorter.env set eq=x
copy specials.env replace-longer.env
ed replace-longer.env set 'bs=C:\a\much\longer\path\than\before\\' 'sp=x'
copy specials.env unset.env
ed unset.env unset lf absent hash

fresh full-1024.env
ed full-1024.env set "k=$(repeat x 927)"
fresh full-escaped.env
ed full-escaped.env set "k=$(repeat '\\' 463)x"
copy full-1024.env full-shrunk.env
ed full-shrunk.env set k=short

handmade dup-in.env 'a=1\nb=2\na=3\n# a comment\nb=4\n' 1024
copy dup-in.env dup-set.env
ed dup-set.env set a=XY
copy dup-in.env dup-unset.env
ed dup-unset.env unset b
handmade comment-bs.env '#c\\\nhidden=1\nshown=2\n' 1024
copy comment-bs.env comment-bs-set.env
ed comment-bs-set.env set hidden=3

sized size-512.env 512
copy size-512.env pair-512.env
ed pair-512.env set ABUP_SEQ=0
copy pair-512.env boot-512.env
ed boot-512.env set BOOT_ORDER='A B' BOOT_A_LEFT=3 BOOT_B_LEFT=3 ABUP_SEQ=10
ed boot-512.env set BOOT_A_LEFT=2 ABUP_SEQ=9
copy size-512.env full-512.env
ed full-512.env set "k=$(repeat y 415)"

printf '# GRUB Environment Block\n#' >"$work/size-26.env"
sized size-97.env 97
ed size-97.env set a=
sized size-1000.env 1000
ed size-1000.env set abc=def
sized size-4097.env 4097
ed size-4097.env set big="$(repeat z 3000)"

for f in "$work"/*.env; do
    name=$(basename "$f")
    cp "$f" "$out/$name"
    grub-editenv "$f" list >"$out/${name%.env}.list"
done
echo "wrote $(ls "$out"/*.env | wc -l) fixtures to $out"
