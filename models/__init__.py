"""The architectures, one file per family: blocks.py (what they share: configs' base, dropout,
LayerNorm, attention), cvt.py (the notebook's CvT and the study's variants), cnn.py (the study's
CNN and ResNet-18), vit.py (the plain ViT). The registry that names and builds them, their
settings and costs are model.py's: `from model import build_model`.
"""
