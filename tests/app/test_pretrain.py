"""`lowres-vision pretrain`: the generated corpus, the batch sampler, the contrastive training, resumption, DDP, loading."""

from __future__ import annotations

import hashlib
import json
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file

from lowres_vision.cli import main
from lowres_vision.pretrain import (DRAWING_LIKE_KINDS, KIND_WEIGHTS, SCENE_KIND, PretrainConfig, kind_shares, pretrain,
                                    render_sample, render_second_view, subject_prompts)
from lowres_vision.pretrain import trainer
from lowres_vision.pretrain.data import CaptionedCorpus, StepBatchSampler
from lowres_vision.pretrain.evaluate import other_rendering_recall, recall_at_k
from lowres_vision.pretrain.restyle import restyle

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(steps=8, batch_size=8, lr=3e-3, warmup=2, corpus_size=32, holdout=16, image_size=28, width=32, layers=1,
            head_width=16, text_width=32, text_layers=1, embed_dim=32, checkpoint_every=2)


def _config(out: Path, **overrides) -> PretrainConfig:
    return PretrainConfig(out=str(out), **{**TINY, **overrides})


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_corpus_is_a_function_of_seed_and_index():
    first, again, other = render_sample(0, 5, 56), render_sample(0, 5, 56), render_sample(1, 5, 56)
    assert first.caption == again.caption and np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert first.image.size == (56, 56)
    assert not np.array_equal(np.asarray(first.image), np.asarray(other.image))


def test_corpus_shares_and_disjointness_from_the_lite_generators():
    from lowres_vision.synth.circuits import PART_SIZES
    from lowres_vision.synth.drawings import OUTLINES
    from lowres_vision.synth.plan import CIRCUIT_CLASSES

    samples = [render_sample(3, i, 28) for i in range(600)]
    kinds = [s.kind for s in samples]
    for kind, weight in KIND_WEIGHTS.items():  # binomial standard deviation at 600 draws is at most 2 %
        assert abs(kinds.count(kind) / len(kinds) - weight / sum(KIND_WEIGHTS.values())) < 0.06, kind
    drawing_like = sum(KIND_WEIGHTS[k] for k in DRAWING_LIKE_KINDS) / sum(KIND_WEIGHTS.values())
    assert drawing_like == pytest.approx(0.08)
    text = " | ".join([s.caption for s in samples] + list(subject_prompts())).lower()
    # No circuit class, circuit part or machine-part outline name (the one-letter "L" and "T" aside) occurs.
    names = [n for n in (*CIRCUIT_CLASSES, *PART_SIZES, *OUTLINES) if len(n) > 1]
    assert [n for n in names if re.search(rf"\b{re.escape(n.lower())}\b", text)] == []
    assert re.search(r"\bnight landscape\b", text)  # the check does see words the captions hold
    assert all(s.subject in subject_prompts() for s in samples if s.subject is not None)


def test_the_default_corpus_is_the_shipped_models_sample_for_sample():
    # The captions of samples 0-199 of seed 0 as the shipped model's corpus drew them (commit 18fe0b6).
    captions = "|".join(render_sample(0, i, 28).caption for i in range(200))
    assert hashlib.sha256(captions.encode()).hexdigest() == "cc8e1cdcbff3418262f6d3c63db02224e19c483f8492761cbda90bcc7acae66d"
    assert SCENE_KIND not in kind_shares(0.0) and kind_shares(0.0) == pytest.approx(
        {k: w / sum(KIND_WEIGHTS.values()) for k, w in KIND_WEIGHTS.items()})


