"""Makes the README's data-look pictures from a tiny Pascal VOC folder it generates.

    python docs/data_look_picture.py    # from the repository root; ~30 s on 2 CPU cores

1. The shapes generator writes 24 + 8 images of 96x160 pixels with up to 12 objects each
   (COCO json) into a temporary folder;
2. each image's objects are written as a Pascal VOC XML file, objects with a side under 10
   pixels marked `difficult` (so the picture shows ignore regions);
3. `python main.py --mode=inspect_data` runs on that VOC folder (quickstart network:
   128x128 input, 4-pixel output cells) and its `samples.png` and `box_sizes.png` are
   copied to docs/images/data_look_samples.png and docs/images/data_look_box_sizes.png.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from cornernet_tf.data.synthetic import generate_shapes_dataset  # noqa: E402


def coco_to_voc(annotation_path: str, voc_dir: str, difficult_below: float) -> None:
    """One VOC XML per image of a COCO json (pixel indices 1-based, as VOC's)."""
    with open(annotation_path, encoding="utf-8") as f:
        data = json.load(f)
    names = {c["id"]: c["name"] for c in data["categories"]}
    objects = {}
    for a in data["annotations"]:
        objects.setdefault(a["image_id"], []).append(a)
    os.makedirs(voc_dir, exist_ok=True)
    for image in data["images"]:
        parts = [f"<annotation><filename>{os.path.basename(image['file_name'])}</filename>"
                 f"<size><width>{image['width']}</width><height>{image['height']}</height>"
                 f"</size>"]
        for a in objects.get(image["id"], []):
            x, y, w, h = a["bbox"]
            difficult = int(min(w, h) < difficult_below)
            parts.append(f"<object><name>{names[a['category_id']]}</name><difficult>"
                         f"{difficult}</difficult><bndbox><xmin>{x + 1:.0f}</xmin><ymin>"
                         f"{y + 1:.0f}</ymin><xmax>{x + w:.0f}</xmax><ymax>{y + h:.0f}</ymax>"
                         f"</bndbox></object>")
        stem = os.path.splitext(os.path.basename(image["file_name"]))[0]
        with open(os.path.join(voc_dir, stem + ".xml"), "w", encoding="utf-8") as f:
            f.write("".join(parts) + "</annotation>")


def main() -> None:
    work = tempfile.mkdtemp(prefix="data-look-")
    try:
        paths = generate_shapes_dataset(os.path.join(work, "shapes"), 24, 8, (96, 160), 12,
                                        seed=11)
        voc = os.path.join(work, "voc", "Annotations")
        coco_to_voc(paths.train_annotations, voc, difficult_below=10)
        look = os.path.join(work, "look")
        subprocess.run([sys.executable, os.path.join(REPO, "main.py"), "--mode=inspect_data",
                        f"--output={look}", "--set", f"data.train_annotations={voc}",
                        "--set", f"data.train_images={paths.train_images}"],
                       check=True, cwd=work)
        for name in ("samples", "box_sizes"):
            shutil.copy(os.path.join(look, f"{name}.png"),
                        os.path.join(REPO, "docs", "images", f"data_look_{name}.png"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
