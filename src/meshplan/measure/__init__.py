"""Close the loop: measure the local hardware, check predictions by real runs, store them, calibrate, tune."""
