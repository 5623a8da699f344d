"""tp-multimodal: image and text together (ViLT's single stream, CLIP's two streams)."""