def test_scenes_take_their_share_and_come_with_a_second_rendering_in_another_style():
    from lowres_vision.pretrain.scenes import STYLE_PHRASES

    shares = kind_shares(0.4)
    assert shares[SCENE_KIND] == 0.4 and sum(shares.values()) == pytest.approx(1.0)
    assert shares["objects"] == pytest.approx(0.6 * 0.30)
    samples = [render_sample(2, i, 28, 0.4) for i in range(300)]
    scenes = [i for i, s in enumerate(samples) if s.kind == SCENE_KIND]
    assert abs(len(scenes) / 300 - 0.4) < 0.09  # binomial standard deviation 2.8 %
    style_pairs = set()
    for i, sample in enumerate(samples):
        second = render_second_view(2, i, 28, 0.4)
        if sample.kind != SCENE_KIND:
            assert second is None and sample.style is None
            continue
        first_style, content = next((s, sample.caption[len(p) + 1:]) for s, p in STYLE_PHRASES.items()
                                    if sample.caption.startswith(p + " "))
        second_style = next(s for s, p in STYLE_PHRASES.items() if second.caption.startswith(p + " "))
        assert second.caption == f"{STYLE_PHRASES[second_style]} {content}"  # the same scene, described alike
        assert second_style != first_style and second.image.size == (28, 28)
        assert (sample.style, second.style) == (first_style, second_style)
        assert not np.array_equal(np.asarray(second.image), np.asarray(sample.image))
        assert np.array_equal(np.asarray(second.image), np.asarray(render_second_view(2, i, 28, 0.4).image))
        style_pairs.add((first_style, second_style))
    assert len(style_pairs) == 6  # every ordered pair of the three styles occurs
    with pytest.raises(ValueError, match="scene_share and solid_share must be >= 0 with a sum below 1"):
        kind_shares(1.0)


def test_view_loss_is_the_symmetric_infonce_between_the_two_renderings():
    first, second = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    a, b = F.normalize(first, dim=-1), F.normalize(second, dim=-1)
    by_hand = 0.0
    for i in range(5):  # row i's positive is row i of the other side, every other row a negative
        by_hand -= 0.5 * (a[i] @ b[i] / 0.1 - torch.logsumexp(a[i] @ b.T / 0.1, 0))
        by_hand -= 0.5 * (b[i] @ a[i] / 0.1 - torch.logsumexp(b[i] @ a.T / 0.1, 0))
    assert trainer.view_loss(first, second, 0.1).item() == pytest.approx(by_hand.item() / 5, rel=1e-12)
    assert trainer.view_loss(first, first, 0.01).item() < 1e-6  # identical renderings: nothing to learn


@pytest.mark.parametrize("shares, paired", [({"scene_share": 0.5}, "scene_to_other_style"),
                                            ({"solid_share": 0.5}, "solid_to_other_view")])
def test_the_image_to_image_term_is_added_to_the_clip_loss_on_each_steps_pairs(tmp_path, shares, paired):
    import open_clip

    cfg = _config(tmp_path / "run", steps=3, view_weight=2.0, batch_size=16, **shares)
    corpus = CaptionedCorpus(cfg.seed, 0, cfg.corpus_size, cfg.image_size, cfg.context_length, second_views=True, **shares)
    torch.manual_seed(cfg.seed)
    initial = open_clip.model.CLIP(**cfg.model_config()).eval()
    metrics = pretrain(cfg)
    first = StepBatchSampler(cfg.corpus_size, cfg.batch_size, seed=cfg.seed, steps=1).batch(0)
    items = [corpus[i] for i in first]
    images, tokens = torch.stack([x[0] for x in items]), torch.stack([x[1] for x in items])
    paired_rows = [k for k, x in enumerate(items) if x[3]]
    seconds = torch.stack([items[k][2] for k in paired_rows])
    record = _log(tmp_path / "run")[0]
    with torch.no_grad():
        clip_loss = _clip_loss_by_hand(initial, images, tokens)
        view = trainer.view_loss(initial.encode_image(images[paired_rows]), initial.encode_image(seconds), 0.1).item()
    assert record["pairs"] == len(paired_rows) >= 2
    assert record["clip_loss"] == pytest.approx(clip_loss, abs=1e-4)
    assert record["view_loss"] == pytest.approx(view, abs=1e-4)
    assert record["loss"] == pytest.approx(clip_loss + 2.0 * view, abs=2e-4)
    kind = paired.split("_")[0]
    assert metrics[f"{kind}_pairs"] >= 2 and 0 <= metrics[f"{paired}_R@1"] <= 100


