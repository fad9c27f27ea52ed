"""Programs and test harnesses that are not library code: the kill soak, the torchvision stand-in."""
