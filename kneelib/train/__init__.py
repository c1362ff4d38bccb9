"""kneelib.train"""
