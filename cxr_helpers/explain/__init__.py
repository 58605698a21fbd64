"""04 Grad-CAM: CAM methods, localisation, faithfulness and the shortcut check."""
