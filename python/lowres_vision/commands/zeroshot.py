"""`lowres-vision zeroshot`: training-free evaluation, plain zero-shot or CoRE (arXiv:2411.00988).

Classification tasks: class prompts against image embeddings (Top-1/Top-5). Retrieval tasks:
cosine similarity of image embeddings (R@k, ranks); with `--method core` queries and gallery
images are both enriched with the captions retrieved for them (β; α has no class branch there).
Writes `metrics.json` and `predictions.npz` to `--out`, and for CoRE `retrieval_examples.png`
(the captions retrieved for a few test images) and, with `--tune`, `tuning.png`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EXAMPLE_IMAGES = 4


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..data import task_names
    from .index import add_index_arguments

    parser = subparsers.add_parser(
        "zeroshot", help="training-free zero-shot evaluation (plain prompts or CoRE retrieval enrichment)", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--task", required=True, choices=task_names())
    parser.add_argument("--data-root", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="directory for metrics.json, predictions.npz and figures")
    parser.add_argument("--method", choices=("plain", "core"), default="core")
    parser.add_argument("--split", choices=("train", "val", "test"), default="test")
    model = parser.add_argument_group("image-text model (open_clip)")
    model.add_argument("--model", default=None, help="open_clip model name (default ViT-SO400M-14-SigLIP-384 with --pretrained)")
    source = model.add_mutually_exclusive_group()
    source.add_argument("--pretrained", default=None, help="open_clip pretrained tag (e.g. webli) or local checkpoint path")
    source.add_argument("--checkpoint", default=None,
                        help="local weights with open_clip_config.json beside them, as `lowres-vision pretrain` writes "
                             "(default, without --model/--pretrained/--tiny: the CLIP this package ships)")
    source.add_argument("--tiny", action="store_true", help="a tiny randomly initialised CLIP (tests)")
    prompts = parser.add_argument_group("prompts")
    prompts.add_argument("--prompt-style", choices=("core", "lite"), default="core",
                         help="default zero-shot prompt: the CoRE paper's ('A circuit diagram of a {}.') or the LITE release's ('a circuit diagram of {}')")
    prompts.add_argument("--template", action="append", default=None, help="zero-shot template with one {} (repeatable; templates are averaged)")
    prompts.add_argument("--retrieval-template", default=None, help="template of the class-name -> caption query")
    core = parser.add_argument_group("CoRE")
    core.add_argument("--captions", type=Path, default=None, help="caption corpus: .txt (one per line), .csv/.tsv/.parquet with --caption-column "
                                                                             "(default: the corpus of --index-dir, else the shipped one)")
    core.add_argument("--index-dir", type=Path, default=None, help="caption index directory, reused and resumed (default OUT/caption_index); "
                                                                       "without --captions, its own corpus is searched")
    add_index_arguments(core)
    core.add_argument("--alpha", type=float, default=0.2)
    core.add_argument("--beta", type=float, default=0.5)
    core.add_argument("--tune", action="store_true", help="tune alpha and beta over 0.1..1.0 on the training split")
    core.add_argument("--k", type=int, default=10)
    core.add_argument("--image-temperature", type=float, default=None,
                      help="tau_i2t, --formula paper only (scores are divided by it; default 100); the release weighs by the raw scores")
    core.add_argument("--text-temperature", type=float, default=None, help="tau_t2t (default: 0.01 release, 1 paper)")
    core.add_argument("--duplicate-threshold", type=float, default=None,
                      help="drop retrieved captions above this cosine to a better one; negative disables (default: the release's, core.DUPLICATE_COSINE)")
    core.add_argument("--formula", choices=("release", "paper"), default="release")
    run = parser.add_argument_group("run")
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument("--workers", type=int, default=0)
    run.add_argument("--device", default=None, help="default: cuda when available")
    run.add_argument("--seed", type=int, default=0, help="seeds the initialisation of randomly initialised models")
    parser.set_defaults(func=run_zeroshot)


def _embed_paths(model, paths, preprocess, args, device, desc):
    from torch.utils.data import DataLoader

    from lowres_vision.core import encode_images
    from lowres_vision.data import ImageListDataset

    loader = DataLoader(ImageListDataset(paths, preprocess), batch_size=args.batch_size, num_workers=args.workers)
    return encode_images(model, loader, device=device, desc=desc)


def _duplicate_threshold(value: float | None) -> float | None:
    from lowres_vision.core import DUPLICATE_COSINE

    if value is None:
        return DUPLICATE_COSINE
    return value if value >= 0 else None


def _checked_core_inputs(args):
    """(CoREConfig, captions) from the flags, checked before any model is loaded; (None, None) for plain."""
    from lowres_vision import core
    from lowres_vision.errors import InputError

    templates = [*(args.template or []), *([args.retrieval_template] if args.retrieval_template else [])]
    try:
        core.fill_templates(templates, ["class"])
    except ValueError as error:
        raise InputError(str(error)) from error
    if args.method != "core":
        return None, None
    try:
        config = core.CoREConfig(
            k=args.k, alpha=args.alpha, beta=args.beta, image_temperature=args.image_temperature,
            text_temperature=args.text_temperature, formula=args.formula,
            duplicate_threshold=_duplicate_threshold(args.duplicate_threshold),
        )
        corpus = _corpus(args)
    except ValueError as error:  # the core checks name the setting; here it becomes a user error
        raise InputError(str(error)) from error
    if next(iter(corpus), None) is None:  # reads up to the first caption only
        raise InputError(f"--captions {args.captions or core.default_captions_path()}: the caption corpus holds no captions")
    return config, corpus


def _corpus(args):
    """--captions, streamed from its file; else the corpus of --index-dir when it holds one (an index built by
    `lowres-vision index` is used without its corpus files); else the shipped corpus."""
    from lowres_vision import core
    from lowres_vision.core.corpus import CaptionLines

    if args.captions is not None:
        return core.CaptionFiles((args.captions,), column=args.caption_column)
    if args.index_dir is not None and (args.index_dir / "captions.txt").is_file():
        return CaptionLines(args.index_dir / "captions.txt")
    return core.CaptionFiles((core.default_captions_path(),))


def _open_core(args, config, corpus, vlm_encoder, device):
    from lowres_vision import core

    from .index import open_text_encoder

    text_encoder = open_text_encoder(args, device)
    index = core.build_caption_index(
        corpus, args.index_dir or args.out / "caption_index",
        vlm_encoder=vlm_encoder, text_encoder=text_encoder, batch_size=args.caption_batch_size, index_kind=args.index_kind,
        max_index_memory=args.max_index_memory, recall_target=args.recall_target,
    )
    return core.CoRE(index, vlm_encoder, text_encoder, config)


def _classification(args, core_inputs, model, preprocess, vlm_encoder, device):
    import numpy as np
    import torch

    from lowres_vision import core, metrics
    from lowres_vision.atomic_files import write_npz
    from lowres_vision.core.figures import plot_retrieved_captions, plot_tuning_grid
    from lowres_vision.data import load_split
    from lowres_vision.errors import InputError

    split = load_split(args.task, args.data_root, args.split)
    default_templates, default_retrieval_template = core.default_templates(args.task, args.prompt_style)
    templates = args.template or default_templates
    images = _embed_paths(model, split.paths, preprocess, args, device, f"{args.split} images")
    results = {"method": args.method, "task": args.task, "split": args.split, "templates": list(templates)}
    if args.method == "plain":
        logits = images @ core.zero_shot_weights(vlm_encoder, split.class_names, templates).T
    else:
        method = _open_core(args, *core_inputs, vlm_encoder, device)
        classes = method.classes(split.class_names, templates, args.retrieval_template or default_retrieval_template)
        queries = method.queries(images)
        alpha, beta = args.alpha, args.beta
        if args.tune:
            train = load_split(args.task, args.data_root, "train")
            if tuple(train.class_names) != tuple(split.class_names):
                raise InputError("--tune: the train split's class names differ from those of the evaluated split")
            tuning = core.tune_alpha_beta(
                classes, method.queries(_embed_paths(model, train.paths, preprocess, args, device, "train images")), train.labels,
                formula=args.formula,
            )
            alpha, beta = tuning.alpha, tuning.beta
            results["tuning"] = {
                "train_top1": tuning.top1, "alphas": list(tuning.alphas), "betas": list(tuning.betas), "top1": tuning.accuracy.tolist(),
            }
            plot_tuning_grid(tuning.alphas, tuning.betas, tuning.accuracy, args.out / "tuning.png")
        logits = method.logits(classes, queries, alpha=alpha, beta=beta)
        results.update(alpha=alpha, beta=beta, formula=args.formula, captions=len(method.index))
        shown = range(min(EXAMPLE_IMAGES, len(split)))
        caption_lists = queries.retrieved.caption_lists(method.index.captions)
        plot_retrieved_captions(
            [split.paths[i] for i in shown], [caption_lists[i] for i in shown], args.out / "retrieval_examples.png",
            titles=[f"{split.paths[i].name} ({split.class_names[split.labels[i]]})" for i in shown],
        )
        results["class_captions"] = {
            name: [caption for caption, _ in captions]
            for name, captions in zip(split.class_names, classes.retrieved.caption_lists(method.index.captions))
        }
    labels = torch.tensor(split.labels)
    results.update(metrics.topk_accuracy(logits, labels, (1, 5)))
    write_npz(args.out / "predictions.npz", {"logits": logits.numpy(), "labels": labels.numpy(),
                                              "class_names": np.asarray(split.class_names)})
    return results


def _retrieval(args, core_inputs, model, preprocess, vlm_encoder, device):
    import numpy as np
    import torch

    from lowres_vision import core
    from lowres_vision.atomic_files import write_npz
    from lowres_vision.core.figures import plot_retrieved_captions
    from lowres_vision.data import load_split
    from lowres_vision.metrics import split_retrieval_metrics

    split = load_split(args.task, args.data_root, args.split)
    queries = _embed_paths(model, split.query_paths, preprocess, args, device, f"{args.split} queries")
    gallery = _embed_paths(model, split.gallery_paths, preprocess, args, device, f"{args.split} gallery")
    results = {"method": args.method, "task": args.task, "split": args.split}
    if args.method == "core":
        method = _open_core(args, *core_inputs, vlm_encoder, device)
        beta = args.beta
        if args.tune:
            train = load_split(args.task, args.data_root, "train")
            train_queries = method.queries(_embed_paths(model, train.query_paths, preprocess, args, device, "train queries"))
            train_gallery = method.queries(_embed_paths(model, train.gallery_paths, preprocess, args, device, "train gallery"))
            recall_at_1 = [
                split_retrieval_metrics(
                    core.enrich_queries(train_queries.embeddings, train_queries.retrieved_embeddings, b, args.formula),
                    core.enrich_queries(train_gallery.embeddings, train_gallery.retrieved_embeddings, b, args.formula),
                    torch.tensor(train.ground_truth), symmetric=train.symmetric,
                )["R@1"]
                for b in core.TUNING_GRID
            ]
            beta = core.TUNING_GRID[int(np.argmax(recall_at_1))]
            results["tuning"] = {"train_R@1": max(recall_at_1), "betas": list(core.TUNING_GRID), "R@1": recall_at_1}
        enriched_queries, enriched_gallery = method.queries(queries), method.queries(gallery)
        queries = core.enrich_queries(enriched_queries.embeddings, enriched_queries.retrieved_embeddings, beta, args.formula)
        gallery = core.enrich_queries(enriched_gallery.embeddings, enriched_gallery.retrieved_embeddings, beta, args.formula)
        results.update(beta=beta, formula=args.formula, captions=len(method.index))
        shown = range(min(EXAMPLE_IMAGES, len(split)))
        caption_lists = enriched_queries.retrieved.caption_lists(method.index.captions)
        plot_retrieved_captions([split.query_paths[i] for i in shown], [caption_lists[i] for i in shown], args.out / "retrieval_examples.png")
    ground_truth = torch.tensor(split.ground_truth)
    results.update(split_retrieval_metrics(queries, gallery, ground_truth, symmetric=split.symmetric))
    write_npz(args.out / "predictions.npz", {
        "query_embeddings": queries.numpy(), "gallery_embeddings": gallery.numpy(), "ground_truth": ground_truth.numpy(),
        "query_paths": np.asarray([str(p) for p in split.query_paths]),
        "gallery_paths": np.asarray([str(p) for p in split.gallery_paths]),
    })
    return results


def run_zeroshot(args: argparse.Namespace) -> int:
    import torch

    from lowres_vision import core
    from lowres_vision.atomic_files import write_json
    from lowres_vision.config import check_device
    from lowres_vision.data import is_retrieval
    from lowres_vision.errors import InputError
    from lowres_vision.models.backbone import SHIPPED_CHECKPOINT

    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--caption-batch-size", args.caption_batch_size, 1),
                               ("--workers", args.workers, 0)):
        if value < least:
            raise InputError(f"{flag} must be >= {least}, got {value}")
    device = torch.device(check_device(args.device))
    core_inputs = _checked_core_inputs(args)
    checkpoint = args.checkpoint
    if checkpoint is None and args.model is None and args.pretrained is None and not args.tiny:
        checkpoint = SHIPPED_CHECKPOINT
    elif checkpoint is None and not args.tiny and args.pretrained is None:
        print("zeroshot: no --pretrained given, the model keeps its random initialisation (numbers are meaningless)")
    args.out.mkdir(parents=True, exist_ok=True)
    model, preprocess, vlm_encoder = core.load_vlm(
        args.model or core.DEFAULT_VLM, args.pretrained, tiny=args.tiny, checkpoint=checkpoint, seed=args.seed, device=device
    )
    evaluate = _retrieval if is_retrieval(args.task) else _classification
    results = evaluate(args, core_inputs, model, preprocess, vlm_encoder, device)
    write_json(args.out / "metrics.json", results)
    summary = {key: value for key, value in results.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
    print(json.dumps(summary))
    return 0
