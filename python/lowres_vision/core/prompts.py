"""Prompt templates for zero-shot classification and for CoRE's class-name -> caption retrieval.

Paper 001 finds a domain-specific prompt best for the zero-shot weights and a generic one best
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


def default_templates(task: str) -> tuple[tuple[str, ...], str]:
    """(zero-shot templates, retrieval template) for `task`; generic ones for unknown tasks."""
    return CORE_TEMPLATES.get(task, GENERIC_TEMPLATES)


def fill_templates(templates: Sequence[str], class_names: Sequence[str]) -> list[list[str]]:
    """[template][class] prompts; every template must have exactly one `{}` slot."""
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"prompt template {template!r} must contain exactly one '{{}}' for the class name")
    return [[template.format(name) for name in class_names] for template in templates]
