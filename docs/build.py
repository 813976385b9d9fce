"""Build the documentation site: the API reference from the docstrings (pdoc), and every guide
page ``docs/*.md`` rendered with pdoc's own Markdown renderer into the same site
(``docs/<name>.html``), listed in the navigation of every API page and every guide page.

Any warning fails the build: pdoc's (a module that fails to import, an unresolvable annotation)
and the guides' (a relative link to a file the repository does not have). Files the guides link
to (results tables, figures) are copied into the site at their repository paths, so the same
relative links work in the repository and in the site.

    python docs/build.py [OUTPUT_DIR]          # default: site/
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

MODULES = ["valr_core", "valr_core.frontends.torch_module", "valr_core.frontends.keras_wgan", "valr_core.frontends.nnx"]
DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

# API pages: the guides under the module list ("../" per package level back to the site root).
MODULE_TEMPLATE = """{% extends "default/module.html.jinja2" %}
{% block nav_submodules %}
{{ super() }}
<h2>Guides</h2>
<ul>
{% for stem, title in valr_guides %}
<li><a href="{{ "../" * module.modulename.count(".") }}docs/{{ stem }}.html">{{ title }}</a></li>
{% endfor %}
</ul>
{% endblock %}
"""

# Guide pages: pdoc's frame (its styles), the guide's contents and the other guides in the nav.
GUIDE_TEMPLATE = """{% extends "frame.html.jinja2" %}
{% block title %}{{ title }}: valr{% endblock %}
{% block style %}{{ super() | safe }}<style>main.pdoc img { max-width: 100%; }</style>{% endblock %}
{% block nav %}
<a class="pdoc-button module-list-button" href="../{{ api }}.html">&nbsp;{{ api }} API</a>
{% if toc %}<h2>Contents</h2>{{ toc | safe }}{% endif %}
<h2>Guides</h2>
<ul>
{% for s, t in valr_guides %}<li><a href="{{ s }}.html">{{ t }}</a></li>{% endfor %}
</ul>
{% if footer_text %}<footer>{{ footer_text }}</footer>{% endif %}
{% endblock %}
{% block content %}
<main class="pdoc"><section class="module-info"><div class="docstring">{{ body | safe }}</div></section></main>
{% endblock %}
"""

_CODE = re.compile(r"^```.*?^```|`[^`\n]*`", re.S | re.M)  # fenced blocks and inline code
_LINK = re.compile(r"\]\(([^)\s]+)")  # the target of [text](target) and ![alt](target)
_HREF = re.compile(r'(href|src)="([^"#:]*\.md)(#[^"]*)?"')


def guides() -> list[tuple[str, str, str]]:
    """(stem, title, Markdown) of every ``docs/*.md``, by file name; the title is its first
    ``# `` heading (else the stem)."""
    pages = []
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), path.stem)
        pages.append((path.stem, title, text))
    return pages


def link_targets(text: str) -> list[str]:
    """Relative link targets of a Markdown text (outside code), without their #fragment."""
    targets = []
    for target in _LINK.findall(_CODE.sub("", text)):
        path = target.split("#", 1)[0]
        if path and "://" not in target and not target.startswith("mailto:"):
            targets.append(path)
    return targets


def render_guides(out: Path, api: str) -> list[str]:
    """Write ``out/docs/<stem>.html`` for every guide, copy the repository files the guides link
    to into ``out`` at the same paths, and return one message per broken link."""
    import pdoc.render
    from pdoc.render_helpers import to_html

    problems = []
    pages = guides()
    stems = {stem for stem, _, _ in pages}
    template = pdoc.render.env.from_string(GUIDE_TEMPLATE)
    (out / "docs").mkdir(parents=True, exist_ok=True)
    for stem, title, text in pages:
        for target in link_targets(text):
            source = (DOCS / target).resolve()
            if not source.is_relative_to(ROOT) or not source.exists():
                problems.append(f"docs/{stem}.md links to {target}, which is not in the repository")
            elif source.is_file() and source.parent != DOCS:
                dest = out / source.relative_to(ROOT)
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, dest)
        html = to_html(text)
        toc = html.toc_html
        # A link to another guide goes to its page in the site.
        body = _HREF.sub(lambda m: f'{m[1]}="{Path(m[2]).stem}.html{m[3] or ""}"' if Path(m[2]).parent == Path(".") and Path(m[2]).stem in stems else m[0], html)
        page = template.render(title=title, body=body, toc=toc, api=api)
        (out / "docs" / f"{stem}.html").write_text(page, encoding="utf-8")
    return problems


def main(argv: list[str] | None = None) -> int:
    import pdoc
    import pdoc.render

    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "site")
    templates = Path(tempfile.mkdtemp(prefix="valr-docs-"))
    (templates / "module.html.jinja2").write_text(MODULE_TEMPLATE, encoding="utf-8")
    pdoc.render.configure(docformat="markdown", footer_text="valr: Virtual Adversarial Lipschitz Regularization", template_directory=templates)
    pdoc.render.env.globals["valr_guides"] = [(stem, title) for stem, title, _ in guides()]
    pdoc_dir = str(Path(pdoc.__file__).parent)
    import valr_core

    # Only in this build process: each NamedTuple's generated __new__ claims a module
    # "namedtuple_X" that does not exist, so point it to the module defining the class.
    for name in valr_core.__all__:
        cls = getattr(valr_core, name)
        if isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields"):
            cls.__new__.__module__ = cls.__module__
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pdoc.pdoc(*MODULES, output_directory=out)
            problems = render_guides(out, MODULES[0])
    finally:
        shutil.rmtree(templates, ignore_errors=True)
    # Frameworks warn about their own deprecations at import; only pdoc's warnings are ours.
    ours = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if w.filename.startswith(pdoc_dir)] + problems
    for message in ours:
        print(f"docs warning: {message}", file=sys.stderr)
    if ours:
        print(f"docs: {len(ours)} warning(s); failing", file=sys.stderr)
        return 1
    n_guides = len(list((out / "docs").glob("*.html")))
    print(f"docs: API reference and {n_guides} guide pages written to {out}/ ({len(list(out.rglob('*.html')))} pages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
