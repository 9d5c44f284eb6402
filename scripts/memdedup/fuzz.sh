#!/bin/bash
# libFuzzer targets for memdedup's kernel-file parsers and its policy
# (tests/memdedup/fuzz/).  Usage: fuzz.sh [SECONDS]: build with clang
# (AddressSanitizer + UndefinedBehaviorSanitizer), replay the committed
# seed corpus, then fuzz each target for SECONDS (default 15; make check
# uses the default, make fuzz longer).  New inputs go to
# build/fuzz/corpus-<target>, never into the committed seeds; crashes
# to build/fuzz/.  Ends with "fuzz: N passed, N failed, N skipped".
#
# The targets compile kernel.c, kernel-pages.c, policy.c and index.c
# outside QEMU's meson, against the headers and libqemuutil.a of the QEMU
# build.
set -u

top=$(cd "$(dirname "$0")/../.." && pwd)
src=$top/build/qemu-src
bld=${MEMDEDUP_BUILD:-$src/build}
out=$top/build/fuzz
seconds=${1:-15}
targets="kernel policy"
passed=0 failed=0 skipped=0

finish() {
    echo "fuzz: $passed passed, $failed failed, $skipped skipped"
    [ "$failed" = 0 ]
    exit
}

cc=$(command -v clang || true)
if [ -z "$cc" ] || [ ! -f "$bld/libqemuutil.a" ]; then
    echo "fuzz: needs clang and a QEMU build ($bld/libqemuutil.a)" >&2
    skipped=2
    finish
fi
mkdir -p "$out"

# shellcheck disable=SC2046
cflags="-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
 -std=gnu11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -fno-strict-aliasing -fwrapv
 -Wall -Wno-unused-function -isystem $src/linux-headers -iquote $bld
 -iquote $src -iquote $src/include $(pkg-config --cflags glib-2.0)"
libs="$bld/libqemuutil.a $(pkg-config --libs glib-2.0 libxxhash) -lnuma -lm
 -pthread"
core="$src/hw/mem/memdedup/kernel.c $src/hw/mem/memdedup/kernel-pages.c
 $src/hw/mem/memdedup/policy.c $src/hw/mem/memdedup/index.c"
# The AVX2 page hash is compiled alone for AVX2, as meson does, where the
# QEMU build has it (CONFIG_AVX2_OPT in its config-host.h).
if grep -q '^#define CONFIG_AVX2_OPT' "$bld/config-host.h"; then
    # shellcheck disable=SC2086
    if ! $cc ${cflags/-fsanitize=fuzzer,/-fsanitize=fuzzer-no-link,} \
            -mavx2 -c -o "$out/index-avx2.o" \
            "$src/hw/mem/memdedup/index-avx2.c"; then
        echo "FAIL fuzz: index-avx2.c does not build"
        failed=$((failed + 1))
        finish
    fi
    core="$core $out/index-avx2.o"
fi

for t in $targets; do
    bin=$out/fuzz-$t
    # shellcheck disable=SC2086
    if ! $cc $cflags -o "$bin" "$top/tests/memdedup/fuzz/fuzz-$t.c" $core \
            -Wl,--start-group $libs -Wl,--end-group; then
        echo "FAIL fuzz/$t: does not build"
        failed=$((failed + 1))
        continue
    fi
    seeds=$top/tests/memdedup/fuzz/corpus/$t
    work=$out/corpus-$t
    mkdir -p "$work"
    log=$out/fuzz-$t.log
    # The seeds (and what earlier runs found) first, then new inputs.
    # Reading pagemap-like records opens memfds: keep the RSS limit off.
    if (cd "$out" && "$bin" -max_total_time="$seconds" -timeout=10 \
            -rss_limit_mb=4096 -max_len=16384 -print_final_stats=1 \
            -artifact_prefix="$out/crash-$t-" "$work" "$seeds") >"$log" 2>&1
    then
        execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" |
                grep -oE '[0-9]+$')
        cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1)
        echo "PASS fuzz/$t: ${execs:-?} inputs in ${seconds} s, $cov," \
             "corpus $(ls "$work" | wc -l)"
        passed=$((passed + 1))
    else
        echo "FAIL fuzz/$t (log $log):"
        grep -E 'ERROR|runtime error|Assertion|assert|==[0-9]+==' "$log" | head -n 20
        failed=$((failed + 1))
    fi
done
finish
