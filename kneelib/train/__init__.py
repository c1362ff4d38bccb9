"""kneelib.train: fastai training loops and cross-validation.

Every fastai import of kneelib lives in this package, so the one warning filter of the
package is here: fastai 2.8 decorates helpers of ``fastai.layers`` with
``torch.jit.script`` when it is first imported, and torch >= 2.9 answers with a
``FutureWarning`` that no caller can act on (it concerns fastai's source, not ours, and
is raised once, at import). Only that message is silenced; every other warning shows.
"""
import warnings

warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
