"""The `patch` and `masked_patch` embeddings: numbers against a plain unfold + matmul, the class
and mask tokens, user errors (sizes, batch shapes), initialisation, registration, the contract."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from tp_vision.masked_patch import MaskedPatchEmbedding
from tp_vision.patch import PatchEmbedding
from tpcli.errors import TpError
from tpcli.model.module import BuildContext
from tpcli.plugins import get_plugins
from tpcli.testing import contract

E = 16


def ctx(stream: str = "") -> BuildContext:
    return BuildContext(hidden_size=E, vocab_size=1, init_std=0.02, stream=stream)


def build(cls: type[PatchEmbedding] = PatchEmbedding, **options: object) -> PatchEmbedding:
    torch.manual_seed(0)
    m = cls(cls.Config(**{"image_size": [12, 20], "patch_size": 4, **options}), ctx())
    m.reset_parameters_tp()
    return m


def reference(m: PatchEmbedding, pixels: torch.Tensor) -> torch.Tensor:
    """Each patch's C*p*p pixels (row by row over the grid) times the flattened conv weight."""
    b, c, _, _ = pixels.shape
    ph, pw = m.projection.kernel_size
    tiles = pixels.unfold(2, ph, ph).unfold(3, pw, pw)  # (B, C, h, w, ph, pw)
    tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c * ph * pw)  # (B, N, C*ph*pw)
    out = tiles @ m.projection.weight.reshape(E, -1).T  # (B, N, E)
    return out + m.projection.bias if m.projection.bias is not None else out


def test_patches_are_a_linear_map_of_each_patch_with_the_class_token_first() -> None:
    m = build()
    pixels = torch.randn(2, 3, 12, 20)
    out = m({"pixel_values": pixels})
    assert m.grid == (3, 5) and m.num_patches == 15 and out.shape == (2, 16, E)
    torch.testing.assert_close(out[:, 1:], reference(m, pixels), atol=1e-5, rtol=0)
    assert torch.equal(out[:, 0], m.cls_token.expand(2, E))


def test_options_non_square_patches_no_class_token_no_bias() -> None:
    m = build(patch_size=[3, 5], class_token=False, bias=False, channels=1)
    pixels = torch.randn(2, 1, 12, 20)
    out = m({"pixel_values": pixels})
    assert m.grid == (4, 4) and out.shape == (2, 16, E)
    assert set(m.state_dict()) == {"projection.weight"}
    torch.testing.assert_close(out, reference(m, pixels), atol=1e-5, rtol=0)
    assert m.inputs[0].shape == (1, 12, 20) and m.inputs[0].name == "pixel_values"


def test_a_square_size_is_one_int() -> None:
    m = PatchEmbedding(PatchEmbedding.Config(image_size=32, patch_size=8), ctx())
    assert m.grid == (4, 4) and m.inputs[0].shape == (3, 32, 32)


@pytest.mark.parametrize("cls", [PatchEmbedding, MaskedPatchEmbedding])
def test_an_indivisible_image_size_is_refused_by_the_config(cls: type) -> None:
    with pytest.raises(ValidationError, match="patch_size 16x16 does not divide image_size "
                       "224x200"):
        cls.Config(image_size=[224, 200], patch_size=16)


def test_an_indivisible_image_size_fails_recipe_validation(tmp_path) -> None:
    """Caught when the recipe is validated (`tp preprocess` and `tp pretrain` both), with the
    option's recipe path: before any data is read or any folder written."""
    from tpcli.errors import ConfigError
    from tpcli.recipes import load_recipe

    (tmp_path / "recipe.yaml").write_text(
        "model:\n  hidden_size: 32\n  embedding: [{name: patch, image_size: 30, patch_size: 4},"
        " {name: pos, max_length: 65}]\n  encoder: transformer\n  target: {cls: {labels: 2}}\n"
        "data:\n  processor: {name: image, size: 30}\n")
    with pytest.raises(ConfigError) as e:
        load_recipe(str(tmp_path))
    assert "model.embedding.patch" in str(e.value) and "does not divide" in str(e.value)


