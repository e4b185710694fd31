"""Ray Tune sweeps across cultures and SFT hyper-parameters (Train inside Tune, ASHA)."""
