# make deb        the Debian package for this machine's architecture (build/deb/; docs/install.md)
# make deb-arm64  the arm64 package on any host, in an emulated arm64 build root (scripts/build-deb-arm64.sh)
# make image      the flashable Raspberry Pi 4 image (build/image/; image/recipe.toml, image/build.py)
# make image-check  validate the image recipe and print the plan (builds nothing)
.PHONY: deb deb-arm64 image image-check setup setup-image

setup:
	scripts/setup.sh --test

setup-image:
	scripts/setup.sh --image

deb: setup
	scripts/build-deb.sh build/deb

deb-arm64: setup-image
	scripts/build-deb-arm64.sh build/deb

image-check:
	.venv/bin/python image/build.py --check

image: deb-arm64
	.venv/bin/python image/build.py --deb "$$(ls -t build/deb/nokbox_*_arm64.deb | head -1)" --out build/image
