"""kneelib.data"""
