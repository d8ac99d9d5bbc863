"""Held-out evaluation of a pretrained CLIP on its own corpus: zero-shot accuracy and retrieval recall.

The held-out split is the `holdout` samples right after the training corpus (indices
`corpus_size ..`), never drawn in training. Retrieval counts a hit when a retrieved item has the
query's exact caption: the grammar repeats short captions ("five green stars"), and an image
is as well described by another image's identical caption as by its own. A corpus with scenes
(`scene_share` > 0) also reports how often a held-out scene's image embedding retrieves its rendering
in another style (`scene_to_other_style_R@k`), and one with solids (`solid_share` > 0) how often a
solid retrieves its other view (`solid_to_other_view_R@k`), each beside what guessing scores
(`..._chance_R@k`). The gallery is the held-out second renderings drawn in the style of the query's own:
a drawing looks for its render among renders. Ranked among all second renderings, a drawing would
first meet the other drawings, and the score would fall below chance for an embedding that matches
nothing across styles, which says nothing about what the term taught.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .corpus import SCENE_KIND, SOLID_KIND, subject_prompts
from .data import CaptionedCorpus, image_to_tensor

RECALL_AT = (1, 5)


def recall_at_k(similarity: torch.Tensor, relevant: torch.Tensor, ks=RECALL_AT) -> dict[str, float]:
    """similarity [queries, items], relevant [queries, items] bool -> {"R@k": % of queries with a relevant item in the top k}."""
    order = similarity.argsort(dim=1, descending=True)
    hits = relevant.gather(1, order)
    return {f"R@{k}": round(100.0 * hits[:, :k].any(dim=1).float().mean().item(), 2) for k in ks}


def other_rendering_recall(firsts: torch.Tensor, seconds: torch.Tensor, second_styles: list[str],
                           ks=RECALL_AT) -> dict[str, float]:
    """Row i of `firsts` [n, d] retrieves row i of `seconds` [n, d] among the rows drawn in the same style
    (`second_styles`) -> {"R@k": ..., "chance_R@k": % that guessing within each query's gallery scores}."""
    # [query, item]: the item is drawn as the query's partner is
    in_gallery = torch.tensor([[a == b for b in second_styles] for a in second_styles])
    similarity = (firsts @ seconds.T).masked_fill(~in_gallery, float("-inf"))
    metrics = recall_at_k(similarity, torch.eye(len(second_styles), dtype=torch.bool), ks)
    gallery = in_gallery.sum(dim=1).double()
    metrics.update({f"chance_R@{k}": round(100.0 * (gallery.clamp(max=k) / gallery).mean().item(), 2) for k in ks})
    return metrics


@torch.inference_mode()
def evaluate_heldout(model: torch.nn.Module, cfg, device: torch.device, batch_size: int = 100) -> dict:
    """Image->text and text->image recall over the held-out samples and zero-shot top-1 on those with one subject."""
    model.eval()
    corpus = CaptionedCorpus(cfg.seed, cfg.corpus_size, cfg.holdout, cfg.image_size, cfg.context_length,
                             scene_share=cfg.scene_share, solid_share=cfg.solid_share)
    samples = [corpus.sample(i) for i in range(len(corpus))]
    image_features, text_features = [], []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        images = torch.stack([image_to_tensor(s.image) for s in chunk]).to(device)
        tokens = corpus.tokenizer([s.caption for s in chunk]).to(device)
        image_features.append(F.normalize(model.encode_image(images).float(), dim=-1).cpu())
        text_features.append(F.normalize(model.encode_text(tokens).float(), dim=-1).cpu())
    images, texts = torch.cat(image_features), torch.cat(text_features)
    captions = [s.caption for s in samples]
    same = torch.tensor([[a == b for b in captions] for a in captions])
    similarity = images @ texts.T
    metrics = {"heldout_samples": len(samples)}
    metrics.update({f"image_to_text_{k}": v for k, v in recall_at_k(similarity, same).items()})
    metrics.update({f"text_to_image_{k}": v for k, v in recall_at_k(similarity.T, same).items()})

    prompts = list(subject_prompts())
    labelled = [(i, prompts.index(s.subject)) for i, s in enumerate(samples) if s.subject is not None]
    prompt_features = F.normalize(model.encode_text(corpus.tokenizer(prompts).to(device)).float(), dim=-1).cpu()
    rows = torch.tensor([i for i, _ in labelled])
    labels = torch.tensor([label for _, label in labelled])
    predicted = (images[rows] @ prompt_features.T).argmax(dim=1)
    metrics["zeroshot_samples"] = len(labelled)
    metrics["zeroshot_classes"] = len(prompts)
    metrics["zeroshot_top1"] = round(100.0 * (predicted == labels).float().mean().item(), 2)
    for kind, name in ((SCENE_KIND, "scene_to_other_style"), (SOLID_KIND, "solid_to_other_view")):
        # each held-out scene (solid) retrieves its other rendering among the held-out scenes' (solids') second
        # renderings in that rendering's style
        paired = [i for i, s in enumerate(samples) if s.kind == kind]
        if len(paired) < 2:
            continue
        second_views = [corpus.second_view(i) for i in paired]
        seconds = torch.stack([image_to_tensor(view.image) for view in second_views]).to(device)
        second_features = torch.cat([F.normalize(model.encode_image(seconds[k:k + batch_size]).float(), dim=-1).cpu()
                                     for k in range(0, len(paired), batch_size)])
        metrics[f"{kind}_pairs"] = len(paired)
        metrics.update({f"{name}_{k}": v for k, v in other_rendering_recall(
            images[paired], second_features, [view.style for view in second_views]).items()})
    return metrics
