"""The encoder registry: every registered name builds and keeps its recorded width; names are unique and checked."""

import pytest
import torch

from qualcl.models import ENCODERS, Encoder, EncoderInfo, build_encoder, create_encoder, list_encoders, register_encoder
from qualcl.models.registry import _unregister

#: Builders that take about two seconds even at 32 px (the big torchvision and timm trunks).
HEAVY = {"resnet50", "vgg16_bn", "vit_base"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in list_encoders()]
)
def test_every_registered_encoder_builds_small_and_has_its_recorded_width(name):
    info = ENCODERS[name]
    torch.manual_seed(0)
    encoder = create_encoder(name, in_chans=1, image_size=32).eval()
    assert isinstance(encoder, Encoder) and encoder.is_vit == (info.family == "vit")
    assert encoder.num_features == info.num_features
    with torch.no_grad():
        assert encoder(torch.randn(2, 1, 32, 32)).shape == (2, info.num_features)
    if info.family == "cnn":  # the torch-free list of full-resolution pyramids is the encoders' own
        from qualcl.recipes.config import FULL_RESOLUTION_ENCODERS

        assert (encoder.pyramid_reductions[0] == 1) == (name in FULL_RESOLUTION_ENCODERS)


def test_the_torch_free_copy_of_the_cnn_names_matches_the_registry():
    from qualcl.recipes.config import CNN_ENCODERS

    assert tuple(list_encoders("cnn")) == CNN_ENCODERS


def test_listing_follows_registration_order_and_filters_by_family():
    assert list_encoders() == list(ENCODERS)
    assert list_encoders("cnn") + list_encoders("vit") == list_encoders()
    assert list_encoders("vit") == ["vit_micro", "vit_tiny", "vit_small", "vit_base", "convvit_tiny"]
    assert all(isinstance(info, EncoderInfo) for info in ENCODERS.values())
    with pytest.raises(ValueError, match=r"unknown encoder family='rnn'; choose one of \['cnn', 'vit'\]"):
        list_encoders("rnn")


def test_encoders_is_a_read_only_view_of_the_registry():
    with pytest.raises(TypeError):
        ENCODERS["mine"] = ENCODERS["resnet10"]  # type: ignore[index]


def test_build_encoder_is_create_encoder():
    torch.manual_seed(1)
    a = build_encoder("resnet10", in_chans=1)
    torch.manual_seed(1)
    b = create_encoder("resnet10", in_chans=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_a_new_name_registers_and_a_duplicate_is_refused():
    def tiny(*, in_chans=3, image_size=None):
        return build_encoder("resnet10", in_chans=in_chans)

    try:
        assert register_encoder("tiny_test", family="cnn", num_features=512, description="a test")(tiny) is tiny
        assert "tiny_test" in list_encoders("cnn") and ENCODERS["tiny_test"] == ("cnn", "a test", 512)
        assert create_encoder("tiny_test", in_chans=2).num_features == 512
        with pytest.raises(ValueError, match="name='tiny_test' is already a registered encoder"):
            register_encoder("tiny_test", family="cnn", num_features=512, description="again")(tiny)
    finally:
        _unregister("tiny_test")
    assert "tiny_test" not in ENCODERS
    with pytest.raises(ValueError, match="name='resnet10' is already a registered encoder"):
        register_encoder("resnet10", family="cnn", num_features=512, description="again")(tiny)
    assert ENCODERS["resnet10"].description.startswith("ResNet with one basic block")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "", "family": "cnn", "num_features": 1, "description": "d"}, "name must be a non-empty string"),
        ({"name": "x", "family": "", "num_features": 1, "description": "d"}, "family must be a non-empty string"),
        ({"name": "x", "family": "cnn", "num_features": 0, "description": "d"}, "num_features must be a positive"),
        ({"name": "x", "family": "cnn", "num_features": True, "description": "d"}, "num_features must be a positive"),
        ({"name": "x", "family": "cnn", "num_features": 8, "description": " "}, "description must be a non-empty"),
    ],
)
def test_registration_arguments_are_checked(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match):
        register_encoder(name, **kwargs)
    assert "x" not in ENCODERS


@pytest.mark.parametrize("build", [create_encoder, build_encoder])
def test_unknown_names_name_the_argument_and_suggest_the_closest(build):
    with pytest.raises(
        ValueError, match=r"unknown encoder name='vgg16_bm' \(did you mean 'vgg16_bn'\?\); choose one of"
    ):
        build("vgg16_bm")
    with pytest.raises(ValueError, match=r"unknown encoder name='transformer'; choose one of \['resnet10'"):
        build("transformer")
    with pytest.raises(ValueError, match="unknown encoder name=3"):
        build(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("small", "large", "divisor"), [("resnet10_tiny", "resnet10", 4), ("vgg16_bn_micro", "vgg16_bn_tiny", 2)]
)
def test_the_small_smoke_encoders_keep_the_layout_at_a_fraction_of_the_width(small, large, divisor):
    a, b = create_encoder(small), create_encoder(large)
    assert a.pyramid_reductions == b.pyramid_reductions
    assert a.pyramid_channels == tuple(c // divisor for c in b.pyramid_channels)
    assert [type(m) for m in list(a.modules())[2:]] == [type(m) for m in list(b.modules())[2:]]  # the same layers
    maps = a.forward_pyramid(torch.randn(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == list(a.pyramid_channels)
