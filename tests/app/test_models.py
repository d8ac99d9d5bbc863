"""Backbones, injection, adapters, heads and FLOP accounting on tiny random towers (56 px, 4x4 patches)."""

import copy

import pytest
import torch
import torch.nn.functional as F

import lowres_vision as lv
from lowres_vision.models import (
    PAPER_BACKBONES,
    ClassificationHead,
    EmbeddingHead,
    InjectedBlock,
    LowresModel,
    build_backbone,
    build_clip,
    inject,
)
from lowres_vision.models.flops import (
    VIT_H_14,
    ViTSpec,
    added_macs,
    added_parameters,
    backbone_macs,
    count_trainable_parameters,
    open_clip_spec,
)

IMAGE_SIZE = 56
WIDTH = 64
TOWERS = {
    "open_clip": "ViT-B-16",
    "timm": "timm:vit_base_patch16_224",
    "timm_reg4": "timm:vit_small_patch14_reg4_dinov2",
}
ALL_INJECTIONS = dict(tokenization=dict(), domain_attention=dict(), adapter=dict(kind="adaptformer", bottleneck=4))


@pytest.fixture(scope="module")
def towers():
    torch.manual_seed(0)
    return {key: build_backbone(name, tiny=True, image_size=IMAGE_SIZE)[0].eval() for key, name in TOWERS.items()}


@pytest.fixture
def images():
    return torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(1))


def blocks_of(visual):
    return visual.transformer.resblocks if hasattr(visual, "transformer") else visual.blocks


# ----------------------------------------------------------------------------- backbones


def test_tiny_backbones_are_frozen_and_report_preprocessing(towers, images):
    visual = towers["open_clip"]
    assert not any(p.requires_grad for p in visual.parameters())
    assert visual(images).shape == (2, 64)
    _, config = build_backbone(tiny=True, image_size=IMAGE_SIZE)
    assert config == {"image_size": IMAGE_SIZE, "interpolation": "bicubic",
                      "mean": (0.48145466, 0.4578275, 0.40821073), "std": (0.26862954, 0.26130258, 0.27577711)}
    assert towers["timm"].num_prefix_tokens == 1 and towers["timm_reg4"].num_prefix_tokens == 5


def test_checkpoint_is_loaded_and_text_tower_is_kept(tmp_path):
    torch.manual_seed(3)
    source = build_clip(tiny=True, image_size=IMAGE_SIZE)
    path = tmp_path / "tiny.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(4)
    visual, _ = build_backbone(tiny=True, image_size=IMAGE_SIZE, checkpoint=str(path))
    torch.testing.assert_close(visual.conv1.weight, source.visual.conv1.weight, rtol=0, atol=0)
    assert hasattr(source, "encode_text")
    with pytest.raises(ValueError, match="either pretrained"):
        build_backbone(tiny=True, pretrained="laion2b_s32b_b79k", checkpoint=str(path))


@pytest.mark.parametrize("paper_name", sorted(PAPER_BACKBONES))
def test_paper_backbones_build_by_name_as_tiny_models_of_the_same_architecture(paper_name, images):
    from open_clip.transformer import QuickGELU, VisionTransformer as OpenClipViT
    from timm.layers import LayerScale
    from timm.models.vision_transformer import VisionTransformer as TimmViT
    from timm.models.vision_transformer_sam import VisionTransformerSAM

    torch.manual_seed(0)
    name = PAPER_BACKBONES[paper_name].name
    visual, _ = build_backbone(name, tiny=True, image_size=IMAGE_SIZE)
    assert not any(p.requires_grad for p in visual.parameters())
    expected = {  # what makes each architecture itself, kept in the tiny form
        "ImageBind": lambda v: isinstance(v, OpenClipViT) and isinstance(v.transformer.resblocks[0].mlp.gelu, torch.nn.GELU),
        "CLIP": lambda v: isinstance(v, OpenClipViT) and isinstance(v.transformer.resblocks[0].mlp.gelu, QuickGELU),
        "DINOv2": lambda v: type(v) is TimmViT and isinstance(v.blocks[0].ls1, LayerScale) and v.num_prefix_tokens == 1,
        "DINOv2 with registers": lambda v: type(v) is TimmViT and isinstance(v.blocks[0].ls1, LayerScale) and v.num_prefix_tokens == 5,
        "SAM": lambda v: isinstance(v, VisionTransformerSAM),
    }[paper_name]
    assert expected(visual) and len(visual.blocks if hasattr(visual, "blocks") else visual.transformer.resblocks) == 4
    if paper_name == "SAM":
        with pytest.raises(ValueError, match="got VisionTransformerSAM; it has no class token"):
            inject(visual, adapter=dict(kind="adaptformer"))
        return
    inject(visual, **ALL_INJECTIONS)
    model = LowresModel(visual, ClassificationHead(WIDTH, 3))
    assert model(images).shape == (2, 3)


