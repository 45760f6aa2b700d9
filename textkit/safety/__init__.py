"""Text safety shared by preprocess (input) and postprocess (output): normalisation, lexicon
matching, scanners and how a verdict is recorded."""
