"""Training and evaluation of a frozen backbone with the LITE baselines.

    metrics = train(cfg)       # writes the run directory cfg.out
    metrics = evaluate(cfg)    # re-evaluates the trained parameters of cfg.out

The run directory belongs to one run, named by a run id made when the run starts
("20250101-120000-1a2b3c4d"); every file carries it, and files of two runs are refused together:
    config.json                the resolved TrainConfig and "run_id"
    log.jsonl                  a "run" record (the id), then one object per logged step ("event": "step"), per
                               epoch ("event": "epoch", with the mean epoch loss, validation metrics such as
                               "val/top1" (retrieval also "val/loss", the release's validation loss), "best":
                               true on a new best epoch, and "samples": how many samples of each kind the epoch used over all
                               ranks, original, preserving (replaced by a label-preserving image), genie and
                               breaking_pairs), per skipped non-finite step ("skipped") and per resume
                               ("resume", with the settings it changed: {"epochs": [old, new]})
    checkpoint.safetensors     the latest resumable state (trainable parameters, optimizer, loss state,
    checkpoint.json              RNG states, epoch, step within the epoch, sampler position, run id); written
                               atomically every `checkpoint_every` steps and at each epoch end
    trainable.safetensors      the last epoch's trainable parameters, keyed by module path ("visual.conv1.logits");
                               metadata: run_id, global_step
    best.safetensors           with select="best": the parameters of the epoch best on the val split; metadata
                               also "selection" (see lowres_vision.training.selection)
    metrics-<split>.json       one per evaluated split (train: eval_split; `evaluate` / `lowres-vision eval
                               --split`: any) of the selected parameters: {"run_id", "split", "parameters"
                               (best.safetensors or trainable.safetensors), "global_step", "selection" (with
                               select="best": {"epoch", "criterion": "val/top1" | "val/loss" | "val/R@1", "value"}), "metrics":
                               classification top1/top5 (percent); retrieval R@k (percent), mean/median rank}
    predictions-<split>.npz    classification logits/labels/class_names; retrieval embeddings, ground truth,
                               paths; and run_id, split, parameters, global_step

A new run refuses a directory that holds a run unless `overwrite` (which deletes that run's files
first); `resume` continues the run there, refusing settings that change what a step computes
(config.RESUME_MAY_CHANGE lists those that may change) and checking everything before it writes.
A non-finite loss stops the run (`on_nonfinite="stop"`; the last checkpoint stays the last good
state) or skips that step's update ("skip").

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
