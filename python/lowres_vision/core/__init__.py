"""CoRE ("Retrieval-enriched zero-shot image classification in low-resource domains", arXiv:2411.00988)
and plain zero-shot classification: a caption index searched with faiss, image->text and text->text
retrieval, and the enrichment of image and class embeddings."""

from .ann import DEFAULT_MAX_INDEX_MEMORY, INDEX_KINDS, IndexPlan, parse_memory, plan_index
from .encoders import (
    DEFAULT_VLM, HFTextEncoder, OpenCLIPTextEncoder, TextEncoder, default_text_encoder, encode_images, encode_queries, load_vlm,
    tiny_clip,
)
from .enrich import (
    DEFAULT_TEMPERATURES, FORMULAS, TUNING_GRID, CoRE, CoREConfig, EnrichedClasses, EnrichedQueries, TuningResult, enrich_class_weights, enrich_queries,
    enriched_logits, tune_alpha_beta, weighted_caption_embedding, zero_shot_weights,
)
from .corpus import CaptionFiles, iter_captions, read_captions
from .index import DUPLICATE_COSINE, SPACES, TEXT_SPACE, VLM_SPACE, CaptionIndex, Retrieved, build_caption_index
from .recall import DEFAULT_RECALL_TARGET, SearchSettings, recall_at_k
from .prompts import CORE_TEMPLATES, LITE_TEMPLATES, PROMPT_STYLES, default_templates, fill_templates

DEFAULT_CAPTIONS = "lite_captions.txt"


def default_captions_path():
    """The small caption corpus shipped with the package (circuits, maps, mechanical parts)."""
    from importlib.resources import files

    return files("lowres_vision").joinpath("data", "captions", DEFAULT_CAPTIONS)


__all__ = [
    "CORE_TEMPLATES", "CaptionFiles", "CaptionIndex", "CoRE", "CoREConfig", "DEFAULT_CAPTIONS", "DEFAULT_MAX_INDEX_MEMORY", "DEFAULT_RECALL_TARGET",
    "DEFAULT_TEMPERATURES", "DEFAULT_VLM", "DUPLICATE_COSINE",
    "EnrichedClasses", "EnrichedQueries", "FORMULAS", "HFTextEncoder", "INDEX_KINDS", "IndexPlan", "LITE_TEMPLATES", "OpenCLIPTextEncoder",
    "PROMPT_STYLES", "Retrieved", "SPACES", "SearchSettings", "TEXT_SPACE", "TUNING_GRID", "TextEncoder", "TuningResult", "VLM_SPACE", "build_caption_index",
    "default_captions_path", "default_templates", "default_text_encoder", "encode_images", "encode_queries",
    "enrich_class_weights", "enrich_queries", "enriched_logits", "fill_templates", "iter_captions", "load_vlm", "parse_memory", "plan_index", "read_captions", "recall_at_k", "tiny_clip",
    "tune_alpha_beta", "weighted_caption_embedding", "zero_shot_weights",
]
