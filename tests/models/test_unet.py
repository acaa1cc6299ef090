import pytest
import torch

from crossway.models.unet import NORMS, UPSAMPLES, UNetConfig, build_unet

pytestmark = pytest.mark.usefixtures("one_thread")


def make(depth=3, base=4, in_channels=3, classes=3, **kw):
    torch.manual_seed(0)
    return build_unet(UNetConfig(depth=depth, base_channels=base, **kw), in_channels, classes)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("upsample", UPSAMPLES)
@pytest.mark.parametrize("attention_gates", [False, True])
def test_any_size_every_option(norm, upsample, attention_gates):
    # the residual encoder with every norm, the plain one with everything else
    encoder = "residual" if upsample == "bilinear" and attention_gates else "plain"
    model = make(norm=norm, upsample=upsample, attention_gates=attention_gates, encoder=encoder)
    for train in (True, False):
        model.train(train)
        for H, W in ((37, 53), (1, 1), (1000, 17), (8, 8)):
            x = torch.randn(2 if (H, W) != (1, 1) else 1, 3, H, W)  # one 1x1 image in training: the hard case
            logits, gates = model(x, gates=True)
            assert logits.shape == (x.size(0), 3, H, W)
            assert torch.isfinite(logits).all()
            assert len(gates) == (3 if attention_gates else 0)
            for level, g in enumerate(gates):  # fine to coarse, the padding cropped off
                assert g.shape == (x.size(0), 1, -(-H // 2**level), -(-W // 2**level))
                assert g.min() >= 0 and g.max() <= 1


def test_depth_four_odd_sizes_and_backward():
    model = make(depth=4, base=2, classes=2, norm="group", dropout=0.2)
    for H, W in ((37, 53), (1, 1), (1000, 17)):
        x = torch.randn(1, 3, H, W, requires_grad=True)
        logits = model(x)
        assert logits.shape == (1, 2, H, W)
        logits.sum().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_gates_flag_returns_logits_only_by_default():
    model = make(attention_gates=True).eval()
    x = torch.randn(1, 3, 12, 20)
    logits, gates = model(x, gates=True)
    assert torch.equal(model(x), logits)
    assert [g.shape[-2:] for g in gates] == [(12, 20), (6, 10), (3, 5)]


def test_skips_off_removes_the_skips():
    on, off = make(), make(skips=False)
    assert n_params(off) < n_params(on)
    for level, (a, b) in enumerate(zip(on.decoder, off.decoder, strict=True)):
        width = 4 * 2**level
        assert a.conv[0].in_channels == 2 * width and b.conv[0].in_channels == width

    def decoder_sees_only_the_bottleneck(model):
        """Run image B with the bottleneck output of image A patched in: without skips, the output is A's."""
        model.eval()
        a, b = torch.randn(1, 3, 24, 24), torch.randn(1, 3, 24, 24)
        saved = {}
        handle = model.bottleneck.register_forward_hook(lambda m, i, o: saved.setdefault("a", o))
        out_a = model(a)
        handle.remove()
        handle = model.bottleneck.register_forward_hook(lambda m, i, o: saved["a"])
        out_b = model(b)
        handle.remove()
        return torch.allclose(out_a, out_b, atol=1e-6)

    assert decoder_sees_only_the_bottleneck(off)
    assert not decoder_sees_only_the_bottleneck(on)


def test_parameter_counts():
    assert n_params(build_unet(UNetConfig(), 3, 4)) == 7_763_140
    assert n_params(build_unet(UNetConfig(skips=False), 3, 4)) == 6_979_780
    assert n_params(build_unet(UNetConfig(attention_gates=True), 3, 4)) == 7_894_184


def test_residual_encoder_blocks_start_as_the_identity():
    """Zero-initialised last norm (Goyal et al. 2017): a block of equal widths returns ReLU(x) at first; the
    number of blocks per level follows model.res_blocks."""
    from crossway.models.unet import ResidualBlock

    block = ResidualBlock(4, 4, "batch").eval()
    x = torch.randn(2, 4, 5, 6)
    assert torch.allclose(block(x), torch.relu(x))
    for blocks in (1, 3):
        model = make(encoder="residual", res_blocks=blocks)
        assert all(len(level) == blocks for level in model.encoder) and len(model.bottleneck) == blocks
    assert n_params(make(encoder="residual", res_blocks=2)) > n_params(make(encoder="residual", res_blocks=1))


@pytest.mark.parametrize("norm", NORMS)
def test_batch_independence_in_eval(norm):
    model = make(norm=norm, attention_gates=True)
    model.train()
    model(torch.randn(4, 3, 16, 16))  # move batch-norm running statistics off their initial values
    model.eval()
    x = torch.randn(3, 3, 21, 19)
    with torch.no_grad():
        batched = model(x)
        for i in range(3):
            assert (model(x[i:i + 1])[0] - batched[i]).abs().max() <= 1e-5


def test_group_norm_groups_divide_channels():
    model = make(base=3, norm="group")  # widths 3, 6, 12, 24
    groups = {m.num_channels: m.num_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {3: 3, 6: 6, 12: 6, 24: 8}


@pytest.mark.parametrize("bad,message", [
    ({"depth": 0}, "model.depth"), ({"base_channels": 0}, "model.base_channels"), ({"norm": "layer"}, "model.norm"),
    ({"upsample": "nearest"}, "model.upsample"), ({"dropout": 1.0}, "model.dropout"),
    ({"dropout": -0.1}, "model.dropout"), ({"skips": False, "attention_gates": True}, "model.attention_gates"),
    ({"encoder": "vgg"}, "model.encoder"), ({"res_blocks": 0}, "model.res_blocks"),
])
def test_config_validation(bad, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig(**bad)


def test_learns_a_tiny_mask():
    """A few dozen steps fit bright-square masks (the network learns; loss, logits and metrics line up)."""
    from crossway.segmetrics import SegmentationScores
    from crossway.training.losses import segmentation_loss

    torch.manual_seed(0)
    x = torch.zeros(4, 1, 16, 16)
    y = torch.zeros(4, 16, 16, dtype=torch.long)
    for i in range(4):
        r, c = 2 + 3 * i, 9 - 2 * i
        x[i, 0, r:r + 5, c:c + 5], y[i, r:r + 5, c:c + 5] = 1.0, 1
    x = x + 0.1 * torch.randn_like(x)
    model = make(depth=2, base=4, in_channels=1, classes=2, attention_gates=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(35):
        opt.zero_grad()
        segmentation_loss(model(x), y).mean().backward()
        opt.step()
    scores = SegmentationScores(2)
    scores.update(model.eval()(x).argmax(1), y)
    assert scores.result()["dice"] > 0.9  # the foreground is 10% of the pixels: accuracy alone would say little
