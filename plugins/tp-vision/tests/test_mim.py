"""The mim target: cross-entropy over masked visual tokens (against a hand computation and
Hugging Face's BeitForMaskedImageModeling) and masked-patch pixel regression (against MAE's
loss over Hugging Face ViTMAE's patchify)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tp_vision.mim import MimTarget
from tpcli.data.batch import IGNORE
from tpcli.errors import TpError
from tpcli.model.module import BuildContext, Features
from tpcli.plugins import get_plugins
from tpcli.testing import contract

B, N, H, V = 3, 16, 32, 50


def make(seed: int = 0, **options: object) -> MimTarget:
    torch.manual_seed(seed)
    ctx = BuildContext(hidden_size=H, vocab_size=V, norm_eps=1e-12)
    return MimTarget(MimTarget.Config(**options), ctx)


def sample(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden (B, 1 + N, H), labels (B, N) with -100 on visible patches, mask (B, N)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, 1 + N, H, generator=g)
    mask = torch.rand(B, N, generator=g) < 0.4
    labels = torch.randint(0, V, (B, N), generator=g).masked_fill(~mask, IGNORE)
    return hidden, labels, mask


def test_registered() -> None:
    assert get_plugins().registry.get("target", "mim") is MimTarget


def test_loss_and_metrics_equal_a_hand_computation() -> None:
    m = make()
    hidden, labels, mask = sample()
    out = m(Features(hidden), {"mim_labels": labels})
    logits = m.predict(Features(hidden), {"mim_labels": labels})  # (B, N, V)
    assert logits.shape == (B, N, V)
    expected = F.cross_entropy(logits[mask], labels[mask])
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    assert out.metrics["count"] == mask.sum()
    acc = (logits[mask].argmax(-1) == labels[mask]).float().mean()
    torch.testing.assert_close(out.metrics["acc"], acc)
    # the patch logits are the head over positions 1..N (the class token is position 0)
    torch.testing.assert_close(logits, m.head(m.norm(hidden[:, 1:])))


def test_predict_without_labels_skips_the_class_token() -> None:
    m = make(vocab_size=7)  # the option overrides the context's vocabulary size
    hidden, _, _ = sample()
    assert m.predict(Features(hidden), {}).shape == (B, N, 7)


def test_unmasked_positions_do_not_affect_the_loss() -> None:
    m = make()
    hidden, labels, mask = sample()
    changed = hidden.clone()
    changed[:, 1:][~mask] = torch.randn(int((~mask).sum()), H)  # every visible patch
    changed[:, 0] = 100.0  # and the class token
    a = m(Features(hidden), {"mim_labels": labels}).loss
    b = m(Features(changed), {"mim_labels": labels}).loss
    assert torch.equal(a, b)
    leaf = hidden.clone().requires_grad_()
    m(Features(leaf), {"mim_labels": labels}).loss.backward()
    assert leaf.grad is not None
    assert torch.all(leaf.grad[:, 1:][~mask] == 0) and torch.all(leaf.grad[:, 0] == 0)
    assert leaf.grad[:, 1:][mask].abs().sum() > 0


def test_no_masked_patch_gives_zero_loss_not_nan() -> None:
    m = make()
    hidden, labels, _ = sample()
    out = m(Features(hidden.requires_grad_()), {"mim_labels": torch.full_like(labels, IGNORE)})
    assert out.loss.item() == 0.0 and out.metrics["count"] == 0
    out.loss.backward()


def test_loss_equals_hugging_face_beit_mim() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BeitConfig(
        vocab_size=V, hidden_size=H, num_hidden_layers=1, num_attention_heads=4,
        intermediate_size=37, image_size=16, patch_size=4, use_mask_token=True,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    hf = transformers.BeitForMaskedImageModeling(config).eval()
    with torch.no_grad():  # a random, non-trivial head (HF initialises the norm to 1 and 0)
        hf.layernorm.weight.normal_(1.0, 0.2)
        hf.layernorm.bias.normal_(0.0, 0.2)
        hf.lm_head.bias.normal_(0.0, 0.5)
    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(B, 3, 16, 16, generator=g)
    _, labels, mask = sample(2)
    with torch.no_grad():
        out = hf(pixel_values=pixels, bool_masked_pos=mask, labels=labels[mask],
                 output_hidden_states=True)
    hidden = out.hidden_states[-1]  # (B, 1 + 16, H): before the MIM head's layernorm
    m = MimTarget(MimTarget.Config(), BuildContext(hidden_size=H, vocab_size=V,
                                                   norm_eps=config.layer_norm_eps))
    m.norm.load_state_dict(hf.layernorm.state_dict())
    m.head.load_state_dict(hf.lm_head.state_dict())
    ours = m(Features(hidden), {"mim_labels": labels}).loss
    torch.testing.assert_close(ours, out.loss, rtol=0, atol=1e-5)
    torch.testing.assert_close(m.predict(Features(hidden), {"mim_labels": labels}), out.logits,
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("norm_pixels", [False, True])
def test_pixel_loss_equals_mae_loss_over_hf_patchify(norm_pixels: bool) -> None:
    transformers = pytest.importorskip("transformers")
    p, c, size = 4, 3, 16
    mae = transformers.ViTMAEForPreTraining(transformers.ViTMAEConfig(
        hidden_size=H, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
        decoder_hidden_size=H, decoder_num_hidden_layers=1, decoder_num_attention_heads=4,
        decoder_intermediate_size=37, image_size=size, patch_size=p, num_channels=c))
    m = make(objective="pixels", patch_size=p, channels=c, norm_pixels=norm_pixels)
    hidden, _, mask = sample(3)
    pixels = torch.randn(B, c, size, size, generator=torch.Generator().manual_seed(4))
    batch = {"pixel_values": pixels, "mim_mask": mask}
    out = m(Features(hidden), batch)
    pred = m.predict(Features(hidden), batch)  # (B, N, p*p*C)
    assert pred.shape == (B, N, p * p * c)
    target = mae.patchify(pixels)  # (B, N, p*p*C): HF's patch and pixel order
    if norm_pixels:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((pred - target) ** 2).mean(-1)  # (B, N)
    expected = (per_patch * mask).sum() / mask.sum()  # MAE: the masked patches only
    torch.testing.assert_close(out.loss, expected, rtol=1e-5, atol=1e-6)
    assert out.metrics["count"] == mask.sum()


def test_pixel_objective_refuses_a_patch_size_that_does_not_match() -> None:
    m = make(objective="pixels", patch_size=8)
    hidden, _, mask = sample()
    with pytest.raises(TpError, match="4 patches of 192 values, but the mask has 16"):
        m(Features(hidden), {"pixel_values": torch.randn(B, 3, 16, 16), "mim_mask": mask})


def test_missing_labels_is_a_tp_error() -> None:
    with pytest.raises(TpError, match="mim_labels"):
        make()(Features(torch.randn(B, 1 + N, H)), {})
    with pytest.raises(TpError, match="pixel_values"):
        make(objective="pixels")(Features(torch.randn(B, 1 + N, H)), {})


def test_declared_inputs() -> None:
    names = {k.name: k for k in make().inputs}
    assert names["mim_labels"].pad == IGNORE and names["mim_labels"].high == V
    assert {k.name for k in make(objective="pixels").inputs} == {"pixel_values", "mim_mask"}


def test_pixel_objective_passes_the_module_contract() -> None:
    torch.manual_seed(0)
    m = MimTarget(MimTarget.Config(objective="pixels"), contract.make_ctx()).train()
    batch = MimTarget.contract_labels({"mim_labels": torch.zeros(contract.B, contract.T,
                                                                 dtype=torch.long)})
    feats = contract.features(batch)
    out = m(feats, batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and m.head.weight.grad is not None
    assert m.predict(feats, batch).shape == (contract.B, contract.T - 1, 16 * 16 * 3)


def beit_section(objective: str, dropout: float) -> dict:
    """A tiny BEiT as recipes/beit-base lays it out: 24x24 images in 6x6 patches (16 of them),
    q/v biases, layer scale, one relative position table shared by the layers, a final norm."""
    target = ({"mim": {"norm": False, "vocab_size": V}} if objective == "tokens" else
              {"mim": {"objective": "pixels", "patch_size": 6, "norm_pixels": True}})
    return {"hidden_size": H, "dropout": dropout, "norm_eps": 1e-12, "embedding_norm": "none",
            "embedding": [{"name": "masked_patch", "image_size": 24, "patch_size": 6}],
            "encoder": {"name": "transformer", "layers": 2, "heads": 4, "ffn_size": 48,
                        "pre_norm": True, "qkv_bias": "qv", "layer_scale": 0.1,
                        "position": "relative_2d", "grid": [4, 4], "share_position_bias": True,
                        "final_norm": True},
            "target": target}


@pytest.mark.parametrize("objective,dropout", [("tokens", 0.0), ("tokens", 0.1),
                                               ("pixels", 0.0)])
def test_training_computes_the_last_layer_at_the_masked_patches_only(objective: str,
                                                                      dropout: float) -> None:
    """`read_positions` names the masked patches from the end of the sequence (the class token
    in front is not read): the last layer runs on the widest image's masked count, and the
    loss, every gradient and the random stream after are those of the whole layer."""
    from tpcli.model.module import LastPositions
    from tpcli.testing.convert import tp_model_for

    torch.manual_seed(0)
    model = tp_model_for(beit_section(objective, dropout), 0,
                         {"processor": {"name": "image", "size": 24}}).train()
    assert model.reads_positions
    g = torch.Generator().manual_seed(3)
    masked = torch.zeros(B, N, dtype=torch.bool)
    for row, cols in enumerate([[0, 5, 6, 15], [3], [1, 2, 9]]):
        masked[row, cols] = True
    batch = {"pixel_values": torch.randn(B, 3, 24, 24, generator=g), "mim_mask": masked}
    if objective == "tokens":
        batch["mim_labels"] = torch.randint(0, V, (B, N), generator=g).masked_fill(~masked,
                                                                                  IGNORE)
    positions = model.read_positions(batch)
    assert isinstance(positions[0], LastPositions) and torch.equal(positions[0].mask, masked)

    def step(select: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor, int]:
        model.reads_positions = select
        rows: list[int] = []
        hook = model.stack.encoder.layers[-1].ffn.register_forward_hook(
            lambda _m, args, _out: rows.append(args[0].numel() // H))
        model.zero_grad(set_to_none=True)
        torch.manual_seed(11)
        out = model(batch)
        out.loss.backward()
        hook.remove()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out.loss.detach(), grads, torch.get_rng_state(), rows[-1]

    loss, grads, rng, rows = step(True)
    ref_loss, ref_grads, ref_rng, ref_rows = step(False)
    assert (rows, ref_rows) == (B * 4, B * (1 + N))  # 4 masked in the widest image
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6,
                                   msg=name)
    assert torch.equal(rng, ref_rng)