def test_paper_backbones_load_their_weights_by_the_real_path(monkeypatch):
    import open_clip
    import timm

    calls = []

    class Built(Exception):
        pass

    def record(*args, **kwargs):
        calls.append((args, kwargs))
        raise Built  # nothing is downloaded: the call's arguments are what this test checks

    monkeypatch.setattr(open_clip, "create_model", record)
    monkeypatch.setattr(timm, "create_model", record)
    for paper_name in ("CLIP", "DINOv2 with registers"):
        with pytest.raises(Built):
            build_backbone(PAPER_BACKBONES[paper_name].name, PAPER_BACKBONES[paper_name].pretrained)
    assert calls[0] == (("ViT-L-14-quickgelu",), {"pretrained": "openai", "force_image_size": None})
    assert calls[1][0] == ("vit_large_patch14_reg4_dinov2.lvd142m",) and calls[1][1]["pretrained"] is True


# ----------------------------------------------------------------------------- identity settings


def zero_domain_attention_alpha(visual):
    for block in blocks_of(visual):
        if isinstance(block, InjectedBlock) and block.domain_attention is not None:
            block.domain_attention.alpha.data.zero_()


@pytest.mark.parametrize("tower", sorted(TOWERS))
@pytest.mark.parametrize("injection", [
    dict(domain_attention=dict()),
    dict(adapter=dict(kind="adaptformer", bottleneck=2, scale=0.1)),
    dict(adapter=dict(kind="lora", rank=4)),
    dict(domain_attention=dict(block=0), adapter=dict(kind="adaptformer")),
])
def test_identity_settings_reproduce_the_frozen_model_exactly(towers, images, tower, injection):
    frozen = towers[tower]
    with torch.no_grad():
        expected = frozen(images)
        injected = inject(copy.deepcopy(frozen), **injection)
        zero_domain_attention_alpha(injected)
        assert torch.equal(injected(images), expected)


