import numpy as np
from PIL import Image

from srctl.color import y_channel
from srctl.degrade import crop_to_multiple, downscale
from srctl.download import content_hash
from srctl.prepare import load_split

from conftest import your_pictures


def test_prepared_pairs_are_aligned_uint8_stacks(prepared_dir, raw_dir):
    train, meta = load_split(prepared_dir, "train")
    test, _ = load_split(prepared_dir, "test")
    sha = content_hash(raw_dir / "BSDS300")
    assert meta == {"scale": "3", "dataset_sha256": sha, "degradation": "clean"}
    assert train["hr"].shape == (4, 1, 321, 480) and train["lr"].shape == (4, 1, 107, 160)
    assert test["hr"].shape[0] == 2 and str(train["hr"].dtype) == "torch.uint8"
    assert len(list(prepared_dir.iterdir())) == 2  # two compact files, not thousands


def test_the_same_data_makes_the_same_bytes(prepared_dir, raw_dir, tmp_path):
    """DVC hashes the files: preparing the same images again, in another process, must not look
    like a change (with two metadata entries, safetensors wrote them in a random order)."""
    import subprocess
    import sys

    code = "import sys; from pathlib import Path; from srctl import params as P; "
    code += "from srctl.prepare import prepare; prepare(Path(sys.argv[1]), Path(sys.argv[2]), "
    code += "P.Params())"
    for i in range(4):
        out = tmp_path / str(i)
        subprocess.run([sys.executable, "-c", code, str(raw_dir), str(out)], check=True)
        for name in ("train.safetensors", "test.safetensors"):
            assert (out / name).read_bytes() == (prepared_dir / name).read_bytes()


def test_lr_is_the_antialiased_bicubic_downscale(prepared_dir, raw_dir):
    first = sorted((raw_dir / "BSDS300" / "images" / "train").glob("*.jpg"))[0]
    img = Image.open(first).convert("RGB")
    if img.height > img.width:
        img = img.transpose(Image.Transpose.ROTATE_90)
    hr = crop_to_multiple(img, 3)
    train, _ = load_split(prepared_dir, "train")
    np.testing.assert_array_equal(train["hr"][0, 0].numpy(), y_channel(hr))
    np.testing.assert_array_equal(train["lr"][0, 0].numpy(), y_channel(downscale(hr, 3)))
    # antialiased: a 1-pixel checkerboard downscales to flat grey, not to aliased stripes
    checker = Image.fromarray(((np.indices((90, 90)).sum(0) % 2) * 255).astype(np.uint8)).convert(
        "RGB"
    )
    small = np.asarray(downscale(checker, 3).convert("L"), dtype=float)
    assert small[2:-2, 2:-2].std() < 30 and abs(small.mean() - 127.5) < 20


def test_crop_to_multiple():
    assert crop_to_multiple(Image.new("RGB", (481, 321)), 3).size == (480, 321)
    assert crop_to_multiple(Image.new("RGB", (481, 321)), 4).size == (480, 320)


