from __future__ import annotations

import pytest
import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from malignet_bundle.networks.lfpn import LadderFPN, gaussian_feature_noise
from malignet_bundle.networks.malignet import LADDER_LOSS_KEY, SUPERVISED_LOSS_KEYS, MaligNet

SIZE = 96


def _target(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    boxes, masks = [], torch.zeros(3, SIZE, SIZE, dtype=torch.uint8)
    for k in range(3):
        x, y = torch.randint(0, SIZE - 20, (2,), generator=g).tolist()
        w, h = torch.randint(6, 18, (2,), generator=g).tolist()
        masks[k, y : y + h, x : x + w] = 1
        boxes.append([x, y, x + w, y + h])
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor([1, 2, 4]), "masks": masks}


def _images(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, SIZE, SIZE, generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def malignet() -> MaligNet:
    torch.manual_seed(0)
    return MaligNet(image_size=SIZE)


def test_every_loss_term_is_finite_and_differentiable(malignet):
    malignet.train()
    losses = malignet(_images(2, 1), [_target(1), _target(2)], unlabeled=_images(2, 2))
    assert set(losses) == {*SUPERVISED_LOSS_KEYS, LADDER_LOSS_KEY}
    params = [p for p in malignet.parameters() if p.requires_grad]
    for name, value in losses.items():
        assert torch.isfinite(value), name
        grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), f"{name} reaches no parameter"


def test_ladder_cost_alone_trains_encoder_and_decoder_but_not_heads(malignet):
    malignet.train()
    malignet.zero_grad()
    losses = malignet(_images(2, 3), [_target(3), _target(4)], unlabeled=_images(1, 4))
    losses[LADDER_LOSS_KEY].backward()
    fpn = malignet.backbone.fpn

    def has_grad(module: torch.nn.Module) -> bool:
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    assert all(has_grad(d) for d in fpn.decoders)
    assert has_grad(fpn.inner_blocks) and has_grad(fpn.layer_blocks)
    assert has_grad(malignet.backbone.body.layer1) and has_grad(malignet.backbone.body.layer4)
    assert not has_grad(malignet.rpn) and not has_grad(malignet.roi_heads)


def test_unlabeled_only_batch_gives_ladder_loss_only(malignet):
    malignet.train()
    losses = malignet([], None, unlabeled=_images(2, 5))
    assert set(losses) == {LADDER_LOSS_KEY} and losses[LADDER_LOSS_KEY] > 0


