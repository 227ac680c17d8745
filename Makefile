# Set-up and entry points. Every target is safe to repeat: apt runs only when
# a package is missing, the venv is refreshed only when pyproject.toml or this file changes.
#
#   make demo      install, then run the built-in demo (needs root)
#   make test      install, then the whole test suite (lab tests need root)
#   make install   apt packages and .venv with guestfence installed

# Debian's own interpreter: the libnftables and libseccomp bindings are
# Debian packages built for it (see pyproject.toml).
PYTHON  := /usr/bin/python3
VENV    := .venv
STAMP   := $(VENV)/.installed
LAUNCHER := src/guestfence/sandbox/guestfence-launch
APT_PACKAGES := python3 python3-venv python3-nftables python3-seccomp \
                nftables iproute2 iputils-ping procps passt slirp4netns gcc \
                chromium ethtool

.PHONY: install demo test unit lab clean

install: $(STAMP) $(LAUNCHER)

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

# The sandbox's first program (src/guestfence/sandbox/launcher.c says why C):
# static, so no dynamic loader, and nothing of the guest's environment, runs
# before its seccomp filter. Found by sandbox/spawn.py next to itself.
$(LAUNCHER): src/guestfence/sandbox/launcher.c | $(STAMP)
	gcc -std=gnu11 -O2 -Wall -Wextra -static -o $@ $<

demo: install
	$(VENV)/bin/guestfence demo

test: install
	$(VENV)/bin/python -m pytest

unit: install
	$(VENV)/bin/python -m pytest -m 'not lab'

lab: install
	$(VENV)/bin/python -m pytest -m lab

clean:
	rm -rf $(VENV) build src/*.egg-info $(LAUNCHER)
