# Set-up and entry points. Every target is safe to repeat: apt runs only when
# a package is missing, the venv is refreshed only when pyproject.toml or this file changes.
#
#   make demo      install, then run the built-in demo (needs root)
#   make test      install, then the whole test suite twice: on this machine's
#                  kernel (test-host) and in a QEMU VM booting Debian 12's own
#                  kernel, 6.1 (test-6.1: the sandbox and lab tests); fails if
#                  either pass fails (lab tests need root)
#   make test-host only the pass on this machine's kernel
#   make test-6.1  only the pass in the VM (see tests/vm/suite.py)
#   make install   apt packages and .venv with guestfence installed

# Debian's own interpreter: the libnftables and libseccomp bindings are
# Debian packages built for it (see pyproject.toml).
PYTHON  := /usr/bin/python3
VENV    := .venv
STAMP   := $(VENV)/.installed
APT_PACKAGES := python3 python3-venv python3-nftables python3-seccomp \
                nftables iproute2 iputils-ping procps passt slirp4netns gcc \
                chromium ethtool
# Test-time only (not for `make install`): QEMU and busybox-static build and
# boot the test VMs of tests/vm/ (the kernel itself is fetched there with
# `apt-get download`, never installed).
TEST_VM_APT_PACKAGES := qemu-system-x86 busybox-static
TEST_VM_STAMP := $(VENV)/.test-vm-installed

.PHONY: install demo test test-host test-6.1 unit lab clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@missing=$$(for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	test -x $(VENV)/bin/python || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/guestfence demo

$(TEST_VM_STAMP): $(STAMP)
	@missing=$$(for p in $(TEST_VM_APT_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages for the test VMs: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	touch $@

# Both passes run even when the first fails, so one run shows both results.
test: install $(TEST_VM_STAMP)
	@status=0; \
	$(MAKE) --no-print-directory test-host || status=1; \
	$(MAKE) --no-print-directory test-6.1 || status=1; \
	exit $$status

test-host: install $(TEST_VM_STAMP)
	$(VENV)/bin/python -m pytest

test-6.1: install $(TEST_VM_STAMP)
	$(VENV)/bin/python -m tests.vm.suite

unit: install
	$(VENV)/bin/python -m pytest -m 'not lab'

lab: install
	$(VENV)/bin/python -m pytest -m lab

clean:
	rm -rf $(VENV) build src/*.egg-info
