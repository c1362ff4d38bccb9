"""kneelib.synth: a synthetic cohort in the OAI on-disk format with planted ground truth.

- :mod:`kneelib.synth.spec` -- the contracts (SubjectSpec, KneeSpec)
- :mod:`kneelib.synth.causal` -- the causal model that draws them (documented effect sizes)
- :mod:`kneelib.synth.cohort` -- ``generate_cohort``: renders and writes a whole cohort
"""
