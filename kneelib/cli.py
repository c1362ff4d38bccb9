"""Command line: ``python -m kneelib {run,book,synth,grade-kl} ...``.

Heavy imports happen inside each command so that ``--help`` is instant.
"""
from __future__ import annotations

import argparse
import sys


def _cmd_run(args: argparse.Namespace) -> int:
    from kneelib.runner import run_notebook

    run_notebook(args.notebook, params=args.params, out_dir=args.out)
    return 0


def _cmd_book(args: argparse.Namespace) -> int:
    from kneelib.runner import build_book

    index = build_book(params=args.params, notebooks=args.notebooks or None, force=args.force)
    print(index)
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from kneelib.synth.cohort import generate_cohort

    out = generate_cohort(
        preset=args.preset, out_dir=args.out, seed=args.seed,
        n_subjects=args.n_subjects, variant=args.variant, n_workers=args.workers,
    )
    print(out)
    return 0


def _cmd_grade_kl(args: argparse.Namespace) -> int:
    from kneelib.grade_kl import grade_kl_folder

    table = grade_kl_folder(model_path=args.model, images_dir=args.images, out_csv=args.out)
    failed = int((table["error"].fillna("") != "").sum())
    unread = f" ({failed} could not be read: see the 'error' column)" if failed else ""
    print(f"graded {len(table)} images -> {args.out}{unread}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kneelib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute one notebook with papermill into book/_executed/")
    run.add_argument("notebook", help="name in notebooks/ (with or without .ipynb)")
    run.add_argument("--params", default="default",
                     help="smoke | default | paper | path to a YAML file")
    run.add_argument("--out", default=None, help="output folder (default book/_executed)")
    run.set_defaults(func=_cmd_run)

    book = sub.add_parser("book", help="execute every notebook and build the HTML book")
    book.add_argument("--params", default="default", help="smoke | default | paper")
    book.add_argument("notebooks", nargs="*", help="only these notebooks (default: all in _toc)")
    book.add_argument("--force", action="store_true",
                      help="re-execute every chapter (default: only those whose inputs changed)")
    book.set_defaults(func=_cmd_book)

    synth = sub.add_parser("synth", help="generate a synthetic OAI-format cohort")
    synth.add_argument("--preset", default="default", choices=["smoke", "default", "paper"])
    synth.add_argument("--out", default=None, help="output folder (default: in KNEELIB_CACHE)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--n-subjects", type=int, default=None, help="override the preset")
    synth.add_argument("--variant", default="oai", choices=["oai", "most"],
                       help="'most': another site's acquisition settings (independent test set)")
    synth.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    synth.set_defaults(func=_cmd_synth)

    grade = sub.add_parser("grade-kl", help="grade a folder of knee images (PNG/DICOM) into a CSV")
    grade.add_argument("--model", required=True, help="trained model file (.pt)")
    grade.add_argument("--images", required=True, help="folder of knee images")
    grade.add_argument("--out", required=True, help="CSV to write")
    grade.set_defaults(func=_cmd_grade_kl)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
