"""kneelib.synth"""
