"""IFR outside this project's own detectors (``ifr.integrations.torchvision``: torchvision's Mask R-CNN)."""
