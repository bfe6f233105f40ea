"""validate-submission: a good zip passes; each kind of bad zip is named in the problems and exits 2."""

import io
import warnings
import zipfile

import numpy as np
import pytest
from PIL import Image

from cyclegan_dist.cli import build_parser
from cyclegan_dist.eval.submission import check_submission, validate_submission


def _img(seed, size=(256, 256), mode="RGB"):
    rng = np.random.default_rng(seed)
    a = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    return Image.fromarray(a).convert(mode)


def _encode(im, fmt="JPEG"):
    b = io.BytesIO()
    im.save(b, fmt)
    return b.getvalue()


def _zip(path, entries):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns on duplicate names, which one test wants
        with zipfile.ZipFile(path, "w") as z:
            for name, data in entries:
                z.writestr(name, data)
    return path


def _good_entries(n=5):
    return [(f"{i:05d}.jpg", _encode(_img(i))) for i in range(n)]


def _cli(argv):
    args = build_parser().parse_args(argv)
    return args.func(args)


def test_good_zip_passes(tmp_path, capsys):
    z = _zip(tmp_path / "images.zip", _good_entries(5))
    assert validate_submission(z, min_count=5, max_count=10) == []
    rep = check_submission(z, min_count=5, max_count=10)
    assert rep.ok and rep.count == 5 and rep.n_good == 5 and rep.notes == []
    assert _cli(["validate-submission", str(z), "--min-count", "5", "--max-count", "10", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK") and "5 files" in out


@pytest.mark.parametrize("case, entries, expect", [
    ("wrong_size", lambda: _good_entries(5) + [("big.jpg", _encode(_img(9, (300, 256))))],
     ["1 entries are not 256x256", "big.jpg (300x256)"]),
    ("png_renamed", lambda: _good_entries(5) + [("fake.jpg", _encode(_img(9), "PNG"))],
     ["not JPEG files by content", "fake.jpg (content is PNG)"]),
    ("grayscale", lambda: _good_entries(5) + [("grey.jpg", _encode(_img(9, mode="L")))],
     ["are not RGB", "grey.jpg (mode L)"]),
    ("cmyk", lambda: _good_entries(5) + [("cmyk.jpg", _encode(_img(9, mode="CMYK")))],
     ["are not RGB", "cmyk.jpg (mode CMYK)"]),
    ("too_few", lambda: _good_entries(3), ["3 files; Kaggle wants between 5 and 10"]),
    ("too_many", lambda: _good_entries(11), ["11 files; Kaggle wants between 5 and 10"]),
    ("duplicates", lambda: _good_entries(5) + [("00001.jpg", _encode(_img(7)))],
     ["duplicate names", "00001.jpg (x2)"]),
    ("nested", lambda: _good_entries(5) + [("images/", b""), ("images/x.jpg", _encode(_img(8)))],
     ["not at the top level", "images/x.jpg", "are directory entries"]),
    ("truncated", lambda: _good_entries(5) + [("cut.jpg", _encode(_img(9))[:300])],
     ["cannot be read or decoded", "cut.jpg (JPEG"]),
    ("bad_extension", lambda: _good_entries(5) + [("x.png", _encode(_img(9)))],
     ["do not have a .jpg/.jpeg name", "x.png"]),
])
def test_bad_zips(tmp_path, capsys, case, entries, expect):
    z = _zip(tmp_path / "images.zip", entries())
    problems = validate_submission(z, min_count=5, max_count=10)
    text = "\n".join(problems)
    for e in expect:
        assert e in text, (case, problems)
    assert _cli(["validate-submission", str(z), "--min-count", "5", "--max-count", "10", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("INVALID") and expect[0] in err


def test_first_few_bad_names_and_totals(tmp_path):
    entries = _good_entries(5) + [(f"s{i}.jpg", _encode(_img(i, (128, 128)))) for i in range(8)]
    rep = check_submission(_zip(tmp_path / "images.zip", entries), min_count=5, max_count=20, show=3)
    assert rep.count == 13 and rep.n_good == 5
    (p,) = rep.problems
    assert p.startswith("8 entries are not 256x256: s0.jpg (128x128), s1.jpg (128x128), s2.jpg (128x128)")
    assert p.endswith("(5 more)")
    assert len(rep.bad["wrong_size"]) == 8


def test_not_a_zip_missing_and_name_note(tmp_path, capsys):
    notzip = tmp_path / "images.zip"
    notzip.write_bytes(_encode(_img(0)))
    assert validate_submission(notzip) == [f"{notzip} is not a zip file"]
    assert _cli(["validate-submission", str(notzip), "--quiet"]) == 2
    assert "is not a zip file" in capsys.readouterr().err
    assert "does not exist" in validate_submission(tmp_path / "nope.zip")[0]
    other_name = _zip(tmp_path / "subm.zip", _good_entries(5))
    rep = check_submission(other_name, min_count=5)
    assert rep.ok and "images.zip" in rep.notes[0]
