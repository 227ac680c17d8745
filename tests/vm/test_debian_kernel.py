"""The VM builder's pure parts, without a VM: the bzImage payload, the
initramfs archive (read back by busybox's cpio) and the module load order."""

from __future__ import annotations

import lzma
import struct
import subprocess
from pathlib import Path

import pytest

from tests.vm.debian_kernel import BUSYBOX, KernelBuildError, _load_order, extract_vmlinux, newc_archive


def bzimage(payload: bytes, setup_sectors: int = 3, offset: int = 0x2C0) -> bytes:
    """A bzImage as far as extract_vmlinux reads it: setup header fields, then the payload."""
    image = bytearray((setup_sectors + 1) * 512 + offset)
    image[0x1F1] = setup_sectors
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x20F)
    struct.pack_into("<II", image, 0x248, offset, len(payload))
    return bytes(image) + payload + b"\0\0\0\0"  # the decompressed size the kernel appends


def test_vmlinux_is_the_payload_the_setup_header_points_at() -> None:
    elf = b"\x7fELF" + bytes(range(256)) * 40
    assert extract_vmlinux(bzimage(lzma.compress(elf, format=lzma.FORMAT_XZ))) == elf


@pytest.mark.parametrize(("image", "message"), [
    (b"\0" * 4096, "not a bzImage"),
    (bzimage(b"\x28\xb5\x2f\xfd" + b"\0" * 64), "unsupported method"),
    (bzimage(lzma.compress(b"not an elf", format=lzma.FORMAT_XZ)), "did not decompress to an ELF"),
])  # fmt: skip
def test_what_is_not_a_bootable_kernel_is_refused_with_the_reason(image: bytes, message: str) -> None:
    with pytest.raises(KernelBuildError, match=message):
        extract_vmlinux(image)


def test_the_initramfs_is_a_newc_archive_busybox_reads_back(tmp_path: Path) -> None:
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is needed to read the archive back")
    archive = newc_archive([
        ("bin", 0o040755, b""), ("bin/tool", 0o100755, b"#!/bin/sh\n"), ("bin/link", 0o120777, b"tool"),
        ("odd", 0o100644, b"abc"),
    ])  # fmt: skip
    subprocess.run([str(BUSYBOX), "cpio", "-i", "-d"], input=archive, cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "bin" / "tool").read_bytes() == b"#!/bin/sh\n"
    assert (tmp_path / "bin" / "tool").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "bin" / "link").readlink() == Path("tool")
    assert (tmp_path / "odd").read_bytes() == b"abc"


def test_boot_modules_load_after_what_they_depend_on(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko\n"
        "kernel/net/9p/9pnet.ko:\n"
        "kernel/fs/netfs/netfs.ko:\n"
        "kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko\n"
        "kernel/drivers/virtio/virtio.ko:\n"
    )
    assert _load_order(tmp_path, ("9p", "virtio_rng", "9pnet")) == [
        "kernel/net/9p/9pnet.ko", "kernel/fs/netfs/netfs.ko", "kernel/fs/9p/9p.ko",
        "kernel/drivers/virtio/virtio.ko", "kernel/drivers/char/hw_random/virtio-rng.ko",
    ]  # fmt: skip
    with pytest.raises(KernelBuildError, match="not in the kernel package"):
        _load_order(tmp_path, ("overlay",))
