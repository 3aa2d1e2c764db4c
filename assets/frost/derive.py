"""How assets/frost/frost1-5.png were made (run once; the kit only reads the PNGs).

Tiny-ImageNet-C's frost blends in one of five photographs of frost, which the authors' script
(make_tinyimagenet_c.py, github.com/hendrycks/robustness at 8190fe329f5f072a06e3a2aea02bb5dda69aed9f,
Apache-2.0: ImageNet-C/create_c/frost1.png ... frost5.jpg; frost6.jpg is never drawn) reads with
cv2.imread (colour, alpha dropped) and shrinks with cv2.resize(fx=0.3, fy=0.3) (bilinear, no
antialiasing) before cropping 64x64. These are those shrunken images, made with torch's bilinear
resampling at the same scale (OpenCV's 11-bit fixed-point weights may differ by a level):

    python assets/frost/derive.py DIR_WITH_THE_FIVE_ORIGINALS
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ORIGINALS = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")

if __name__ == "__main__":
    for index, name in enumerate(ORIGINALS, 1):
        rgb = np.array(Image.open(os.path.join(sys.argv[1], name)).convert("RGB"))
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].double()
        small = F.interpolate(x, scale_factor=0.3, mode="bilinear", align_corners=False, recompute_scale_factor=False)
        out = small[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()
        Image.fromarray(out).save(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"frost{index}.png"), optimize=True)
        print(name, rgb.shape, "->", out.shape)
