"""`fgcli prepare-data`: parse the flags, delegate to fgcli.api.prepare_data."""

from __future__ import annotations

import typer

from fgcli.commands._common import handle_errors
from fgcli.console import console, settings

_SPLITS = "Splits"
_CHECKS = "Image checks"
_DEMO = "Demo data set"
_DOWNLOAD = "Download"
_CLASSES = "Classes"


@handle_errors
def prepare_data_command(
    fmt: str = typer.Argument(..., metavar="FORMAT",
                              help="cub, nabirds, cars, aircraft, dogs, flowers102, imagefolder, csv or demo."),
    src: str | None = typer.Argument(None, metavar="SRC",
                                        help="The extracted data set folder, ImageFolder root or CSV file "
                                             "(demo: the output folder)."),
    out: str | None = typer.Option(None, "--out", "-o",
                                      help="Output folder (default: <SRC>_fgcli beside SRC, or the user cache)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", rich_help_panel=_SPLITS,
                                       help="Share of each training class held out as val (when the data set "
                                            "has no official val split)."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", rich_help_panel=_SPLITS,
                                        help="Share held out as test when the source has no test split."),
    seed: int = typer.Option(0, "--seed", rich_help_panel=_SPLITS, help="Seed of the held-out splits (and demo)."),
    level: str | None = typer.Option(None, "--level", rich_help_panel=_SPLITS,
                                        help="aircraft only: variant (default), family or manufacturer."),
    strict: bool = typer.Option(False, "--strict", rich_help_panel=_CHECKS,
                                help="Fail on any bad image instead of skipping it."),
    workers: int | None = typer.Option(None, "--workers", "-w", rich_help_panel=_CHECKS,
                                          help="Processes for the image checks (default: CPUs, max 8)."),
    min_size: int = typer.Option(16, "--min-size", rich_help_panel=_CHECKS,
                                 help="Smallest allowed image side in pixels."),
    max_pixels: int | None = typer.Option(None, "--max-pixels", rich_help_panel=_CHECKS,
                                             help="Decompression-bomb limit (default: Pillow's, ~89.5 MP)."),
    demo_size: int = typer.Option(64, "--demo-size", rich_help_panel=_DEMO, help="Demo image side in pixels."),
    demo_classes: int = typer.Option(10, "--demo-classes", rich_help_panel=_DEMO, help="Demo classes (2-20)."),
    demo_per_class: int = typer.Option(150, "--demo-per-class", rich_help_panel=_DEMO,
                                       help="Demo training images per class (test gets a third)."),
    download: bool = typer.Option(False, "--download", rich_help_panel=_DOWNLOAD,
                                  help="First download the official files into SRC (flowers102, cub, aircraft, "
                                       "cars, dogs; nabirds with --url), check their checksums and extract them. "
                                       "Resumes a partial download."),
    url: list[str] | None = typer.Option(None, "--url", metavar="URL", rich_help_panel=_DOWNLOAD,
                                            help="A mirror: one URL per file (matched by file name) or a folder "
                                                 "URL ending in '/'. Repeatable. The published checksums still "
                                                 "apply."),
    md5: str | None = typer.Option(None, "--md5", rich_help_panel=_DOWNLOAD,
                                      help="Expected MD5 of the file given with --url (replaces the published one)."),
    sha256: str | None = typer.Option(None, "--sha256", rich_help_panel=_DOWNLOAD,
                                         help="Expected SHA-256 of the file given with --url."),
    classes: str | None = typer.Option(None, "--classes", metavar="FILE", rich_help_panel=_CLASSES,
                                       help="Keep only the classes named in FILE (one name per line)."),
    exclude_classes: str | None = typer.Option(None, "--exclude-classes", metavar="FILE", rich_help_panel=_CLASSES,
                                               help="Drop the classes named in FILE (one name per line), e.g. to keep "
                                                    "them as images the model never saw (eval --ood)."),
) -> None:
    """Check a data set and write its manifest: dataset.yaml, train/val/test.csv, bad_images.csv.

    Decodes every image (bad ones are listed, then skipped); holds out a stratified val split if none exists.

    Examples:
      fgcli prepare-data cub ./CUB_200_2011
      fgcli prepare-data flowers102 ./flowers102 --download
      fgcli prepare-data aircraft ./fgvc-aircraft-2013b --level family
      fgcli prepare-data imagefolder ./my_photos --out ./my_photos_prepared
      fgcli prepare-data csv ./labels.csv --val-fraction 0.2
      fgcli prepare-data demo ./demo_data
      fgcli prepare-data cub ./CUB_200_2011 --exclude-classes held_out.txt --out ./cub_known
    """
    from fgcli import api

    prepared = api.prepare_data(fmt, src, out, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                                level=level, strict=strict, workers=workers, min_size=min_size,
                                max_pixels=max_pixels, demo_size=demo_size, demo_classes=demo_classes,
                                demo_per_class=demo_per_class, download=download, url=url, md5=md5,
                                sha256=sha256, classes=classes, exclude_classes=exclude_classes)
    if not settings.quiet:
        from fgcli.data.pipeline import summary_table

        console.print(summary_table(prepared))
        console.print(f"Prepared data set: [bold]{prepared.root}[/]  next: fgcli train --data {prepared.root}",
                      soft_wrap=True)
