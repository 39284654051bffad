# make deb    the Debian package for this machine's architecture (build/deb/; docs/install.md)
# (make image, the flashable Raspberry Pi 4 image, is not written yet: issue 15)
.PHONY: deb setup

setup:
	scripts/setup.sh --test

deb: setup
	scripts/build-deb.sh build/deb
