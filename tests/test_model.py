import json

import pytest
import torch

from srctl import model as M
from srctl import params as P
from srctl.errors import SrctlError


def test_seed_architecture_and_shapes():
    net = M.ESPCN(3)
    assert sum(p.numel() for p in net.parameters()) == 59_657
    assert net(torch.rand(2, 1, 10, 12)).shape == (2, 1, 30, 36)
    assert M.ESPCN(2)(torch.rand(1, 1, 5, 5)).shape == (1, 1, 10, 10)


def test_every_arch_params_accepts_is_built_and_keeps_flat_regions():
    assert tuple(M.ARCHS) == P.ARCHS  # params.py validates names without importing torch
    deep = M.ESPCN.named("deep", 3).eval()
    assert sum(isinstance(m, torch.nn.Conv2d) for m in deep.body) == 9
    flat = torch.full((1, 1, 12, 12), 0.37)
    torch.testing.assert_close(deep(flat), torch.full((1, 1, 36, 36), 0.37))


def test_paper_variant_is_three_tanh_layers_and_roundtrips(tmp_path):
    net = M.ESPCN.named("paper", 3)
    convs = [m for m in net.body if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0]) for c in convs] == [
        (1, 64, 5),
        (64, 32, 3),
        (32, 9, 3),
    ]
    assert sum(isinstance(m, torch.nn.Tanh) for m in net.body) == 2
    M.save(net, tmp_path)
    x = torch.rand(1, 1, 8, 8)
    torch.testing.assert_close(M.load(tmp_path)(x), net.eval()(x))


def test_residual_variant_adds_the_bicubic_upscale_and_roundtrips(tmp_path):
    import torch.nn.functional as F

    net = M.ESPCN.named("residual", 3).eval()
    assert sum(p.numel() for p in net.parameters()) == 59_657  # the seed's layers, nothing more
    x = torch.rand(2, 1, 9, 7)
    last = net.body[-2]
    with torch.no_grad():  # no residual left: the network is bicubic itself
        last.weight.zero_()
        last.bias.zero_()
    bicubic = F.interpolate(x, scale_factor=3, mode="bicubic", align_corners=False)
    torch.testing.assert_close(net(x), bicubic)
    M.save(M.ESPCN.named("residual", 3), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["residual"] is True
    assert M.load(tmp_path).residual
    # configs saved before the residual variant existed load as whole-image networks
    config = json.loads((tmp_path / "config.json").read_text())
    del config["residual"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert not M.load(tmp_path).residual


def test_contrast_variant_has_no_bias_and_zero_sum_first_filters(tmp_path):
    """Structural, so it holds for whatever weights training reaches: here random ones."""
    net = M.ESPCN.named("contrast", 3).eval()
    assert all(c.bias is None for c in net.modules() if isinstance(c, torch.nn.Conv2d))
    assert sum(p.numel() for p in net.parameters()) == 59_488
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for level in (0.0, 0.5, 1.0):  # a flat picture of any level comes out the same level
            x = torch.full((1, 1, 12, 9), level)
            torch.testing.assert_close(net(x), torch.full((1, 1, 36, 27), level))
        x = torch.rand(1, 1, 12, 9)
        # blind to the level: a brighter picture gets the same residual on a brighter bicubic
        assert (net(x + 0.25) - net(x) - 0.25).abs().max() < 1e-4
    M.save(net, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["contrast"] is True
    torch.testing.assert_close(M.load(tmp_path)(x), net(x))


def test_orthogonal_init():
    # 64 x 25: orthonormal columns times the ReLU gain
    w = M.ESPCN(3).body[0].weight.reshape(64, -1)
    gram = w.T @ w / torch.nn.init.calculate_gain("relu") ** 2
    torch.testing.assert_close(gram, torch.eye(25), atol=1e-4, rtol=0)


def test_save_load_roundtrip_without_pickle(tmp_path):
    net = M.ESPCN(4)
    M.save(net, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    back = M.load(tmp_path)
    x = torch.rand(1, 1, 8, 8)
    torch.testing.assert_close(back(x), net.eval()(x))


@pytest.mark.parametrize(
    "config",
    [
        {"arch": "srcnn", "scale": 3, "features": [64]},
        {"arch": "espcn", "scale": 9, "features": [64]},
        [1, 2],
        {"arch": "espcn", "scale": 3, "features": [64], "activation": "gelu"},
        {"arch": "espcn", "scale": 3, "features": [64], "residual": "yes"},
        {"arch": "espcn", "scale": 3, "features": [64], "contrast": True},  # needs residual
    ],
)
def test_invalid_config_is_refused(tmp_path, config):
    M.save(M.ESPCN(3), tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(SrctlError, match="not a valid ESPCN config"):
        M.load(tmp_path)


def test_weights_that_do_not_match_the_config(tmp_path):
    M.save(M.ESPCN(3), tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"arch": "espcn", "scale": 2, "features": [64, 64, 32]})
    )
    with pytest.raises(SrctlError, match="do not match"):
        M.load(tmp_path)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_as_a_convolution_equals_interpolate(scale):
    """The ONNX graph's bicubic (a convolution per output phase) is PyTorch's, borders included,
    down to one-pixel pictures."""
    torch.manual_seed(scale)
    for shape in ((2, 3, 37, 53), (1, 1, 1, 1), (1, 2, 2, 5)):
        x = torch.rand(shape)
        got, want = M.bicubic_as_conv(x, scale), M.bicubic(x, scale)
        assert got.shape == want.shape and (got - want).abs().max() < 1e-5
    net = M.ESPCN.named("contrast", scale).eval()
    y = torch.rand(1, 1, 20, 30)
    with torch.no_grad():
        assert (net(y, M.bicubic_as_conv) - net(y)).abs().max() < 1e-5
