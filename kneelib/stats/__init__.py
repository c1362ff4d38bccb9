"""kneelib.stats"""