def test_the_restyle_term_is_the_infonce_between_each_image_and_its_restyled_copy(tmp_path):
    import open_clip

    cfg = _config(tmp_path / "run", steps=2, restyle_weight=0.5)
    corpus = CaptionedCorpus(cfg.seed, 0, cfg.corpus_size, cfg.image_size, cfg.context_length)
    torch.manual_seed(cfg.seed)
    initial = open_clip.model.CLIP(**cfg.model_config()).eval()
    pretrain(cfg)
    first = StepBatchSampler(cfg.corpus_size, cfg.batch_size, seed=cfg.seed, steps=1).batch(0)
    images, tokens = (torch.stack(parts) for parts in zip(*(corpus[i] for i in first)))
    restyled = restyle(images, trainer.restyle_generator(cfg, 0, 0))
    with torch.no_grad():
        clip_loss = _clip_loss_by_hand(initial, images, tokens)
        term = trainer.view_loss(initial.encode_image(images), initial.encode_image(restyled), 0.1).item()
    record = _log(tmp_path / "run")[0]
    assert record["clip_loss"] == pytest.approx(clip_loss, abs=1e-4)
    assert record["restyle_loss"] == pytest.approx(term, abs=1e-4)
    assert record["loss"] == pytest.approx(clip_loss + 0.5 * term, abs=2e-4)
    saved = json.loads((tmp_path / "run" / "pretrain_config.json").read_text())
    assert saved["restyle_weight"] == 0.5


def test_training_with_the_restyle_term_keeps_restyled_copies_near_their_originals(tmp_path):
    """CLIP's loss alone tells images apart by colour, so a restyled copy ends far from its original (the term on
    the 32 training images well above ln 32, what a uniform guess scores); with the term it does not."""
    import math

    import open_clip

    def restyle_term(run: Path) -> float:
        model = open_clip.create_model(f"local-dir:{run}").eval()
        corpus = CaptionedCorpus(0, 0, 32, 56, 40)
        images = torch.stack([corpus[i][0] for i in range(32)])
        with torch.no_grad():
            restyled = restyle(images, torch.Generator().manual_seed(99))
            return trainer.view_loss(model.encode_image(images), model.encode_image(restyled), 0.1).item()

    settings = dict(steps=20, batch_size=16, image_size=56, checkpoint_every=0)
    pretrain(_config(tmp_path / "plain", **settings))
    pretrain(_config(tmp_path / "restyle", restyle_weight=1.0, **settings))
    plain, trained = restyle_term(tmp_path / "plain"), restyle_term(tmp_path / "restyle")
    assert plain > math.log(32) + 1.0 and trained < math.log(32) + 0.2, (plain, trained)


@pytest.mark.parametrize("weight", ["-1.0", "nan"])
def test_a_bad_restyle_weight_is_refused_in_one_line(tmp_path, capsys, weight):
    assert main(["pretrain", "--out", str(tmp_path / "bad"), *_flags({**TINY, "restyle_weight": weight})]) == 2
    assert capsys.readouterr().err.strip() == f"lowres-vision pretrain: error: restyle_weight must be >= 0, got {weight}"


def test_step_batches_are_fixed_by_seed_and_step_and_split_over_ranks():
    full = StepBatchSampler(100, 8, seed=4, steps=5)
    batches = list(full)
    assert len(batches) == 5 and all(len(set(b)) == 8 and all(0 <= i < 100 for i in b) for b in batches)
    assert batches == list(StepBatchSampler(100, 8, seed=4, steps=5))
    assert batches != list(StepBatchSampler(100, 8, seed=5, steps=5))
    assert list(StepBatchSampler(100, 8, seed=4, steps=5, start_step=3)) == batches[3:]
    ranks = [list(StepBatchSampler(100, 8, seed=4, steps=5, rank=r, world_size=2)) for r in (0, 1)]
    for step, batch in enumerate(batches):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(batch) and len(ranks[0][step]) == 4


def test_learning_rate_warms_up_then_decays_to_zero():
    cfg = PretrainConfig(out="x", steps=12, warmup=2, lr=1.0)
    assert [trainer.learning_rate(cfg, s) for s in (0, 1)] == [0.5, 1.0]
    assert trainer.learning_rate(cfg, 2) == pytest.approx(1.0)
    assert trainer.learning_rate(cfg, 7) == pytest.approx(0.5)  # half-way through the cosine
    assert trainer.learning_rate(cfg, 12) == pytest.approx(0.0, abs=1e-12)


