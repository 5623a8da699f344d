"""tp-speech: speech for tp (audio corpora, filterbank features, SpecAugment, S2T, ASR)."""
