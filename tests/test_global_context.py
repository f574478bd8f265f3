"""The global-context probe: what the classifier receives is recorded, and replaced when asked."""

import pytest
import torch

from malignet_bundle.experiments.global_context import GlobalVectorProbe, ablation_table
from malignet_bundle.networks.malignet import MaligNet

SMALL = {"image_size": 96, "backbone": "resnet18", "pyramid_channels": 32, "representation_size": 64}


def _classifier_inputs(network):
    seen = []
    handle = network.roi_heads.box_predictor.register_forward_hook(lambda m, i, o: seen.append(i[0].detach()))
    return seen, handle


def test_probe_records_and_replaces_the_vector_the_classifier_sees():
    torch.manual_seed(0)
    network = MaligNet(global_features=True, global_channels=8, ladder=False, box_score_thresh=0.0, **SMALL).eval()
    images = [torch.rand(1, 96, 96), torch.rand(1, 96, 96)]
    seen, handle = _classifier_inputs(network)
    with torch.no_grad(), GlobalVectorProbe(network) as probe:
        network(images)
    computed = probe.recorded
    assert computed.shape == (2, 8) and not torch.equal(computed[0], computed[1])
    # the classifier's inputs end with the image's vector: as computed ...
    assert torch.allclose(seen[-1][:, -8:].unique(dim=0), computed.unique(dim=0))
    replacement = torch.stack([torch.full((8,), 3.0), torch.full((8,), -2.0)])
    with torch.no_grad(), GlobalVectorProbe(network, replacement) as probe:
        network(images)
    # ... and, probed, the replacement in the images' order, while the network still computed its own
    assert set(seen[-1][:, -8:].flatten().tolist()) == {3.0, -2.0} and probe.used == 2
    assert torch.allclose(probe.recorded, computed)
    handle.remove()
    with torch.no_grad(), GlobalVectorProbe(network, replacement[:1]), pytest.raises(ValueError, match="replacement"):
        network(images)  # two images, one replacement vector: refused, not recycled
    with torch.no_grad(), GlobalVectorProbe(network, torch.zeros(2, 4)), pytest.raises(ValueError, match="shape"):
        network(images)
    # the hook is gone once the probe is left
    assert not network.global_embedding._forward_hooks


def test_probe_refuses_a_network_without_global_features():
    with pytest.raises(ValueError, match="global_features=False"):
        GlobalVectorProbe(MaligNet(global_features=False, ladder=False, **SMALL))


def test_ablation_table_reports_changes_and_their_sign_count():
    def result(name, precision, mean_precision):
        modes = {"as_trained": {"test_mean_precision": precision}, "mean": {"test_mean_precision": mean_precision}}
        modes["swapped"] = {"test_mean_precision": precision}
        return {"run": name, "vector_spread": 0.5, "modes": modes}

    table = ablation_table([result("a", 0.4, 0.5), result("b", 0.5, 0.45)])
    assert "| a | 0.50 | mean precision | 0.400 | +0.100 | +0.000 |" in table
    assert "| mean precision | 2 | +0.025 (1 / 1) | +0.000 (0 / 0) |" in table