def test_recall_at_k_counts_a_relevant_item_in_the_top_k():
    similarity = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.7, 0.6, 0.1]])
    relevant = torch.tensor([[True, False, False], [True, False, False], [False, False, True]])
    # ranks of the relevant items: 1, 3, 3
    assert recall_at_k(similarity, relevant, (1, 2, 3)) == {"R@1": pytest.approx(33.33), "R@2": 33.33, "R@3": 100.0}


def test_a_rendering_is_looked_for_among_the_second_renderings_in_its_partners_style():
    # pairs 0, 1 and 3 have their second rendering as a drawing, pair 2 as a render
    styles = ["drawing", "drawing", "render", "drawing"]
    seconds = torch.eye(4, dtype=torch.float64)
    firsts = torch.tensor([[0.5, 0.0, 0.9, 0.0],  # closest to render 2, but first among the drawings: a hit
                           [0.0, 0.5, 0.0, 0.6],  # drawing 3 outranks its partner: a miss at 1, a hit at 2
                           [0.1, 0.9, 0.2, 0.9],  # its partner is the only render: a hit whatever the drawings score
                           [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    assert other_rendering_recall(firsts, seconds, styles, ks=(1, 2)) == {
        "R@1": 75.0, "R@2": 100.0,
        "chance_R@1": pytest.approx(100 * (3 * (1 / 3) + 1) / 4), "chance_R@2": pytest.approx(100 * (3 * (2 / 3) + 1) / 4)}
    # among all second renderings queries 0 and 2 would miss at 1 as well
    assert recall_at_k(firsts @ seconds.T, torch.eye(4, dtype=torch.bool), (1,))["R@1"] == 25.0


def _clip_loss_by_hand(model, images, tokens) -> float:
    image = F.normalize(model.encode_image(images), dim=-1)
    text = F.normalize(model.encode_text(tokens), dim=-1)
    logits = model.logit_scale.exp() * image @ text.T
    target = torch.arange(len(images))
    return float((F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2)


def test_a_few_steps_reduce_the_contrastive_loss_and_open_clip_loads_the_result(tmp_path):
    import open_clip

    cfg = _config(tmp_path / "run", steps=12)
    corpus = CaptionedCorpus(cfg.seed, 0, cfg.corpus_size, cfg.image_size, cfg.context_length)
    images, tokens = (torch.stack(parts) for parts in zip(*(corpus[i] for i in range(cfg.corpus_size))))
    torch.manual_seed(cfg.seed)  # the trainer's initialisation
    initial = open_clip.model.CLIP(**cfg.model_config()).eval()
    with torch.no_grad():
        before = _clip_loss_by_hand(initial, images, tokens)
    metrics = pretrain(cfg)

    trained = open_clip.create_model(f"local-dir:{tmp_path / 'run'}").eval()
    with torch.no_grad():
        after = _clip_loss_by_hand(trained, images, tokens)
    assert after < before - 0.3, (before, after)  # ln(32) = 3.47 at chance
    log = _log(tmp_path / "run")
    assert [r["step"] for r in log] == list(range(12))
    first = StepBatchSampler(cfg.corpus_size, cfg.batch_size, seed=cfg.seed, steps=1).batch(0)
    with torch.no_grad():  # the logged loss of step 0 is the formula on batch 0 with the initial weights
        assert log[0]["loss"] == pytest.approx(_clip_loss_by_hand(initial, images[first], tokens[first]), abs=1e-4)
    assert metrics["heldout_samples"] == 16 and 0 <= metrics["zeroshot_top1"] <= 100
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics


def test_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    pretrain(_config(tmp_path / "whole"))
    schedule = trainer.learning_rate

    def killed_at_step_5(cfg, step):
        if step == 5:
            raise KeyboardInterrupt
        return schedule(cfg, step)

    monkeypatch.setattr(trainer, "learning_rate", killed_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        pretrain(_config(tmp_path / "killed"))
    monkeypatch.setattr(trainer, "learning_rate", schedule)
    assert torch.load(tmp_path / "killed" / "state.pt", weights_only=False)["step"] == 4  # checkpoint_every=2
    assert main(["pretrain", "--out", str(tmp_path / "killed"), *_flags(TINY)]) == 2  # refuses to start over it
    with open(tmp_path / "killed" / "log.jsonl", "a") as log:
        log.write('{"step": 5, "lo')  # a kill can cut the last line short: resume drops it
    state = torch.load(tmp_path / "killed" / "state.pt", weights_only=False)
    for added_later in ("scene_share", "view_weight", "view_temperature", "restyle_weight"):  # saved before they existed
        del state["config"][added_later]  # resumes: a missing setting counts as its default
    torch.save(state, tmp_path / "killed" / "state.pt")
    pretrain(_config(tmp_path / "killed", resume=True))

    expected = load_file(str(tmp_path / "whole" / trainer.WEIGHTS_FILE))
    resumed = load_file(str(tmp_path / "killed" / trainer.WEIGHTS_FILE))
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    assert [r["step"] for r in _log(tmp_path / "killed")] == list(range(8))
    assert [r["loss"] for r in _log(tmp_path / "killed")] == [r["loss"] for r in _log(tmp_path / "whole")]


def _flags(settings: dict) -> list[str]:
    return [part for name, value in settings.items() for part in (f"--{name.replace('_', '-')}", str(value))]


def test_cli_reports_bad_settings_and_reused_out_in_one_line(tmp_path, capsys):
    assert main(["pretrain", "--out", str(tmp_path / "a"), *_flags({**TINY, "image_size": 30})]) == 2
    assert capsys.readouterr().err.strip() == ("lowres-vision pretrain: error: image_size must be a multiple of the "
                                               "patch size 14, got 30")
    assert main(["pretrain", "--out", str(tmp_path / "a"), *_flags({**TINY, "steps": 2})]) == 0
    capsys.readouterr()
    assert main(["pretrain", "--out", str(tmp_path / "a"), *_flags({**TINY, "steps": 2})]) == 2
    assert "already holds a finished model" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(tmp_path / "a"), *_flags({**TINY, "steps": 3}), "--resume"]) == 2
    assert "settings differ from the saved run: steps (2 != 3)" in capsys.readouterr().err
    assert main(["pretrain", "--out", str(tmp_path / "b"), *_flags({**TINY, "view_weight": 1.0})]) == 2
    assert capsys.readouterr().err.strip() == ("lowres-vision pretrain: error: view_weight 1.0 needs scenes or solids "
                                               "to pair: set scene_share or solid_share > 0")


def test_backbone_and_zero_shot_loaders_read_the_pretrained_checkpoint(tmp_path):
    from lowres_vision.core import load_vlm
    from lowres_vision.models import build_backbone

    pretrain(_config(tmp_path / "run", steps=2))
    weights = tmp_path / "run" / trainer.WEIGHTS_FILE
    saved = load_file(str(weights))
    visual, preprocess = build_backbone(checkpoint=str(weights), image_size=28)
    assert preprocess["image_size"] == 28 and not any(p.requires_grad for p in visual.parameters())
    for name, value in visual.state_dict().items():
        assert torch.equal(value, saved[f"visual.{name}"]), name
    model, _, text_encoder = load_vlm(checkpoint=str(weights))
    assert torch.equal(model.token_embedding.weight, saved["token_embedding.weight"])
    assert text_encoder.encode(["a red circle"]).shape == (1, 32)


def test_the_model_cards_command_writes_the_shipped_models_config():
    import dataclasses
    import shlex

    from lowres_vision.cli import build_parser
    from lowres_vision.models.backbone import SHIPPED_CHECKPOINT

    folder = Path(SHIPPED_CHECKPOINT).parent
    shipped = json.loads((folder / trainer.MODEL_CONFIG_FILE).read_text())
    commands = re.findall(r"^\s*(lowres-vision pretrain .*)$", (folder / "MODEL_CARD.md").read_text(), re.M)
    assert len(commands) == 1, commands
    args = build_parser().parse_args(shlex.split(commands[0])[1:])
    cfg = PretrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)})
    assert cfg.open_clip_config() == shipped
    assert (cfg.pos_embed, cfg.restyle_weight) == ("sin_cos_2d", 1.0)


