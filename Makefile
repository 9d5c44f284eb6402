# memdedup: memory deduplication for QEMU/KVM hosts, built into QEMU.
#
#   make          build qemu-system-x86_64 with memdedup (build/qemu-src/build)
#   make run      the demo: two TCG guests deduplicated by memdedup
#   make check    build, then every test (unit, qtest, integration)
#   make bench    side-by-side benchmarks against stock QEMU + KSM
#   make check-asan  unit test and qtest under AddressSanitizer/UBSan
#   make fuzz     the libFuzzer targets, FUZZ_SECONDS (default 300) each
#   make tools    build/tools/memdedup-stat, the libvirt statistics tool
#   make clean    remove the build tree (keeps the downloaded sources)

SHELL := /bin/bash
TOP := $(CURDIR)
SRC := $(TOP)/build/qemu-src
BLD := $(SRC)/build
QEMU := $(BLD)/qemu-system-x86_64
S := $(TOP)/scripts/memdedup

export CCACHE_DIR ?= $(TOP)/build/ccache

.PHONY: all build deps source run check check-unit check-qtest \
        check-integration check-qemu check-style check-asan bench guest \
        tools clean \
        distclean

all: build

deps:
	@$(S)/install-deps.sh

$(SRC)/.memdedup-unpacked: | deps
	$(S)/fetch-qemu-source.sh $(SRC)

source: $(SRC)/.memdedup-unpacked

$(BLD)/build.ninja: $(SRC)/.memdedup-unpacked $(wildcard patches/qemu/*.patch) \
                    scripts/memdedup/configure-qemu.sh
	@if [ -f $(SRC)/.memdedup-patched ] && \
	    [ -n "$$(find patches/qemu -newer $(SRC)/.memdedup-patched)" ]; then \
	    echo "patches changed: re-extracting QEMU source"; \
	    rm -rf $(SRC); $(S)/fetch-qemu-source.sh $(SRC); fi
	$(S)/prepare-tree.sh $(SRC)
	$(S)/configure-qemu.sh $(SRC)

build: deps $(BLD)/build.ninja tools
	@$(S)/prepare-tree.sh $(SRC)
	ninja -C $(BLD) qemu-system-x86_64
	@$(S)/link-firmware.sh $(BLD)

# memdedup-stat: statistics of every libvirt domain (libvirt, json-c).
TOOLS := $(TOP)/build/tools
TOOL_PKGS := libvirt libvirt-qemu json-c
TOOL_CFLAGS := -O2 -g -std=gnu11 -Wall -Wextra -Werror

tools: $(TOOLS)/memdedup-stat

$(TOOLS)/memdedup-stat: tools/memdedup-stat/memdedup-stat.c | deps
	@mkdir -p $(TOOLS)
	$(CC) $(TOOL_CFLAGS) $$(pkg-config --cflags $(TOOL_PKGS)) -o $@ $< \
	    $$(pkg-config --libs $(TOOL_PKGS))

guest: deps
	$(S)/make-guest.sh
	$(S)/fetch-kernel.sh trixie

run: build guest
	$(S)/demo.sh

check: build guest
	$(S)/check.sh

check-style check-unit check-qtest check-integration check-qemu check-fuzz: build guest
	$(S)/check.sh $(patsubst check-%,%,$@)

# Parsers of kernel files and the policy under libFuzzer (clang, ASan,
# UBSan); make check runs the same targets for a few seconds.
FUZZ_SECONDS ?= 300
fuzz: build
	$(S)/fuzz.sh $(FUZZ_SECONDS)

bench: build guest
	$(S)/bench.sh

# AddressSanitizer + UndefinedBehaviorSanitizer build of QEMU with our
# code, in its own build directory; runs the unit test and the qtest.
ASAN_BLD := $(SRC)/build-asan

$(ASAN_BLD)/build.ninja: $(BLD)/build.ninja
	$(S)/prepare-tree.sh $(SRC)
	MEMDEDUP_CONFIGURE_EXTRA="--enable-sanitizers --disable-docs" \
	    $(S)/configure-qemu.sh $(SRC) $(ASAN_BLD)

check-asan: build $(ASAN_BLD)/build.ninja
	@$(S)/prepare-tree.sh $(SRC)
	@# Sanitized QEMU runs several times slower.
	MEMDEDUP_BUILD=$(ASAN_BLD) MEMDEDUP_TIMEOUT_MULTIPLIER=16 \
	    $(S)/check.sh unit qtest

clean:
	rm -rf $(BLD)

distclean:
	rm -rf build