def test_eval_has_no_noise_and_is_deterministic(malignet):
    malignet.eval()
    images = _images(2, 6)
    with torch.no_grad():
        first, second = malignet(images), malignet(images)
    for a, b in zip(first, second, strict=True):
        for key in ("boxes", "scores", "labels", "masks"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    # in evaluation the ladder FPN is exactly the FPN with the same weights
    lfpn = malignet.backbone.fpn
    fpn = FeaturePyramidNetwork([256, 512, 1024, 2048], 256, extra_blocks=LastLevelMaxPool()).eval()
    fpn.load_state_dict({k: v for k, v in lfpn.state_dict().items() if not k.startswith("decoders")})
    maps = malignet.backbone.body(torch.rand(2, 1, SIZE, SIZE))
    with torch.no_grad():
        for (name, a), b in zip(lfpn(maps).items(), fpn(maps).values(), strict=True):
            torch.testing.assert_close(a, b, msg=name)
        lfpn.train()
        noisy = lfpn(maps)
        lfpn.eval()
        assert not torch.allclose(noisy["0"], fpn(maps)["0"])


def test_noise_scale_follows_ratio():
    z = torch.randn(4, 8, 16, 16) * torch.tensor([1.0, 5.0, 0.1, 2.0]).view(4, 1, 1, 1)
    noise = gaussian_feature_noise(z, 0.03)
    ratio = noise.flatten(1).std(1) / z.flatten(1).std(1)
    torch.testing.assert_close(ratio, torch.full((4,), 0.03), atol=0.004, rtol=0)
    assert (gaussian_feature_noise(z, 0.0) == 0).all()


def test_noise_statistics_hold_in_half_precision():
    """fp16 activations of a few hundred (z² > 65504) get finite noise of the right scale, in fp16."""
    z = (300.0 + 40.0 * torch.randn(2, 8, 16, 16)).half()
    noise = gaussian_feature_noise(z, 0.03)
    assert noise.dtype == torch.float16 and torch.isfinite(noise).all()
    ratio = noise.float().flatten(1).std(1) / z.float().flatten(1).std(1)
    torch.testing.assert_close(ratio, torch.full((2,), 0.03), atol=0.004, rtol=0)


def test_ladder_cost_is_finite_for_half_precision_maps():
    torch.manual_seed(0)
    lfpn = LadderFPN([16, 32], 8).train()
    maps = {"0": 300 + 40 * torch.randn(2, 16, 16, 16), "1": 300 + 40 * torch.randn(2, 32, 8, 8)}
    _, cost = lfpn.half().forward_with_ladder({k: v.half() for k, v in maps.items()})
    assert cost.dtype == torch.float32 and torch.isfinite(cost)


def test_baseline_is_torchvision_mask_rcnn():
    """ladder=False, global_features=False: torchvision's Mask R-CNN, weight for weight and output for output."""
    torch.manual_seed(1)
    ours = MaligNet(ladder=False, global_features=False, image_size=SIZE, box_score_thresh=0.0).eval()
    reference = maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=5,
        trainable_backbone_layers=5,
        min_size=SIZE,
        max_size=SIZE,
        image_mean=[0.0] * 3,
        image_std=[1.0] * 3,
        rpn_anchor_generator=ours.rpn.anchor_generator,
        box_score_thresh=0.0,
        box_batch_size_per_image=200,
    ).eval()
    ours_state, ref_state = ours.state_dict(), reference.state_dict()
    assert set(ours_state) == set(ref_state)
    for key, value in ref_state.items():
        expected = value.shape if key != "backbone.body.conv1.weight" else (64, 1, 7, 7)
        assert ours_state[key].shape == expected, key
    assert [type(m).__name__ for m in ours.modules()][1:] == [type(m).__name__ for m in reference.modules()][1:]
    # same weights (conv1 spread over three identical channels) give the same detections
    ours_state = dict(ours_state)
    ours_state["backbone.body.conv1.weight"] = ours_state["backbone.body.conv1.weight"].repeat(1, 3, 1, 1) / 3
    reference.load_state_dict(ours_state)
    images = _images(2, 7)
    with torch.no_grad():
        mine, theirs = ours(images), reference([im.repeat(3, 1, 1) for im in images])
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-4, rtol=1e-4)
    ours.train()
    losses = ours(images, [_target(8), _target(9)])
    assert set(losses) == set(SUPERVISED_LOSS_KEYS)


def test_global_features_reach_the_classifier():
    torch.manual_seed(2)
    net = MaligNet(ladder=False, global_features=True, image_size=SIZE).train()
    losses = net(_images(2, 10), [_target(10), _target(11)])
    losses["loss_classifier"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.global_embedding.parameters())
    assert net.roi_heads.box_predictor.cls_score.in_features == 1024 + 256


def test_table11_config_at_320_one_semi_supervised_step():
    """The real configuration: ResNet-50, 320×320, Table 11 defaults, one labeled + one unlabeled image."""
    torch.manual_seed(3)
    net = MaligNet().train()
    assert net.rpn.nms_thresh == 0.7 and net.roi_heads.fg_bg_sampler.batch_size_per_image == 200
    assert net.rpn.fg_bg_sampler.batch_size_per_image == 256 and net.roi_heads.score_thresh == 0.7
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    target = _target(12)
    target["masks"] = torch.nn.functional.pad(target["masks"], (0, 320 - SIZE, 0, 320 - SIZE))
    losses = net([torch.rand(1, 320, 320)], [target], unlabeled=[torch.rand(1, 320, 320)])
    total = sum(losses.values())
    opt.zero_grad()
    total.backward()
    opt.step()
    assert torch.isfinite(total)


