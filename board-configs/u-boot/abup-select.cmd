# abup slot selection for U-Boot, native scheme (BOOT_ORDER, BOOT_<S>_LEFT, BOOT_GOOD).
# Prepended to a board's boot.cmd (see ../README.md); sets the shell variable abup_slot to
# A or B. abup_slot and abup_s are hush variables, not environment variables, so saveenv
# stores nothing but the counted try.
#
# Keep the environment redundant (CONFIG_SYS_REDUNDAND_ENVIRONMENT): saveenv then writes the
# copy that is not current, so a cut during it leaves the previous environment intact.

abup_slot=
for abup_s in ${BOOT_ORDER}; do
  if test -z "${abup_slot}"; then
    if test "${abup_s}" = A; then
      if   test "${BOOT_A_LEFT}" = 1; then setenv BOOT_A_LEFT 0; abup_slot=A
      elif test "${BOOT_A_LEFT}" = 2; then setenv BOOT_A_LEFT 1; abup_slot=A
      elif test "${BOOT_A_LEFT}" = 3; then setenv BOOT_A_LEFT 2; abup_slot=A
      elif test "${BOOT_A_LEFT}" = 4; then setenv BOOT_A_LEFT 3; abup_slot=A
      elif test "${BOOT_A_LEFT}" = 5; then setenv BOOT_A_LEFT 4; abup_slot=A
      elif test "${BOOT_A_LEFT}" = 6; then setenv BOOT_A_LEFT 5; abup_slot=A
      elif test "${BOOT_A_LEFT}" = 7; then setenv BOOT_A_LEFT 6; abup_slot=A
      elif test "${BOOT_A_LEFT}" = 8; then setenv BOOT_A_LEFT 7; abup_slot=A
      elif test "${BOOT_A_LEFT}" = 9; then setenv BOOT_A_LEFT 8; abup_slot=A
      fi
    elif test "${abup_s}" = B; then
      if   test "${BOOT_B_LEFT}" = 1; then setenv BOOT_B_LEFT 0; abup_slot=B
      elif test "${BOOT_B_LEFT}" = 2; then setenv BOOT_B_LEFT 1; abup_slot=B
      elif test "${BOOT_B_LEFT}" = 3; then setenv BOOT_B_LEFT 2; abup_slot=B
      elif test "${BOOT_B_LEFT}" = 4; then setenv BOOT_B_LEFT 3; abup_slot=B
      elif test "${BOOT_B_LEFT}" = 5; then setenv BOOT_B_LEFT 4; abup_slot=B
      elif test "${BOOT_B_LEFT}" = 6; then setenv BOOT_B_LEFT 5; abup_slot=B
      elif test "${BOOT_B_LEFT}" = 7; then setenv BOOT_B_LEFT 6; abup_slot=B
      elif test "${BOOT_B_LEFT}" = 8; then setenv BOOT_B_LEFT 7; abup_slot=B
      elif test "${BOOT_B_LEFT}" = 9; then setenv BOOT_B_LEFT 8; abup_slot=B
      fi
    fi
  fi
done

if test -n "${abup_slot}"; then
  saveenv
else
  # No tries left anywhere: boot the last confirmed slot, uncounted (see bootcount's docs).
  if test "${BOOT_GOOD}" = A || test "${BOOT_GOOD}" = B; then
    abup_slot=${BOOT_GOOD}
  else
    for abup_s in ${BOOT_ORDER}; do
      if test -z "${abup_slot}"; then
        if test "${abup_s}" = A || test "${abup_s}" = B; then abup_slot=${abup_s}; fi
      fi
    done
  fi
  if test -z "${abup_slot}"; then abup_slot=A; fi
fi
