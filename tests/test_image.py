"""The Raspberry Pi 4 image recipe (image/): checked without a build (variables validated with the
key named, overlay paths real, units enabled, what must differ per box stripped, the genimage
layout built for real on a small root), and, opt-in, the built image booted under
qemu-system-aarch64 (NOKBOX_IMAGE_DIR=build/image: the .img, vmlinuz and initrd.img that
``make image`` leaves there; ~20 minutes to build on this machine, most of it emulated mkinitramfs).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "image"


def _builder():
    spec = importlib.util.spec_from_file_location("nokbox_image_build", IMAGE / "build.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


B = _builder()


def _copy_recipe(tmp_path: Path) -> Path:
    d = tmp_path / "image"
    shutil.copytree(IMAGE, d, ignore=shutil.ignore_patterns("__pycache__"))
    return d


def test_the_recipe_validates_and_prints_its_plan(capsys):
    r = B.load()
    assert r.image.device == "pi4" and r.image.arch == "arm64"
    assert {"raspi-firmware", "linux-image-arm64", "chrony", "avahi-daemon", "nginx-light"} <= set(r.packages)
    assert B.main(["--check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("recipe OK: nokbox-pi4") and "mmdebstrap --architectures=arm64" in out
    assert "--components=main,non-free-firmware" in out


@pytest.mark.parametrize("edit, named", [
    (lambda t: t.replace('hostname = "nokbox"', 'hostnam = "nokbox"'), "system.hostnam: unknown key"),
    (lambda t: t.replace('hostname = "nokbox"', 'hostname = "Nokbox_1"'), "system.hostname"),
    (lambda t: t.replace('options = ["noatime", ', 'options = ['), "data.options: must include noatime"),
    (lambda t: t.replace('label = "NOKBOX-DATA"', 'label = "NOKBOX-DATA-PARTITION"'), "data.label"),
    (lambda t: t.replace('components = ["main", "non-free-firmware"]', 'components = ["main"]'),
     "image.components: needs main and non-free-firmware"),
    (lambda t: t.replace('arch = "arm64"', 'arch = "armhf"'), "image.arch"),
    (lambda t: t.replace('consoles = ["tty1", ', 'consoles = ["serial0", '), "system.consoles"),
    (lambda t: t + "\n[extra]\nx = 1\n", "extra: unknown key"),
    (lambda t: t.replace("[network]", "[network\n"), "recipe.toml:"),
])
def test_a_wrong_variable_is_named_and_nothing_is_built(tmp_path, edit, named):
    d = _copy_recipe(tmp_path)
    (d / "recipe.toml").write_text(edit((d / "recipe.toml").read_text()))
    with pytest.raises(B.RecipeError) as e:
        B.load(d)
    assert named in str(e.value), str(e.value)


def test_the_package_list_must_keep_what_the_image_needs(tmp_path):
    d = _copy_recipe(tmp_path)
    text = (d / "packages.txt").read_text()
    (d / "packages.txt").write_text(re.sub(r"(?m)^raspi-firmware\n", "", text))
    with pytest.raises(B.RecipeError, match="packages: packages.txt lacks raspi-firmware"):
        B.load(d)
    (d / "packages.txt").write_text(text + "not a package!\n")
    with pytest.raises(B.RecipeError, match="is not a package name"):
        B.load(d)


def test_overlay_files_sit_at_real_target_paths_and_its_units_verify():
    assert B.check_overlay() == []
    files = sorted(p.relative_to(IMAGE / "overlay").as_posix() for p in (IMAGE / "overlay").rglob("*") if p.is_file())
    assert "etc/ssh/sshd_config.d/10-nokbox.conf" in files and "etc/avahi/services/nokbox.service" in files
    for rel in files:  # each one where its package reads it
        parent = rel.rsplit("/", 1)[0]
        assert parent.split("/")[0] == "etc" and parent.count("/") <= 3, rel
    units = [IMAGE / "overlay" / f for f in files if f.startswith("etc/systemd/system/") and f.endswith(".service")]
    r = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True)
    # a missing ssh.service on this machine is fine (the image has it); anything else is a fault
    bad = [line for line in r.stderr.splitlines() if line.strip() and "ssh.service" not in line]
    assert bad == [], r.stderr


def test_no_password_login_and_nothing_per_box_in_the_image():
    sshd = (IMAGE / "overlay/etc/ssh/sshd_config.d/10-nokbox.conf").read_text()
    for line in ("PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitEmptyPasswords no"):
        assert re.search(rf"(?m)^{line}$", sshd), line
    cmds = "\n".join(B.customize_commands(B.load(), "nokbox_1_arm64.deb"))
    assert 'chroot "$1" passwd -l root' in cmds  # root locked; the recipe makes no other user
    assert "useradd" not in cmds and "chpasswd" not in cmds
    assert 'rm -f "$1"/etc/ssh/ssh_host_*' in cmds  # host keys: made at first boot (nokbox-ssh-hostkeys)
    assert ': > "$1/etc/machine-id"' in cmds  # machine id: systemd makes it at first boot
    assert 'rm -f "$1/etc/nokbox/device.key"' in cmds and 'rm -rf "$1/etc/nokbox/tls"' in cmds
    hostkeys = (IMAGE / "overlay/etc/systemd/system/nokbox-ssh-hostkeys.service").read_text()
    assert "ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key" in hostkeys and "Before=ssh.service" in hostkeys


def test_the_units_are_enabled_and_each_can_be():
    cmds = B.customize_commands(B.load(), "x.deb")
    enable = next(c for c in cmds if "systemctl enable" in c).split("systemctl enable", 1)[1].split()
    for unit in ("nokbox-firstboot.service", "nokbox-recorder.service", "nokbox-keeper.service",
                 "nokbox-web.service", "nokbox-ssh-hostkeys.service", "chrony.service", "avahi-daemon.service",
                 "nginx.service", "ssh.service", "systemd-networkd.service"):
        assert unit in enable, unit
    for unit in enable:
        ours = [ROOT / "systemd" / unit, IMAGE / "overlay/etc/systemd/system" / unit]
        for f in ours:
            if f.exists():
                assert re.search(r"(?m)^WantedBy=", f.read_text()), f"{unit} has no [Install] WantedBy="


def test_the_data_ssd_is_mounted_by_label_with_noatime_and_checked_at_boot():
    r = B.load()
    fstab = B.rendered(r)["etc/fstab"]
    data = next(line.split("\t") for line in fstab.splitlines() if line.startswith("LABEL=NOKBOX-DATA"))
    assert data[1] == "/var/lib/nokbox" and data[2] == "ext4"
    assert "noatime" in data[3].split(",") and "nofail" in data[3].split(",") and data[5] == "2"
    assert any(line.startswith("LABEL=NOKBOX-ROOT\t/\t") for line in fstab.splitlines())
    fw = B.rendered(r)["etc/default/raspi-firmware"]
    assert "ROOTPART=LABEL=NOKBOX-ROOT" in fw
    # the recorder never records onto the SD card: it waits for that mount
    assert "RequiresMountsFor=/var/lib/nokbox" in (ROOT / "systemd/nokbox-recorder.service").read_text()


def test_genimage_lays_out_the_boot_and_root_partitions(tmp_path):
    """The recipe's genimage layout, built for real from a small root (no loop mounts)."""
    r = B.load()
    small = r.model_copy(update={"image": r.image.model_copy(update={"boot_mib": 16, "root_mib": 24})})
    root = tmp_path / "rootfs"
    (root / "boot/firmware").mkdir(parents=True)
    (root / "boot/firmware/config.txt").write_text("arm_64bit=1\n")
    (root / "boot/firmware/cmdline.txt").write_text("root=LABEL=NOKBOX-ROOT\n")
    (root / "etc").mkdir()
    (root / "etc/fstab").write_text(B.rendered(r)["etc/fstab"])
    cfg = tmp_path / "genimage.cfg"
    cfg.write_text(B.genimage_config(small))
    out = tmp_path / "out"
    g = subprocess.run(["genimage", "--rootpath", str(root), "--tmppath", str(tmp_path / "tmp"), "--inputpath",
                        str(tmp_path / "in"), "--outputpath", str(out), "--config", str(cfg)],
                       capture_output=True, text=True)
    assert g.returncode == 0, g.stderr[-3000:]
    img = out / "nokbox-pi4.img"
    table = json.loads(subprocess.run(["sfdisk", "-J", str(img)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    assert table["label"] == "dos" and len(table["partitions"]) == 2
    boot, rootp = table["partitions"]
    assert boot["type"] == "c" and boot.get("bootable") is True and rootp["type"] == "83"
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1", LC_ALL="C.UTF-8")
    label = subprocess.run(["mlabel", "-s", "-i", str(out / "boot.vfat"), "::"], capture_output=True, text=True,
                           env=env).stdout
    assert "NOKBOX-BOOT" in label, label
    listing = subprocess.run(["mdir", "-b", "-i", str(out / "boot.vfat"), "::"], capture_output=True, text=True,
                             env=env).stdout
    assert "config.txt" in listing and "cmdline.txt" in listing
    assert subprocess.run(["e2label", str(out / "root.ext4")], capture_output=True, text=True).stdout.strip() == \
        "NOKBOX-ROOT"
    ls = subprocess.run(["debugfs", "-R", "ls -p /boot/firmware", str(out / "root.ext4")], capture_output=True,
                        text=True).stdout
    assert "config.txt" not in ls  # /boot/firmware's files are on the FAT partition, not twice
    fstab = subprocess.run(["debugfs", "-R", "cat /etc/fstab", str(out / "root.ext4")], capture_output=True,
                           text=True).stdout
    assert "LABEL=NOKBOX-DATA\t/var/lib/nokbox" in fstab


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not os.environ.get("NOKBOX_IMAGE_DIR"), reason="opt-in: NOKBOX_IMAGE_DIR=build/image after make image")
def test_the_built_image_boots_under_qemu_and_the_services_come_up(tmp_path):
    d = Path(os.environ["NOKBOX_IMAGE_DIR"])
    img = max(d.glob("*.img"), key=lambda p: p.stat().st_size)  # the disk image, not initrd.img
    # a copy-on-write overlay keeps the built image untouched; a data SSD with its label
    disk = tmp_path / "sd.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(img.resolve()), str(disk)],
                   check=True)
    ssd = tmp_path / "ssd.img"
    subprocess.run(["truncate", "-s", "256M", str(ssd)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-L", "NOKBOX-DATA", str(ssd)], check=True)
    console = tmp_path / "console.log"
    argv = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "1024",
            "-kernel", str(d / "vmlinuz"), "-initrd", str(d / "initrd.img"),
            "-append", "root=LABEL=NOKBOX-ROOT rw console=ttyAMA0 systemd.show_status=1 "
            "systemd.journald.forward_to_console=1",  # the journal too: no one can log in to look
            "-drive", f"if=virtio,format=qcow2,file={disk}", "-drive", f"if=virtio,format=raw,file={ssd}",
            "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,romfile=", "-serial", f"file:{console}",
            "-monitor", "none", "-display", "none"]
    t0 = time.monotonic()
    qlog = open(tmp_path / "qemu.log", "wb")
    q = subprocess.Popen(argv, stdout=qlog, stderr=subprocess.STDOUT)
    want = ["nokbox-recorder.service", "nokbox-keeper.service", "nokbox-web.service", "nginx.service",
            "chrony.service", "avahi-daemon.service", "ssh.service"]
    try:
        deadline = t0 + 1500
        while time.monotonic() < deadline:
            text = console.read_text(errors="replace") if console.exists() else ""
            started = [u for u in want if re.search(rf"Started .*{re.escape(u.removesuffix('.service'))}", text)
                       or f"Started {u}" in text]
            if len(started) == len(want) and "multi-user" in text.lower():
                break
            assert q.poll() is None, (tmp_path / "qemu.log").read_text(errors="replace") + text[-3000:]
            time.sleep(2)
        text = console.read_text(errors="replace")
        print(f"qemu-system-aarch64: the image reached multi-user with {len(started)}/{len(want)} units started "
              f"in {time.monotonic() - t0:.0f} s")
        assert len(started) == len(want), (sorted(set(want) - set(started)), text[-4000:])
        assert "FAILED" not in text, text[-4000:]
        assert "관리 화면 인증서 지문" in text or "fingerprint" in text  # firstboot printed it on the console
    finally:
        q.kill()
        q.wait(30)
        qlog.close()
