# make deb    the Debian package for this machine's architecture (build/deb/)
# make image  the flashable Raspberry Pi 4 image (build/image/; image/README.md)
.PHONY: deb image setup

setup:
	scripts/setup.sh --test

deb: setup
	scripts/build-deb.sh build/deb

image: deb
	image/build.sh build/image
