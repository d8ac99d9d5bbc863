"""Image preprocessing: the LITE evaluation transform, and light augmentation for training."""

from __future__ import annotations

from torchvision import transforms as T

# OpenAI CLIP normalisation, used by every open_clip ViT the benchmark evaluates.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def eval_transform(image_size: int = 224, *, mean=CLIP_MEAN, std=CLIP_STD) -> T.Compose:
    """Resize the short side to `image_size` (bicubic), centre crop, CLIP normalisation."""
    return T.Compose([
        T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def train_transform(image_size: int = 224, *, augment: bool = False, mean=CLIP_MEAN, std=CLIP_STD) -> T.Compose:
    """The evaluation transform, or with `augment` a mild random resized crop (90-100% of the area).

    No flips: text in circuit diagrams and the orientation of maps carry meaning.
    """
    if not augment:
        return eval_transform(image_size, mean=mean, std=std)
    return T.Compose([
        T.RandomResizedCrop(image_size, scale=(0.9, 1.0), ratio=(0.9, 1.1), interpolation=T.InterpolationMode.BICUBIC),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
