"""The run skeleton and exit codes the three feature extractors share (``extract_nus_wide``,
``extract_openimages``, ``extract_own``)."""

from __future__ import annotations

import argparse
import contextlib
import pickle
from typing import Callable, Sequence, Type

from .. import features
from ..data.packed import PackedFormatError
from ..utils import comm
from ..utils.ownership import FolderBusyError, FolderOwnershipError
from ._errors import ExitOn, run_main

__all__ = ["INPUT_ERRORS", "run_extractor"]

# Bad or missing input, weights or --out folder: one line naming the file, exit status 2.
INPUT_ERRORS = (features.WeightsNotFoundError, FileNotFoundError, PackedFormatError, KeyError, ValueError,
                FolderBusyError, FolderOwnershipError, pickle.UnpicklingError)


def run_extractor(tool: str, parser: argparse.ArgumentParser, args: argparse.Namespace, work: Callable[[], None],
                  errors: Sequence[Type[BaseException]] = (), claim_before_joining: bool = True) -> int:
    """Run one extraction command -> its exit status (0 done, 2 bad input; see INPUT_ERRORS).

    Checks the shared extraction arguments (a usage error exits through ``parser``), then the
    weights. With ``claim_before_joining``, rank 0 takes ``args.out`` (lock and
    ownership, :func:`biam.features.claim_output`) before joining torchrun's process group, so a
    refusal exits at once and torchrun stops the other ranks; otherwise ``work`` takes it itself
    once it has checked its inputs. ``errors``: the tool's own bad-input exceptions (exit 2 too).
    """

    features.check_extraction_arguments(parser, args)

    def body() -> int:
        features.check_weights_available(args.weights, args.random_weights, tool, backbone=args.backbone)
        claim = features.claim_output(args.out, args.overwrite, tool) if claim_before_joining else contextlib.nullcontext()
        with claim:
            # Long timeout: ranks may finish hours apart when an extraction resumes.
            comm.init_distributed(args.device, timeout_minutes=24 * 60)
            work()
        return 0

    return run_main(tool, body, (ExitOn(tuple(errors) + INPUT_ERRORS, 2),), cleanup=comm.destroy)