def test_real_degradation_makes_a_seeded_pool_and_jpeg_test_inputs(raw_dir, tmp_path):
    """train.degradation: real: each training image gets degrade.variants degraded LR copies
    (the same bytes on every run), the test split the messenger's JPEG of the clean LR."""
    import dataclasses

    import torch

    from srctl import degrade
    from srctl import params as P
    from srctl.prepare import prepare

    base = P.Params()
    params = dataclasses.replace(
        base,
        train=dataclasses.replace(base.train, degradation="real"),
        degrade=dataclasses.replace(base.degrade, variants=3),
    )
    for out in ("a", "b"):
        prepare(raw_dir, tmp_path / out, params)
    train, meta = load_split(tmp_path / "a", "train")
    test, _ = load_split(tmp_path / "a", "test")
    assert meta["degradation"] == "real"
    assert train["lr"].shape == (4, 3, 107, 160) and train["hr"].shape == (4, 1, 321, 480)
    assert not torch.equal(train["lr"][:, 0], train["lr"][:, 1])  # three different copies
    first = sorted((raw_dir / "BSDS300" / "images" / "test").glob("*.jpg"))[0]
    img = Image.open(first).convert("RGB")
    if img.height > img.width:
        img = img.transpose(Image.Transpose.ROTATE_90)
    want = y_channel(degrade.jpeg(downscale(crop_to_multiple(img, 3), 3)))
    np.testing.assert_array_equal(test["lr"][0, 0].numpy(), want)
    for name in ("train.safetensors", "test.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_your_pictures_join_the_training_split_as_tiles(raw_dir, tmp_path):
    import dataclasses

    import torch

    from srctl import params as P
    from srctl.prepare import extra_images, prepare

    your_pictures(tmp_path)
    base = P.Params()
    params = dataclasses.replace(
        base, prepare=dataclasses.replace(base.prepare, extra_train=["data/extra/mine"])
    )
    files = extra_images(params.prepare.extra_train, tmp_path)
    assert [f.name for f in files] == ["big.png", "tall.jpg"]
    # a folder named twice, or with the folder holding it, adds its pictures once
    assert extra_images(["data/extra/mine", "data/extra", "data/extra/mine/"], tmp_path) == files
    assert prepare(raw_dir, tmp_path / "out", params, files) == {"train": 4 + 5, "test": 2}
    train, meta = load_split(tmp_path / "out", "train")
    assert train["hr"].shape == (9, 1, 321, 480) and train["lr"].shape == (9, 1, 107, 160)
    assert meta["extra_train"] == "data/extra/mine" and len(meta["extra_sha256"]) == 64
    # the first tile is the big picture's top-left 480x321 of its centred grid, its LR bicubic
    big = Image.open(files[0]).convert("RGB").crop((20, 29, 500, 350))
    np.testing.assert_array_equal(train["hr"][4, 0].numpy(), y_channel(big))
    np.testing.assert_array_equal(train["lr"][4, 0].numpy(), y_channel(downscale(big, 3)))
    # the portrait picture came back to landscape
    tall = Image.open(files[1]).convert("RGB").transpose(Image.Transpose.ROTATE_90)
    assert torch.equal(train["hr"][8, 0], torch.from_numpy(y_channel(tall.crop((0, 0, 480, 321)))))


def test_bad_folders_of_your_pictures_are_one_line_errors(raw_dir, tmp_path):

    import pytest

    from srctl import params as P
    from srctl.errors import SrctlError
    from srctl.prepare import extra_images, prepare

    mine = your_pictures(tmp_path)
    (tmp_path / "data" / "extra" / "empty").mkdir()
    (tmp_path / "elsewhere").mkdir()
    cases = {
        "data/extra/nope": "data/extra/nope: no such folder",
        "data/extra/mine/big.png": "data/extra/mine/big.png: not a folder",
        "data/extra/empty": "data/extra/empty: no images",
        "elsewhere": "elsewhere is not under data/extra",
    }
    for folder, message in cases.items():
        with pytest.raises(SrctlError, match=message) as err:
            extra_images([folder], tmp_path)
        assert "\n" not in str(err.value)
    (mine / "broken.jpg").write_bytes((mine / "tall.jpg").read_bytes()[:300])
    Image.new("RGB", (400, 300)).save(mine / "small.png")
    for bad, message in (
        ("broken.jpg", "broken.jpg: damaged or unreadable image"),
        ("small.png", "small.png: 400x300 is smaller than a 480x321 training picture"),
    ):
        with pytest.raises(SrctlError, match=message):
            prepare(raw_dir, tmp_path / "out", P.Params(), [mine / "big.png", mine / bad])
        assert not (tmp_path / "out").exists()  # nothing half-written


def test_a_damaged_prepared_file_is_one_line(tmp_path):
    import pytest

    from srctl.errors import SrctlError

    for name, data in (("garbage", b"garbage\n"), ("cut", b"\x40\x00\x00\x00\x00\x00\x00\x00{")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "train.safetensors").write_bytes(data)
        with pytest.raises(SrctlError, match="train.safetensors: damaged .*run the prepare stage"):
            load_split(folder, "train")
