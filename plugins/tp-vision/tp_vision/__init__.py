"""tp's vision plugin: image data, transforms, patch embeddings, masked image modelling, image
classification and the ViT / BEiT converters. Registered in `tp_vision.plugin`."""
