"""kneelib.preprocess"""
