"""Inference on real photos, through the library and through the real `srctl` command."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pillow_heif
import pytest
from PIL import Image

from srctl import model as M
from srctl.errors import SrctlError
from srctl.infer import PyfuncModel, engine, infer, many_inputs, open_image, output_paths
from srctl.upscale import upscale_image

from conftest import BSDS300, DATASETS, flat_error, srctl_cli


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    M.save(M.ESPCN(3), folder)
    return folder


def test_chroma_is_bicubic_and_size_is_scaled(photo):
    net = M.ESPCN(3).eval()
    img = Image.open(photo).convert("RGB").crop((0, 0, 90, 60))
    out = upscale_image(net, img)
    assert out.size == (270, 180) and out.mode == "RGB"
    _, cb, cr = out.convert("YCbCr").split()
    _, cb0, cr0 = img.convert("YCbCr").split()
    want = np.asarray(cb0.resize(out.size, Image.Resampling.BICUBIC), dtype=float)
    assert np.abs(np.asarray(cb, dtype=float) - want).mean() < 2  # up to YCbCr->RGB->YCbCr rounding


def test_output_paths_rules(tmp_path, photo):
    assert output_paths([photo], None, 3) == [tmp_path / "photo_x3.png"]
    other = tmp_path / "b.png"
    Image.new("RGB", (4, 4)).save(other)
    assert output_paths([photo, other], tmp_path / "out", 3) == [
        tmp_path / "out" / "photo.png",
        tmp_path / "out" / "b.png",
    ]
    with pytest.raises(SrctlError, match="is an input"):
        output_paths([photo], photo, 3, force=True)
    with pytest.raises(SrctlError, match="exists; pass --force"):
        output_paths([photo], other, 3)
    # -o is a folder when its name ends with / or the arguments named a folder or a pattern
    assert output_paths([photo], f"{tmp_path}/new/", 3) == [tmp_path / "new" / "photo.png"]
    assert output_paths([photo], tmp_path / "new", 3, many=True) == [tmp_path / "new" / "photo.png"]
    with pytest.raises(SrctlError, match="no image format by that suffix"):
        output_paths([photo], tmp_path / "new", 3)
    with pytest.raises(SrctlError, match="an icon holds at most 256x256"):
        output_paths([photo], tmp_path / "big.ico", 3)
    with pytest.raises(SrctlError, match="names an image, but the inputs are several"):
        output_paths([photo, other], tmp_path / "x.png", 3)
    assert output_paths([photo], f"{tmp_path}/x.png/", 3) == [tmp_path / "x.png" / "photo.png"]
    assert not (tmp_path / "new").exists() and not (tmp_path / "x.png").exists()
    folder = tmp_path / "shots"
    folder.mkdir()
    assert many_inputs([str(folder)]) and many_inputs([f"{tmp_path}/*.jpg"])
    assert many_inputs([str(photo), str(other)]) and not many_inputs([str(photo)])


def test_infer_batch_keeps_going_past_a_bad_file(tmp_path, photo, model_dir):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    before = photo.read_bytes()
    failed = infer([photo, bad], engine(model_dir, precision="fp32"), tmp_path / "out")
    assert failed == 1
    assert Image.open(tmp_path / "out" / "photo.png").size == (481 * 3, 321 * 3)
    assert not (tmp_path / "out" / "broken.png").exists()
    # a folder that cannot be made (a file is in the way): one line
    with pytest.raises(SrctlError, match="photo.jpg/out: cannot make the folder"):
        infer([photo, bad], engine(model_dir, precision="fp32"), photo / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "photo.png"
    ]  # no temp files left
    assert photo.read_bytes() == before


def test_pyfunc_predict_takes_and_returns_base64(model_dir):
    from srctl.infer import _load_pyfunc

    raw = (DATASETS / "Set5" / "baby.bmp").read_bytes()
    model = _load_pyfunc(str(model_dir))
    assert isinstance(model, PyfuncModel)  # what MLflow's loader_module gets: no pickle involved
    (b64_png,) = model.predict([base64.b64encode(raw).decode()])
    out = Image.open(io.BytesIO(base64.b64decode(b64_png)))
    assert out.format == "PNG" and out.size == tuple(
        3 * s for s in Image.open(io.BytesIO(raw)).size
    )


def test_cli_missing_file_is_one_line_error(tmp_path):
    res = srctl_cli("infer", "--run-id", "x", "nope.jpg", cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr.strip() == "error: nope.jpg: no such file"


def test_cli_unknown_run_is_one_line_error(tmp_path, photo, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    res = srctl_cli("infer", "--run-id", "0123456789abcdef", str(photo), cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr.startswith("error: cannot load model runs:/0123456789abcdef/model")
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not (tmp_path / "photo_x3.png").exists()


def test_cli_output_is_a_folder_for_a_folder_even_of_one_picture(tmp_path, photo, model_dir):
    shots = tmp_path / "shots"
    shots.mkdir()
    photo.rename(shots / photo.name)
    args = ("infer", "--model-dir", str(model_dir), str(shots), "-o", "out")
    res = srctl_cli(*args, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert Image.open(tmp_path / "out" / "photo.png").size == (481 * 3, 321 * 3)


def test_cli_model_dir_needs_no_mlflow(tmp_path, photo, model_dir):
    """`--model-dir` (the pipeline's models/espcn after `dvc pull`, say): no store is opened or
    made."""
    res = srctl_cli("infer", "--model-dir", str(model_dir), str(photo), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert Image.open(tmp_path / "photo_x3.png").size == tuple(
        3 * n for n in Image.open(photo).size
    )
    assert not (tmp_path / "mlflow.db").exists()
    for args, message in [
        (["--model-dir", str(tmp_path)], f"error: {tmp_path}: not a model folder (no config.json)"),
        (
            ["--model-dir", str(model_dir), "--run-id", "x"],
            "error: give one of --run-id, --model and --model-dir",
        ),
    ]:
        res = srctl_cli("infer", *args, str(photo), "--force", cwd=tmp_path)
        assert res.returncode == 1 and res.stderr.strip() == message


# --- odd and bad inputs
# ----------------------------------------------------------------------------


def _bomb_png(path):
    """A valid 8x8 PNG whose header is rewritten to claim 60000x60000 pixels (CRC fixed up)."""
    import struct
    import zlib

    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", 60000, 60000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


def _odd_images(folder):
    """name -> (path, expected output mode) for images that are odd but valid."""
    src = Image.open(BSDS300 / "images" / "test" / "3096.jpg").convert("RGB").crop((0, 0, 40, 30))
    cases = {}

    def put(name, img, mode, **save):
        path = folder / name
        img.save(path, **save)
        cases[name] = (path, mode)

    put("palette.png", src.convert("P", palette=Image.Palette.ADAPTIVE), "RGB")
    put("cmyk.jpg", src.convert("CMYK"), "RGB")
    put("gray.png", src.convert("L"), "L")
    put("la.png", src.convert("LA"), "LA")
    put("lab.tif", src.convert("LAB"), "RGB")  # its bands are L, A, B: no alpha among them
    put("one-bit.png", src.convert("1"), "L")
    rgba = src.copy()
    rgba.putalpha(Image.linear_gradient("L").resize(src.size))
    put("rgba.png", rgba, "RGBA")
    put("sixteen.png", Image.fromarray(np.asarray(src.convert("L"), dtype=np.uint16) * 257), "L")
    grey32 = np.asarray(src.convert("L"), dtype=np.int64) * (2**31 - 1) // 255
    put("thirty-two.tif", Image.fromarray(grey32.astype(np.int32)), "L")  # mode I, as a PGM's 16
    put("one.png", Image.new("RGB", (1, 1), (200, 10, 10)), "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    put("rotated.jpg", src, "RGB", exif=exif)
    put("My Photo.JPG", src, "RGB", format="JPEG")
    # an iPhone's photo: HEIF (HEVC inside), which Pillow alone cannot open
    pillow_heif.from_pillow(src).save(folder / "iphone.heic", quality=95)
    cases["iphone.heic"] = (folder / "iphone.heic", "RGB")
    return cases


def test_odd_images_are_upscaled_right(tmp_path):
    net = M.ESPCN(3).eval()
    for name, (path, mode) in _odd_images(tmp_path).items():
        img = open_image(path)
        out = upscale_image(net, img)
        assert out.mode == mode, name
        assert out.size == (img.width * 3, img.height * 3), name
    # EXIF orientation 6: the 40x30 picture is shown (and upscaled) upright as 30x40
    assert open_image(tmp_path / "rotated.jpg").size == (30, 40)
    rgb = Image.open(BSDS300 / "images" / "test" / "3096.jpg").convert("RGB").crop((0, 0, 40, 30))
    heic = np.asarray(open_image(tmp_path / "iphone.heic"), dtype=float)
    assert np.abs(heic - np.asarray(rgb, dtype=float)).mean() < 2  # HEVC's loss, at quality 95
    # 16- and 32-bit are scaled to 8 bits, not clipped to white
    gray = np.asarray(upscale_image(net, open_image(tmp_path / "gray.png")), dtype=float)
    for deep in ("sixteen.png", "thirty-two.tif"):
        out = np.asarray(upscale_image(net, open_image(tmp_path / deep)), dtype=float)
        assert np.abs(out - gray).max() <= 1, deep
    # a LAB picture comes out as its colours (its A band is no alpha)
    lab = upscale_image(net, open_image(tmp_path / "lab.tif"))
    assert np.abs(np.asarray(lab, float) - np.asarray(upscale_image(net, rgb), float)).max() <= 4
    # alpha is carried over, bicubically upscaled
    src = open_image(tmp_path / "rgba.png")
    want = src.getchannel("A").resize((120, 90), Image.Resampling.BICUBIC)
    got = np.asarray(upscale_image(net, src).getchannel("A"), dtype=float)
    # torch's bicubic (a=-0.75) vs PIL's (a=-0.5)
    assert np.abs(got - np.asarray(want, dtype=float)).max() <= 3


def _bad_images(folder):
    """name -> the reason the one-line error must give."""
    good = io.BytesIO()
    Image.open(BSDS300 / "images" / "test" / "3096.jpg").save(good, format="JPEG")
    (folder / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 3])
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.png").write_text("these are not pixels\n")
    (folder / "folder.jpg").mkdir()
    _bomb_png(folder / "bomb.png")
    return {
        "truncated.jpg": "damaged or unreadable image",
        "empty.png": "not an image",
        "notes.png": "not an image",
        "folder.jpg": "is a folder with no images",
        "missing.jpg": "no such file",
        "bomb.png": "too many pixels",
    }


@pytest.mark.parametrize(
    "name", ["truncated.jpg", "empty.png", "notes.png", "folder.jpg", "missing.jpg", "bomb.png"]
)
def test_bad_images_get_a_reason(tmp_path, name):
    reasons = _bad_images(tmp_path)
    with pytest.raises(SrctlError, match=reasons[name]) as err:
        open_image(tmp_path / name)
    assert str(err.value).startswith(str(tmp_path / name)) and "\n" not in str(err.value)


def test_cli_batch_of_good_odd_and_bad_files(tmp_path, logged_model_store):
    store, run_id = logged_model_store
    inputs = tmp_path / "in"
    inputs.mkdir()
    odd = _odd_images(inputs)
    bad = _bad_images(inputs)
    before = {p: p.read_bytes() for p in inputs.iterdir() if p.is_file()}
    out = tmp_path / "out"
    res = srctl_cli(
        "infer",
        "--run-id",
        run_id,
        *(str(inputs / n) for n in [*odd, *bad]),
        "-o",
        str(out),
        cwd=store,
    )
    assert res.returncode == 1
    errors = res.stderr.strip().splitlines()
    assert (
        len(errors) == len(bad) + 1
        and errors[-1] == f"error: {len(bad)} of {len(odd) + len(bad)} images failed"
    )
    for name, reason in bad.items():
        assert any(line.startswith(f"error: {inputs / name}: {reason}") for line in errors), name
    assert "Traceback" not in res.stderr
    # nothing else
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{Path(n).stem}.png" for n in odd)
    assert {p: p.read_bytes() for p in before} == before  # inputs untouched


@pytest.mark.parametrize("arch", ["seed", "contrast"])
def test_tiles_equal_untiled_inference(photo, arch):
    import torch

    torch.manual_seed(3)
    net = M.ESPCN.named(arch, 3).eval()
    img = Image.open(photo).convert("RGB").crop((0, 0, 203, 151))
    whole = np.asarray(upscale_image(net, img, tile=10_000), dtype=int)
    for tile in (16, 50):
        tiled = np.asarray(upscale_image(net, img, tile=tile), dtype=int)
        assert np.abs(tiled - whole).max() <= 1  # at most 1/255, from float summation order


def test_size_resizes_the_result_keeping_the_aspect_unless_both_sides_are_given(
    tmp_path, photo, model_dir
):
    from srctl.infer import parse_size
    from srctl.pictures import target_size

    assert parse_size("1920x1080") == (1920, 1080)
    assert parse_size("640") == parse_size("640x") == (640, None)
    assert parse_size("X480") == (None, 480)
    assert target_size((None, 100), 300, 200) == (150, 100)
    assert target_size((100, None), 300, 200, multiple=2) == (100, 66)  # computed side: even
    w, h = Image.open(photo).size
    for size, want in (("100x50", (100, 50)), ("200", (200, round(h * 200 / w)))):
        out = tmp_path / f"{size}.png"
        res = srctl_cli(
            "infer",
            "--model-dir",
            str(model_dir),
            "--size",
            size,
            str(photo),
            "-o",
            str(out),
            cwd=tmp_path,
        )
        assert res.returncode == 0, res.stderr
        assert Image.open(out).size == want
    for bad in ("abc", "0x10", "x", "12x34x5"):
        res = srctl_cli("infer", "--size", bad, str(photo), cwd=tmp_path)
        assert res.returncode == 1 and res.stderr.strip() == (
            f"error: --size {bad!r}: expected WxH, W or xH in pixels (1-65535)"
        ), res.stderr


def test_flat_and_dark_regions_keep_their_level():
    """The contrast network (the default's) keeps every flat region within 1 level, whatever its
    weights (random and large here, as no training reaches), in fp32 and bf16; the residual one
    with biases does not (what issue 13 saw: black lifted to 2-7)."""
    import torch

    torch.manual_seed(0)
    net = M.ESPCN.named("contrast", 3).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    from srctl.upscale import upscale_batch

    for amp in (None, torch.bfloat16):
        assert flat_error(net, lambda x, amp=amp: upscale_batch(net, x, amp=amp)) <= 1
    residual = M.ESPCN.named("residual", 3).eval()
    assert flat_error(residual, lambda x: upscale_batch(residual, x)) > 1


def test_folders_globs_and_batches(tmp_path, model_dir, capsys):
    from srctl.infer import collect_inputs

    folder = tmp_path / "shots"
    folder.mkdir()
    photo = Image.open(BSDS300 / "images" / "test" / "3096.jpg").convert("RGB")
    for i, name in enumerate(("b.jpg", "a.JPG", "c.png", "d.avif")):  # a crop each: order shows
        photo.crop((180 + 40 * i, 130, 210 + 40 * i, 150)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    assert [p.name for p in collect_inputs([str(folder)])] == ["a.JPG", "b.jpg", "c.png", "d.avif"]
    assert [p.name for p in collect_inputs([str(folder / "*.jpg"), str(folder / "b.jpg")])] == [
        "b.jpg"
    ]
    (gif,) = collect_inputs([str(folder / "*.gif")])
    with pytest.raises(SrctlError, match="no such file matches"):
        open_image(gif)
    # four same-size images go through the network as one batch: same result as one by one, up
    # to float rounding (oneDNN may pick another convolution kernel for a batch of 3 than for 1, so
    # a pixel near x.5 can round the other way: seen on a CI machine)
    run = engine(model_dir, precision="fp32")  # onnxruntime, against PyTorch one by one
    assert infer(collect_inputs([str(folder)]), run, tmp_path / "out") == 0
    net = M.load(model_dir)
    for name in ("a", "b", "c", "d"):
        src = next(folder.glob(f"{name}.*"))
        alone = np.asarray(upscale_image(net, open_image(src)), dtype=int)
        batched = np.asarray(Image.open(tmp_path / "out" / f"{name}.png"), dtype=int)
        assert batched.shape == alone.shape and np.abs(batched - alone).max() <= 1
        assert (batched != alone).mean() < 0.001


def test_icc_profile_kept_and_output_format_from_the_name(tmp_path, model_dir, capsys):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = tmp_path / "tagged.png"
    Image.open(BSDS300 / "images" / "test" / "3096.jpg").crop((0, 0, 40, 30)).save(
        src, icc_profile=icc
    )
    assert infer([src], engine(model_dir), tmp_path / "out.webp") == 0
    out = Image.open(tmp_path / "out.webp")
    assert out.format == "WEBP" and out.info.get("icc_profile") == icc
    # a profile of other colours (CMYK's, say; Lab's here) does not describe the RGB upscale
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    Image.open(src).save(src, icc_profile=lab)
    assert infer([src], engine(model_dir), tmp_path / "lab.png") == 0
    assert "icc_profile" not in Image.open(tmp_path / "lab.png").info
    rgba = tmp_path / "alpha.png"
    Image.new("RGBA", (8, 8)).save(rgba)
    # JPEG keeps no alpha: the colours are written, and the line says so
    assert infer([rgba], engine(model_dir, precision="fp32"), tmp_path / "alpha.jpg") == 0
    assert "alpha dropped: .jpg keeps none" in capsys.readouterr().out
    jpeg = Image.open(tmp_path / "alpha.jpg")
    assert jpeg.mode == "RGB" and jpeg.size == (24, 24)
