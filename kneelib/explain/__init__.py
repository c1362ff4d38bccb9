"""kneelib.explain"""
