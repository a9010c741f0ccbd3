"""The own-data path on real aerial photos made outside the project (docs/real_data.md).

    python -m benchmarks.real_data prepare SOURCE OUT
    python -m benchmarks.real_data yolo OUT --names Tree,Dead,Alive
    python -m benchmarks.real_data score OUT/voc/heldout fitted=PRED_DIR tiled=PRED_DIR

`SOURCE` is a folder holding DeepForest's sample annotations and images as published
(github.com/weecology/DeepForest, `src/deepforest/data`, MIT licence): `OSBS_029.xml` +
`OSBS_029.png`, `SOAP_061.xml` + `SOAP_061.png` and `2019_YELL_2_541000_4977000_image_crop`
`.xml` + `.png`. Nothing is downloaded here.

`prepare` writes two Pascal VOC folders (XML beside the images) into `OUT/voc/`:

- `train/`: OSBS_029 and SOAP_061 copied as they are, and the west part of the Yellowstone
  photo (x < `--cut`) as `YELL_west.png` / `.xml`;
- `heldout/`: its east part (x >= `--cut`) as `YELL_east.png` / `.xml`;
- `heldout_crops/`: that east part cut into `--crop` x `--crop` crops (the network input
  size: the held-out trees at the scale the model trains on), `YELL_east_<row>_<col>`.

A box goes to the part (crop) that holds its centre and is clipped to it, so no tree is in
two.

`yolo` writes the same three splits as a YOLO folder (ultralytics layout: `OUT/yolo/data.yaml`
with the class names in the order given, `images/<split>`, `labels/<split>`
of `class cx cy w h` lines, normalised), to read the same boxes through the YOLO reader.

`score` scores `--mode=predict` output folders (one JSON per image) against a VOC folder
with COCOeval at `--max_dets` detections per image (1024: the most a tiled image keeps),
classes matched by name, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import xml.etree.ElementTree as ElementTree

YELL = "2019_YELL_2_541000_4977000_image_crop"
COPIED = ("OSBS_029", "SOAP_061")


def _boxes(xml_path: str) -> list[tuple[str, list[int]]]:
    root = ElementTree.parse(xml_path).getroot()
    return [(o.findtext("name").strip(),
             [int(float(o.findtext(f"bndbox/{k}"))) for k in ("xmin", "ymin", "xmax", "ymax")])
            for o in root.iter("object")]


def write_voc(path: str, image_name: str, width: int, height: int,
              objects: list[tuple[str, list[int]]]) -> None:
    """A Pascal VOC XML file: `objects` as (name, [xmin, ymin, xmax, ymax]) in VOC's
    1-based pixel indices."""
    root = ElementTree.Element("annotation")
    ElementTree.SubElement(root, "filename").text = image_name
    size = ElementTree.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ElementTree.SubElement(size, key).text = str(value)
    for name, box in objects:
        obj = ElementTree.SubElement(root, "object")
        ElementTree.SubElement(obj, "name").text = name
        ElementTree.SubElement(obj, "difficult").text = "0"
        bndbox = ElementTree.SubElement(obj, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ElementTree.SubElement(bndbox, key).text = str(value)
    ElementTree.indent(root)
    ElementTree.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def split_part(objects: list, x0: int, x1: int, y0: int = 0, y1: int = 1 << 30) -> list:
    """The objects whose box centre lies in columns [x0, x1) and rows [y0, y1), clipped to
    them and shifted by (-x0, -y0) (VOC indices: column x0 + 1 becomes 1)."""
    kept = []
    for name, (xmin, ymin, xmax, ymax) in objects:
        cx, cy = (xmin - 1 + xmax) / 2.0, (ymin - 1 + ymax) / 2.0  # VOC indices are 1-based
        if x0 <= cx < x1 and y0 <= cy < y1:
            kept.append((name, [max(xmin, x0 + 1) - x0, max(ymin, y0 + 1) - y0,
                                min(xmax, x1) - x0, min(ymax, y1) - y0]))
    return kept


def prepare(source: str, out: str, cut: int, crop: int) -> None:
    from PIL import Image
    train, heldout, crops = (os.path.join(out, "voc", s)
                             for s in ("train", "heldout", "heldout_crops"))
    for folder in (train, heldout, crops):
        if os.path.exists(folder):
            raise SystemExit(f"{folder} exists: remove it or choose another OUT")
        os.makedirs(folder)
    for stem in COPIED:
        for ext in (".xml", ".png"):
            shutil.copyfile(os.path.join(source, stem + ext), os.path.join(train, stem + ext))
        print(f"train/{stem}: {len(_boxes(os.path.join(source, stem + '.xml')))} objects")
    image = Image.open(os.path.join(source, YELL + ".png")).convert("RGB")
    objects = _boxes(os.path.join(source, YELL + ".xml"))
    width, height = image.size
    for folder, name, x0, x1 in ((train, "YELL_west", 0, cut), (heldout, "YELL_east", cut, width)):
        part = split_part(objects, x0, x1)
        image.crop((x0, 0, x1, height)).save(os.path.join(folder, name + ".png"))
        write_voc(os.path.join(folder, name + ".xml"), name + ".png", x1 - x0, height, part)
        print(f"{os.path.basename(folder)}/{name}: {x1 - x0}x{height} pixels (columns {x0}.."
              f"{x1 - 1} of {YELL}.png), {len(part)} objects")
    east, count, kept = split_part(objects, cut, width), 0, 0
    for row in range(height // crop):
        for col in range((width - cut) // crop):
            x0, y0 = col * crop, row * crop
            part = split_part(east, x0, x0 + crop, y0, y0 + crop)
            name = f"YELL_east_{row}_{col}"
            image.crop((cut + x0, y0, cut + x0 + crop, y0 + crop)).save(
                os.path.join(crops, name + ".png"))
            write_voc(os.path.join(crops, name + ".xml"), name + ".png", crop, crop, part)
            count, kept = count + 1, kept + len(part)
    print(f"heldout_crops: {count} crops of {crop}x{crop} pixels of YELL_east, {kept} objects")


def yolo(out: str, names: list[str]) -> None:
    from PIL import Image
    root = os.path.join(out, "yolo")
    if os.path.exists(root):
        raise SystemExit(f"{root} exists: remove it or choose another OUT")
    for split in ("train", "heldout", "heldout_crops"):
        voc = os.path.join(out, "voc", split)
        images, labels = os.path.join(root, "images", split), os.path.join(root, "labels", split)
        os.makedirs(images)
        os.makedirs(labels)
        for xml in sorted(glob.glob(os.path.join(voc, "*.xml"))):
            stem = os.path.splitext(os.path.basename(xml))[0]
            shutil.copyfile(os.path.join(voc, stem + ".png"), os.path.join(images, stem + ".png"))
            width, height = Image.open(os.path.join(voc, stem + ".png")).size
            lines = []
            for name, (xmin, ymin, xmax, ymax) in _boxes(xml):
                x1, y1 = xmin - 1, ymin - 1  # VOC's 1-based indices to pixel edges
                lines.append(f"{names.index(name)} {(x1 + xmax) / 2 / width:.6f} "
                             f"{(y1 + ymax) / 2 / height:.6f} {(xmax - x1) / width:.6f} "
                             f"{(ymax - y1) / height:.6f}\n")
            with open(os.path.join(labels, stem + ".txt"), "w", encoding="utf-8") as f:
                f.writelines(lines)
            print(f"yolo/labels/{split}/{stem}.txt: {len(lines)} objects")
    with open(os.path.join(root, "data.yaml"), "w", encoding="utf-8") as f:
        f.write("path: .\ntrain: images/train\nval: images/heldout_crops\nnames:\n"
                + "".join(f"  {k}: {n}\n" for k, n in enumerate(names)))


def score(heldout: str, predictions: dict, max_dets: int) -> list[dict]:
    """COCO AP of each predict output folder against the VOC folder `heldout`."""
    from cornernet_tf.data.voc import load_voc
    from cornernet_tf.evaluation.metrics import coco_evaluate
    records, label_map, report = load_voc(heldout, ground_truth=True)
    by_stem = {os.path.splitext(os.path.basename(r.path))[0]: r.image_id for r in records}
    by_name = {name: label_map.to_category_id(c) for c, name in enumerate(label_map.names)}
    rows = []
    for label, folder in predictions.items():
        results, other_classes, images = [], 0, 0
        for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
            with open(path, encoding="utf-8") as f:
                predicted = json.load(f)
            if not isinstance(predicted, dict) or "detections" not in predicted:
                continue  # predict's manifest
            stem = os.path.splitext(os.path.basename(predicted["image"]))[0]
            if stem not in by_stem:
                continue
            images += 1
            detections = predicted["detections"]
            for d in detections:
                if d["name"] not in by_name:  # a class the held-out split does not have
                    other_classes += 1
                    continue
                x1, y1, x2, y2 = d["box_xyxy"]
                results.append({"image_id": by_stem[stem], "category_id": by_name[d["name"]],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": d["score"]})
        if images != len(records):
            raise SystemExit(f"{folder}: predictions for {images} of the {len(records)} "
                             f"images of {heldout}")
        m = coco_evaluate(report.ground_truth, results, max_dets=max_dets)
        rows.append(dict(label=label, ap=m["AP"], ap50=m["AP50"], ar=m["AR100"],
                         detections=len(results), other_classes=other_classes))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare", help="the train and held-out VOC folders")
    p.add_argument("source", help="folder with DeepForest's sample files (module docstring)")
    p.add_argument("out")
    p.add_argument("--cut", type=int, default=625, help="column splitting the Yellowstone photo")
    p.add_argument("--crop", type=int, default=128, help="side of the held-out crops")
    y = commands.add_parser("yolo", help="the same splits as a YOLO folder")
    y.add_argument("out", help="the OUT of prepare")
    y.add_argument("--names", default="Tree,Dead,Alive", help="class names, in YOLO's order")
    s = commands.add_parser("score", help="COCO AP of predict outputs on a VOC folder")
    s.add_argument("heldout", help="VOC folder (XML and images) of the ground truth")
    s.add_argument("predictions", nargs="+", help="LABEL=FOLDER of predict's JSON outputs")
    s.add_argument("--max_dets", type=int, default=1024)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.source, args.out, args.cut, args.crop)
        return
    if args.command == "yolo":
        yolo(args.out, args.names.split(","))
        return
    from cornernet_tf import console
    console.set_quiet(True)
    with console.native_stderr_filtered():
        rows = score(args.heldout, dict(p.split("=", 1) for p in args.predictions),
                     args.max_dets)
    print(f"scored at COCOeval maxDets={args.max_dets}")
    print("| predictions | AP | AP50 | AR | detections scored |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['ap']:.3f} | {r['ap50']:.3f} | {r['ar']:.3f} | "
              f"{r['detections']}" + (f" ({r['other_classes']} of other classes left out)"
                                      if r["other_classes"] else "") + " |")


if __name__ == "__main__":
    main()
