"""``pods_demo``: an experiment's predictions drawn on images (masks, boxes, class names, scores),
written as PNGs at the images' own size. Run inside an experiment folder, like pods_test:

    sh pods_demo.sh --input photo.jpg photos/ 'shots/*.png' [--output DIR]
                    [--confidence-threshold 0.5] MODEL.WEIGHTS model_final.pth [KEY VALUE ...]

``--input`` takes image files, folders (their images) and glob patterns. The PNGs go to
``OUTPUT_DIR/demo`` unless ``--output`` says otherwise.
"""
from __future__ import annotations

import argparse
import glob
import logging
import os

from torchvision.transforms.v2 import functional as F
from tqdm import tqdm

from ifr.data import ImageReadError, dataset_class_names, get_metadata, read_image
from ifr.engine.predictor import DefaultPredictor
from ifr.errors import UserError
from ifr.utils.atomic import write_atomically
from ifr.utils.run_lock import claim_run_folder
from ifr.visualization import draw_instances

from .experiment import run_reporting_user_errors
from .trained_model import add_model_arguments, load_trained_model, parse_tool_arguments

logger = logging.getLogger("ifr.tools.demo")  # not __name__: "__main__" under python -m

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")


def _frames_hint(video: str) -> str:
    frames = os.path.splitext(os.path.basename(video))[0] + "_frames"
    return f"extract its frames first, e.g. mkdir {frames} && ffmpeg -i {video} {frames}/%05d.png, then --input {frames}"


def expand_inputs(inputs: list[str]) -> list[str]:
    """Files, folders (the images in them, sorted; the other entries are named in a warning) and glob
    patterns -> image paths. A video is refused saying how to extract its frames."""
    files = []
    for item in inputs:
        if os.path.isdir(item):
            entries = sorted(os.listdir(item))
            files += [os.path.join(item, f) for f in entries if f.lower().endswith(IMAGE_EXTENSIONS)]
            skipped = [f for f in entries if not f.lower().endswith(IMAGE_EXTENSIONS)]
            if skipped:
                videos = [f for f in skipped if f.lower().endswith(VIDEO_EXTENSIONS)]
                logger.warning("--input %s: skipped %d entries that are not images (%s): %s%s", item, len(skipped),
                               " ".join(IMAGE_EXTENSIONS), ", ".join(skipped[:10]), ", ..." if len(skipped) > 10 else "")
                for video in videos[:3]:
                    logger.warning("%s is a video: %s", os.path.join(item, video), _frames_hint(os.path.join(item, video)))
        elif os.path.isfile(item):
            if item.lower().endswith(VIDEO_EXTENSIONS):
                raise UserError(f"--input {item} is a video; pods_demo draws on images: {_frames_hint(item)}")
            files.append(item)
        else:
            matches = sorted(glob.glob(item))
            if not matches:
                raise UserError(f"--input {item}: no such file or folder, and no file matches it as a pattern")
            files += matches
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in --input {' '.join(inputs)}")
    return files


def output_names(files: list[str]) -> list[str]:
    """One PNG name per input: its base name, numbered where two inputs share one."""
    names, seen = [], {}
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        names.append(f"{stem}.png" if count == 0 else f"{stem}_{count}.png")
    return names


def class_names(cfg) -> list[str] | None:
    if not cfg.DATASETS.TEST:
        return None
    try:
        return dataset_class_names(get_metadata(cfg.DATASETS.TEST[0]))
    except UserError:  # the test set is not available here: label with class ids
        return None


def run(args) -> None:
    if not 0 <= args.confidence_threshold <= 1:
        raise UserError(f"--confidence-threshold is a score between 0 and 1, got {args.confidence_threshold}: e.g. "
                        "--confidence-threshold 0.5")
    files = expand_inputs(args.input)
    config, model = load_trained_model(args)
    predictor = DefaultPredictor(config, model)
    names = class_names(config)
    output = args.output or os.path.join(config.OUTPUT_DIR, "demo")
    try:
        os.makedirs(output, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write the pictures to {output} ({e.strerror or e}): pass --output with a folder "
                        "you can write") from None
    with claim_run_folder(output, "give this demo another --output"):  # two demos would overwrite each other
        _draw_all(files, predictor, names, args.confidence_threshold, output)


def _draw_all(files: list[str], predictor: DefaultPredictor, names, threshold: float, output: str) -> None:
    """Draws the predictions on each of ``files`` into ``output``; unreadable files are skipped and listed."""
    unreadable = []
    for path, name in zip(tqdm(files, desc="demo", disable=len(files) < 2), output_names(files)):
        try:
            image = read_image(path)
        except ImageReadError as e:  # draw the others; the unreadable ones are listed at the end
            logger.warning("skipping %s", e)
            unreadable.append(path)
            continue
        instances = {k: v.cpu() for k, v in predictor(image).items()}
        drawn = draw_instances(F.pil_to_tensor(image), instances, names, threshold)
        try:
            write_atomically(os.path.join(output, name), F.to_pil_image(drawn).save)
        except OSError as e:
            raise UserError(f"cannot write {os.path.join(output, name)} ({e.strerror or e}): pass --output with a "
                            "folder you can write") from None
        shown = int((instances["scores"] >= threshold).sum())
        logger.info("%s: %d detections, %d drawn (score >= %.2f) -> %s", path, len(instances["scores"]), shown,
                    threshold, os.path.join(output, name))
    if len(unreadable) == len(files):
        raise UserError(f"none of the {len(files)} images could be read ({', '.join(unreadable[:3])}"
                        f"{', ...' if len(files) > 3 else ''})")
    if unreadable:
        logger.warning("drew %d of %d images; %d could not be read: %s", len(files) - len(unreadable), len(files),
                       len(unreadable), ", ".join(unreadable))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders or glob patterns")
    parser.add_argument("--output", default=None, help="folder for the PNGs (default: OUTPUT_DIR/demo)")
    parser.add_argument("--confidence-threshold", type=float, default=0.5, help="draw detections scoring at least this")
    add_model_arguments(parser)
    run_reporting_user_errors(run, parse_tool_arguments(parser, argv, "input"))


if __name__ == "__main__":
    main()