@pytest.mark.parametrize("tower", sorted(TOWERS))
def test_tokenization_with_blend_zero_is_the_frozen_patch_conv(towers, images, tower):
    frozen = towers[tower]
    with torch.no_grad():
        expected = frozen(images)
        reference = inject(copy.deepcopy(frozen), tokenization=dict(blend=0.0, backend="reference"))
        default = inject(copy.deepcopy(frozen), tokenization=dict(blend=0.0))
        if tower == "open_clip":  # no conv bias: the reference computes the very same conv
            assert torch.equal(reference(images), expected)
        # timm's conv adds its bias inside the conv, the op adds it afterwards; the C++ kernel
        # sums in another order: both differ from the frozen conv by rounding only.
        torch.testing.assert_close(reference(images), expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(default(images), expected, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- gradients and training


def perturb_symmetric_initialisation(visual):
    """Moves the parameters whose initial values block some gradients: AdaptFormer's up and LoRA's B
    start at zero, and identical domain-attention maps make the mixing logits' gradient vanish."""
    generator = torch.Generator().manual_seed(5)
    for name, parameter in visual.named_parameters():
        if parameter.requires_grad and (".up." in name or "lora_b" in name or name.endswith("domain_attention.maps")):
            parameter.data.copy_(0.1 * torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("tower", sorted(TOWERS))
# The head reads the last block's class token only: with a bottleneck of 2, both ReLU units can be off
# for both images, and the last down projection then has no gradient at all; 8 units keep one on.
@pytest.mark.parametrize("adapter", [dict(kind="adaptformer", bottleneck=8), dict(kind="lora", rank=2)])
def test_gradients_reach_exactly_the_injected_parameters(towers, images, tower, adapter):
    visual = inject(copy.deepcopy(towers[tower]), tokenization=dict(), domain_attention=dict(), adapter=adapter)
    perturb_symmetric_initialisation(visual)
    model = LowresModel(visual, ClassificationHead(WIDTH, 3))
    F.cross_entropy(model(images), torch.tensor([0, 2])).backward()
    trainable = dict(model.trainable_parameters())
    for name, parameter in model.named_parameters():
        if name in trainable:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name
    names = set(trainable)
    assert {n for n in names if n.startswith("head.")} == {"head.norm.weight", "head.norm.bias", "head.linear.weight"}
    assert any(n.endswith("domain_attention.maps") for n in names) and any(n.endswith(".logits") for n in names)


@pytest.mark.parametrize("adapter", [dict(kind="adaptformer", bottleneck=4), dict(kind="lora", rank=2)])
def test_a_few_adam_steps_reduce_a_toy_loss(towers, images, adapter):
    # Pull the injected tower's embeddings towards fixed random targets: only injected parameters move.
    torch.manual_seed(6)
    visual = inject(copy.deepcopy(towers["open_clip"]), tokenization=dict(), domain_attention=dict(), adapter=adapter)
    target = torch.randn(2, 64, generator=torch.Generator().manual_seed(2))
    optimizer = torch.optim.Adam([p for p in visual.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss = F.mse_loss(visual(images), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.97 * losses[0]


# ----------------------------------------------------------------------------- domain attention vs its definition (docs/ops.md)


def spec_domain_attention_block(x, maps, mix_logits, alpha, num_prefix_tokens, parts):
    """Domain attention as the LITE paper defines it (docs/ops.md), written out: per-map crops M_c[h - i + k, h - j + l], prefix logits 0, per-map
    projection, softmax(r)-mixing, alpha * f added after the attention branch, then the MLP branch."""
    norm1, attention_branch, value, out_proj, norm2, mlp_branch = parts
    h_grid = maps.shape[-1] // 2
    num_tokens = num_prefix_tokens + h_grid * h_grid
    hidden = norm1(x)
    after_attention = x + attention_branch(hidden)
    v = value(hidden)
    f = torch.zeros_like(after_attention)
    for c, weight in enumerate(torch.softmax(mix_logits, 0)):
        logits = torch.zeros(num_tokens, num_tokens, dtype=x.dtype)
        for i in range(h_grid):
            for j in range(h_grid):
                for k in range(h_grid):
                    for l in range(h_grid):
                        logits[num_prefix_tokens + i * h_grid + j, num_prefix_tokens + k * h_grid + l] = maps[c, h_grid - i + k, h_grid - j + l]
        f = f + weight * out_proj(torch.softmax(logits, -1) @ v)
    y = after_attention + alpha * f
    return y + mlp_branch(norm2(y))


def open_clip_parts(block):
    width = block.attn.embed_dim
    return (block.ln_1, lambda h: block.ls_1(block.attn(h, h, h, need_weights=False)[0]),
            lambda h: h @ block.attn.in_proj_weight[2 * width:].t() + block.attn.in_proj_bias[2 * width:],
            block.attn.out_proj, block.ln_2, lambda n: block.ls_2(block.mlp(n)))


def timm_parts(block):
    width = block.attn.qkv.in_features
    return (block.norm1, lambda h: block.ls1(block.attn(h)),
            lambda h: h @ block.attn.qkv.weight[2 * width:].t() + (0 if block.attn.qkv.bias is None else block.attn.qkv.bias[2 * width:]),
            block.attn.proj, block.norm2, lambda n: block.ls2(block.mlp(n)))


@pytest.mark.parametrize("tower", sorted(TOWERS))
def test_injected_domain_attention_matches_the_spec(towers, images, tower):
    visual = inject(copy.deepcopy(towers[tower]), domain_attention=dict(block=1, num_maps=3))
    wrapped = blocks_of(visual)[1]
    attention = wrapped.domain_attention
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        attention.maps.copy_(torch.randn(attention.maps.shape, generator=generator))
        attention.mix_logits.copy_(torch.randn(3, generator=generator))
        attention.alpha.fill_(0.7)
        x = torch.randn(2, attention.num_prefix_tokens + 16, WIDTH, generator=generator)
        parts = open_clip_parts(wrapped.block) if tower == "open_clip" else timm_parts(wrapped.block)
        expected = spec_domain_attention_block(x, attention.maps, attention.mix_logits, 0.7,
                                               towers[tower].num_prefix_tokens if tower != "open_clip" else 1, parts)
        torch.testing.assert_close(wrapped(x), expected, rtol=1e-5, atol=1e-5)
    assert attention.num_prefix_tokens == (1 if tower == "open_clip" else towers[tower].num_prefix_tokens)


def test_inject_passes_the_domain_attention_init(towers):
    default = inject(copy.deepcopy(towers["open_clip"]), domain_attention=dict(num_maps=3)).transformer.resblocks[2]
    assert torch.equal(default.domain_attention.maps, torch.ones(3, 8, 8))
    torch.manual_seed(9)
    random = inject(copy.deepcopy(towers["open_clip"]), domain_attention=dict(num_maps=3, init="random")).transformer.resblocks[2]
    maps = random.domain_attention.maps
    assert not torch.equal(maps[0], maps[1]) and (maps - 1).abs().max() < 0.2


# ----------------------------------------------------------------------------- adapters and their registry


@pytest.mark.parametrize("tower", sorted(TOWERS))
def test_injected_adaptformer_block_by_hand(towers, tower):
    # x + attention; then + MLP(norm2 x) + scale * ReLU(norm2(x) W_down) W_up, with scale != 1.
    visual = inject(copy.deepcopy(towers[tower]), adapter=dict(kind="adaptformer", bottleneck=3, scale=0.37))
    wrapped = blocks_of(visual)[2]
    generator = torch.Generator().manual_seed(8)
    w_down = torch.randn(WIDTH, 3, generator=generator)
    w_up = torch.randn(3, WIDTH, generator=generator)
    with torch.no_grad():
        wrapped.adapter.down.weight.copy_(w_down.t())
        wrapped.adapter.up.weight.copy_(w_up.t())
        x = torch.randn(2, towers[tower].num_prefix_tokens + 16 if tower != "open_clip" else 17, WIDTH, generator=generator)
        norm1, attention_branch, _, _, norm2, mlp_branch = (open_clip_parts if tower == "open_clip" else timm_parts)(wrapped.block)
        after_attention = x + attention_branch(norm1(x))
        n = norm2(after_attention)
        expected = after_attention + mlp_branch(n) + 0.37 * torch.relu(n @ w_down) @ w_up
        torch.testing.assert_close(wrapped(x), expected, rtol=1e-5, atol=1e-5)


def test_adaptformer_has_no_biases_by_default_and_counts_follow(towers):
    spec = ViTSpec(image_size=IMAGE_SIZE, patch_size=14, width=WIDTH, layers=4, embed_dim=64)
    for bias, per_block in [(False, 2 * WIDTH * 4), (True, 2 * WIDTH * 4 + 4 + WIDTH)]:
        adapter = dict(kind="adaptformer", bottleneck=4) | ({"bias": True} if bias else {})
        visual = inject(copy.deepcopy(towers["open_clip"]), adapter=adapter)
        biases = [name for name, p in visual.named_parameters() if p.requires_grad and name.endswith(".bias")]
        assert len(biases) == (2 * 4 if bias else 0), biases
        assert count_trainable_parameters(visual) == added_parameters(spec, adapter=adapter) == 4 * per_block
    with pytest.raises(ValueError, match="bias must be true or false"):
        inject(copy.deepcopy(towers["open_clip"]), adapter=dict(kind="adaptformer", bias="no"))


class ToyAdapter(torch.nn.Module):
    """A kind defined outside the package: a learned offset added after every block's MLP."""

    OPTIONS = frozenset({"start"})

    def __init__(self, width, start=0.0, device=None):
        super().__init__()
        self.offset = torch.nn.Parameter(torch.full((width,), float(start), device=device))

    def forward(self, n):
        return self.offset.expand_as(n)

    def multiply_adds(self, num_tokens):
        return 7 * num_tokens  # any number: the test checks that this one is used

    @classmethod
    def block_modules(cls, width, **options):
        return [cls(width, **options)]

    @classmethod
    def attach(cls, tower, **options):
        for index in range(len(tower.blocks)):
            tower.block(index, create=True).adapter = cls(tower.block(index, create=True).width, **options)


def test_a_registered_adapter_kind_is_one_entry_for_inject_flops_and_the_dry_run(towers, images, monkeypatch):
    from lowres_vision.models.adapters import ADAPTERS
    from lowres_vision.training.dry_run import _measured_parameters

    monkeypatch.setitem(ADAPTERS, "toy", ToyAdapter)
    spec = ViTSpec(image_size=IMAGE_SIZE, patch_size=14, width=WIDTH, layers=4, embed_dim=64)
    visual = inject(copy.deepcopy(towers["timm"]), adapter=dict(kind="toy", start=0.5))
    assert added_parameters(spec, adapter=dict(kind="toy")) == count_trainable_parameters(visual) == 4 * WIDTH
    assert added_macs(spec, adapter=dict(kind="toy")) == 4 * 7 * spec.num_tokens
    model = LowresModel(visual, ClassificationHead(WIDTH, 3))
    assert _measured_parameters(model)["adapter"] == 4 * WIDTH
    with torch.no_grad():  # the offset reaches the output: the blocks call it
        assert not torch.equal(visual(images), towers["timm"](images))
    with pytest.raises(ValueError, match=r"unknown toy adapter options \['rank'\]"):
        inject(copy.deepcopy(towers["timm"]), adapter=dict(kind="toy", rank=2))


# ----------------------------------------------------------------------------- heads and the model


def test_embedding_head_from_visual_reproduces_the_clip_embedding(towers, images):
    visual = copy.deepcopy(towers["open_clip"])
    model = LowresModel(visual, EmbeddingHead.from_visual(visual))
    with torch.no_grad():
        torch.testing.assert_close(model(images), F.normalize(visual(images), dim=-1))
    assert torch.linalg.vector_norm(model(images), dim=-1).detach() == pytest.approx([1.0, 1.0])


def test_classification_head_is_layernorm_cls_linear():
    head = ClassificationHead(4, 3)
    assert head.linear.bias is None
    tokens = torch.randn(2, 5, 4)
    expected = F.layer_norm(tokens, (4,), head.norm.weight, head.norm.bias)[:, 0] @ head.linear.weight.t()
    torch.testing.assert_close(head(tokens), expected)
    with pytest.raises(ValueError, match=r"\[batch, tokens, width\]"):
        head(torch.randn(2, 4))


def test_trainable_state_dict_keys_and_round_trip(towers, images):
    visual = inject(copy.deepcopy(towers["open_clip"]), **ALL_INJECTIONS)
    model = LowresModel(visual, ClassificationHead(WIDTH, 3))
    state = model.trainable_state_dict()
    assert "visual.conv1.logits" in state and "visual.transformer.resblocks.2.domain_attention.maps" in state
    assert sum(t.numel() for t in state.values()) == count_trainable_parameters(model)
    other = LowresModel(inject(copy.deepcopy(towers["open_clip"]), **ALL_INJECTIONS), ClassificationHead(WIDTH, 3))
    other.load_trainable_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(other(images), model(images))
    with pytest.raises(ValueError, match="missing keys"):
        other.load_trainable_state_dict({})


# ----------------------------------------------------------------------------- argument errors


def test_inject_errors_name_the_argument(towers):
    visual = copy.deepcopy(towers["open_clip"])
    with pytest.raises(ValueError, match=r"unknown tokenization options \['patch'\]"):
        inject(visual, tokenization=dict(patch=7))
    with pytest.raises(ValueError, match="adapter kind must be one of"):
        inject(visual, adapter=dict(kind="prefix"))
    with pytest.raises(ValueError, match="block=9 is out of range for 4 blocks"):
        inject(visual, domain_attention=dict(block=9))
    with pytest.raises(ValueError, match="LoRA targets"):
        inject(visual, adapter=dict(kind="lora", targets=("w",)))
    with pytest.raises(ValueError, match="open_clip VisionTransformer or a timm VisionTransformer, got Linear"):
        inject(torch.nn.Linear(2, 2))
    from timm.models.vision_transformer import VisionTransformer

    no_class_token = VisionTransformer(img_size=IMAGE_SIZE, patch_size=14, embed_dim=WIDTH, depth=1, num_heads=4,
                                       class_token=False, global_pool="avg", num_classes=0)
    with pytest.raises(ValueError, match="class token"):
        LowresModel(no_class_token, ClassificationHead(WIDTH, 2))
    inject(visual, tokenization=dict(), adapter=dict(kind="lora"))
    with pytest.raises(ValueError, match="already injected"):
        inject(visual, tokenization=dict())
    with pytest.raises(ValueError, match="already parametrized"):
        inject(visual, adapter=dict(kind="lora"))


# ----------------------------------------------------------------------------- FLOPs and parameters


def test_vit_h_14_added_parameters_match_the_paper():
    # 49 sub-kernel logits + 10 maps of 32 x 32 + 10 mixing logits + alpha.
    assert added_parameters(VIT_H_14, tokenization=dict(), domain_attention=dict(num_maps=10)) == 49 + 10 * 32 * 32 + 10 + 1


def test_backbone_multiply_adds_match_published_counts():
    # timm/fvcore figures in G multiply-adds at 224 px: ViT-B/16 17.6, ViT-H/14 167.4 (0.5% tolerance).
    assert backbone_macs(open_clip_spec("ViT-B-16")) / 1e9 == pytest.approx(17.6, rel=5e-3)
    assert backbone_macs(VIT_H_14) / 1e9 == pytest.approx(167.4, rel=5e-3)
    assert open_clip_spec("ViT-H-14") == VIT_H_14


def test_naive_tokenization_cost_matches_the_papers_increment():
    # Table 10: 224.6 -> 233.6 GFLOPs when both baselines are added; the paper's counter saw the
    # release's 49 sub-kernel convolutions but not domain attention's products (see flops.py): 5%.
    increment = added_macs(VIT_H_14, tokenization=dict(), implementation="naive") / 1e9
    assert increment == pytest.approx(233.6 - 224.6, rel=0.05)
    # The fused op costs one 7 x 7 conv at stride 7 instead of one 14 x 14 conv: the same multiply-adds.
    assert added_macs(VIT_H_14, tokenization=dict()) == 0


def test_domain_attention_and_adapter_costs_by_hand():
    spec = ViTSpec(image_size=28, patch_size=14, width=8, layers=2, embed_dim=None)  # N = 1 + 4 tokens
    n, d = 5, 8
    assert added_macs(spec, domain_attention=dict(num_maps=3)) == n * d * d + n * n * d + n * d * d
    assert added_macs(spec, domain_attention=dict(num_maps=3), implementation="naive") == n * d * d + 3 * (n * n * d + n * d * d)
    assert added_macs(spec, adapter=dict(kind="adaptformer", bottleneck=2)) == 2 * 2 * n * d * 2
    assert added_macs(spec, adapter=dict(kind="lora", rank=2, targets=("q", "v"))) == 2 * 2 * 2 * d * d


@pytest.mark.parametrize("adapter", [dict(kind="adaptformer", bottleneck=4), dict(kind="lora", rank=2)])
def test_added_parameters_match_an_injected_tiny_model(towers, adapter):
    spec = ViTSpec(image_size=IMAGE_SIZE, patch_size=14, width=WIDTH, layers=4, embed_dim=64)
    injections = dict(tokenization=dict(), domain_attention=dict(num_maps=10), adapter=adapter)
    visual = inject(copy.deepcopy(towers["open_clip"]), **injections)
    assert count_trainable_parameters(visual) == added_parameters(spec, **injections)


def test_backbone_multiply_adds_match_torch_flop_counter(towers, images):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    spec = ViTSpec(image_size=IMAGE_SIZE, patch_size=14, width=WIDTH, layers=4, embed_dim=64)
    visual = copy.deepcopy(towers["open_clip"]).train()  # training mode keeps MHA off its fused fast path
    # The counter does not know the CPU flash-attention kernel; the math path runs plain batched matmuls.
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        visual(images[:1])
    assert counter.get_total_flops() == 2 * backbone_macs(spec)  # the counter counts a multiply-add as 2


def test_package_exports():
    assert lv.inject is inject and lv.build_backbone is build_backbone
