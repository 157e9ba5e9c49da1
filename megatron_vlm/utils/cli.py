"""Running a preprocessing stage from Python with the options its CLI takes."""

from __future__ import annotations

import argparse


def stage_args(add_arguments, argv: list[str], options: dict, caller: str) -> argparse.Namespace:
    """What the stage's parser makes of `argv` (its required flags), then each keyword option set
    as its flag would set it (dest names: no_ocr=True, workers=2); TypeError names an unknown one."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(argv)
    for key, value in options.items():
        if not hasattr(args, key):
            raise TypeError(f"{caller}() got an unknown option {key!r}")
        setattr(args, key, value)
    return args