def test_ladder_switches(malignet):
    maps = malignet.backbone.body(torch.rand(2, 1, SIZE, SIZE))
    for kwargs in (
        {"stop_gradient_targets": False},
        {"normalize_targets": False},
        {"upsample_mode": "bicubic"},
        {"decoder_kernel_size": 3},
        {"combinator": "concat", "decoder_kernel_size": 3},
    ):
        lfpn = LadderFPN([256, 512, 1024, 2048], 256, extra_blocks=LastLevelMaxPool(), **kwargs).train()
        pyramid, cost = lfpn.forward_with_ladder({k: v.detach() for k, v in maps.items()})
        assert torch.isfinite(cost) and list(pyramid) == ["0", "1", "2", "3", "pool"]
    with pytest.raises(ValueError, match="upsample_mode"):
        LadderFPN([256], 256, upsample_mode="area")
    with pytest.raises(ValueError, match="combinator"):
        LadderFPN([256], 256, combinator="sum")


@pytest.mark.parametrize("switches", [{}, {"ladder": False, "global_features": False}])
def test_torchscript_export_matches_eager(tmp_path, switches):
    from malignet_bundle.networks.export import export_torchscript

    torch.manual_seed(4)
    net = MaligNet(image_size=SIZE, box_score_thresh=0.0, **switches).eval()
    export_torchscript(net, tmp_path / "malignet.ts")
    loaded = torch.jit.load(str(tmp_path / "malignet.ts"))
    assert not any("decoders" in name for name, _ in loaded.named_parameters())
    images = _images(2, 12)
    with torch.no_grad():
        eager, scripted = net(images), loaded(images)
    for a, b in zip(eager, scripted, strict=True):
        assert len(a["boxes"]) > 0
        for key in ("boxes", "labels", "scores", "masks"):
            torch.testing.assert_close(a[key], b[key])


def test_cpu_sized_network_for_the_benchmark():
    """A ResNet-18 body with a narrow pyramid: same parts, same losses, sizes where they should be."""
    torch.manual_seed(3)
    net = MaligNet(image_size=SIZE, backbone="resnet18", pyramid_channels=32, representation_size=64)
    assert net.global_embedding.embed[0].in_channels == 512  # ResNet-18's C5
    assert net.backbone.out_channels == 32 and net.roi_heads.mask_head[0][0].in_channels == 32
    losses = net(_images(2, 1), [_target(1), _target(2)], unlabeled=_images(2, 3))
    assert set(losses) == {*SUPERVISED_LOSS_KEYS, LADDER_LOSS_KEY}
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(ValueError, match="backbone must be one of"):
        MaligNet(backbone="vgg16")


def test_global_dropout_drops_context_columns_in_training_only():
    from malignet_bundle.networks.global_features import GlobalFeatureBoxHead

    torch.manual_seed(0)
    plain, dropped = GlobalFeatureBoxHead(12, 8, 16), GlobalFeatureBoxHead(12, 8, 16, global_dropout=0.5)
    dropped.load_state_dict(plain.state_dict())  # dropout adds no weights: checkpoints load either way
    x = torch.rand(50, 12 + 16) + 0.1  # no zero in the global columns but those dropout makes
    assert torch.equal(plain.eval()(x), dropped.eval()(x))
    out = dropped.train()(x)
    assert torch.equal(out[:, :8], plain.train()(x)[:, :8])  # the region representation is untouched
    kept = out[:, 8:] != 0
    assert 0.3 < kept.float().mean() < 0.7 and torch.allclose(out[:, 8:][kept], 2 * x[:, 12:][kept])
    with pytest.raises(ValueError, match="global_dropout"):
        GlobalFeatureBoxHead(12, 8, 16, global_dropout=1.0)
    assert MaligNet(global_dropout=0.5, image_size=SIZE).roi_heads.box_head.global_dropout.p == 0.5
