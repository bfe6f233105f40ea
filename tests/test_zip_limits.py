"""Hostile zips: every zip the project reads is judged by its central directory before anything is inflated, so
memory follows the input's size, not what a zip claims to expand to (validate-submission, fid, export sources).

Each hostile case runs the real CLI; peak memory is the ``ru_maxrss`` of a fresh wrapper process's one child
(RUSAGE_CHILDREN is a maximum over all waited-for children, so it must not be this pytest process's)."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_submission import _encode, _good_entries, _img

from cyclegan_dist.errors import UserError
from cyclegan_dist.eval.submission import SUBMISSION_ENTRY_SLACK, SUBMISSION_MAX_RATIO, SUBMISSION_MEMBER_MAX
from cyclegan_dist.images import ZIP_PHOTO_MAX_BYTES, ZIP_PHOTO_MAX_RATIO, ImageSource

from helpers import jpeg_folder, run_cli

MiB = 2**20
BOMB_BYTES = 300 * MiB  # the old code held this twice over (z.read, then PIL), ~600 MiB above its baseline
MEMORY_MARGIN = 100 * MiB  # what a hostile case may add to the peak of validating a valid zip

_MEASURE = """
import json, resource, sys
sys.path.insert(0, sys.argv[1])
from helpers import run_cli
out = run_cli(*sys.argv[2:], check=False)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
print(json.dumps({"returncode": out.returncode, "stdout": out.stdout, "stderr": out.stderr, "peak": peak}))
"""


def run_measured(*args) -> dict:
    """``run_cli(*args)`` in a fresh wrapper: returncode, stdout, stderr and the CLI process's peak RSS (bytes)."""
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(Path(__file__).parent), *map(str, args)],
                          capture_output=True, text=True, timeout=600, check=True)
    return json.loads(proc.stdout)


def one_line_error(out, *expect: str) -> str:
    """The CLI refused with exit 2 and one line naming each of ``expect``, no traceback."""
    err = out["stderr"] if isinstance(out, dict) else out.stderr
    code = out["returncode"] if isinstance(out, dict) else out.returncode
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for e in expect:
        assert e in lines[0], (e, err)
    return lines[0]


