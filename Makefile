# Set-up and entry points. Every target is safe to repeat: apt runs only when
# a package is missing, the venv is refreshed only when pyproject.toml or this file changes.
#
#   make install   what guestfence needs at run time: apt packages, .venv,
#                  `guestfence` on PATH, systemd units, CNI plugin, QEMU
#                  scripts, libvirt hook (see install-system)
#   make demo      install, then run the built-in demo (needs root)
#   make test      the venv, the test-only packages, then the whole test suite
#                  twice: on this machine's kernel (test-host) and in a QEMU VM
#                  booting Debian 12's own kernel, 6.1 (test-6.1: the sandbox
#                  and lab tests); fails if either pass fails (lab tests need
#                  root); touches nothing outside this directory
#   make test-host only the pass on this machine's kernel
#   make test-6.1  only the pass in the VM (see tests/vm/suite.py)
#   make bench     the venv, the benchmarks' packages (run bench/*.py yourself)
#
# Package lists are kept apart so that each part of the project adds to its
# own: RUNTIME_* is what every user installs; TEST_* and BENCH_* only what
# the tests and the benchmarks need.

# Debian's own interpreter: the libnftables and libseccomp bindings are
# Debian packages built for it (see pyproject.toml).
PYTHON  := /usr/bin/python3
VENV    := .venv
STAMP   := $(VENV)/.installed
LAUNCHER := src/guestfence/sandbox/guestfence-launch
FASTPATH := src/guestfence/sandbox/guestfence-fastpath.so

RUNTIME_APT := python3 python3-venv python3-nftables python3-seccomp nftables iproute2 procps
# The sandbox launcher is C, compiled here (static, so libc6-dev for libc.a).
BUILD_APT   := gcc libc6-dev
DEMO_APT    := iputils-ping
TEST_APT    := iputils-ping passt slirp4netns gcc chromium ethtool
# Host software the integrations are tested with, without recommends: no
# service, unit or default network of theirs comes along (the libvirt test
# runs its own libvirtd with its own configuration).
TEST_APT_BARE := containernetworking-plugins libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 \
                 $(TEST_VM_APT)
# The test VMs of tests/vm/ (QEMU under TCG, a busybox initramfs, whose
# udhcpc and udhcpd the macvtap test uses; passt for the VM behind it); the
# kernel itself is fetched there with `apt-get download`, never installed.
# Their prober (tests/vm/probe.c) is compiled with BUILD_APT's gcc.
TEST_VM_APT := qemu-system-x86 busybox-static passt
BENCH_APT   := passt slirp4netns gcc

# Where install-system puts things. DESTDIR stages the whole tree elsewhere
# (tests install into a temporary directory); the paths written into the
# units and links are always the final ones.
DESTDIR       :=
BINDIR        := /usr/local/bin
UNITDIR       := /etc/systemd/system
CNI_DIRS      := /usr/lib/cni /opt/cni/bin
LIBEXECDIR    := /usr/local/libexec/guestfence
LIBVIRT_HOOKS := /etc/libvirt/hooks/qemu.d
GUESTFENCE    := $(abspath $(VENV))/bin/guestfence

# apt-get install of whatever in $(1) is missing, with options $(2).
define apt_install
	@missing=$$(for p in $(1); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) $$missing; \
	fi
endef

.PHONY: install install-system uninstall venv test-deps bench-deps demo test test-host test-6.1 unit lab bench clean

install: venv $(LAUNCHER) $(FASTPATH) install-system

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(call apt_install,$(RUNTIME_APT))
	test -x $(VENV)/bin/python || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e .
	touch $(STAMP)

$(VENV)/.test-installed: $(STAMP)
	$(call apt_install,$(TEST_APT))
	$(call apt_install,$(TEST_APT_BARE),--no-install-recommends)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

$(VENV)/.bench-installed: $(STAMP)
	$(call apt_install,$(BENCH_APT))
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[bench]'
	touch $@

