"""Debian's own kernel, made bootable under QEMU from its package alone.

``debian_kernel()`` returns a ``Kernel``: the ELF ``vmlinux``, a busybox
initramfs and a module tree, all taken from the kernel package that
``linux-image-amd64`` depends on (Linux 6.1 on Debian 12). The package is
fetched with ``apt-get download`` and never installed; nothing else is
downloaded. Built pieces are cached under ``build/vm/<kernel>-<builder
hash>/`` in the repository, so a second run costs nothing and a change to
this file or to ``init.sh`` rebuilds.

Why each piece is made as it is:
- ``vmlinux``: QEMU boots an ELF kernel with a PVH note directly (no
  firmware, no real-mode setup), which under TCG is the difference between
  seconds and a minute. The package ships only the compressed bzImage. The
  kernel's scripts/extract-vmlinux is not in any package installed here and
  scans the whole file for every compressor's magic bytes with external
  tools; the bzImage's own setup header says exactly where its payload is
  (``payload_offset``/``payload_length``, boot protocol 2.08+), and the
  standard library decompresses it, so ``extract_vmlinux`` reads that.
- Modules: the subsystems a network or sandbox test can reach (``net``,
  ``fs``, ``crypto``, ``lib``, network and virtio drivers ...), not sound or
  graphics drivers, with ``modules.dep``/``modules.alias`` made by busybox's
  depmod. The VM's kernel autoloads from them through busybox's modprobe
  (``bin/modprobe``), so it does not matter whether the host has kmod.
- The initramfs: busybox-static, ``init.sh`` and the modules needed to
  reach the 9p shares and build the overlay, in load order; written as a
  newc cpio by ``newc_archive`` (no cpio tool needed, owners always root).
"""

from __future__ import annotations

import fcntl
import hashlib
import lzma
import os
import re
import shutil
import stat
import struct
import subprocess
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / "build" / "vm"
INIT_SCRIPT = Path(__file__).with_name("init.sh")
BUSYBOX = Path("/bin/busybox")
META_PACKAGE = "linux-image-amd64"

# What the initramfs loads before anything else: virtio PCI transport, the
# 9p shares (host root and exchange directory), the overlay over the
# read-only root, a virtio NIC for VMs on a TAP and virtio-rng, so that
# nothing in the guest waits for entropy.
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_net", "virtio-rng")
# Parts of the module tree a test can need; the rest (sound, graphics,
# storage controllers, ...) is 300 MB nobody loads in these VMs.
MODULE_DIRS = (
    "arch", "block", "crypto", "fs", "lib", "mm", "net", "virt",
    "drivers/net", "drivers/virtio", "drivers/char", "drivers/block", "drivers/vhost",
    "drivers/ptp", "drivers/pps",
)  # fmt: skip


class KernelBuildError(RuntimeError):
    """The kernel package could not be resolved, fetched or unpacked."""


@dataclass(frozen=True)
class Kernel:
    version: str
    """``uname -r`` inside the VM, e.g. ``6.1.0-57-amd64``."""
    package: str
    """The Debian package and version it came from."""
    directory: Path
    vmlinux: Path
    initramfs: Path
    modules: Path
    """The tree to appear as ``/lib/modules/<version>`` in the VM."""
    modprobe: Path
    """busybox's modprobe, for ``/proc/sys/kernel/modprobe`` in the VM."""


def builder_hash() -> str:
    digest = hashlib.sha256()
    for source in (Path(__file__), INIT_SCRIPT):
        digest.update(source.read_bytes())
    if BUSYBOX.exists():
        digest.update(str(BUSYBOX.stat().st_size).encode())
    return digest.hexdigest()[:10]


def resolve_image_package() -> str:
    """The image package ``linux-image-amd64`` depends on, from apt's lists."""
    try:
        shown = subprocess.run(["apt-cache", "depends", META_PACKAGE], capture_output=True,
                               text=True, check=True, timeout=60).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as err:
        raise KernelBuildError(f"apt-cache cannot resolve {META_PACKAGE} (run `apt-get update`?): {err}") from err
    found = re.findall(r"Depends: (linux-image-[0-9][^\s]*)", shown)
    if not found:
        raise KernelBuildError(f"{META_PACKAGE} depends on no linux-image package in apt's lists:\n{shown}")
    return found[0]


def debian_kernel() -> Kernel:
    """The cached kernel for the current ``linux-image-amd64``, built if missing."""
    package = resolve_image_package()
    version = package.removeprefix("linux-image-")
    directory = CACHE / f"{version}-{builder_hash()}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (directory / "complete").exists():
            _build(package, version, directory)
            for old in CACHE.iterdir():
                if old.is_dir() and old != directory:
                    shutil.rmtree(old, ignore_errors=True)
    return Kernel(
        version=version,
        package=(directory / "complete").read_text().strip(),
        directory=directory,
        vmlinux=directory / "vmlinux",
        initramfs=directory / "initramfs.cpio",
        modules=directory / "lib" / "modules" / version,
        modprobe=directory / "bin" / "modprobe",
    )


