"""Rendering derivations into documents (LaTeX, Markdown, terminal text)."""

from symce.render.documents import render_document
from symce.render.env import header_lines, render, template_env, templates_dir

__all__ = ["header_lines", "render", "render_document", "template_env", "templates_dir"]
