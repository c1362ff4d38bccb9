"""kneelib: reproduce knee-osteoarthritis deep-learning studies on OAI-format data.

Stage modules (one purpose each):

- :mod:`kneelib.data` -- readers for the OAI layout (clinical tables, image index, DICOM)
- :mod:`kneelib.synth` -- a synthetic cohort in the exact OAI on-disk format, with ground truth
- :mod:`kneelib.preprocess` -- orientation, registration, crops, quantitative MRI maps
- :mod:`kneelib.models` -- network architectures
- :mod:`kneelib.train` -- fastai training loops and cross-validation
- :mod:`kneelib.explain` -- CAM, Grad-CAM and checks against ground truth
- :mod:`kneelib.stats` -- metrics with confidence intervals and hypothesis tests
- :mod:`kneelib.papers` -- one notebook-facing module per study, composing the stages
"""
__version__ = "0.1.0"
