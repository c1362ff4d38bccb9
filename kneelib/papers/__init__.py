"""kneelib.papers"""
