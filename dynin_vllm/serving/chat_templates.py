"""Chat templates of the LLaDA family, shipped with the plugin.

``dynin.jinja`` (Dynin-Omni and MMaDA: one newline after each header, with
Dynin's ``/think`` switch) and ``llada.jinja`` (LLaDA-8B-Instruct: a blank
line after each header). Pass one to a server whose checkpoint has no chat
template: ``vllm serve ... --chat-template $(python -m
dynin_vllm.serving.chat_templates dynin)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

TEMPLATES = Path(__file__).with_name("templates")


def path(name: str) -> Path:
    """Path of the template ``name`` (``dynin`` or ``llada``)."""
    file = TEMPLATES / f"{name}.jinja"
    if not file.exists():
        known = sorted(p.stem for p in TEMPLATES.glob("*.jinja"))
        raise ValueError(f"unknown chat template {name!r}; known: {known}")
    return file


def load(name: str) -> str:
    """The template text."""
    return path(name).read_text()


if __name__ == "__main__":
    print(path(sys.argv[1] if len(sys.argv) > 1 else "dynin"))
