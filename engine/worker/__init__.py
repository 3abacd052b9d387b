"""What runs in the separation worker (a thread or a process): windows cut from the input ring,
the model run on them, overlap-add into the stem rings, calibration, and the stems cache."""
