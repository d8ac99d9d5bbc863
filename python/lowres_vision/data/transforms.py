"""Image preprocessing: the LITE evaluation transform, light augmentation for training, and the LITE
paper's augmentation baselines (its Table 3): Random Erasing per image, MixUp and CutMix per batch,
all from torchvision.transforms.v2 with torchvision's defaults beyond the options given here."""

from __future__ import annotations

from typing import Callable, Optional

from torchvision import transforms as T
from torchvision.transforms import v2

# OpenAI CLIP normalisation, used by every open_clip ViT the benchmark evaluates.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class DeterministicCompose(T.Compose):
    """A Compose of deterministic steps, fixed at construction (a tuple, so no random step can be
    appended), with the `cache_key` under which data.cache may keep its outputs."""

    def __init__(self, transforms, cache_key: tuple) -> None:
        super().__init__(tuple(transforms))
        self.cache_key = cache_key


def eval_transform(image_size: int = 224, *, mean=CLIP_MEAN, std=CLIP_STD) -> DeterministicCompose:
    """Resize the short side to `image_size` (bicubic), centre crop, CLIP normalisation."""
    return DeterministicCompose([
        T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ], cache_key=("resize-crop-normalize", image_size, tuple(mean), tuple(std)))


def train_transform(image_size: int = 224, *, augment: bool = False, random_erasing: float = 0.0,
                    mean=CLIP_MEAN, std=CLIP_STD) -> T.Compose:
    """The evaluation transform, or with `augment` a mild random resized crop (90-100% of the area);
    then, with probability `random_erasing`, Random Erasing (arXiv 1708.04896) of the normalised
    image: one rectangle of 2-33% of the area, aspect 0.3-3.3, set to 0 (the dataset mean).

    No flips: text in circuit diagrams and the orientation of maps carry meaning.
    """
    evaluation = eval_transform(image_size, mean=mean, std=std)
    if not augment and random_erasing == 0:
        return evaluation
    steps = list(evaluation.transforms)
    if augment:  # the random crop replaces resize and centre crop
        steps[:2] = [T.RandomResizedCrop(image_size, scale=(0.9, 1.0), ratio=(0.9, 1.1), interpolation=T.InterpolationMode.BICUBIC)]
    if random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing))
    return T.Compose(steps)


def batch_mixing(num_classes: int, *, mixup: float = 0.0, cutmix: float = 0.0) -> Optional[Callable]:
    """(images [B, C, H, W], labels [B]) -> (mixed images, soft targets [B, K]): MixUp (arXiv 1710.09412)
    with Beta(mixup, mixup) when mixup > 0, CutMix (arXiv 1905.04899) with Beta(cutmix, cutmix) when
    cutmix > 0, one of the two per batch with equal probability when both are on; None when neither.

    torchvision pairs image i with image i - 1 of the batch (a roll by one): image i keeps a share
    lambda and its target is lambda * onehot(y_i) + (1 - lambda) * onehot(y_{i-1}).
    """
    mixers = [mix(alpha=alpha, num_classes=num_classes) for mix, alpha in ((v2.MixUp, mixup), (v2.CutMix, cutmix)) if alpha > 0]
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)
