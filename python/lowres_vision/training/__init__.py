"""Training and evaluation of a frozen backbone with the LITE baselines.

    metrics = train(cfg)       # writes the run directory cfg.out
    metrics = evaluate(cfg)    # re-evaluates the trained parameters of cfg.out

The run directory:
    config.json                the resolved TrainConfig
    log.jsonl                  one object per logged step ("event": "step") and per epoch ("event": "epoch",
                               with the mean epoch loss and validation metrics such as "val/top1")
    checkpoint.safetensors     the latest resumable state (trainable parameters, optimizer, loss state,
    checkpoint.json              RNG states, epoch, step within the epoch, sampler position); written
                               atomically every `checkpoint_every` steps and at each epoch end
    trainable.safetensors      the final trainable parameters, keyed by module path ("visual.conv1.logits")
    metrics.json               classification top1/top5 (percent); retrieval R@k (percent), mean/median rank
    predictions.npz            classification logits/labels/class_names; retrieval embeddings, ground truth, paths

A run stopped at any point and restarted with `resume=True` ends with exactly the parameters of an
uninterrupted run: batch order comes from a seeded sampler that is restarted at the saved
position, and per-sample augmentation is seeded by (seed, epoch, index) (`EpochSeededDataset`).
Under torchrun (WORLD_SIZE > 1) it trains with DistributedDataParallel (gloo on CPU, nccl on GPU);
rank r takes every world-size-th sample of the same permutation, so a step sees the same global
batch as a single process with batch `batch_size * world_size`; only rank 0 writes.
"""

from .dry_run import dry_run_report
from .evaluation import evaluate
from .loop import StepHook, train
from .model import build_model

__all__ = ["StepHook", "build_model", "dry_run_report", "evaluate", "train"]