def test_sine_cosine_position_embeddings_stay_fixed_and_load_at_any_size(tmp_path, capsys):
    import open_clip
    from open_clip.pos_embed import get_2d_sincos_pos_embed

    from lowres_vision.models import build_backbone

    pretrain(_config(tmp_path / "run", steps=2, pos_embed="sin_cos_2d"))
    config = json.loads((tmp_path / "run" / trainer.MODEL_CONFIG_FILE).read_text())
    assert config["model_cfg"]["vision_cfg"]["pos_embed_type"] == "sin_cos_2d"
    saved = load_file(str(tmp_path / "run" / trainer.WEIGHTS_FILE))
    table = torch.from_numpy(get_2d_sincos_pos_embed(TINY["width"], TINY["image_size"] // 14, cls_token=True)).float()
    assert torch.equal(saved["visual.positional_embedding"], table)  # trained, yet unchanged
    model = open_clip.create_model(f"local-dir:{tmp_path / 'run'}")
    assert torch.equal(model.visual.positional_embedding, table)
    visual, _ = build_backbone(checkpoint=str(tmp_path / "run" / trainer.WEIGHTS_FILE), image_size=42)
    assert visual(torch.zeros(1, 3, 42, 42)).shape == (1, TINY["embed_dim"])
    capsys.readouterr()
    assert main(["pretrain", "--out", str(tmp_path / "bad"), *_flags({**TINY, "pos_embed": "sincos"})]) == 2
    assert capsys.readouterr().err.strip() == ("lowres-vision pretrain: error: pos_embed must be one of learnable, "
                                               "sin_cos_2d, got 'sincos'")


def _ddp_worker(rank: int, world_size: int, port: int, cfg: PretrainConfig) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        pretrain(cfg)
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_one_process(tmp_path):
    pretrain(_config(tmp_path / "single", steps=3))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(2, port, _config(tmp_path / "ddp", steps=3)), nprocs=2, join=True,
                       start_method="fork")
    expected = load_file(str(tmp_path / "single" / trainer.WEIGHTS_FILE))
    got = load_file(str(tmp_path / "ddp" / trainer.WEIGHTS_FILE))
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)


