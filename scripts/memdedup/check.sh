#!/bin/bash
# memdedup's test suites (make check).  Usage:
# check.sh [style|unit|qtest|qemu|fuzz|integration]... (default: all).  Builds the test programs it needs, runs each suite and
# ends with the line "check: N passed, N failed, N skipped".
set -u

top=$(cd "$(dirname "$0")/../.." && pwd)
bld=${MEMDEDUP_BUILD:-$top/build/qemu-src/build}
suites=${*:-style unit qtest qemu fuzz integration}
passed=0 failed=0 skipped=0
export PATH=/usr/bin:/bin:$PATH
# For make check-asan: fail on the first error; QEMU itself leaks at exit;
# an allocation too large for the host fails (the bad-input qtest asks
# for one) instead of aborting.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

# QEMU's own suites that our change touches (QMP schema, HMP, QOM types,
# migration notifiers and the memdedup-hints section).
qemu_tests="qtest-x86_64/qmp-cmd-test qtest-x86_64/test-hmp
qtest-x86_64/qom-test qtest-x86_64/device-introspect-test
qtest-x86_64/migration-test"

# Add a meson test run's counts (from its testlog) to the totals.
count_meson() {
    local log=$bld/meson-logs/testlog.json
    [ -f "$log" ] || return
    local p f s
    p=$(grep -c '"result": "OK"' "$log")
    f=$(grep -c -E '"result": "(FAIL|TIMEOUT|ERROR|UNEXPECTEDPASS)"' "$log")
    s=$(grep -c '"result": "SKIP"' "$log")
    passed=$((passed + p)) failed=$((failed + f)) skipped=$((skipped + s))
}

# Run meson tests with /dev/kvm hidden: vCPUs cannot run on these hosts,
# and tests that prefer KVM must fall back to TCG.
meson_test() {
    rm -f "$bld/meson-logs/testlog.json"
    local mask=""
    if [ -e /dev/kvm ] && [ "$(id -u)" = 0 ] && command -v unshare >/dev/null; then
        mask="unshare -m sh -c 'mount --bind /dev/null /dev/kvm && exec \"\$0\" \"\$@\"'"
    fi
    eval $mask meson test -C "$bld" --no-rebuild --print-errorlogs \
        --timeout-multiplier "${MEMDEDUP_TIMEOUT_MULTIPLIER:-4}" "$@"
    local rc=$?
    count_meson
    return $rc
}

# The manual (docs/system/memdedup.rst, the QMP reference) must build
# cleanly, where the build has documentation.
targets="qemu-system-x86_64"
if ninja -C "$bld" -t targets all 2>/dev/null | grep -q '^sphinxdocs:'; then
    targets="$targets sphinxdocs"
fi
for s in $suites; do
    case $s in
    unit) targets="$targets tests/unit/test-memdedup"
          targets="$targets tests/unit/test-memdedup-engine" ;;
    qtest) targets="$targets tests/qtest/memdedup-test" ;;
    qemu) for t in $qemu_tests; do targets="$targets tests/qtest/${t#*/}"; done ;;
    esac
done
# shellcheck disable=SC2086
ninja -C "$bld" $targets || exit 1
case " $suites " in
*" integration "*) make -s -C "$top" tools || exit 1 ;;  # memdedup-stat
esac
"$top/scripts/memdedup/link-firmware.sh" "$bld"

for s in $suites; do
    echo "== memdedup check: $s"
    case $s in
    style)
        # QEMU's checkpatch on our C files (errors and warnings fail),
        # and no call loop among the engine's files.
        # Paths relative to the top: checkpatch applies its rules by path
        # (tests/ may use g_assert_cmpint and the like).
        n=0
        for f in $(cd "$top" && echo hw/mem/ksm-backend.c \
                 hw/mem/memdedup/*.[ch] tests/memdedup/fuzz/*.[ch]) \
                 include/sysemu/memdedup.h tests/unit/test-memdedup.c \
                 tests/unit/test-memdedup-engine.c \
                 tests/qtest/memdedup-test.c; do
            out=$(cd "$top" && "$bld/../scripts/checkpatch.pl" --no-tree -q \
                  -f "$f" 2>&1)
            if echo "$out" | grep -qE '^(ERROR|WARNING)'; then
                echo "$out"
                n=$((n + 1))
            fi
        done
        if [ "$n" = 0 ]; then
            echo "PASS style/checkpatch"
            passed=$((passed + 1))
        else
            echo "FAIL style/checkpatch: $n files with errors or warnings"
            failed=$((failed + 1))
        fi
        if python3 "$top/scripts/memdedup/layers.py" --quiet; then
            passed=$((passed + 1))
        else
            failed=$((failed + 1))
        fi
        # memdedup-stat's Prometheus rules (promtool check rules and test
        # rules) and its dashboard against them.
        "$top/scripts/memdedup/check-rules.sh"
        case $? in
        0) passed=$((passed + 1)) ;;
        77) skipped=$((skipped + 1)) ;;
        *) failed=$((failed + 1)) ;;
        esac ;;
    unit) meson_test test-memdedup test-memdedup-engine ;;
    qtest) meson_test qtest-x86_64/memdedup-test ;;
    qemu)
        # shellcheck disable=SC2086
        meson_test $qemu_tests ;;
    fuzz)
        # The libFuzzer targets: seed corpus, then a short run each.
        out=$(mktemp)
        "$top/scripts/memdedup/fuzz.sh" "${MEMDEDUP_FUZZ_SECONDS:-15}" 2>&1 |
            tee "$out"
        line=$(grep -E '^fuzz: [0-9]+ passed' "$out" | tail -n 1)
        if [ -n "$line" ]; then
            set -- $(echo "$line" | grep -oE '[0-9]+')
            passed=$((passed + $1)) failed=$((failed + $2)) skipped=$((skipped + $3))
        else
            failed=$((failed + 1))
        fi
        rm -f "$out" ;;
    integration)
        for t in "$top"/tests/memdedup/test_*.py; do
            out=$(mktemp)
            python3 "$t" 2>&1 | tee "$out"
            line=$(grep -E '^integration: [0-9]+ passed' "$out" | tail -n 1)
            if [ -n "$line" ]; then
                set -- $(echo "$line" | grep -oE '[0-9]+')
                passed=$((passed + $1)) failed=$((failed + $2)) skipped=$((skipped + $3))
            else
                echo "$(basename "$t"): no result line" >&2
                failed=$((failed + 1))
            fi
            rm -f "$out"
        done ;;
    *) echo "check.sh: unknown suite '$s'" >&2; exit 2 ;;
    esac
done

echo "check: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
