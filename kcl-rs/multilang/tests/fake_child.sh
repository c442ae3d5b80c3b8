#!/bin/sh
# A scripted MultiLangDaemon child for the protocol tests.
# Usage: fake_child.sh SCRIPT LOG
# Each line of SCRIPT is one step:
#   expect ACTION   read one line from stdin, append it to LOG, fail (exit 3) unless
#                   its action is ACTION
#   send TEXT       write TEXT and a newline to stdout
#   err TEXT        write TEXT (no newline) to stderr
#   sleep SECONDS   pause
#   await FILE      wait until FILE exists (the test's cue)
#   hang SECONDS    become `sleep SECONDS` (exec: killing the child's pid ends it)
#   exit CODE       exit at once
# After the last step the child reads stdin to its end, then exits 0.
exec 3<&0
while IFS= read -r step; do
  case "$step" in
    "expect "*)
      want="${step#expect }"
      IFS= read -r msg <&3 || exit 9
      printf '%s\n' "$msg" >> "$2"
      case "$msg" in
        *"\"action\":\"$want\""*) ;;
        *) echo "expected $want, got $msg" >&2; exit 3 ;;
      esac ;;
    "send "*) printf '%s\n' "${step#send }" ;;
    "err "*) printf '%s' "${step#err }" >&2 ;;
    "sleep "*) sleep "${step#sleep }" ;;
    "await "*) while [ ! -e "${step#await }" ]; do sleep 0.05; done ;;
    "hang "*) exec sleep "${step#hang }" ;;
    "exit "*) exit "${step#exit }" ;;
  esac
done < "$1"
cat <&3 > /dev/null