def test_domain_shift_recall_ranks_partners_among_all_items():
    from lowres_vision.pretrain.domain_shift import _recall_at_5, domain_shift_recall

    items = torch.nn.functional.normalize(torch.randn(40, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    assert _recall_at_5(items, items) == 100.0  # every item finds itself first
    assert _recall_at_5(items, -items) == 0.0  # its partner is the least similar of all
    result = domain_shift_recall(count=8, image_size=42)
    assert set(result) == {"satellite -> satellite again", "old map -> old map, next style", "old map -> satellite",
                           "render -> render, other view", "drawing -> render", "old map -> satellite, detail layout",
                           "drawing -> render, detail layout", "chance", "same place, other shape and colour"}
    assert result["chance"] == 62.5 and all(0.0 <= value <= 100.0 for value in result.values())
    with pytest.raises(ValueError, match="count must be at least 6"):
        domain_shift_recall(count=5)


def test_detail_layout_locates_edges_whatever_their_colour():
    from lowres_vision.pretrain.domain_shift import detail_layout

    images = torch.zeros(3, 3, 64, 64, dtype=torch.float64)
    images[0, :, 4:12, 4:12] = 1.0  # a bright square in the top-left cell of the 8 x 8 lattice
    images[1] = -3.0 * images[0] + 0.5  # the same square darker than an offset background
    images[2] = 0.7  # no detail anywhere
    layout = detail_layout(images)
    assert layout.shape == (3, 64)
    torch.testing.assert_close(layout[0], layout[1])  # gradients' magnitude: colour and contrast drop out
    assert layout[0].argmax() == 0 and layout[0].norm().item() == pytest.approx(1.0)
    assert layout[2].abs().max().item() == 0.0


def test_place_probe_scores_a_position_blind_embedding_at_chance_and_a_spatial_one_at_100():
    from lowres_vision.data import eval_transform
    from lowres_vision.pretrain.domain_shift import detail_layout, place_accuracy

    transform = eval_transform(42)

    def blind(images):  # the same vector for every image: argmax ties go to place 0, right once in 9
        return torch.ones(len(images), 4)

    def spatial(images):
        return detail_layout(torch.stack([transform(image) for image in images]), grid=3)

    assert place_accuracy(blind, 42, trials=3) == pytest.approx(100 / 9)
    assert place_accuracy(spatial, 42, trials=3) == 100.0
