"""COCO-train-sized records: load-time validation, load time and memory, before and after.

On a synthetic COCO-train-sized json (``synthetic_coco.py``: 118,287 images, 860k polygons, 80
categories; written to a temporary folder unless ``--json`` names one), each measurement runs in its
own child process with one code tree on its PYTHONPATH: ``--baseline`` (a checkout of the code before,
e.g. ``git worktree add /tmp/ifr-main main``) and this checkout.

Table 1, load-time validation: ``json.load`` alone, ``validate_coco_dataset`` on the parsed file,
``load_coco_api`` (parse + validate + pycocotools' index) and ``load_coco_json`` (the records).

Table 2, records in the DataLoader: the records as the training loader holds them (before: the list of
dicts; after: ``SerializedRecords``), the time to load (and serialise) them, the main process's
resident memory, then 2 forked DataLoader workers that each read every record as the mapper does
(boxes, classes, polygons through pycocotools' ``frPyObjects``) and report their private memory
(``Private_Dirty`` of /proc/PID/smaps_rollup), their time to read everything, and the private memory
of a worker that read nothing (the interpreter's own share).

Run (in the virtual environment), nice'd, once: ``python benchmarks/coco_records_bench.py --baseline
/tmp/ifr-main``. Peak memory is about 6 GB (table 2, before: the main process and two workers' copies).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from tabulate import tabulate

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)

VALIDATION = r"""
import json, sys, time
import ifr.data.coco as coco
json_file = sys.argv[1]
start = time.perf_counter()
with open(json_file) as f:
    dataset = json.load(f)
parsed = time.perf_counter()
coco.validate_coco_dataset(dataset, json_file)
validated = time.perf_counter()
del dataset
start_api = time.perf_counter()
api = coco.load_coco_api(json_file)
api_done = time.perf_counter()
del api
start_records = time.perf_counter()
records = coco.load_coco_json(json_file, sys.argv[2])
records_done = time.perf_counter()
print(json.dumps({"ifr": coco.__file__, "json.load": parsed - start, "validate": validated - parsed,
                  "load_coco_api": api_done - start_api, "load_coco_json": records_done - start_records}))
"""

MEMORY = r"""
import gc, json, os, sys, time
import torch
from pycocotools import mask as mask_util
from torch.utils.data import DataLoader, Dataset
import ifr.data.build as build
from ifr.data.coco import load_coco_json

def kib(field, path="/proc/self/smaps_rollup"):
    return next(int(line.split()[1]) for line in open(path) if line.startswith(field + ":"))

def rss():
    return kib("Rss")

class ReadEveryRecord(Dataset):
    # item k: worker k reads every record as the mapper does, then reports its private memory
    def __init__(self, records, read):
        self.records, self.read = records, read
    def __len__(self):
        return 3
    def __getitem__(self, index):
        start = time.perf_counter()
        polygons = 0
        if self.read:
            for i in range(len(self.records)):
                record = self.records[i]
                annotations = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
                torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32)
                torch.tensor([a["category_id"] for a in annotations], dtype=torch.int64)
                for a in annotations:
                    mask_util.frPyObjects(a["segmentation"], record["height"], record["width"])
                    polygons += len(a["segmentation"])
        gc.collect()
        return {"pid": os.getpid(), "private_dirty_kib": kib("Private_Dirty"), "seconds": time.perf_counter() - start,
                "polygons": polygons}

json_file, images, mode = sys.argv[1:4]
torch.set_num_threads(1)
before = rss()
start = time.perf_counter()
records = load_coco_json(json_file, images)
loaded = time.perf_counter()
list_rss = rss() - before
serialized_bytes = None
if mode == "serialized":
    from ifr.data.serialized_records import SerializedRecords
    records = SerializedRecords(records)
    serialized_bytes = records.nbytes
    gc.collect()
done = time.perf_counter()
dataset = build.MapDataset(records, mapper=None)
main_rss = rss() - before
loader = DataLoader(ReadEveryRecord(dataset.records, True), batch_size=None, num_workers=2, sampler=[0, 1])
workers = list(loader)
idle = list(DataLoader(ReadEveryRecord(dataset.records, False), batch_size=None, num_workers=1, sampler=[0]))
print(json.dumps({"ifr": build.__file__, "load": loaded - start, "serialize": done - loaded, "list_rss_kib": list_rss,
                  "main_rss_kib": main_rss, "serialized_bytes": serialized_bytes, "workers": workers,
                  "idle_worker_kib": idle[0]["private_dirty_kib"]}))
"""


def run_child(code: str, tree: str, *args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=tree, OMP_NUM_THREADS="1")
    # from the tree's folder: ``python -c`` puts the working directory first on sys.path
    child = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=tree, capture_output=True, text=True)
    if child.returncode:
        raise SystemExit(f"child failed ({tree}): {child.stderr[-3000:]}")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["ifr"].startswith(os.path.abspath(tree)), result["ifr"]  # measured the tree asked for
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="checkout of the code before (its root folder)")
    parser.add_argument("--json", help="an existing synthetic json (default: write one to a temporary folder)")
    parser.add_argument("--images", type=int, default=None, help="images of the synthetic file (default COCO's)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        json_file = args.json
        if json_file is None:
            sys.path.insert(0, HERE)
            from synthetic_coco import COCO_TRAIN_IMAGES, write_synthetic_coco
            json_file = os.path.join(folder, "instances.json")
            print("writing", json_file, write_synthetic_coco(json_file, args.images or COCO_TRAIN_IMAGES), flush=True)
        images = os.path.join(folder, "images")  # the loaders check that it exists; no image is read
        os.makedirs(images)
        trees = [("before", args.baseline), ("after", CHECKOUT)]
        rows = []
        for label, tree in trees:
            r = run_child(VALIDATION, tree, json_file, images)
            rows.append([label, r["json.load"], r["validate"], r["load_coco_api"], r["load_coco_json"]])
        print(tabulate(rows, headers=["code", "json.load s", "validate_coco_dataset s", "load_coco_api s",
                                      "load_coco_json s"], tablefmt="pipe", floatfmt=".2f"), flush=True)
        rows = []
        for label, tree, mode in (("before: list of dicts", args.baseline, "list"),
                                  ("after: SerializedRecords", CHECKOUT, "serialized")):
            r = run_child(MEMORY, tree, json_file, images, mode)
            records_mib = r["list_rss_kib"] / 1024
            worker_mib = [w["private_dirty_kib"] / 1024 for w in r["workers"]]
            rows.append([label, r["load"] + r["serialize"], r["serialize"], records_mib,
                         (r["serialized_bytes"] or 0) / 2 ** 20, r["main_rss_kib"] / 1024,
                         " / ".join(f"{m:.0f}" for m in worker_mib),
                         " / ".join(f"{m / records_mib:.1%}" for m in worker_mib),
                         " / ".join(f"{(m - r['idle_worker_kib'] / 1024) / records_mib:.1%}" for m in worker_mib),
                         r["idle_worker_kib"] / 1024, " / ".join(f"{w['seconds']:.1f}" for w in r["workers"])])
        print(tabulate(rows, headers=["records", "load s", "of which serialise s", "records as dicts MiB",
                                      "buffer MiB", "main RSS MiB", "worker private MiB", "of the records",
                                      "beyond an idle worker's, of the records",
                                      "idle worker MiB", "worker read-all s"], tablefmt="pipe", floatfmt=".1f"))


if __name__ == "__main__":
    main()