test-deps: $(VENV)/.test-installed $(LAUNCHER) $(FASTPATH)
bench-deps: $(VENV)/.bench-installed $(LAUNCHER) $(FASTPATH)

# guestfence on PATH, units generated for this checkout's venv, and each
# integration where its host looks for it. Links, not copies: a `git pull`
# and `make venv` update them all.
install-system: venv
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(LIBEXECDIR) $(DESTDIR)$(LIBVIRT_HOOKS)
	ln -sfn $(GUESTFENCE) $(DESTDIR)$(BINDIR)/guestfence
	for unit in contrib/systemd/*.in; do \
	  sed 's|@GUESTFENCE@|$(GUESTFENCE)|g' $$unit > $(DESTDIR)$(UNITDIR)/$$(basename $$unit .in); \
	  chmod 0644 $(DESTDIR)$(UNITDIR)/$$(basename $$unit .in); \
	done
	for dir in $(CNI_DIRS); do \
	  install -d $(DESTDIR)$$dir && ln -sfn $(abspath $(VENV))/bin/guestfence-cni $(DESTDIR)$$dir/guestfence; \
	done
	ln -sfn $(abspath $(VENV))/bin/guestfence-qemu-ifup $(DESTDIR)$(LIBEXECDIR)/qemu-ifup
	ln -sfn $(abspath $(VENV))/bin/guestfence-qemu-ifdown $(DESTDIR)$(LIBEXECDIR)/qemu-ifdown
	ln -sfn $(abspath $(VENV))/bin/guestfence-libvirt-hook $(DESTDIR)$(LIBVIRT_HOOKS)/guestfence
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# What install-system put in place, and nothing else (the record in
# /var/lib/guestfence and the rules in force stay: `guestfence flush` removes those).
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/guestfence $(DESTDIR)$(LIBEXECDIR)/qemu-ifup $(DESTDIR)$(LIBEXECDIR)/qemu-ifdown
	rm -f $(DESTDIR)$(LIBVIRT_HOOKS)/guestfence $(foreach dir,$(CNI_DIRS),$(DESTDIR)$(dir)/guestfence)
	for unit in contrib/systemd/*.in; do rm -f $(DESTDIR)$(UNITDIR)/$$(basename $$unit .in); done
	-rmdir $(DESTDIR)$(LIBEXECDIR) 2>/dev/null

# The sandbox's first program (src/guestfence/sandbox/launcher.c says why C):
# static, so no dynamic loader, and nothing of the guest's environment, runs
# before its seccomp filter. Found by sandbox/spawn.py next to itself.
$(LAUNCHER): src/guestfence/sandbox/launcher.c | $(STAMP)
	$(call apt_install,$(BUILD_APT))
	gcc -std=gnu11 -O2 -Wall -Wextra -static -o $@ $<

# The supervisor's hot path (src/guestfence/sandbox/fastpath.c says why C),
# loaded by sandbox/fastpath.py from next to itself.
$(FASTPATH): src/guestfence/sandbox/fastpath.c | $(STAMP)
	$(call apt_install,$(BUILD_APT))
	gcc -std=gnu11 -O2 -Wall -Wextra -Werror -shared -fPIC -o $@ $< -lpthread

demo: install
	$(call apt_install,$(DEMO_APT))
	$(VENV)/bin/guestfence demo

# Both passes run even when the first fails, so one run shows both results.
test: test-deps
	@status=0; \
	$(MAKE) --no-print-directory test-host || status=1; \
	$(MAKE) --no-print-directory test-6.1 || status=1; \
	exit $$status

test-host: test-deps
	$(VENV)/bin/python -m pytest

test-6.1: test-deps
	$(VENV)/bin/python -m tests.vm.suite

unit: test-deps
	$(VENV)/bin/python -m pytest -m 'not lab'

lab: test-deps
	$(VENV)/bin/python -m pytest -m lab

bench: bench-deps
	@echo "benchmarks: $(VENV)/bin/python bench/bench_nft.py (see bench/)"

clean:
	rm -rf $(VENV) build src/*.egg-info $(LAUNCHER) $(FASTPATH)
