"""Sequential recommenders: backbones, item representations, training, full-ranking evaluation."""
