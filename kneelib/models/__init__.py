"""kneelib.models"""