def _build(package: str, version: str, directory: Path) -> None:
    if not BUSYBOX.exists():
        raise KernelBuildError(f"{BUSYBOX} is missing: install busybox-static")
    shutil.rmtree(directory, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=CACHE))
    try:
        with tempfile.TemporaryDirectory(prefix="apt-", dir=CACHE) as download:
            os.chmod(download, 0o755)  # apt's _apt user writes there
            got = subprocess.run(["apt-get", "download", "-q", package], cwd=download,
                                 capture_output=True, text=True, timeout=900)  # fmt: skip
            debs = list(Path(download).glob("*.deb"))
            if got.returncode != 0 or len(debs) != 1:
                raise KernelBuildError(f"apt-get download {package} failed:\n{got.stdout}{got.stderr}")
            deb = debs[0]
            vmlinuz = _unpack(deb, staging, version)
        (staging / "vmlinux").write_bytes(extract_vmlinux(vmlinuz.read_bytes()))
        vmlinuz.unlink()
        subprocess.run([str(BUSYBOX), "depmod", "-b", str(staging), version], check=True,
                       capture_output=True, timeout=300)  # fmt: skip
        modules = staging / "lib" / "modules" / version
        (staging / "bin").mkdir()
        shutil.copy2(BUSYBOX, staging / "bin" / "busybox")
        (staging / "bin" / "modprobe").symlink_to("busybox")
        (staging / "initramfs.cpio").write_bytes(_initramfs(modules))
        (staging / "complete").write_text(deb.name.removesuffix(".deb") + "\n")
        staging.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _unpack(deb: Path, into: Path, version: str) -> Path:
    """Extract the bzImage and the wanted part of the module tree; returns the bzImage's path."""
    wanted = tuple(f"lib/modules/{version}/kernel/{d}/" for d in MODULE_DIRS)
    lists = tuple(f"lib/modules/{version}/modules.{n}" for n in ("builtin", "builtin.modinfo", "order"))
    vmlinuz = f"boot/vmlinuz-{version}"
    found = None
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
            for member in archive:
                name = member.name.removeprefix("./")
                if not member.isfile() or ".." in name.split("/"):
                    continue
                if name == vmlinuz or name.startswith(wanted) or name in lists:
                    target = into / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = archive.extractfile(member)
                    assert source is not None
                    with open(target, "wb") as out:
                        shutil.copyfileobj(source, out)
                    if name == vmlinuz:
                        found = target
    if proc.returncode != 0 or found is None:
        raise KernelBuildError(f"{deb.name}: dpkg-deb failed or has no {vmlinuz}")
    return found


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF kernel inside a bzImage, located by its setup header."""
    if bzimage[0x202:0x206] != b"HdrS" or struct.unpack_from("<H", bzimage, 0x206)[0] < 0x208:
        raise KernelBuildError("not a bzImage with boot protocol 2.08 or later (no payload fields)")
    setup_sectors = bzimage[0x1F1] or 4
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    payload = bzimage[(setup_sectors + 1) * 512 + offset:][:length]
    if payload.startswith(b"\xfd7zXZ\x00"):
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    elif payload.startswith(b"\x1f\x8b"):
        elf = zlib.decompressobj(wbits=31).decompress(payload)
    else:
        raise KernelBuildError(f"bzImage payload compressed with an unsupported method (magic {payload[:6].hex()})")
    if not elf.startswith(b"\x7fELF"):
        raise KernelBuildError("the bzImage payload did not decompress to an ELF image")
    return elf


def _load_order(modules: Path, wanted: tuple[str, ...]) -> list[str]:
    """Paths (relative to the module tree) of ``wanted`` and their dependencies, dependencies first."""
    depends: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules / "modules.dep").read_text().splitlines():
        path, _, deps = line.partition(":")
        depends[path] = deps.split()
        by_name[Path(path).name.removesuffix(".ko").replace("-", "_")] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in depends[path]:
            visit(dep)
        order.append(path)

    for name in wanted:
        key = name.replace("-", "_")
        if key not in by_name:
            raise KernelBuildError(f"module {name} is not in the kernel package")
        visit(by_name[key])
    return order


def _initramfs(modules: Path) -> bytes:
    order = _load_order(modules, BOOT_MODULES)
    entries: list[tuple[str, int, bytes]] = [
        ("bin", stat.S_IFDIR | 0o755, b""),
        ("dev", stat.S_IFDIR | 0o755, b""),
        ("proc", stat.S_IFDIR | 0o755, b""),
        ("sys", stat.S_IFDIR | 0o755, b""),
        ("modules", stat.S_IFDIR | 0o755, b""),
        ("bin/busybox", stat.S_IFREG | 0o755, BUSYBOX.read_bytes()),
        ("bin/sh", stat.S_IFLNK | 0o777, b"busybox"),
        ("init", stat.S_IFREG | 0o755, INIT_SCRIPT.read_bytes()),
        ("modules/order", stat.S_IFREG | 0o644, "".join(Path(p).name + "\n" for p in order).encode()),
    ]
    entries += [(f"modules/{Path(p).name}", stat.S_IFREG | 0o644, (modules / p).read_bytes()) for p in order]
    return newc_archive(entries)


def newc_archive(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A cpio archive in the kernel's initramfs format ("newc"), every file owned by root."""
    out = bytearray()

    def add(name: str, mode: int, data: bytes, ino: int) -> None:
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        out.extend(b"\0" * (-len(out) % 4) + data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data) in enumerate(entries, start=1):
        add(name, mode, data, ino)
    add("TRAILER!!!", 0, b"", 0)
    return bytes(out)
