"""`lowres-vision index`: embed a caption corpus and build its CoRE caption index, sharded across ranks.

    lowres-vision index --captions cc12m-0.parquet cc12m-1.parquet --caption-column caption --out idx --pretrained webli
    torchrun --nproc_per_node 8 -m lowres_vision.cli index ...    # ranks from torchrun's RANK / WORLD_SIZE
    lowres-vision index ... --rank 3 --world-size 16              # machine 3 of 16, all writing to idx/

Each rank embeds its shards of --shard-rows captions (a killed rank resumes its shards when run
again); rank 0 waits for every shard, then builds the index under --max-index-memory and tunes its
search to --recall-target. `lowres-vision zeroshot --index-dir idx` searches it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_index_arguments(group) -> None:
    """The flags of a caption index build, shared with `zeroshot` (which builds one when it has none)."""
    from ..core.ann import DEFAULT_MAX_INDEX_MEMORY, INDEX_KINDS
    from ..core.recall import DEFAULT_RECALL_TARGET

    group.add_argument("--caption-column", default=None, help="caption column of .csv/.tsv/.parquet corpora")
    group.add_argument("--text-encoder", default=None, help="text-to-text encoder name or path (default: bundled all-MiniLM-L6-v2)")
    group.add_argument("--text-pooling", choices=("mean", "last", "cls"), default="mean", help="'last' for SFR-Embedding-Mistral")
    group.add_argument("--text-query-prefix", default="", help="instruction prepended to retrieval queries")
    group.add_argument("--index-kind", choices=INDEX_KINDS, default="auto",
                       help="auto: exact up to 100k captions, a product-quantised IVF index within --max-index-memory above")
    group.add_argument("--max-index-memory", default=DEFAULT_MAX_INDEX_MEMORY, help="RAM the caption index may hold per space (e.g. 4GB)")
    group.add_argument("--recall-target", type=float, default=DEFAULT_RECALL_TARGET,
                       help="10-recall@10 against exact search the approximate index's search is tuned to at build")
    group.add_argument("--caption-batch-size", type=int, default=256)


def open_text_encoder(args, device):
    from lowres_vision import core

    if args.text_encoder is None:
        return core.default_text_encoder(device)
    return core.HFTextEncoder(args.text_encoder, pooling=args.text_pooling, query_prefix=args.text_query_prefix, device=device)


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..core.shards import DEFAULT_SHARD_ROWS

    parser = subparsers.add_parser(
        "index", help="embed a caption corpus and build its CoRE caption index (sharded across torchrun ranks or machines)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--captions", required=True, type=Path, nargs="+", help="corpus files: .txt (one per line), .csv/.tsv/.parquet")
    parser.add_argument("--out", required=True, type=Path, help="the index directory (resumed when it holds an unfinished build)")
    model = parser.add_argument_group("image-text model (open_clip): its text tower embeds the captions")
    model.add_argument("--model", default=None, help="open_clip model name (default ViT-SO400M-14-SigLIP-384)")
    source = model.add_mutually_exclusive_group()
    source.add_argument("--pretrained", default=None, help="open_clip pretrained tag (e.g. webli) or local checkpoint path")
    source.add_argument("--checkpoint", default=None, help="a local weights file with its open_clip_config.json beside it")
    source.add_argument("--tiny", action="store_true", help="a tiny randomly initialised CLIP (tests)")
    model.add_argument("--seed", type=int, default=0, help="seeds the initialisation of randomly initialised models")
    add_index_arguments(parser.add_argument_group("caption index"))
    ranks = parser.add_argument_group("shards")
    ranks.add_argument("--shard-rows", type=int, default=DEFAULT_SHARD_ROWS, help="captions per shard (the unit of resumption)")
    ranks.add_argument("--rank", type=int, default=None, help="this process's rank (default: torchrun's RANK, else 0)")
    ranks.add_argument("--world-size", type=int, default=None, help="number of ranks (default: torchrun's WORLD_SIZE, else 1)")
    ranks.add_argument("--device", default=None, help="default: cuda when available")
    parser.set_defaults(func=run_index)


def run_index(args: argparse.Namespace) -> int:
    import torch

    from lowres_vision import core
    from lowres_vision.config import check_device

    device = torch.device(check_device(args.device))
    corpus = core.CaptionFiles(tuple(args.captions), column=args.caption_column)  # streamed into OUT/captions.txt
    _, _, vlm_encoder = core.load_vlm(
        args.model or core.DEFAULT_VLM, args.pretrained, tiny=args.tiny, checkpoint=args.checkpoint, seed=args.seed, device=device
    )
    index = core.build_caption_index(
        corpus, args.out, vlm_encoder=vlm_encoder, text_encoder=open_text_encoder(args, device), batch_size=args.caption_batch_size,
        index_kind=args.index_kind, max_index_memory=args.max_index_memory, recall_target=args.recall_target,
        shard_rows=args.shard_rows, rank=args.rank, world_size=args.world_size,
    )
    summary = {
        space: {key: built[key] for key in ("factory", "recall_at_10", "nprobe", "ef_search", "rerank_factor")}
        for space, built in index.meta["indices"].items()
    }
    print(json.dumps({"captions": len(index), **summary}))
    return 0