def zeros_member(path: Path, name: str, nbytes: int, compression=zipfile.ZIP_DEFLATED) -> Path:
    """A zip of one member of ``nbytes`` zeros, streamed (never held in memory): tiny on disk."""
    chunk = bytes(MiB)
    with zipfile.ZipFile(path, "w", compression, compresslevel=1) as zf, zf.open(name, "w") as f:
        for _ in range(nbytes // MiB):
            f.write(chunk)
        f.write(bytes(nbytes % MiB))
    return path


def forge_sizes(path: Path, file_size: int | None = None, compress_size: int | None = None) -> Path:
    """Rewrite the sizes every central-directory entry declares (the data stays as it is): a lying header."""
    data = bytearray(path.read_bytes())
    eocd = data.rindex(b"PK\x05\x06")
    count, _, offset = struct.unpack_from("<HII", data, eocd + 10)
    for _ in range(count):
        assert data[offset:offset + 4] == b"PK\x01\x02"
        if compress_size is not None:
            struct.pack_into("<I", data, offset + 20, compress_size)
        if file_size is not None:
            struct.pack_into("<I", data, offset + 24, file_size)
        n, m, k = struct.unpack_from("<HHH", data, offset + 28)
        offset += 46 + n + m + k
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """images.zip: one 'bomb.jpg' of 300 MiB of zeros, ~1.4 MB on disk."""
    path = zeros_member(tmp_path_factory.mktemp("bomb") / "images.zip", "bomb.jpg", BOMB_BYTES)
    assert path.stat().st_size < 2 * MiB
    return path


@pytest.fixture(scope="module")
def baseline_peak(tmp_path_factory) -> int:
    """Peak RSS of validating a small valid zip: what the CLI needs anyway."""
    path = tmp_path_factory.mktemp("valid") / "images.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in _good_entries(5):
            zf.writestr(name, data)
    out = run_measured("validate-submission", path, "--min-count", "5", "--max-count", "10", "--quiet")
    assert out["returncode"] == 0, out["stderr"]
    return out["peak"]


# ------------------------------------------------------------------------------------------ validate-submission


def test_valid_deflated_submission_still_passes(tmp_path):
    """Deflated (as `zip` and shutil.make_archive write them) and with a flat-colour JPEG, the best-compressing
    kind (~6:1): still valid."""
    flat = _encode(Image.fromarray(np.full((256, 256, 3), 128, np.uint8)))
    path = tmp_path / "images.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in _good_entries(5) + [("flat.jpg", flat)]:
            zf.writestr(name, data)
    out = run_cli("validate-submission", path, "--min-count", "5", "--max-count", "10", "--quiet", check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("OK") and "6 files, 6 valid" in out.stdout


def test_member_too_large_is_refused_unread(bomb, baseline_peak):
    out = run_measured("validate-submission", bomb, "--quiet")
    one_line_error(out, str(bomb), "'bomb.jpg'", f"{BOMB_BYTES:,} bytes", f"{SUBMISSION_MEMBER_MAX:,}-byte limit",
                   "256x256 JPEG")
    assert out["stdout"] == ""
    assert out["peak"] < baseline_peak + MEMORY_MARGIN, (out["peak"], baseline_peak)


def test_absurd_compression_ratio_is_refused(tmp_path, baseline_peak):
    """1 MiB of zeros named .jpg: under the size limit, but ~200:1 is no JPEG."""
    path = zeros_member(tmp_path / "images.zip", "zeros.jpg", MiB)
    out = run_measured("validate-submission", path, "--quiet")
    line = one_line_error(out, str(path), "'zeros.jpg'", f"{MiB:,}", f"over the {SUBMISSION_MAX_RATIO}:1 limit")
    assert "ratio" in line
    assert out["peak"] < baseline_peak + MEMORY_MARGIN


def test_too_many_entries_are_refused_unread(tmp_path):
    path = tmp_path / "images.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(20001):
            zf.writestr(f"{i:05d}.jpg", b"")
    out = run_cli("validate-submission", path, "--quiet", check=False)
    one_line_error(out, str(path), "20,001 entries", f"limit of {10000 + SUBMISSION_ENTRY_SLACK:,}")


def test_total_declared_size_is_bounded(tmp_path):
    """12,000 entries, each declaring 2,000,000 bytes at 20:1 (each within the per-entry limits, and the count
    allowed by --max-count 20000): 24 GB in all is over the total limit."""
    path = tmp_path / "images.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(12000):
            zf.writestr(f"{i:05d}.jpg", b"")
    forge_sizes(path, file_size=2_000_000, compress_size=100_000)
    out = run_cli("validate-submission", path, "--max-count", "20000", "--quiet", check=False)
    one_line_error(out, str(path), "12,000 entries", "24,000,000,000 bytes in all", "-byte limit")


def test_lying_header_cannot_inflate_past_what_it_declares(bomb, tmp_path, baseline_peak):
    """The central directory says 2,000 bytes, the data inflates to 300 MiB: the stream stops at 2,000 (CRC error,
    reported as undecodable), never allocating the rest."""
    path = tmp_path / "images.zip"
    path.write_bytes(bomb.read_bytes())
    forge_sizes(path, file_size=2000)
    out = run_measured("validate-submission", path, "--min-count", "1", "--quiet")
    assert out["returncode"] == 2 and "Traceback" not in out["stderr"], out["stderr"]
    assert "1 entries cannot be read or decoded: bomb.jpg (BadZipFile" in out["stderr"]
    assert out["peak"] < baseline_peak + MEMORY_MARGIN


# ------------------------------------------------------------------------------------------ fid / ImageSource


def test_fid_refuses_a_bomb_before_loading_the_inception(bomb, tmp_path):
    real = jpeg_folder(tmp_path / "real", 3)
    out = run_cli("fid", "--generated", bomb, "--real", real, "--inception", "/nonexistent", "--no-cache", "--quiet",
                  check=False)
    line = one_line_error(out, str(bomb), "'bomb.jpg'", f"{BOMB_BYTES:,} bytes", f"{ZIP_PHOTO_MAX_BYTES:,}-byte limit",
                          "a photo")
    assert "nonexistent" not in line


def test_photo_zip_ratio_bound(tmp_path):
    """bzip2 of zeros (far beyond deflate's ~1032:1) is refused; a flat uncompressed BMP deflated (~1000:1, the
    most a real image reaches) is read."""
    bz = zeros_member(tmp_path / "bz.zip", "zeros.bmp", 8 * MiB, zipfile.ZIP_BZIP2)
    with pytest.raises(UserError) as err:
        ImageSource(bz)
    assert "'zeros.bmp'" in str(err.value) and f"over the {ZIP_PHOTO_MAX_RATIO:,}:1 limit" in str(err.value)

    bmp = io.BytesIO()
    Image.fromarray(np.full((1024, 1024, 3), 200, np.uint8)).save(bmp, "BMP")
    ok = tmp_path / "flat.zip"
    with zipfile.ZipFile(ok, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("flat.bmp", bmp.getvalue())
        zf.writestr("photo.jpg", _encode(_img(0)))
    with zipfile.ZipFile(ok) as zf:
        info = zf.getinfo("flat.bmp")
        assert info.file_size / info.compress_size > SUBMISSION_MAX_RATIO * 10  # a ratio only raw images reach
    names = [name for name, image in ImageSource(ok)]
    assert names == ["flat.bmp", "photo.jpg"]
