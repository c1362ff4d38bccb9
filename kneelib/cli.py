"""Command line: ``python -m kneelib {run,book,synth,volumes,cache,grade-kl} ...``.

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
        dicom_compression="none" if args.uncompressed else "jpeg-ls",
        mr_series="all" if args.all_series else None, scheduler=args.scheduler,
    )
    print(out)
    return 0


def _cmd_volumes(args: argparse.Namespace) -> int:
    from kneelib.data.cache import MRI_SERIES_PATTERN, cache_series_volumes, mri_series_folders
    from kneelib.data.image_index import read_image_index

    folders = mri_series_folders(read_image_index(args.root), args.series or MRI_SERIES_PATTERN)
    rows = cache_series_volumes(folders, cache_dir=args.cache_dir, n_jobs=args.workers, scheduler=args.scheduler)
    failed = [r for r in rows if r["error"]]
    for row in failed:
        print(f"not converted: {row['folder']}: {row['error']}", file=sys.stderr)
    print(f"{len(rows) - len(failed)} of {len(rows)} series cached as NIfTI volumes")
    return 1 if failed and len(failed) == len(rows) else 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from kneelib import cache, config

    root = config.cache_root() if args.root is None else args.root
    entries = cache.list_entries(root, areas=args.area or None)
    if args.action == "summary":
        summary = cache.area_summary(entries)
        print(f"cache {root}: {cache.format_size(summary['bytes'].sum() if len(summary) else 0)}")
        print(summary.drop(columns="bytes").to_string(index=False) if len(summary) else "(empty)")
        return 0
    older = None if args.older_than is None else cache.parse_age(args.older_than)
    larger = None if args.larger_than is None else cache.parse_size(args.larger_than)
    if args.action == "list":
        chosen = [e for e in entries if (older is None or e.age_days() > older)
                  and (larger is None or e.size_bytes > larger)]
    else:
        limit = None if args.max_size is None else cache.parse_size(args.max_size)
        chosen = cache.select_entries(entries, older_than_days=older, larger_than_bytes=larger,
                                      max_total_bytes=limit, partial_only=args.partial)
    key = (lambda e: -e.size_bytes) if args.sort == "size" else (lambda e: e.modified)
    for entry in sorted(chosen, key=key):
        flag = " (partial)" if entry.partial else ""
        print(f"{entry.area}/{entry.name}\t{cache.format_size(entry.size_bytes)}\t"
              f"{entry.age_days():.1f} days{flag}")
    total = cache.format_size(sum(e.size_bytes for e in chosen))
    if args.action == "list":
        print(f"{len(chosen)} entries, {total}")
    elif args.yes:
        print(f"removed {len(chosen)} entries, freed {cache.format_size(cache.prune(chosen))}")
    else:
        print(f"would remove {len(chosen)} entries ({total}); add --yes to delete them")
    return 0


def _cmd_grade_kl(args: argparse.Namespace) -> int:
    from kneelib.grade_kl import KLModelError, grade_kl_folder
    from kneelib.preprocess.knee_localisation import LocaliserFileError

    try:
        table = grade_kl_folder(model_path=args.model, images_dir=args.images, out_csv=args.out,
                                gradcam_dir=args.gradcam, grade_out_of_distribution=args.grade_ood,
                                progress=not args.quiet, localiser_path=args.localiser,
                                pixel_spacing_mm=args.pixel_spacing)
    except (FileNotFoundError, KLModelError, LocaliserFileError) as err:
        print(f"grade-kl: {err}", file=sys.stderr)
        return 2
    failed = int((table["error"].fillna("") != "").sum())
    flagged = int(table["out_of_distribution"].fillna(False).sum())
    notes = [f"{failed} not graded: see the 'error' column"] if failed else []
    if flagged:
        notes.append(f"{flagged} out of distribution: see 'ood_score'"
                     + ("" if args.grade_ood else "; left ungraded (--grade-ood grades them)"))
    n_files = table["file"].nunique()
    knees = f"{len(table)} rows ({n_files} files)" if n_files != len(table) else f"{len(table)} images"
    print(f"graded {knees} -> {args.out}" + (f" ({'; '.join(notes)})" if notes else ""))
    return 0


def _add_executor_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=None,
                        help="local processes (default: all cores; 1: in this process)")
    parser.add_argument("--scheduler", default=None,
                        help="dask.distributed scheduler address (tcp://host:8786) to run the per-subject "
                             "tasks on a cluster; default $KNEELIB_DASK_SCHEDULER; 'local' forces joblib")


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
    synth.add_argument("--uncompressed", action="store_true",
                       help="write uncompressed DICOM as the OAI does (default: lossless JPEG-LS, 2.4x smaller)")
    synth.add_argument("--all-series", action="store_true",
                       help="write every MR series of the OAI knee protocol at both visits (default for "
                            "'smoke' and 'default': only the series the book's chapters read)")
    _add_executor_options(synth)
    synth.set_defaults(func=_cmd_synth)

    volumes = sub.add_parser("volumes", help="convert a cohort's MRI DICOM series to cached NIfTI volumes "
                                             "(per-series tasks: joblib, or a dask cluster)")
    volumes.add_argument("root", help="cohort root: the folder holding contents.csv (OAI image index)")
    volumes.add_argument("--series", default=None,
                         help="regular expression on SeriesDescription (default: SAG_/COR_/AX_ MRI series)")
    volumes.add_argument("--cache-dir", default=None, help="default $KNEELIB_CACHE/volumes")
    _add_executor_options(volumes)
    volumes.set_defaults(func=_cmd_volumes)

    store = sub.add_parser("cache", help="cache size per area; list or prune entries by age and size")
    store.add_argument("action", nargs="?", default="summary", choices=["summary", "list", "prune"])
    store.add_argument("--root", default=None, help="cache root (default $KNEELIB_CACHE)")
    store.add_argument("--area", action="append", help="only this area (synthetic, volumes, ...); repeatable")
    store.add_argument("--older-than", default=None, help="age since last written: 30d, 12h, 2w")
    store.add_argument("--larger-than", default=None, help="size: 500M, 2G")
    store.add_argument("--max-size", default=None, help="prune: remove the oldest entries until the cache fits")
    store.add_argument("--partial", action="store_true",
                       help="prune: only temporary files left by killed writers (always pruned once 1 h old)")
    store.add_argument("--sort", default="age", choices=["age", "size"])
    store.add_argument("--yes", action="store_true", help="prune: delete (without it, only show)")
    store.set_defaults(func=_cmd_cache)

    grade = sub.add_parser("grade-kl", help="grade a folder of knee crops or bilateral radiographs (PNG/JPEG/DICOM)")
    grade.add_argument("--model", required=True, help="KL grader file (.pt) written by the kl_real_radiographs chapter")
    grade.add_argument("--images", required=True,
                       help="folder of knee-joint crops or full bilateral radiographs (searched recursively)")
    grade.add_argument("--out", required=True, help="CSV to write")
    grade.add_argument("--gradcam", default=None, metavar="DIR", help="write a Grad-CAM overlay per image here")
    grade.add_argument("--grade-ood", action="store_true",
                       help="also grade images flagged as out of distribution (default: flag, no grade)")
    grade.add_argument("--localiser", default=None, metavar="FILE",
                       help="knee localiser (.pt, written by the oarsi_grading chapter) to cut full bilateral "
                            "radiographs into their two knees")
    grade.add_argument("--pixel-spacing", type=float, default=None, metavar="MM",
                       help="pixel spacing of bilateral PNG/JPEG radiographs (DICOM carries its own)")
    grade.add_argument("--quiet", action="store_true", help="no progress bar")
    grade.set_defaults(func=_cmd_grade_kl)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
