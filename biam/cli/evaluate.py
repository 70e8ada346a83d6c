"""``biam-evaluate`` (``python -m biam.cli.evaluate``): evaluate a checkpoint on the test split.

Exit status: 0 done; 1 bad data, checkpoint or output folder; 2 config error or no weights;
4 another evaluation of the same checkpoint and split is writing its folder; 5 the system
refused a read or write (disk full, permission, I/O error: the message names the file).
"""

from __future__ import annotations

import argparse
import os
import sys

from ..config import add_config_arguments, dump_cfg
from ..data.loader import build_loader
from ..data.packed import PackedDataset, PackedFormatError, resolve_backbone
from ..engine import checkpoint as ckpt
from ..engine.evaluator import EvaluationFolder, combine_tasks, evaluate_split, format_result
from ..engine.runtime import build_label_space, build_scene_head, resolve_amp
from ..modeling import build_model
from ..utils import comm
from ..utils.io import write_json
from ..utils.logging import setup_logger
from ..utils.ownership import FolderBusyError, FolderOwnershipError
from ._errors import ExitOn, load_config, run_main, system_error

EXITS = (
    ExitOn(FolderBusyError, 4),
    ExitOn((ckpt.CheckpointError, PackedFormatError, FileNotFoundError, ValueError, FolderOwnershipError), 1),
    system_error(),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="biam-evaluate",
        description="Evaluate a BiAM checkpoint (ours or a published state_dict) on the test split with the "
                    "protocol of DATA.DATASET; prints the paper's table and writes metrics.json, config.yaml and "
                    "log.txt into its own folder OUTPUT_DIR/eval/<TEST_SPLIT>-<checkpoint name>/ (never over a "
                    "training run's files). A second evaluation of the same checkpoint and split stops at once.",
    )
    add_config_arguments(parser)
    parser.add_argument("--checkpoint", default="", metavar="FILE",
                        help="weights to evaluate (overrides MODEL.WEIGHTS): a training checkpoint or a published state_dict")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an evaluation folder that holds files biam-evaluate did not write (only "
                             "its own metrics.json, config.yaml, log.txt and evaluation.json are replaced)")
    parser.add_argument("--gzsl-checkpoint", default="", metavar="FILE",
                        help="a second weights file (overrides EVAL.GZSL_WEIGHTS), as the original Open Images "
                             "evaluation uses model_best_gzsl.pth and model_best_zsl.pth: every row of this file, then "
                             "of --checkpoint, is printed and kept in metrics.json under \"files\"; the summary takes "
                             "the ZSL row from --checkpoint and the GZSL row from this file")
    # Options may come before, between or after the KEY VALUE overrides.
    return parser.parse_intermixed_args(argv)




def main(argv=None) -> int:
    args = parse_args(argv)
    cfg, status = load_config("biam-evaluate", args.config_file or None, args.opts, freeze=False)
    if status:
        return status
    if args.checkpoint:
        cfg.MODEL.WEIGHTS = args.checkpoint
    if args.gzsl_checkpoint:
        cfg.EVAL.GZSL_WEIGHTS = args.gzsl_checkpoint
    cfg.freeze()
    if not cfg.MODEL.WEIGHTS:
        print("biam-evaluate: no weights given: pass --checkpoint FILE or MODEL.WEIGHTS FILE "
              "(published checkpoints: see pretrained_weights/README.md)", file=sys.stderr)
        return 2
    folder = EvaluationFolder(cfg, overwrite=args.overwrite)

    def body() -> int:
        device = comm.init_distributed(cfg.DEVICE)
        # The inputs are checked before anything is written: a mistyped DATA.ROOT or weights file
        # leaves an earlier evaluation exactly as it was.
        dataset = PackedDataset(cfg.DATA.ROOT, cfg.DATA.TEST_SPLIT)
        if not os.path.isfile(cfg.MODEL.WEIGHTS):
            raise ckpt.CheckpointError(f"checkpoint not found: {cfg.MODEL.WEIGHTS}")
        gzsl_weights = cfg.EVAL.GZSL_WEIGHTS
        if gzsl_weights and not os.path.isfile(gzsl_weights):
            raise ckpt.CheckpointError(f"EVAL.GZSL_WEIGHTS: checkpoint not found: {gzsl_weights}")
        out_dir = None
        refusal = None
        if comm.is_main_process():
            try:
                # A new folder, renamed over the earlier evaluation only once this one is complete.
                out_dir = folder.open()
                dump_cfg(cfg, os.path.join(out_dir, "config.yaml"))
            except (FolderBusyError, FolderOwnershipError) as err:
                refusal = err
        # Every rank stops when rank 0 may not write (else the others would wait for it).
        shared = comm.broadcast_object(None if refusal is None else (isinstance(refusal, FolderBusyError), str(refusal)))
        if shared is not None:
            raise refusal if refusal is not None else (FolderBusyError if shared[0] else FolderOwnershipError)(shared[1])
        logger = setup_logger(out_dir)
        if cfg.DATA.VERIFY_CHECKSUMS:
            dataset.verify()
        labels = build_label_space(dataset, device, cfg.MODEL.EMBED_DIM)
        scene_head = build_scene_head(cfg.MODEL.SCENE_HEAD_WEIGHTS, dataset, device)
        backbone = resolve_backbone(cfg.MODEL.BACKBONE, cfg.DATA.ROOT)

        def evaluate_weights(path: str):
            model = build_model(cfg, backbone)
            ckpt.load_model_weights(model, path, data_root=cfg.DATA.ROOT)
            model.to(device).eval()
            return evaluate_split(
                model, dataset, labels, cfg, device, resolve_amp(cfg.AMP, device), scene_head,
                loader_fn=lambda ds, bs: build_loader(
                    ds, batch_size=bs, shuffle=False, rank=comm.get_rank(), world_size=comm.get_world_size(),
                    num_workers=cfg.DATA.NUM_WORKERS, pin_memory=device.type == "cuda", float32=device.type != "cuda"),
            )

        where = f"on {cfg.DATA.ROOT} [{cfg.DATA.TEST_SPLIT}]"
        per_file = []
        if gzsl_weights:
            # As the original's evaluate_openimages.py: every row of the GZSL file, then of the
            # ZSL file; the summary (the paper's rows) takes ZSL from one and GZSL from the other.
            for path in (gzsl_weights, cfg.MODEL.WEIGHTS):
                per_file.append((path, evaluate_weights(path)))
                logger.info(f"{path} {where}:\n" + per_file[-1][1].format_table())
            result = combine_tasks(per_file[1][1], per_file[0][1])
            source = f"summary, ZSL: {cfg.MODEL.WEIGHTS}, GZSL: {gzsl_weights}"
        else:
            result = evaluate_weights(cfg.MODEL.WEIGHTS)
            source = cfg.MODEL.WEIGHTS
        logger.info(f"{source} {where}:\n" + format_result(result, cfg))
        if comm.is_main_process():
            out = os.path.join(out_dir, "metrics.json")
            payload = result.to_dict()
            if result.chance is not None:
                payload["chance"] = result.chance.to_dict()
            if per_file:
                payload["files"] = [{"weights": os.path.abspath(path), "metrics": r.to_dict()} for path, r in per_file]
            write_json(out, payload)
            logger.info(f"wrote {os.path.join(folder.final, 'metrics.json')}")
            folder.commit()
        return 0

    def cleanup() -> None:
        folder.abort()  # after commit() only the lock is left to release
        comm.destroy()

    return run_main("biam-evaluate", body, EXITS, cleanup)


if __name__ == "__main__":
    sys.exit(main())
