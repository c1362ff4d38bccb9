"""kneelib.explain: CAM, Grad-CAM and checks of saliency maps against ground truth.

Every map is put on the image grid by one function, :func:`upsample_saliency`, and
:func:`saliency_on_image` returns that map together with the hot spot the pointing
game scores, so figures draw exactly what is scored.
"""
from kneelib.explain.upsample import SaliencyOnImage, saliency_on_image, upsample_saliency

__all__ = ["upsample_saliency", "saliency_on_image", "SaliencyOnImage"]
