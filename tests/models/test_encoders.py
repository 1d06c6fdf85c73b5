"""The encoder contract of qualcl.models: shapes, pyramids, masking, legacy weights, local pretrained files."""

import copy
import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn
from torchvision import models
from torchvision.models.resnet import BasicBlock, ResNet

from qualcl.models import ENCODERS, ConvStem, Encoder, build_encoder, load_pretrained

CNNS = [n for n, info in ENCODERS.items() if info.family == "cnn"]
VITS = [n for n, info in ENCODERS.items() if info.family == "vit"]


@pytest.mark.parametrize("name", CNNS)
def test_cnn_contract(name):
    torch.manual_seed(0)
    encoder = build_encoder(name).eval()
    assert isinstance(encoder, Encoder) and not encoder.is_vit
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled, fmap, pyramid = encoder(x), encoder.forward_features(x), encoder.forward_pyramid(x)
    assert pooled.shape == (2, encoder.num_features)
    side = 4 if name.startswith("unet") else 2  # U-Nets stop at stride 16, the others at 32
    assert fmap.shape == (2, encoder.num_features, side, side)
    torch.testing.assert_close(pooled, fmap.mean(dim=(2, 3)))
    assert [m.shape[1] for m in pyramid] == list(encoder.pyramid_channels)
    assert [64 // m.shape[-1] for m in pyramid] == list(encoder.pyramid_reductions)


@pytest.mark.parametrize("name", ["resnet10", "vgg16_bn_tiny"])
def test_grey_input_and_gradients_reach_the_first_layer(name):
    encoder = build_encoder(name, in_chans=1)
    x = torch.randn(2, 1, 32, 32)
    encoder(x).sum().backward()
    first = next(p for p in encoder.parameters() if p.ndim == 4)
    assert first.shape[1] == 1 and first.grad is not None and first.grad.abs().sum() > 0


def test_vgg16_bn_tiny_is_the_local_discrimination_layout():
    encoder = build_encoder("vgg16_bn_tiny")
    widths = [m.out_channels for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [16, 16, 32, 32, 64, 64, 64, 128, 128, 128, 128, 128, 128]
    assert encoder.pyramid_channels == (16, 32, 64, 128, 128)
    assert encoder.pyramid_reductions == (1, 2, 4, 8, 16)


def test_same_seed_same_initialisation_as_torchvision():
    """The recipes' results depend on the init: build_encoder consumes the RNG as torchvision does."""
    torch.manual_seed(3)
    ours = build_encoder("resnet10")
    torch.manual_seed(3)
    reference = ResNet(BasicBlock, [1, 1, 1, 1])
    for (name, a), b in zip(ours.net.state_dict().items(), reference.state_dict().values(), strict=False):
        assert torch.equal(a, b), name
    torch.manual_seed(4)
    vgg = build_encoder("vgg16_bn", in_chans=1)
    torch.manual_seed(4)
    ref = models.vgg16_bn(weights=None)
    ref.features[0] = nn.Conv2d(1, 64, 3, padding=1)
    assert torch.equal(vgg.net.features[0].weight, ref.features[0].weight)
    assert torch.equal(vgg.net.features[3].weight, ref.features[3].weight)


def _legacy_state(name: str, pooled: bool, seed: int) -> tuple[dict, nn.Module]:
    """A state dict in the layout of qualcl 0.1's ``recipes.backbones.Backbone`` and the module it came from."""
    torch.manual_seed(seed)
    if name == "resnet10":
        net = ResNet(BasicBlock, [1, 1, 1, 1])
        net.fc = nn.Identity()
        stages = (net.layer1, net.layer2, net.layer3, net.layer4)
        trunk = net if pooled else nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, *stages)
    else:
        net = models.vgg16_bn(weights=None)
        trunk = nn.Sequential(net.features, nn.AdaptiveAvgPool2d(1)) if pooled else net.features
    return {f"features.{k}": v.clone() for k, v in trunk.state_dict().items()}, trunk


@pytest.mark.parametrize("name", ["resnet10", "vgg16_bn"])
@pytest.mark.parametrize("pooled", [True, False])
def test_run_folders_of_qualcl_0_1_still_load(name, pooled):
    state, trunk = _legacy_state(name, pooled, seed=7)
    encoder = build_encoder(name)
    encoder.load_state_dict(state)  # strict: every legacy key must find its new place
    x = torch.randn(2, 3, 64, 64)
    trunk.eval(), encoder.eval()
    with torch.no_grad():
        want = trunk(x)
        got = encoder(x) if pooled else encoder.forward_features(x)
    torch.testing.assert_close(got, want.flatten(1) if pooled else want, rtol=0, atol=0)
    # nested inside a larger module (MKCNet's Task Net, CoMCL's classifier): the prefix is kept
    parent = nn.Module()
    parent.backbone = build_encoder(name)
    parent.load_state_dict({f"backbone.{k}": v for k, v in state.items()})
    torch.testing.assert_close(parent.backbone.state_dict(), encoder.state_dict())


@pytest.mark.parametrize("name", VITS)
def test_vit_contract(name):
    encoder = build_encoder(name, image_size=32).eval()
    side = 32 // encoder.patch_size
    assert encoder.is_vit and encoder.patch_size == (8 if name.startswith("conv") else 16)
    assert encoder.num_patches == side**2
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = encoder.forward_features(x)
        assert tokens.shape == (2, 1 + side**2, encoder.num_features)
        torch.testing.assert_close(encoder(x), tokens[:, 0])
        pyramid = encoder.forward_pyramid(x)
    assert [tuple(m.shape) for m in pyramid] == [(2, encoder.num_features, side, side)] * len(pyramid)


@functools.cache
def _vit_tiny() -> Encoder:
    torch.manual_seed(0)
    return build_encoder("vit_tiny", image_size=64).eval()


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 16))
def test_forward_masked_equals_the_encoder_on_the_visible_tokens(seed, keep):
    """All patches in order = forward_features; a permutation permutes the outputs; subsets are MAE's encoder."""
    encoder = _vit_tiny()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 64, 64, generator=g)
    with torch.no_grad():
        full = encoder.forward_features(x)
        everything = encoder.forward_masked(x, torch.arange(16).repeat(2, 1))
        torch.testing.assert_close(everything, full, atol=1e-5, rtol=1e-5)
        order = torch.stack([torch.randperm(16, generator=g) for _ in range(2)])
        permuted = encoder.forward_masked(x, order)
        want = torch.gather(full[:, 1:], 1, order.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
        torch.testing.assert_close(permuted[:, 1:], want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(permuted[:, 0], full[:, 0], atol=1e-5, rtol=1e-5)
        subset = encoder.forward_masked(x, order[:, :keep])
    assert subset.shape == (2, 1 + keep, 192)
    # the naive reference: embed, add positions, drop the masked tokens, run the blocks
    net = encoder.net
    with torch.no_grad():
        tokens = net.patch_embed(x).reshape(2, 16, -1) + net.pos_embed[:, 1:]
        kept = torch.stack([tokens[i, order[i, :keep]] for i in range(2)])
        cls = (net.cls_token + net.pos_embed[:, :1]).expand(2, -1, -1)
        reference = net.norm(net.blocks(torch.cat([cls, kept], dim=1)))
    torch.testing.assert_close(subset, reference, atol=1e-5, rtol=1e-5)


def test_vit_interpolates_positions_for_other_sizes_and_rejects_bad_ones():
    encoder = build_encoder("vit_tiny", image_size=32).eval()
    with torch.no_grad():
        assert encoder.forward_features(torch.randn(1, 3, 48, 64)).shape == (1, 1 + 12, 192)
        assert encoder.forward_masked(torch.randn(1, 3, 48, 64), torch.tensor([[0, 11]])).shape == (1, 3, 192)
    with pytest.raises(ValueError, match="not divisible by the patch size 16"):
        encoder(torch.randn(1, 3, 40, 32))
    with pytest.raises(ValueError, match=r"keep_index must lie in \[0, 4\)"):
        encoder.forward_masked(torch.randn(1, 3, 32, 32), torch.tensor([[4]]))
    with pytest.raises(ValueError, match="keep_index must be"):
        encoder.forward_masked(torch.randn(2, 3, 32, 32), torch.tensor([[0]]))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        build_encoder("vit_tiny", image_size=40)


def test_unknown_names_and_bad_arguments():
    with pytest.raises(ValueError, match="unknown encoder name='resnet9000'.*resnet10"):
        build_encoder("resnet9000")
    with pytest.raises(ValueError, match="in_chans must be a positive integer"):
        build_encoder("resnet10", in_chans=0)


def test_pretrained_torchvision_state_dict_loads_and_adapts_channels(tmp_path):
    source = models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    encoder = build_encoder("resnet18", pretrained=path)
    torch.testing.assert_close(encoder.net.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    grey = build_encoder("resnet18", in_chans=1, pretrained=path)
    torch.testing.assert_close(grey.net.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    torch.save({"state_dict": source.state_dict()}, tmp_path / "wrapped.ckpt")  # Lightning-style wrapper
    build_encoder("resnet18", pretrained=tmp_path / "wrapped.ckpt")


def test_pretrained_qualcl_safetensors_and_timm_vit(tmp_path):
    encoder = build_encoder("vgg16_bn_tiny")
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(tmp_path / "enc.safetensors"))
    again = build_encoder("vgg16_bn_tiny", pretrained=tmp_path / "enc.safetensors")
    torch.testing.assert_close(again.state_dict(), encoder.state_dict())
    vit = build_encoder("vit_tiny", image_size=224)
    torch.save({"model": vit.net.state_dict()}, tmp_path / "vit.pth")  # MAE-style checkpoint at 224 px
    small = build_encoder("vit_tiny", image_size=64, pretrained=tmp_path / "vit.pth")
    assert small.net.pos_embed.shape == (1, 17, 192)
    torch.testing.assert_close(small.net.blocks[3].mlp.fc1.weight, vit.net.blocks[3].mlp.fc1.weight)


def test_pretrained_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        build_encoder("resnet10", pretrained=tmp_path / "missing.pt")
    torch.save(models.vgg16_bn(weights=None).state_dict(), tmp_path / "vgg.pth")
    with pytest.raises(ValueError, match="does not fit ResNetEncoder: missing"):
        load_pretrained(build_encoder("resnet10"), tmp_path / "vgg.pth")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        build_encoder("resnet10", pretrained=tmp_path / "list.pt")


def test_unet_encoders_are_the_public_trunk_and_reload_their_weights(tmp_path):
    encoder = build_encoder("unet")
    widths = [m.out_channels for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [64, 64, 128, 128, 256, 256, 512, 512, 512, 512]  # FundusDR MANet: inc, down1..down4
    small = build_encoder("unet_small", in_chans=1)
    from safetensors.torch import save_file

    save_file(small.state_dict(), str(tmp_path / "unet.safetensors"))
    again = build_encoder("unet_small", in_chans=1, pretrained=tmp_path / "unet.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(small.state_dict().values(), again.state_dict().values(), strict=True))


@functools.cache
def _conv_vit() -> Encoder:
    torch.manual_seed(0)
    return build_encoder("convvit_tiny", image_size=32).eval()


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 15))
def test_the_masked_conv_stem_never_sees_a_removed_patch(seed, keep):
    """Removed patches' pixels never reach any output token; all patches kept = forward_features."""
    encoder = _conv_vit()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 32, 32, generator=g)
    order = torch.stack([torch.randperm(16, generator=g) for _ in range(2)])
    visible = order[:, :keep]
    removed = torch.ones(2, 16, dtype=torch.bool).scatter_(1, visible, False).view(2, 4, 4)
    pixels = removed.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, None]
    other = torch.where(pixels, torch.randn(x.shape, generator=g) * 10, x)
    with torch.no_grad():
        out = encoder.forward_masked(x, visible)
        torch.testing.assert_close(encoder.forward_masked(other, visible), out, atol=1e-5, rtol=1e-5)
        everything = encoder.forward_masked(x, torch.arange(16).repeat(2, 1))
        torch.testing.assert_close(everything, encoder.forward_features(x), atol=1e-5, rtol=1e-5)
        training = copy.deepcopy(encoder).train()  # batch statistics in BatchNorm: still nothing of a removed patch
        torch.testing.assert_close(training.forward_masked(other, visible), training.forward_masked(x, visible))
        # a visible patch's pixels do reach the tokens
        row, col = divmod(int(visible[0, 0]), 4)
        changed = x.clone()
        changed[0, :, row * 8 : row * 8 + 8, col * 8 : col * 8 + 8] += 1.0
        assert not torch.allclose(encoder.forward_masked(changed, visible)[0], out[0])


def test_conv_stem_errors_are_named():
    with pytest.raises(ValueError, match="power-of-two patch size"):
        ConvStem(12, 3, 64)
    with pytest.raises(ValueError, match="must give 3 stage widths"):
        ConvStem(8, 3, 64, widths=[16, 32])
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        build_encoder("convvit_tiny", image_size=36)
