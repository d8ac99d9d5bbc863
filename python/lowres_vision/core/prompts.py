"""Prompt templates for zero-shot classification and for CoRE's class-name -> caption retrieval.

The CoRE paper (arXiv:2411.00988) finds a domain-specific prompt best for the zero-shot weights and a generic one best
for text-to-text retrieval; the LITE release's own zero-shot prompt is `a circuit diagram of {name}`.
"""

from __future__ import annotations

from typing import Sequence

# (zero-shot templates, text-to-text retrieval template) per classification task.
CORE_TEMPLATES = {
    "circuits": (("A circuit diagram of a {}.",), "A photo of a {}."),
}
LITE_TEMPLATES = {
    "circuits": ("a circuit diagram of {}",),
}
GENERIC_TEMPLATES = (("A photo of a {}.",), "A photo of a {}.")


PROMPT_STYLES = ("core", "lite")


def default_templates(task: str, style: str = "core") -> tuple[tuple[str, ...], str]:
    """(zero-shot templates, retrieval template) for `task`; generic ones for tasks without their own.

    `style="lite"` swaps in the LITE release's zero-shot prompt and keeps CoRE's retrieval template.
    """
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style must be one of {PROMPT_STYLES}, got {style!r}")
    templates, retrieval_template = CORE_TEMPLATES.get(task, GENERIC_TEMPLATES)
    if style == "lite":
        templates = LITE_TEMPLATES.get(task, templates)
    return templates, retrieval_template


def fill_templates(templates: Sequence[str], class_names: Sequence[str]) -> list[list[str]]:
    """[template][class] prompts; every template must have exactly one `{}` slot."""
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"prompt template {template!r} must contain exactly one '{{}}' for the class name")
    return [[template.format(name) for name in class_names] for template in templates]
