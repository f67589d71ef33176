from srctl import model as M
from srctl.evaluate import evaluate


def test_evaluate_reports_model_and_bicubic(raw_dir):
    paths = sorted((raw_dir / "BSDS300" / "images" / "test").glob("*.jpg"))
    metrics, pictures = evaluate(M.ESPCN(3).eval(), paths, samples=1)
    assert 20 < metrics["bicubic_psnr"] < 40 and 0 < metrics["bicubic_ssim"] < 1
    assert metrics["psnr"] < metrics["bicubic_psnr"]  # an untrained network is worse than bicubic
    ((name, strip),) = pictures.items()
    assert strip.size in ((3 * 480, 321), (3 * 321, 480)) and name.endswith("_bicubic_sr_hr")


def test_any_picture_scores_as_its_8_bits_and_bad_ones_are_one_line_errors(tmp_path):
    """A benchmark folder is the user's: a 16-bit greyscale scan scores as its 8-bit self (not as
    white), a damaged or too-small file stops with a line naming it."""
    import numpy as np
    import pytest
    from PIL import Image

    from srctl.errors import SrctlError

    from conftest import BSDS300

    grey = Image.open(BSDS300 / "images" / "test" / "3096.jpg").convert("L")
    grey.save(tmp_path / "eight.png")
    sixteen = (np.asarray(grey, dtype=np.uint16) * 257).astype("<u2")
    Image.fromarray(sixteen).save(tmp_path / "sixteen.png")
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    net = M.ESPCN(3).eval()
    eight, _ = evaluate(net, [tmp_path / "eight.png"])
    assert evaluate(net, [tmp_path / "sixteen.png"])[0] == eight
    (tmp_path / "cut.png").write_bytes((tmp_path / "eight.png").read_bytes()[:500])
    Image.new("RGB", (15, 15)).save(tmp_path / "tiny.png")  # 9x9 once its border is cut
    for bad, message in (("cut.png", "damaged or unreadable"), ("tiny.png", "too small to score")):
        with pytest.raises(SrctlError, match=f"{bad}: .*{message}") as err:
            evaluate(net, [tmp_path / bad])
        assert "\n" not in str(err.value)