def test_wrong_pixel_shapes_name_expected_and_got() -> None:
    m = build()
    with pytest.raises(TpError) as e:
        m({"pixel_values": torch.randn(2, 3, 20, 12)})
    assert "(2, 3, 20, 12)" in str(e.value) and "expected (batch, 3, 12, 20)" in str(e.value)
    assert "model.embedding.patch.image_size" in e.value.hint
    with pytest.raises(TpError, match="expected"):
        m({"pixel_values": torch.randn(3, 12, 20)})  # one image without its batch dimension
    with pytest.raises(TpError, match="reads pixel_values, but the batch has none"):
        m({"input_ids": torch.zeros(2, 3, dtype=torch.long)})


def test_config_reads_yaml_lists_and_refuses_bad_values() -> None:
    assert PatchEmbedding.Config(image_size=[32, 48]).image_size == (32, 48)
    for bad in ({"image_size": 0}, {"patch_size": [16, 0]}, {"channels": 0}, {"patches": 4}):
        with pytest.raises(ValidationError):
            PatchEmbedding.Config(**bad)


def test_init_after_the_model_generic_init() -> None:
    torch.manual_seed(0)
    m = MaskedPatchEmbedding(MaskedPatchEmbedding.Config(image_size=64, patch_size=16),
                             BuildContext(hidden_size=256, vocab_size=1, init_std=0.02))
    m.reset_parameters_tp()
    assert abs(m.projection.weight.std().item() - 0.02) < 0.001
    assert not m.projection.bias.any()
    for token in (m.cls_token, m.mask_token):
        assert 0.015 < token.std().item() < 0.025 and token.abs().max() < 2.0


def test_masked_patch_without_mim_mask_is_patch() -> None:
    plain, masked = build(), build(MaskedPatchEmbedding)
    assert set(masked.state_dict()) == set(plain.state_dict()) | {"mask_token"}
    masked.load_state_dict({**plain.state_dict(), "mask_token": masked.mask_token.detach()})
    pixels = torch.randn(2, 3, 12, 20)
    assert torch.equal(masked({"pixel_values": pixels}), plain({"pixel_values": pixels}))


def test_masked_patches_become_the_mask_token() -> None:
    m = build(MaskedPatchEmbedding)
    pixels = torch.randn(2, 3, 12, 20)
    mim = torch.zeros(2, 15, dtype=torch.bool)
    mim[0, [0, 7]], mim[1, 14] = True, True
    out, plain = m({"pixel_values": pixels, "mim_mask": mim}), m({"pixel_values": pixels})
    patches = out[:, 1:]  # (B, N, E)
    assert torch.equal(patches[mim], m.mask_token.expand(3, E))
    assert torch.equal(patches[~mim], plain[:, 1:][~mim])
    assert torch.equal(out[:, 0], plain[:, 0])  # the class token is never masked
    key = m.inputs[1]
    assert (key.name, key.dtype, key.shape, key.optional) == ("mim_mask", "bool", (15,), True)


def test_a_wrong_mim_mask_shape_is_named() -> None:
    m = build(MaskedPatchEmbedding)
    with pytest.raises(TpError, match=r"mim_mask has shape \(2, 16\), expected \(batch, 15\)"):
        m({"pixel_values": torch.randn(2, 3, 12, 20), "mim_mask": torch.ones(2, 16).bool()})


def test_the_mask_token_learns_only_from_masked_patches() -> None:
    m = build(MaskedPatchEmbedding)
    pixels = torch.randn(2, 3, 12, 20)
    m({"pixel_values": pixels}).sum().backward()
    assert m.mask_token.grad is None or not m.mask_token.grad.any()
    mim = torch.zeros(2, 15, dtype=torch.bool)
    mim[0, 3] = True
    m({"pixel_values": pixels, "mim_mask": mim}).sum().backward()
    assert torch.equal(m.mask_token.grad, torch.ones(E))


@pytest.mark.parametrize("name", ["patch", "masked_patch"])
def test_registered_and_passes_the_module_contract(name: str) -> None:
    cls = get_plugins().registry.get("embedding", name)
    m = contract.build(cls)
    loss, outputs = contract.run("embedding", m)
    loss.backward()
    assert outputs[0].shape == (contract.B, 1 + 196, contract.H)  # 224 / 16 = 14 x 14 patches
    assert all(p.grad is not None for p in m.parameters())  # the contract masks some patches
