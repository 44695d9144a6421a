import torch

from lvmlt import systems
from lvmlt.config import load_config
from lvmlt.models.backbones import BACKBONES, build_backbone
from lvmlt.models.fusion import LatentFusion, MapFusion, normalise_map
from lvmlt.systems import build_model


def _batch(b=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(b, 3, size, size, generator=g),
        "sam_map": torch.randn(b, 1, 16, 16, generator=g),
        "sam_vec": torch.randn(b, 256, generator=g),
    }


def test_backbones_expose_stages():
    for name in ("resnet8", "resnet32", "resnet18"):
        bb = build_backbone(name)
        x = torch.randn(2, 3, 64, 64)
        feats = []

        def keep(i, f, feats=feats):
            feats.append(f)
            return f

        bb.forward_maps(x, keep)
        assert [f.shape[1] for f in feats] == [s.channels for s in bb.feature_info]
        assert [64 // f.shape[-1] for f in feats] == [s.stride for s in bb.feature_info]
    assert {"resnet18", "resnet34", "resnet50", "resnet32"} <= set(BACKBONES.names())


def test_map_fusion_formula():
    fuse = MapFusion(4)
    torch.nn.init.constant_(fuse.conv.weight, 2.0)
    torch.nn.init.constant_(fuse.conv.bias, 0.5)
    f = torch.randn(2, 4, 8, 8)
    m = torch.randn(2, 1, 8, 8)  # same size: no resize, so the formula is checked exactly
    expected = (2.0 * normalise_map(m) + 0.5) * f + f
    torch.testing.assert_close(fuse(f, m), expected)
    n = normalise_map(m)
    torch.testing.assert_close(n.mean(dim=(2, 3)), torch.zeros(2, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(n.std(dim=(2, 3), unbiased=False), torch.ones(2, 1), atol=1e-3, rtol=0)


def test_map_fusion_starts_as_identity_and_gets_gradients():
    fuse = MapFusion(4)
    f = torch.randn(2, 4, 8, 8, requires_grad=True)
    out = fuse(f, torch.randn(2, 1, 32, 32))
    torch.testing.assert_close(out, f)
    out.square().sum().backward()
    assert fuse.conv.weight.grad.abs().sum() > 0


def test_latent_fusion_shapes_and_gradients():
    lf = LatentFusion(2048, 256, 10, dim=256)
    z, e = lf(torch.randn(4, 2048, requires_grad=True), torch.randn(4, 256))
    assert z.shape == (4, 10) and e.shape == (4, 512)
    z.sum().backward()
    assert all(p.grad is not None for p in lf.parameters())


def test_alpha_one_reproduces_plain_backbone_logits():
    torch.manual_seed(0)
    plain = build_model(load_config(None, ["model.backbone=resnet8"]), 5).eval()
    fused = build_model(load_config(None, ["model.backbone=resnet8", "fusion.latent=true", "fusion.alpha=1.0"]), 5).eval()
    fused.load_state_dict(plain.state_dict(), strict=False)
    b = _batch()
    torch.testing.assert_close(fused(b)["logits"], plain(b)["logits"])
    # alpha < 1 really mixes in z_SAM
    fused.alpha = 0.5
    assert not torch.allclose(fused(b)["logits"], plain(b)["logits"])


def test_full_model_all_options_and_the_probe():
    cfg = load_config(None, ["model.backbone=resnet8", "fusion.latent=true", "fusion.map=true", "fusion.map_stage=1", "model.dropout=0.5"])
    m = build_model(cfg, 7)
    assert systems.of(cfg).inputs(cfg) == {"image", "sam_map", "sam_vec"}
    out = m(_batch())
    assert out["logits"].shape == (3, 7)
    out["logits"].sum().backward()
    assert m.map_fusion.conv.weight.grad is not None
    probe_cfg = load_config(None, ["system=sam_probe"])
    only = build_model(probe_cfg, 7)
    assert not hasattr(only, "backbone") and systems.of(probe_cfg).inputs(probe_cfg) == {"sam_vec"}
    assert only(_batch())["logits"].shape == (3, 7)
    # the probe standardises each dimension: a shared offset and scale change nothing
    only.eval()
    b = _batch()
    only.sam_bn.running_mean.fill_(0.05)
    only.sam_bn.running_var.fill_(0.1**2)
    shifted = {**b, "sam_vec": b["sam_vec"] * 0.1 + 0.05}
    expected = only.head(b["sam_vec"].float())  # BN undoes the offset and scale exactly
    torch.testing.assert_close(only(shifted)["logits"], expected, atol=1e-3, rtol=1e-3)


def test_one_cosine_head_one_lws_and_the_probe_without_batchnorm():
    from lvmlt import systems
    from lvmlt.models.heads import ClassScale, CosineClassifier
    from lvmlt.models.probe import LinearProbe
    from lvmlt.models.stage import apply_stage

    torch.manual_seed(0)
    x = torch.randn(4, 8)
    ldam = CosineClassifier(8, 3)  # LDAM's head: plain cosines
    z = ldam(x)
    assert z.abs().max() <= 1 + 1e-6 and ldam.weight.norm(dim=1).max() < 0.1  # std 0.01 rows
    scilt = CosineClassifier(8, 3, temperature=0.07, init="unit")
    torch.testing.assert_close(scilt.weight.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(scilt(x) * 0.07, torch.nn.functional.normalize(x, dim=1) @ scilt.weight.T)
    lws = ClassScale(3)
    with torch.no_grad():
        lws.scale.copy_(torch.tensor([1.0, 2.0, 0.5]))
    torch.testing.assert_close(lws(z), z * torch.tensor([1.0, 2.0, 0.5]))
    # Without its BatchNorm the linear probe is FC(v), the feature dataset normalising v (cl2n):
    # the head of the synthetic-feature system.
    probe = LinearProbe(8, 3, norm="cl2n")
    torch.testing.assert_close(probe({"sam_vec": x})["logits"], probe.head(x))
    cl2n = load_config(None, ["system=synthetic_probe", "fusion.sam_norm=cl2n"])
    assert sum(p.numel() for p in probe.parameters()) == 8 * 3 + 3
    assert systems.of(cl2n).spec(cl2n, 3, {}).norms == {"sam_vec": "cl2n"}
    paper = load_config(None, ["system=sam_probe"])
    assert systems.of(paper).spec(paper, 3, {}).norms == {}  # the paper's probe: BatchNorm in the model
    # An LWS checkpoint from before ClassScale (the scales under "class_scale") still loads.
    cfg = load_config(None, ["system=sam_probe", "stage.lws=true"])
    m = build_model(cfg, 3)
    apply_stage(m, cfg.stage)
    state = {k: v for k, v in m.state_dict().items() if not k.startswith("class_scale")}
    state["class_scale"] = torch.tensor([3.0, 1.0, 1.0])
    m.load_state_dict(state)
    assert m.class_scale.scale.tolist() == [3.0, 1.0, 1.0]
