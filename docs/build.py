"""Build the API reference (a static site) from the docstrings with pdoc; any warning pdoc
raises (a module that fails to import, an unresolvable annotation or link) fails the build.

    python docs/build.py [OUTPUT_DIR]          # default: site/
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

MODULES = ["valr_core", "valr_core.frontends.torch_module", "valr_core.frontends.keras_wgan", "valr_core.frontends.nnx"]


def _annotation_names() -> dict[str, object]:
    """Names the string annotations of ``valr_core``'s re-exported classes refer to.

    pdoc evaluates the dataclass-generated ``VALP.__init__``'s string annotations
    (``from __future__ import annotations``) in ``valr_core.valp``, which does not import
    ``ValpConfig``'s field types."""
    from valr_core.config import Mode, Reduction, Start
    from valr_core.distances import Distance

    return {"Mode": Mode, "Reduction": Reduction, "Start": Start, "Distance": Distance}


def main(argv: list[str] | None = None) -> int:
    import pdoc
    import pdoc.render

    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0] if args else "site")
    pdoc.render.configure(docformat="markdown", footer_text="valr: Virtual Adversarial Lipschitz Regularization")
    pdoc_dir = str(Path(pdoc.__file__).parent)
    import valr_core
    import valr_core.valp

    # Only in this build process: VALP.__init__ resolves in valr_core.valp; each NamedTuple's
    # generated __new__ claims a module "namedtuple_X" that does not exist, so point it home.
    for name, value in _annotation_names().items():
        vars(valr_core.valp).setdefault(name, value)
    for cls in (valr_core.ALState, valr_core.Draws, valr_core.ValpAux, valr_core.Violations):
        cls.__new__.__module__ = cls.__module__
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*MODULES, output_directory=out)
    # Frameworks warn about their own deprecations at import; only pdoc's warnings are ours.
    ours = [w for w in caught if w.filename.startswith(pdoc_dir)]
    for w in ours:
        print(f"docs warning: {w.filename}:{w.lineno}: {w.message}", file=sys.stderr)
    if ours:
        print(f"docs: {len(ours)} warning(s); failing", file=sys.stderr)
        return 1
    print(f"docs: API reference written to {out}/ ({len(list(out.rglob('*.html')))} pages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
