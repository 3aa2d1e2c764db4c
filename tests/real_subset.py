"""Build a zip in the official layout holding only some classes of a real Tiny ImageNet zip."""
import zipfile

ROOT = "tiny-imagenet-200/"


def write_class_subset(source_zip, out_zip, num_classes):
    """Keep the first num_classes wnids (sorted): their train folders and val images."""
    with zipfile.ZipFile(source_zip) as zin:
        wnids = sorted(zin.read(ROOT + "wnids.txt").decode().split())[:num_classes]
        keep = set(wnids)
        annotations = [
            line for line in zin.read(ROOT + "val/val_annotations.txt").decode().splitlines()
            if line.split("\t")[1] in keep
        ]
        val_files = {ROOT + "val/images/" + line.split("\t")[0] for line in annotations}
        with zipfile.ZipFile(out_zip, "w", zipfile.ZIP_STORED) as zout:
            for info in zin.infolist():
                name = info.filename
                if name.startswith(ROOT + "train/"):
                    if len(name.split("/")) > 2 and name.split("/")[2] and name.split("/")[2] not in keep:
                        continue
                elif name.startswith(ROOT + "val/images/") and name not in val_files and not info.is_dir():
                    continue
                elif name.startswith(ROOT + "test/images/") and not info.is_dir():
                    continue
                if name == ROOT + "wnids.txt":
                    zout.writestr(info, "".join(w + "\n" for w in wnids))
                elif name == ROOT + "val/val_annotations.txt":
                    zout.writestr(info, "".join(line + "\n" for line in annotations))
                else:
                    zout.writestr(info, zin.read(info))
    return out_zip
