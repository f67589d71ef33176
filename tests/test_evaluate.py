from srctl import model as M
from srctl.evaluate import evaluate


def test_evaluate_reports_model_and_bicubic(raw_dir):
    paths = sorted((raw_dir / "BSDS300" / "images" / "test").glob("*.jpg"))
    metrics, pictures = evaluate(M.ESPCN(3).eval(), paths, samples=1)
    assert 20 < metrics["bicubic_psnr"] < 40 and 0 < metrics["bicubic_ssim"] < 1
    assert metrics["psnr"] < metrics["bicubic_psnr"]  # an untrained network is worse than bicubic
    ((name, strip),) = pictures.items()
    assert strip.size in ((3 * 480, 321), (3 * 321, 480)) and name.endswith("_bicubic_sr_hr")
