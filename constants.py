"""The numbers that the data, the models and the scripts share: the image size, and the notebook's
normalisation and crop padding. The lowest module of the kit: it imports nothing (no torch), and
everything may import it. Not here: the notebook's split (data.py), the folder layout (layout.py).
"""
IMAGE_SIZE = 64  # Tiny ImageNet's images are 64x64 RGB; the CNN's classifier and the ViT's positions depend on it

# The notebook's normalisation (ImageNet-style statistics of Tiny ImageNet) and its RandomCrop padding.
MEAN = (0.4802, 0.4481, 0.3975)
STD = (0.2302, 0.2265, 0.2262)
CROP_PADDING = 4

# The image files that ImageFolder reads (torchvision's IMG_EXTENSIONS): what prepare_data.py packs.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
